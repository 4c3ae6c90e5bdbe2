"""Tensor types: element dtypes, shapes with symbolic dims, and quantization parameters.

A dim is an ``int`` or a sympy expression over named symbols (``B``, ``S``, ``B*S``). Sympy comes
with torch, and its canonical forms let shape inference divide and compare symbolic products
(``reshape`` of ``[B, S, 384]`` to ``[B*S, 384]`` and back) without a home-made algebra.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import sympy

from rtinfer.errors import IRError


class DType(Enum):
    """Element types. The value is the short name used in the text form."""

    f64 = "f64"
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    i64 = "i64"
    i32 = "i32"
    i16 = "i16"
    i8 = "i8"
    u8 = "u8"
    u16 = "u16"
    u32 = "u32"
    u64 = "u64"
    bool = "bool"

    def __repr__(self) -> str:
        return f"DType.{self.value}"

    def __str__(self) -> str:
        return self.value

    @property
    def np(self) -> np.dtype:
        return _bf16_numpy() if self is DType.bf16 else _TO_NUMPY[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.f64, DType.f32, DType.f16, DType.bf16)

    @property
    def is_int(self) -> bool:
        return self in (DType.i64, DType.i32, DType.i16, DType.i8, DType.u8, DType.u16,
                        DType.u32, DType.u64)

    @property
    def bits(self) -> int:
        return 8 if self is DType.bool else self.np.itemsize * 8

    @staticmethod
    def parse(name: str) -> DType:
        try:
            return DType(name)
        except ValueError:
            valid = ", ".join(d.value for d in DType)
            raise IRError(f"unknown dtype {name!r}; valid dtypes: {valid}") from None

    @staticmethod
    def from_numpy(dt: np.dtype | type) -> DType:
        dt = np.dtype(dt)
        for k, v in _TO_NUMPY.items():
            if v == dt:
                return k
        if dt.name == "bfloat16" and dt == _bf16_numpy():  # only ml_dtypes makes this dtype
            return DType.bf16
        raise IRError(f"numpy dtype {dt} has no rtinfer dtype")

    @property
    def torch(self):
        """The ``torch.dtype`` of this dtype: the one DType -> torch table."""
        return _torch_table()[self]

    @staticmethod
    def from_torch(dt) -> DType:
        """The DType of a ``torch.dtype``; an ``IRError`` for one rtinfer has no dtype for."""
        for k, v in _torch_table().items():
            if v == dt:
                return k
        raise IRError(f"torch dtype {dt} has no rtinfer dtype")


@functools.cache
def _torch_table() -> dict:
    import torch  # the IR itself needs no torch; only these conversions do

    return {d: getattr(torch, name) for d, name in (
        (DType.f64, "float64"), (DType.f32, "float32"), (DType.f16, "float16"),
        (DType.bf16, "bfloat16"), (DType.i64, "int64"), (DType.i32, "int32"),
        (DType.i16, "int16"), (DType.i8, "int8"), (DType.u8, "uint8"), (DType.u16, "uint16"),
        (DType.u32, "uint32"), (DType.u64, "uint64"), (DType.bool, "bool"))}


@functools.cache
def _bf16_numpy() -> np.dtype:
    # ml_dtypes is imported on first use: its import takes ~1 s (it registers its dtypes'
    # ufuncs), paid by every process that imports rtinfer (a serving replica, the CLI) even
    # when no bf16 array is ever made
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


# every dtype but bf16 (_bf16_numpy)
_TO_NUMPY: dict[DType, np.dtype] = {
    DType.f64: np.dtype(np.float64),
    DType.f32: np.dtype(np.float32),
    DType.f16: np.dtype(np.float16),
    DType.i64: np.dtype(np.int64),
    DType.i32: np.dtype(np.int32),
    DType.i16: np.dtype(np.int16),
    DType.i8: np.dtype(np.int8),
    DType.u8: np.dtype(np.uint8),
    DType.u16: np.dtype(np.uint16),
    DType.u32: np.dtype(np.uint32),
    DType.u64: np.dtype(np.uint64),
    DType.bool: np.dtype(np.bool_),
}

Dim = int | sympy.Expr

_SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIM_EXPR_RE = re.compile(r"^[A-Za-z0-9_*+\-/() ]+$")


def sym(name: str) -> sympy.Symbol:
    """A named symbolic dim (sizes are positive integers)."""
    if not _SYMBOL_RE.match(name):
        raise IRError(f"invalid symbolic dim name {name!r}")
    return sympy.Symbol(name, integer=True, positive=True)


def make_dim(d: int | str | sympy.Expr) -> Dim:
    """Normalize a dim: python/numpy ints and constant expressions become ``int``."""
    if isinstance(d, bool):
        raise IRError(f"invalid dim {d!r}")
    if isinstance(d, (int, np.integer)):
        if d < 0:
            raise IRError(f"negative dim {d}")
        return int(d)
    if isinstance(d, str):
        d = parse_dim(d)
    if isinstance(d, sympy.Expr):
        # sympy keeps sums and products canonical on construction (B*S/S is B), so no costly
        # simplify() here
        if d.is_Integer:
            return make_dim(int(d))
        if d.is_number:
            raise IRError(f"non-integer dim {d}")
        return d
    raise IRError(f"invalid dim {d!r} ({type(d).__name__})")


def parse_dim(text: str) -> Dim:
    """Parse a dim written in the text form: ``128``, ``B`` or an expression like ``B*S``."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if not text or not _DIM_EXPR_RE.match(text):
        raise IRError(f"invalid dim {text!r}")
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    local = {n: sym(n) for n in names}
    try:
        expr = sympy.sympify(text, locals=local)
    except (sympy.SympifyError, SyntaxError, TypeError) as e:
        raise IRError(f"invalid dim {text!r}: {e}") from None
    return make_dim(expr)


def dim_str(d: Dim) -> str:
    if isinstance(d, int):
        return str(d)
    s = str(d).replace(" ", "")
    return s


def dims_equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, int) or isinstance(b, int):
        return False
    return a == b or sympy.expand(a - b) == 0


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def numel(shape: tuple[Dim, ...]) -> Dim:
    n: Dim = 1
    for d in shape:
        n = n * d
    return make_dim(n)


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Affine quantization: ``real = scale * (q - zero_point)``.

    Per tensor when ``axis`` is None (``scale``/``zero_point`` are 0-d arrays), per channel along
    ``axis`` otherwise (1-d arrays, one entry per channel).
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def __post_init__(self) -> None:
        scale = np.asarray(self.scale, dtype=np.float32)
        zp = np.asarray(self.zero_point, dtype=np.int64)
        if self.axis is None:
            if scale.ndim != 0 or zp.ndim != 0:
                raise IRError("per-tensor quantization needs a scalar scale and zero point")
        else:
            if scale.ndim != 1 or zp.shape != scale.shape:
                raise IRError("per-channel quantization needs 1-d scale and zero point of one size")
        if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
            raise IRError("quantization scales must be finite and positive")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, QuantParams)
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def __hash__(self) -> int:
        return hash((self.axis, self.scale.tobytes(), self.zero_point.tobytes()))

    def __str__(self) -> str:
        def fmt(a: np.ndarray, f) -> str:
            if a.ndim == 0:
                return f(a.item())
            return "[" + ", ".join(f(x) for x in a.tolist()) + "]"

        parts = []
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        parts.append(f"scale={fmt(self.scale, lambda x: str(np.float32(x)))}")
        parts.append(f"zp={fmt(self.zero_point, lambda x: str(int(x)))}")
        return "q(" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class TensorType:
    """dtype + shape (+ quantization parameters for quantized integer tensors)."""

    dtype: DType
    shape: tuple[Dim, ...]
    quant: QuantParams | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, DType):
            object.__setattr__(self, "dtype", DType.parse(str(self.dtype)))
        object.__setattr__(self, "shape", tuple(make_dim(d) for d in self.shape))
        if self.quant is not None:
            if not self.dtype.is_int:
                raise IRError(f"quantization parameters on non-integer dtype {self.dtype}")
            if self.quant.axis is not None:
                ax = self.quant.axis
                if not -self.rank <= ax < self.rank:
                    raise IRError(f"quantization axis {ax} out of range for rank {self.rank}")
                n = self.shape[ax]
                if isinstance(n, int) and n != self.quant.scale.shape[0]:
                    raise IRError(
                        f"per-channel quantization has {self.quant.scale.shape[0]} scales "
                        f"for {n} channels"
                    )

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> Dim:
        return numel(self.shape)

    def with_shape(self, shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape), None)

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(dtype, self.shape, None)

    def symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for d in self.shape:
            if not isinstance(d, int):
                out |= d.free_symbols
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorType):
            return NotImplemented
        return (
            self.dtype == other.dtype
            and len(self.shape) == len(other.shape)
            and all(dims_equal(a, b) for a, b in zip(self.shape, other.shape, strict=True))
            and self.quant == other.quant
        )

    def __hash__(self) -> int:
        return hash((self.dtype, tuple(str(d) for d in self.shape)))

    def __str__(self) -> str:
        s = f"{self.dtype.value}[{','.join(dim_str(d) for d in self.shape)}]"
        if self.quant is not None:
            s += " " + str(self.quant)
        return s

    __repr__ = __str__

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        return TensorType(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))
