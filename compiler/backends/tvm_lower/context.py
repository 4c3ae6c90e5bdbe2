"""The TVM backend's lowering table and the context every lowering receives.

``LOWERINGS`` is one table, op name -> ``Lowering`` (filled by this package's family modules
with ``@lowers``). A lowering receives the context and the node's inputs as Relax expressions
(``None`` for a missing optional input; variadic inputs as one list) and the node's attributes
by name, and returns the Relax expression (or expressions) of its results; intermediate results
it binds with ``cx.emit``. A lowering that cannot handle a node's attributes raises
``rtinfer.errors.Unsupported`` (``cx.unsupported(reason)``); the node then falls back.

What the backend knows about an op's kernels is recorded on its entry, nowhere else:
``grouped`` (lowered inside a Relax function of its own) and ``slow_untuned``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sympy

from rtinfer.backends.registry import registrar
from rtinfer.errors import BackendError, Unsupported
from rtinfer.ir.graph import Node
from rtinfer.ir.types import Dim, DType, TensorType

F = TypeVar("F", bound=Callable[..., Any])


def require_tvm() -> Any:
    """TVM, imported on first use (importing it costs about a second)."""
    try:
        import tvm
        import tvm.relax  # noqa: F401  (the Relax submodules the backend uses)
    except ImportError as e:
        raise BackendError(f"the TVM backend needs apache-tvm (pip install apache-tvm): {e}"
                           ) from None
    return tvm


def relax_ops() -> Any:
    """``tvm.relax.op`` (imported on first use, as ``require_tvm``)."""
    from tvm.relax import op

    return op


TVM_DTYPES: dict[DType, str] = {
    DType.f64: "float64", DType.f32: "float32", DType.f16: "float16", DType.bf16: "bfloat16",
    DType.i64: "int64", DType.i32: "int32", DType.i16: "int16", DType.i8: "int8",
    DType.u8: "uint8", DType.u16: "uint16", DType.u32: "uint32", DType.u64: "uint64",
    DType.bool: "bool",
}

LowerFn = Callable[..., Any]


@dataclass(frozen=True)
class Lowering:
    """One op's entry: its lowering function and what the backend knows about its kernel."""

    fn: LowerFn
    # lowered inside a Relax function of its own marked Primitive, which FuseTIR makes one
    # kernel: the fused ops (rtinfer's fusion decision is kept), and the ops whose lowering adds
    # their bias after the base op (otherwise a second kernel, and a second tuning task)
    grouped: bool = False
    # untuned, its kernel (Relax's naive legalized loop nest) runs about 100x slower than
    # oneDNN's: ``backend="auto"`` does not pick TVM for a graph holding it
    slow_untuned: bool = False

    def __call__(self, cx: LowerContext, *args: Any, **attrs: Any) -> Any:
        return self.fn(cx, *args, **attrs)


LOWERINGS: dict[str, Lowering] = {}
# op -> why it has no lowering (it then runs in the torch backend)
UNSUPPORTED: dict[str, str] = {
    "interpolate": "Relax's resize2d/3d coordinate rules differ from torch's; not lowered yet",
    "resize": "ONNX Resize's coordinate modes and antialias have no Relax equivalent yet",
    "scaled_dot_product_attention": "Relax's attention takes [B, S, N, H]; not lowered yet",
    "multi_head_attention": "not lowered yet (its parts are: linear, reshape, attention)",
    "quantize": "int8 (QuantParams on types) is not lowered to TVM yet",
    "dequantize": "int8 (QuantParams on types) is not lowered to TVM yet",
    "qconv2d": "int8 convolution is not lowered to TVM yet (the native backend runs it)",
    "qlinear": "int8 linear is not lowered to TVM yet (the native backend runs it)",
    "qmatmul": "int8 matmul is not lowered to TVM yet (the native backend runs it)",
    "qlinear_dynamic": "dynamic int8 linear is not lowered to TVM yet (the native backend "
                       "runs it)",
    **dict.fromkeys(("bf16_conv2d", "bf16_linear", "bf16_matmul"),
                    "bf16 compute is not lowered to TVM yet (the native and torch backends run "
                    "it)"),
    "hardmax": "argmax + one_hot: not lowered yet",
    "aten_call": "an ATen op the op table lacks: torch runs it as captured",
}

_register = registrar(LOWERINGS, "lowering")


def lowers(*names: str, grouped: bool = False, slow_untuned: bool = False
           ) -> Callable[[F], F]:
    """Register a lowering function for ``names`` (an op given two is an error at import),
    with the facts about its kernel (``Lowering``)."""
    def deco(fn: F) -> F:
        _register(*names)(Lowering(fn, grouped, slow_untuned))
        return fn
    return deco


def lower_table(fns: dict[str, LowerFn], *, grouped: bool = False,
                slow_untuned: bool = False) -> None:
    """``lowers`` for each (op, function) of ``fns``."""
    for name, fn in fns.items():
        lowers(name, grouped=grouped, slow_untuned=slow_untuned)(fn)


@dataclass
class LowerContext:
    """What a lowering can see: the block builder, the IR node and its types, the symbols."""

    bb: Any  # relax.BlockBuilder (the current function's)
    symbols: dict[sympy.Symbol, Any] = field(default_factory=dict)  # -> tirx.Var
    node: Node | None = None

    @property
    def in_types(self) -> list[TensorType]:
        return [v.type for v in self.node.inputs]

    @property
    def out_types(self) -> list[TensorType]:
        return [v.type for v in self.node.outputs]

    def unsupported(self, reason: str) -> Unsupported:
        """The error a lowering raises to decline the current node (it then falls back)."""
        return Unsupported(self.node.op, reason, self.node.name)

    def emit(self, expr: Any) -> Any:
        return self.bb.emit(expr)

    def const(self, value: Any, dtype: DType | str) -> Any:
        from tvm import relax

        dt = TVM_DTYPES[dtype] if isinstance(dtype, DType) else dtype
        return relax.const(value, dt)

    def scalar(self, v: float) -> Any:
        """A constant of the node's first input dtype."""
        return self.const(v, self.in_types[0].dtype)

    def dim(self, d: Dim) -> Any:
        """A dim as a TIR expression over the symbols' variables."""
        return _prim(self, sympy.sympify(d))

    def shape(self, dims: Sequence[Dim]) -> list[Any]:
        return [self.dim(d) for d in dims]

    def tensor_type(self, t: TensorType) -> Any:
        from tvm import relax

        return relax.TensorType(self.shape(t.shape), TVM_DTYPES[t.dtype])

    def static(self, t: TensorType, what: str) -> tuple[int, ...]:
        if not t.is_static:
            raise self.unsupported(f"{what} needs a static shape, got {t}")
        return tuple(int(d) for d in t.shape)


def _prim(cx: LowerContext, e: sympy.Expr) -> Any:
    from tvm import tirx

    if e.is_Integer:
        return tirx.IntImm("int64", int(e))
    if e.is_Symbol:
        if e not in cx.symbols:
            raise cx.unsupported(f"symbolic dim {e} is not the size of any input axis")
        return cx.symbols[e]
    if e.is_Add or e.is_Mul:
        return functools.reduce(operator.add if e.is_Add else operator.mul,
                                [_prim(cx, a) for a in e.args])
    if e.is_Pow and e.exp.is_Integer and e.exp > 0:
        return functools.reduce(operator.mul, [_prim(cx, e.base)] * int(e.exp))
    if isinstance(e, sympy.floor):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        if den.is_Integer:
            return tirx.floordiv(_prim(cx, sympy.expand(num)), int(den))
    raise cx.unsupported(f"symbolic dim {e} has no TIR form")


__all__ = ["LOWERINGS", "TVM_DTYPES", "UNSUPPORTED", "LowerContext", "LowerFn", "Lowering",
           "lower_table", "lowers", "relax_ops", "require_tvm"]
