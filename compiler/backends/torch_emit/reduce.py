"""Emitters of the reductions, scans and top-k."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rtinfer.backends.torch_emit.context import EMITTERS, EmitContext, Emitter, emits


def _reduce_dims(cx: EmitContext, axes) -> list[int]:
    rank = cx.in_types[0].rank
    if rank == 0:  # axis 0 of a 0-d tensor: nothing to reduce
        return []
    return sorted(a % rank for a in axes) if axes else list(range(rank))


def _reduction(fn: Callable, keep_dtype: bool) -> Emitter:
    def emit(cx: EmitContext, x, axes, keepdims):
        dims = _reduce_dims(cx, axes)
        if not dims:
            return x
        kw = {"dtype": cx.in_types[0].dtype.torch} if keep_dtype else {}
        return fn(x, dims, keepdim=keepdims, **kw)
    return emit


@emits("reduce_prod")
def _reduce_prod(cx: EmitContext, x, axes, keepdims):
    dtype = cx.in_types[0].dtype.torch
    for d in sorted(_reduce_dims(cx, axes), reverse=True):
        x = torch.prod(x, d, keepdim=keepdims, dtype=dtype)
    return x


EMITTERS.update({
    "reduce_sum": _reduction(torch.sum, keep_dtype=True),
    "reduce_mean": _reduction(torch.mean, keep_dtype=False),
    "reduce_max": _reduction(torch.amax, keep_dtype=False),
    "reduce_min": _reduction(torch.amin, keep_dtype=False),
    "argmax": lambda cx, x, axis, keepdims: torch.argmax(x, axis, keepdim=keepdims),
    "argmin": lambda cx, x, axis, keepdims: torch.argmin(x, axis, keepdim=keepdims),
    "cumsum": lambda cx, x, axis: torch.cumsum(x, axis, dtype=cx.in_types[0].dtype.torch),
    "cumprod": lambda cx, x, axis: torch.cumprod(x, axis,
                                                 dtype=cx.in_types[0].dtype.torch),
})


@emits("topk")
def _topk(cx: EmitContext, x, k, axis, largest, sorted):
    # a stable sort keeps ties in index order: the lower index wins, as ONNX TopK
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return [values.narrow(axis, 0, k), indices.narrow(axis, 0, k)]
