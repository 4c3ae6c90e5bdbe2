"""Emitters of the shape and data-movement ops: reshapes, transposes, slices, gathers and
scatters, padding, tiling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.fx.proxy import Proxy

from rtinfer.backends.torch_emit.context import EMITTERS, EmitContext, emits, torch_pads
from rtinfer.ir.ops.shape import SLICE_END_MAX, check_indices, slice_params, slice_range
from rtinfer.ir.types import Dim


def _target_shape(cx: EmitContext, shape: Sequence[Dim]) -> list[int | Proxy]:
    """A reshape target: ints as they are, and a single unknown entry as -1."""
    unknown = [i for i, d in enumerate(shape) if not isinstance(d, int) or d < 0]
    if len(unknown) <= 1:
        return [-1 if i in unknown else int(d) for i, d in enumerate(shape)]
    return [d if isinstance(d, int) else cx.dim(d) for d in shape]


@emits("reshape")
def _reshape(cx: EmitContext, x, shape):
    return x.reshape(_target_shape(cx, shape))


@emits("flatten")
def _flatten(cx: EmitContext, x, axis, end_axis):
    rank = cx.in_types[0].rank
    if rank == 0:
        return x.reshape(1)
    return torch.flatten(x, axis % rank, end_axis % rank)


@emits("squeeze")
def _squeeze(cx: EmitContext, x, axes):
    t = cx.in_types[0]
    drop = [a % t.rank for a in axes] if axes else [i for i, d in enumerate(t.shape) if d == 1]
    return torch.squeeze(x, tuple(drop)) if drop else x


@emits("unsqueeze")
def _unsqueeze(cx: EmitContext, x, axes):
    rank = cx.in_types[0].rank + len(axes)
    for a in sorted(a % rank for a in axes):
        x = torch.unsqueeze(x, a)
    return x


@emits("transpose")
def _transpose(cx: EmitContext, x, perm):
    rank = cx.in_types[0].rank
    return x.permute(tuple(p % rank for p in perm) if perm else tuple(reversed(range(rank))))


@emits("expand")
def _expand(cx: EmitContext, x, shape):
    t = cx.in_types[0]
    out = cx.out_types[0].shape
    lead = len(shape) - t.rank
    target = []
    for j, d in enumerate(out):
        same = j >= lead and t.shape[j - lead] == d
        target.append(-1 if same else cx.dim(d))
    return x.expand(target)


EMITTERS["concat"] = lambda cx, xs, axis: torch.cat(xs, axis)


@emits("split")
def _split(cx: EmitContext, x, axis, sizes):
    axis = axis % cx.in_types[0].rank
    parts = torch.split(x, [cx.dim(t.shape[axis]) for t in cx.out_types], axis)
    return [parts[i] for i in range(len(cx.out_types))]


@emits("slice")
def _slice(cx: EmitContext, x, starts, ends, axes, steps):
    t = cx.in_types[0]
    for axis, start, end, step in slice_params(t.rank, dict(starts=starts, ends=ends, axes=axes,
                                                             steps=steps)):
        d = t.shape[axis]
        idx: list[Any] = [slice(None)] * t.rank
        if isinstance(d, int):  # exact ONNX clamping
            s, e, n = (int(v) for v in slice_range(d, start, end, step))
            if step < 0:  # torch has no negative steps: flip, then slice forward
                x, s, step = torch.flip(x, (axis,)), d - 1 - s, -step
            idx[axis] = slice(s, s + (n - 1) * step + 1 if n else s, step)
        else:  # indices assumed in range (as the op table infers the length)
            start = None if abs(start) >= SLICE_END_MAX else start
            end = None if abs(end) >= SLICE_END_MAX else end
            if step < 0:  # element i of the flipped axis is element d-1-i
                x, step = torch.flip(x, (axis,)), -step
                start = None if start is None else -1 - start
                end = None if end is None else -1 - end
            idx[axis] = slice(start, end, step)
        x = x[tuple(idx)]
    return x


def _normalize_index(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


def _checked_index(idx: torch.Tensor, x: torch.Tensor, axis: int, negative: bool,
                   where: str) -> torch.Tensor:
    """``idx`` as int64 in [0, n) for x's ``axis`` of size n, negative indices counted from the
    end where ``negative`` allows them; any index outside the op's range raises
    ``IndexOutOfRangeError`` naming ``where`` and the index (eager raises IndexError: ATen
    would wrap a negative one or fail with its own message)."""
    idx = idx.long()
    size = x.shape[axis]
    if torch.compiler.is_compiling():
        # traced (torch.export of a module built here, as rtinfer.compile of a PrunedModel
        # does; Dynamo): no data-dependent check to trace; the graph captured from it checks
        # its indices itself
        return torch.where(idx < 0, idx + size, idx) if negative else idx
    if idx.numel():
        lo, hi = torch.aminmax(idx)
        if int(lo) < (-size if negative else 0) or int(hi) >= size:
            check_indices(where, idx.numpy(), size, negative)
        if negative and int(lo) < 0:
            idx = torch.where(idx < 0, idx + size, idx)
    return idx


def _where(cx: EmitContext) -> str:
    """The node, for an index error: ``embedding %tok (torch:emb (aten.embedding.default))``."""
    node = cx.node
    out = node.outputs[0].name if node.outputs else None
    label = node.name or (f"{node.op} %{out}" if out else node.op)
    where = str(node.provenance) if node.provenance else ""
    return f"{label} ({where})" if where else label


@emits("gather")
def _gather(cx: EmitContext, x, indices, axis, negative_indices=True):
    axis = axis % cx.in_types[0].rank
    idx = cx.call(_checked_index, indices, x, axis, negative_indices, _where(cx))
    return x[(slice(None),) * axis + (idx,)]


@emits("gather_elements")
def _gather_elements(cx: EmitContext, x, indices, axis, negative_indices=True):
    axis = axis % cx.in_types[0].rank
    return torch.gather(x, axis,
                        cx.call(_checked_index, indices, x, axis, negative_indices, _where(cx)))


@emits("embedding")
def _embedding(cx: EmitContext, weight, indices):
    return weight[cx.call(_checked_index, indices, weight, 0, False, _where(cx))]


def _gather_nd(x: torch.Tensor, indices: torch.Tensor, batch_dims: int) -> torch.Tensor:
    b, k = batch_dims, indices.shape[-1]
    n = math.prod(x.shape[:b])
    xs = x.reshape((n,) + tuple(x.shape[b:]))
    ids = indices.long().reshape((n,) + tuple(indices.shape[b:]))
    batch = torch.arange(n).reshape((n,) + (1,) * (ids.dim() - 2))
    out = xs[(batch,) + tuple(ids.unbind(-1))]
    return out.reshape(tuple(indices.shape[:-1]) + tuple(x.shape[b + k:]))


EMITTERS["gather_nd"] = lambda cx, x, indices, batch_dims: cx.call(_gather_nd, x, indices,
                                                                   batch_dims)

_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _scatter_elements(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, axis: int,
                      reduction: str) -> torch.Tensor:
    idx = _normalize_index(indices, x.shape[axis])
    if reduction == "none":
        return torch.scatter(x, axis, idx, updates)
    return torch.scatter_reduce(x, axis, idx, updates, _SCATTER_REDUCE[reduction])


def _scatter_nd(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor,
                reduction: str) -> torch.Tensor:
    k = indices.shape[-1]
    lead, rest = tuple(x.shape[:k]), tuple(x.shape[k:])
    lin = torch.zeros(indices.shape[:-1], dtype=torch.long)
    for j in range(k):  # row-major linear index into the first k axes
        lin = lin * lead[j] + _normalize_index(indices[..., j], lead[j])
    xf = x.reshape((math.prod(lead),) + rest)
    upd = updates.reshape((-1,) + rest)
    idx = lin.reshape((-1,) + (1,) * len(rest)).expand(upd.shape)
    if reduction == "none":
        out = torch.scatter(xf, 0, idx, upd)
    else:
        out = torch.scatter_reduce(xf, 0, idx, upd, _SCATTER_REDUCE[reduction])
    return out.reshape(x.shape)


EMITTERS.update({
    "scatter_elements": lambda cx, x, indices, updates, axis, reduction: cx.call(
        _scatter_elements, x, indices, updates, axis % cx.in_types[0].rank, reduction),
    "scatter_nd": lambda cx, x, indices, updates, reduction: cx.call(
        _scatter_nd, x, indices, updates, reduction),
})


def _pad_index(size: int, lo: int, hi: int, mode: str) -> torch.Tensor:
    return torch.from_numpy(np.pad(np.arange(size), (lo, hi), mode=mode))


def _pad_by_index(x: torch.Tensor, pads: tuple[int, ...], mode: str) -> torch.Tensor:
    """reflect / edge padding of any axes, as a gather along each padded axis."""
    rank = x.dim()
    for ax in range(rank):
        lo, hi = pads[ax], pads[rank + ax]
        if lo or hi:
            x = x.index_select(ax, _pad_index(x.shape[ax], lo, hi, mode))
    return x


@emits("pad")
def _pad(cx: EmitContext, x, pads, mode, value):
    if mode != "constant":
        return cx.call(_pad_by_index, x, tuple(pads), mode)
    dtype = cx.in_types[0].dtype
    value = value if dtype.is_float else int(value)
    return F.pad(x, torch_pads(pads), value=value)


EMITTERS["tile"] = lambda cx, x, repeats: x.repeat(tuple(repeats))


def _shape_of(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.shape, dtype=torch.int64)


EMITTERS["shape"] = lambda cx, x: cx.call(_shape_of, x)
