"""Shared helpers for op declarations: broadcasting, axis handling, numpy/torch glue."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rtinfer.errors import IRError
from rtinfer.ir.types import Dim, DType, TensorType, dims_equal, make_dim


def broadcast_shapes(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """Numpy broadcasting over possibly symbolic dims (a symbolic dim broadcasts with 1 or
    itself only)."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        d: Dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j < 0:
                continue
            e = s[j]
            if e == 1:
                continue
            if d == 1:
                d = e
            elif not dims_equal(d, e):
                raise IRError(f"shapes {fmt_shapes(shapes)} do not broadcast (dim {i}: {d} vs {e})")
        out.append(d)
    return tuple(out)


def fmt_shapes(shapes) -> str:
    return ", ".join("[" + ",".join(str(d) for d in s) + "]" for s in shapes)


def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise IRError(f"{what} {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def norm_axes(axes: Sequence[int], rank: int) -> tuple[int, ...]:
    out = tuple(sorted(norm_axis(a, rank) for a in axes))
    if len(set(out)) != len(out):
        raise IRError(f"repeated axis in {list(axes)}")
    return out


def same_dtype(types: Sequence[TensorType], what: str = "inputs") -> DType:
    dts = {t.dtype for t in types}
    if len(dts) != 1:
        raise IRError(f"{what} must share one dtype, got {', '.join(sorted(str(d) for d in dts))}")
    return types[0].dtype


def need_float(t: TensorType, what: str = "input") -> None:
    if not t.dtype.is_float:
        raise IRError(f"{what} must be a float tensor, got {t.dtype}")


def need_rank(t: TensorType, ranks: int | Sequence[int], what: str = "input") -> None:
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if t.rank not in ranks:
        raise IRError(f"{what} must have rank {' or '.join(map(str, ranks))}, got {t}")


def need_dims_equal(a: Dim, b: Dim, what: str) -> None:
    if not dims_equal(a, b):
        raise IRError(f"{what}: {a} != {b}")


def conv_out_dim(size: Dim, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int,
                 ceil_mode: bool = False) -> Dim:
    """Output length of a convolution/pooling window along one axis."""
    span = dilation * (k - 1) + 1
    num = size + pad_lo + pad_hi - span
    if isinstance(num, int):
        if num < 0:
            raise IRError(f"window of size {span} does not fit an input of size {size} "
                          f"padded by {pad_lo}+{pad_hi}")
        q = -(-num // stride) if ceil_mode else num // stride
        if ceil_mode and (q * stride) >= size + pad_lo:
            q -= 1  # the last window must start inside the input or left padding
        return q + 1
    import sympy

    f = sympy.ceiling if ceil_mode else sympy.floor
    return make_dim(f(num / stride) + 1)


def to_torch(a: np.ndarray | None) -> torch.Tensor | None:
    """numpy -> torch for reference implementations that lean on torch (conv, pooling)."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    if not a.flags.writeable or not a.flags.c_contiguous:  # torch warns on read-only arrays
        a = a.copy()  # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
    return torch.from_numpy(a)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().contiguous().numpy()


# -- helpers for the op modules ---------------------------------------------------------------

HALF_DTYPES = ("float16", "bfloat16")


def compute_dtype(a: np.ndarray) -> np.dtype:
    """The dtype a reference computes in: f16/bf16 are upcast to f32 (as torch's CPU kernels
    accumulate), everything else computes in its own dtype."""
    return np.dtype(np.float32) if a.dtype.name in HALF_DTYPES else a.dtype


def upcast(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a).astype(compute_dtype(np.asarray(a)), copy=False)


def torch_float(a: np.ndarray | None) -> torch.Tensor | None:
    """numpy -> torch, upcasting f16/bf16 to f32 (torch's CPU kernels lack some half paths)."""
    return to_torch(upcast(a))


def need_no_quant(types: Sequence[TensorType], what: str = "inputs") -> None:
    if any(t.quant is not None for t in types):
        raise IRError(f"{what} are quantized; dequantize first (this op computes on real values)")


def need_numeric(t: TensorType, what: str = "input") -> None:
    if t.dtype is DType.bool:
        raise IRError(f"{what} must be numeric, got bool")


def need_static(d: Dim, what: str) -> int:
    if not isinstance(d, int):
        raise IRError(f"{what} must be static, got {d}")
    return d


def expand_ints(vals: Sequence[int], n: int, what: str) -> tuple[int, ...]:
    """An ``ints`` attribute given once for all ``n`` spatial axes, or once per axis."""
    vals = tuple(vals)
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        raise IRError(f"{what} needs 1 or {n} values, got {list(vals)}")
    return vals


def expand_pads(pads: Sequence[int], n: int, what: str = "pad") -> tuple[int, ...]:
    """Pads in ONNX layout ``[begin_0, ..., begin_n-1, end_0, ..., end_n-1]``; one value pads
    every side, ``n`` values pad both sides of each axis alike."""
    pads = tuple(pads)
    if len(pads) == 1:
        pads = pads * (2 * n)
    elif len(pads) == n:
        pads = pads + pads
    elif len(pads) != 2 * n:
        raise IRError(f"{what} needs 1, {n} or {2 * n} values (begins then ends), got {list(pads)}")
    if any(p < 0 for p in pads):
        raise IRError(f"{what} must be non-negative, got {list(pads)}")
    return pads


def prefix_axis_map(src: Sequence[Dim], dst: Sequence[Dim]) -> dict[int, int]:
    """Axes a row-major reshape from ``src`` to ``dst`` leaves intact: ``i -> j`` when both have
    the same size and the same number of elements before them (so element ``(.., c, ..)`` of
    axis ``i`` lands at index ``c`` of axis ``j``). Size-1 axes carry nothing and are left out."""
    def prefixes(shape):
        out, p = [], 1
        for d in shape:
            out.append(make_dim(p))
            p = p * d
        return out

    ps, pd = prefixes(src), prefixes(dst)
    found: dict[int, int] = {}
    for i, (d, p) in enumerate(zip(src, ps, strict=True)):
        if d == 1:
            continue
        for j, (e, q) in enumerate(zip(dst, pd, strict=True)):
            if dims_equal(d, e) and dims_equal(p, q):
                found[i] = j
                break
    return found


def concrete_shape(shape: Sequence[Dim], size: int, what: str = "shape") -> tuple[int, ...]:
    """A target shape for a reference implementation: ints and ``-1`` pass through, and a single
    symbolic entry is solved from the element count ``size``. More than one unknown needs the
    caller to substitute bound symbols first (``subs_dims``)."""
    unknown = [i for i, d in enumerate(shape) if not isinstance(d, int) or d < 0]
    if len(unknown) > 1:
        raise IRError(f"{what} {list(shape)} has {len(unknown)} unknown dims; substitute the "
                      f"symbols' values (subs_dims) before evaluating")
    return tuple(-1 if i in unknown else int(d) for i, d in enumerate(shape))


def subs_dims(value, env: dict) -> object:
    """Substitute symbol values (``{Symbol or name: int}``) into a dim, a shape, or any nested
    list/tuple of them; non-dims pass through. Interpreters use this on ``shape`` attributes."""
    import sympy

    if isinstance(value, sympy.Expr):
        names = {str(k): v for k, v in env.items()}
        out = value.subs({s: names[s.name] for s in value.free_symbols if s.name in names})
        return make_dim(out)
    if isinstance(value, (list, tuple)):
        return type(value)(subs_dims(v, env) for v in value)
    return value
