"""Converters of the shape and data-movement ATen ops: views, permutes, concatenation, slicing,
indexing, padding."""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy

from rtinfer.errors import CaptureError
from rtinfer.frontends.torch_frontend.context import Ctx, aten, converts, norm_axes, norm_axis
from rtinfer.frontends.torch_frontend.creation import iota
from rtinfer.ir.graph import Value
from rtinfer.ir.types import DType, make_dim

# -- shapes -----------------------------------------------------------------------------------


@converts("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def _view(cx: Ctx, self: Value, size: Any = None, shape: Any = None) -> Value:
    dims = size if size is not None else shape
    out = []
    for d in dims:
        d = cx.dim(d)
        out.append(-1 if isinstance(d, int) and d < 0 else d)
    if -1 in out:  # torch knows the size: use it unless symbolic elsewhere
        out = list(cx.out_shape)
    return cx.op("reshape", self, shape=out)


@converts("aten.as_strided.default")
def _as_strided(cx: Ctx, self: Value, size: Any, stride: Any, storage_offset: Any = 0) -> Value:
    # only the reshape case: a contiguous input viewed with contiguous strides
    size = [cx.dim(d) for d in size]
    want, acc = [], 1
    for d in reversed(size):
        want.append(acc)
        acc = acc * d
    want.reverse()
    src = cx.node.args[0].meta.get("val")
    ok = (storage_offset in (0, None) and src is not None and src.is_contiguous()
          and all(d == 1 or cx.dim(st) == w for d, st, w in zip(size, stride, want, strict=True))
          and sympy.simplify(sympy.sympify(acc) - sympy.sympify(self.type.numel)) == 0)
    if not ok:
        raise CaptureError(f"as_strided with strides {list(stride)} (not a plain reshape) is not "
                           "supported")
    return cx.op("reshape", self, shape=size)


@converts("aten.permute.default")
def _permute(cx: Ctx, self: Value, dims: Any) -> Value:
    return cx.op("transpose", self, perm=norm_axes(dims, self.type.rank))


@converts("aten.transpose.int")
def _transpose(cx: Ctx, self: Value, dim0: int, dim1: int) -> Value:
    perm = list(range(self.type.rank))
    a, b = norm_axis(dim0, self.type.rank), norm_axis(dim1, self.type.rank)
    perm[a], perm[b] = perm[b], perm[a]
    return cx.op("transpose", self, perm=perm)


@converts("aten.t.default", "aten.numpy_T.default")
def _t(cx: Ctx, self: Value) -> Value:
    return self if self.type.rank < 2 else cx.op("transpose", self)


@converts("aten.expand.default")
def _expand(cx: Ctx, self: Value, size: Any, implicit: bool = False) -> Value:
    shape = [cx.dim(d) for d in size]
    shape = [-1 if isinstance(d, int) and d < 0 else d for d in shape]
    return cx.op("expand", self, shape=shape)


@converts("aten.unsqueeze.default")
def _unsqueeze(cx: Ctx, self: Value, dim: int) -> Value:
    return cx.op("unsqueeze", self, axes=[norm_axis(dim, self.type.rank + 1)])


@converts("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(cx: Ctx, self: Value, dim: Any = None) -> Value:
    if self.type.rank == 0:  # dim 0 (or -1) of a 0-d tensor: nothing to squeeze
        return self
    axes = [a for a in norm_axes(dim, self.type.rank) if self.type.shape[a] == 1]
    return cx.op("squeeze", self, axes=axes) if axes else self


@converts("aten.flatten.using_ints")
def _flatten(cx: Ctx, self: Value, start_dim: int = 0, end_dim: int = -1) -> Value:
    if self.type.rank == 0:
        return cx.op("reshape", self, shape=[1])
    return cx.op("flatten", self, axis=start_dim, end_axis=end_dim)


@converts("aten.cat.default", "aten.concat.default")
def _cat(cx: Ctx, tensors: list, dim: int = 0) -> Value:
    dt = cx.out_dtype
    xs = [cx.cast(t, dt) for t in tensors if t.type.rank != 1 or t.type.shape[0] != 0]
    return xs[0] if len(xs) == 1 else cx.op("concat", *xs, axis=dim)


@converts("aten.stack.default")
def _stack(cx: Ctx, tensors: list, dim: int = 0) -> Value:
    ax = norm_axis(dim, tensors[0].type.rank + 1)
    xs = [cx.op("unsqueeze", t, axes=[ax]) for t in tensors]
    return xs[0] if len(xs) == 1 else cx.op("concat", *xs, axis=ax)


@converts("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default",
          "aten.unbind.int", "aten.unsafe_split.Tensor")
def _split(cx: Ctx, self: Value, split_size: Any = None, split_sizes: Any = None,
           chunks: Any = None, dim: int = 0) -> list[Value]:
    vals = cx.node.meta["val"]
    ax = norm_axis(dim, self.type.rank)
    sizes = [int(cx.dim(v.shape[ax])) for v in vals]
    if cx.node.target is aten.unbind.int:
        parts = cx.ops("split", self, axis=ax, sizes=[1] * len(vals))
        return [cx.op("squeeze", p, axes=[ax]) for p in parts]
    if len(sizes) == 1:
        return [self]
    return cx.ops("split", self, axis=ax, sizes=sizes)


@converts("aten.slice.Tensor")
def _slice(cx: Ctx, self: Value, dim: int = 0, start: Any = None, end: Any = None,
           step: int = 1) -> Value:
    ax = norm_axis(dim, self.type.rank)
    start = 0 if start is None else cx.dim(start)
    end = 2**63 - 1 if end is None else cx.dim(end)
    if not isinstance(start, int) or not isinstance(end, int):
        if start == 0 and end == self.type.shape[ax] and step == 1:
            return self
        if not isinstance(start, int):
            raise CaptureError(f"slice with a symbolic start ({start}) is not supported")
        # x[start:end:step] with symbolic end = gather(x, start + step * arange(n)) along ax
        n = cx.out_shape[ax]
        idx = iota(cx, n, DType.i64)
        if step != 1:
            idx = cx.op("mul", idx, cx.scalar(step, DType.i64))
        if start != 0:
            idx = cx.op("add", idx, cx.scalar(start, DType.i64))
        return cx.op("gather", self, idx, axis=ax)
    if start == 0 and end >= 2**62 and step == 1:
        return self
    end = min(end, 2**62)
    return cx.op("slice", self, starts=[start], ends=[end], axes=[ax], steps=[step])


@converts("aten.select.int")
def _select(cx: Ctx, self: Value, dim: int, index: Any) -> Value:
    ax = norm_axis(dim, self.type.rank)
    index = cx.dim(index)
    end = index + 1 if index != -1 else 2**62
    s = cx.op("slice", self, starts=[index], ends=[end], axes=[ax], steps=[1])
    return cx.op("squeeze", s, axes=[ax])


@converts("aten.index_select.default")
def _index_select(cx: Ctx, self: Value, dim: int, index: Value) -> Value:
    # eager index_select raises IndexError for a negative index (x[idx] counts from the end)
    if self.type.rank == 0:  # a 0-d tensor reads as one element along dim 0 (or -1)
        flat = cx.op("reshape", self, shape=[1])
        y = cx.op("gather", flat, cx.op("reshape", index, shape=[-1]), axis=0,
                  negative_indices=False)
        return cx.op("reshape", y, shape=list(cx.out_shape))
    return cx.op("gather", self, index, axis=norm_axis(dim, self.type.rank),
                 negative_indices=False)


@converts("aten.index.Tensor")
def _index(cx: Ctx, self: Value, indices: list) -> Value:
    used = [i for i, v in enumerate(indices) if v is not None]
    if any(indices[i].type.dtype is DType.bool for i in used):
        raise CaptureError("boolean-mask indexing (data-dependent shape) is not supported")
    if used != list(range(used[0], used[-1] + 1)):
        raise CaptureError("advanced indexing with non-adjacent index tensors is not supported")
    a = used[0]
    if len(used) == 1:
        return cx.op("gather", self, indices[a], axis=a)
    # adjacent index tensors on axes a..b: flatten those axes and gather one linear index,
    #   x[..., i, j, ...] = reshape(x, [..., d_a*d_b, ...])[..., i * d_b + j, ...]
    shape = list(self.type.shape)
    lin = None
    stride = 1
    dims = None
    for ax in reversed(used):
        idx = cx.cast(indices[ax], DType.i64)
        if isinstance(shape[ax], int):
            # each index counts from the end of its own axis and must lie in it, as in eager
            # (an index past its axis would otherwise land in the next row of the flat one):
            # gathering from arange(d) normalizes [-d, d) and raises IndexError outside it
            idx = cx.op("gather", cx.const(np.arange(shape[ax], dtype=np.int64)), idx, axis=0)
        if isinstance(stride, int):
            term = idx if stride == 1 else cx.op("mul", idx, cx.scalar(stride, DType.i64))
        else:  # a symbolic stride is read off the input's shape at run time
            dims = dims or cx.op("shape", self)
            st = None
            for b in range(ax + 1, used[-1] + 1):
                d = cx.op("slice", dims, starts=[b], ends=[b + 1])
                st = d if st is None else cx.op("mul", st, d)
            term = cx.op("mul", idx, st)
        lin = term if lin is None else cx.op("add", term, lin)
        stride = stride * shape[ax]
    flat = cx.op("reshape", self, shape=shape[:a] + [make_dim(stride)] + shape[used[-1] + 1:])
    return cx.op("gather", flat, lin, axis=a)


@converts("aten.embedding.default")
def _embedding(cx: Ctx, weight: Value, indices: Value, **_: Any) -> Value:
    return cx.op("embedding", weight, indices)


@converts("aten.gather.default")
def _gather(cx: Ctx, self: Value, dim: int, index: Value, sparse_grad: bool = False) -> Value:
    return cx.op("gather_elements", self, index, axis=norm_axis(dim, self.type.rank),
                 negative_indices=False)  # eager torch.gather rejects a negative index


@converts("aten.constant_pad_nd.default", "aten.pad.default")
def _pad(cx: Ctx, self: Value, pad: Any, value: Any = 0.0, mode: str = "constant") -> Value:
    r = self.type.rank
    begin, end = [0] * r, [0] * r
    for i in range(len(pad) // 2):  # torch pads list the last axis first
        begin[r - 1 - i], end[r - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    if any(p < 0 for p in begin + end):
        raise CaptureError("negative padding is not supported")
    mode = {"replicate": "edge"}.get(mode, mode)
    return cx.op("pad", self, pads=begin + end, mode=mode, value=float(value or 0.0))


@converts("aten.repeat.default")
def _repeat(cx: Ctx, self: Value, repeats: Any) -> Value:
    reps = [int(r) for r in repeats]
    x = self
    if len(reps) > x.type.rank:
        x = cx.op("reshape", x, shape=[1] * (len(reps) - x.type.rank) + list(x.type.shape))
    return cx.op("tile", x, repeats=reps)


@converts("aten.pixel_shuffle.default")
def _pixel_shuffle(cx: Ctx, self: Value, upscale_factor: int) -> Value:
    n, c, h, w = self.type.shape
    r = upscale_factor
    x = cx.op("reshape", self, shape=[n, c // (r * r), r, r, h, w])
    x = cx.op("transpose", x, perm=[0, 1, 4, 2, 5, 3])
    return cx.op("reshape", x, shape=[n, c // (r * r), h * r, w * r])
