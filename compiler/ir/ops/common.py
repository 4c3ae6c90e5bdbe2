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
    return torch.from_numpy(np.ascontiguousarray(a))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().contiguous().numpy()
