"""Lowerings of the shape and data-movement ops: reshapes, transposes, slices, gathers and
scatters, padding."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from rtinfer.backends.tvm_lower.context import LowerContext, lower_table, lowers, relax_ops
from rtinfer.ir.ops.shape import check_indices, slice_params, slice_range
from rtinfer.ir.types import DType


def _to_out_shape(cx: LowerContext, x: Any, *_: Any, **__: Any) -> Any:
    """reshape, flatten, squeeze, unsqueeze: a reshape to the inferred output shape."""
    return relax_ops().reshape(x, cx.shape(cx.out_types[0].shape))


lowers("reshape", "flatten", "squeeze", "unsqueeze")(_to_out_shape)


@lowers("transpose")
def _transpose(cx: LowerContext, x, perm):
    return relax_ops().permute_dims(x, list(perm) if perm else None)


@lowers("expand")
def _expand(cx: LowerContext, x, shape):
    return relax_ops().broadcast_to(x, cx.shape(cx.out_types[0].shape))


@lowers("split")
def _split(cx: LowerContext, x, axis, sizes):
    from tvm import relax

    indices = list(itertools.accumulate(sizes))[:-1]
    parts = cx.emit(relax_ops().split(x, indices, axis))
    return [relax.TupleGetItem(parts, i) for i in range(len(sizes))]


@lowers("slice")
def _slice(cx: LowerContext, x, starts, ends, axes, steps):
    R = relax_ops()
    t = cx.in_types[0]
    for axis, start, end, step in slice_params(t.rank, dict(starts=starts, ends=ends,
                                                              axes=axes, steps=steps)):
        d = t.shape[axis]
        if not isinstance(d, int):
            raise cx.unsupported(f"slice of the symbolic axis {axis}")
        s, e, n = (int(v) for v in slice_range(d, start, end, step))
        index = cx.const(np.arange(s, s + n * step, step, dtype=np.int64)[:n], DType.i64)
        x = cx.emit(R.take(x, index, axis))
    return x


def _checked_indices(cx: LowerContext, axis: int, negative: bool) -> None:
    """TVM's take and gather_elements cannot report an index outside its axis (take wraps it,
    gather_elements reads out of bounds), where eager raises IndexError: constant indices are
    checked here, once; run-time ones leave the node to the torch fallback, which checks them."""
    node = cx.node
    idx = node.inputs[1]
    if not idx.is_const:
        raise cx.unsupported("run-time indices: TVM cannot report an index outside the axis, "
                             "eager raises IndexError")
    size = node.inputs[0].type.shape[axis]
    if not isinstance(size, int):
        raise cx.unsupported(f"indices into the symbolic axis {axis}")
    check_indices(node.op, np.asarray(idx.const_data), size, negative)


@lowers("gather")
def _gather(cx: LowerContext, x, indices, axis, negative_indices=True):
    axis = axis % cx.in_types[0].rank
    _checked_indices(cx, axis, negative_indices)
    return relax_ops().take(x, indices, axis, mode="wrap")  # wrap: negatives count from the end


@lowers("embedding")
def _embedding(cx: LowerContext, weight, indices):
    _checked_indices(cx, 0, False)
    return relax_ops().take(weight, indices, 0, mode="wrap")


@lowers("gather_elements")
def _gather_elements(cx: LowerContext, x, indices, axis, negative_indices=True):
    axis = axis % cx.in_types[0].rank
    _checked_indices(cx, axis, negative_indices)
    if negative_indices and (np.asarray(cx.node.inputs[1].const_data) < 0).any():
        raise cx.unsupported("negative constant indices (TVM's gather_elements reads them "
                             "out of bounds)")
    return relax_ops().gather_elements(x, indices, axis)


lower_table({
    "concat": lambda cx, xs, axis: relax_ops().concat(xs, axis),
    "tile": lambda cx, x, repeats: relax_ops().tile(x, list(repeats)),
})


_SCATTER_REDUCTIONS = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def _scatter_reduction(cx: LowerContext, reduction: str) -> str:
    if reduction not in _SCATTER_REDUCTIONS:
        raise cx.unsupported(f"scatter reduction {reduction}")
    return _SCATTER_REDUCTIONS[reduction]


lower_table({
    "gather_nd": lambda cx, x, indices, batch_dims: relax_ops().gather_nd(x, indices,
                                                                          batch_dims),
    "scatter_elements": lambda cx, x, indices, updates, axis, reduction: (
        relax_ops().scatter_elements(x, indices, updates, axis,
                                     _scatter_reduction(cx, reduction))),
    "scatter_nd": lambda cx, x, indices, updates, reduction: relax_ops().scatter_nd(
        x, indices, updates, _scatter_reduction(cx, reduction)),
})


@lowers("pad")
def _pad(cx: LowerContext, x, pads, mode, value):
    rank = cx.in_types[0].rank
    if mode != "constant":
        raise cx.unsupported(f"pad mode {mode}")
    width = [p for i in range(rank) for p in (pads[i], pads[rank + i])]
    return relax_ops().nn.pad(x, width, "constant", value)


@lowers("shape")
def _shape(cx: LowerContext, x):
    shape = cx.static(cx.in_types[0], "shape")
    return cx.const(np.array(shape, np.int64), DType.i64)
