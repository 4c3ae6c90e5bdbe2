"""Shape ops as views (no data moves until a consumer needs it contiguous), concatenation
as copies into one buffer, and row gathers (embedding, gather along axis 0)."""

from __future__ import annotations

import math

from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.backends.native.plan import View, contiguous_strides
from rtinfer.ir.graph import Node
from rtinfer.ir.ops.shape import slice_params, slice_range
from rtinfer.ir.types import DType


@lowers("embedding")
def _embedding(cx: Lowerer, node: Node) -> None:
    w = cx.plain(node.inputs[0])
    idx = cx.plain(node.inputs[1])
    if idx.dtype not in (DType.i64, DType.i32):
        raise cx.unsupported(f"{idx.dtype} indices")
    cx.need_f32(w)
    vocab, dim = w.shape
    y = cx.new_value(node.out)
    # torch's embedding: a negative index is an error, as eager raises IndexError
    args = (w.buf, idx.buf, y.buf, idx.numel, dim, vocab, cx.torch_dtype(idx.dtype),
            w.dtype.np.itemsize, False)
    cx.step("embedding", lambda ext, plan, name: ext.add_embedding(plan, name, *args),
            [w.buf, idx.buf], [y.buf])


@lowers("gather")
def _gather(cx: Lowerer, node: Node) -> None:
    # gather along axis 0 is a row gather: rows of prod(x.shape[1:]) elements, any dtype
    x = cx.plain(node.inputs[0])
    idx = cx.plain(node.inputs[1])
    if node.attrs["axis"] % len(x.shape) != 0:
        raise cx.unsupported("gather along an axis other than 0")
    if idx.dtype not in (DType.i64, DType.i32):
        raise cx.unsupported(f"{idx.dtype} indices")
    vocab, dim = x.shape[0], math.prod(x.shape[1:])
    y = cx.new_value(node.out)
    args = (x.buf, idx.buf, y.buf, idx.numel, dim, vocab, cx.torch_dtype(idx.dtype),
            x.dtype.np.itemsize, bool(node.attrs.get("negative_indices", True)))
    cx.step("gather rows", lambda ext, plan, name: ext.add_embedding(plan, name, *args),
            [x.buf, idx.buf], [y.buf])


# -- views: no data moves until a consumer needs it contiguous ---------------------------------


@lowers("reshape", "flatten", "squeeze", "unsqueeze")
def _reshape(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    shape = cx.shape(node.out)
    if x.contiguous or (x.offset and x.strides == contiguous_strides(x.shape) and not x.nhwc):
        view = View(x.buf, shape, x.dtype, contiguous_strides(shape), x.offset)
        cx.views[id(node.out)] = view
        return
    if node.op in ("squeeze", "unsqueeze"):  # drop/insert size-1 axes of any view
        keep = [(n, s) for n, s in zip(x.shape, x.strides, strict=True) if n != 1]
        strides, it = [], iter(keep)
        for n in shape:
            strides.append(0 if n == 1 else next(it)[1])
        cx.views[id(node.out)] = View(x.buf, shape, x.dtype, tuple(strides), x.offset)
        return
    p = cx.plain(node.inputs[0])
    cx.views[id(node.out)] = View(p.buf, shape, p.dtype, contiguous_strides(shape), p.offset)


@lowers("transpose")
def _transpose(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    if x.nhwc:
        x = cx.plain(node.inputs[0])
    perm = [p % len(x.shape) for p in node.attrs["perm"]]
    cx.views[id(node.out)] = View(x.buf, tuple(x.shape[p] for p in perm), x.dtype,
                                  tuple(x.strides[p] for p in perm), x.offset)


@lowers("slice")
def _slice(cx: Lowerer, node: Node) -> None:

    x = cx.view(node.inputs[0])
    if x.nhwc:
        x = cx.plain(node.inputs[0])
    shape, strides, offset = list(x.shape), list(x.strides), x.offset
    for axis, start, end, step in slice_params(len(x.shape), node.attrs):
        s, _, n = (int(t) for t in slice_range(x.shape[axis], start, end, step))
        offset += s * strides[axis]
        shape[axis] = n
        strides[axis] *= step
    cx.views[id(node.out)] = View(x.buf, tuple(shape), x.dtype, tuple(strides), offset)


@lowers("split")
def _split(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    if x.nhwc:
        x = cx.plain(node.inputs[0])
    axis = node.attrs["axis"] % len(x.shape)
    start = 0
    for v in node.outputs:
        shape = cx.shape(v)
        cx.views[id(v)] = View(x.buf, shape, x.dtype, x.strides,
                               x.offset + start * x.strides[axis])
        start += shape[axis]


@lowers("expand")
def _expand(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    if x.nhwc:
        x = cx.plain(node.inputs[0])
    shape = cx.shape(node.out)
    pad = len(shape) - len(x.shape)
    strides = [0] * pad + [0 if n == 1 and m != 1 else s for n, m, s in zip(
        x.shape, shape[pad:], x.strides, strict=True)]
    cx.views[id(node.out)] = View(x.buf, shape, x.dtype, tuple(strides), x.offset)


@lowers("concat")
def _concat(cx: Lowerer, node: Node) -> None:
    y = cx.new_value(node.out)
    axis = node.attrs["axis"] % len(y.shape)
    start = 0
    for v in node.inputs:
        x = cx.view(v)
        dst = View(y.buf, x.shape, y.dtype, y.strides, start * y.strides[axis])
        cx.copy(x, dst)
        start += x.shape[axis]


@lowers("identity")
def _identity(cx: Lowerer, node: Node) -> None:
    cx.views[id(node.out)] = cx.view(node.inputs[0])
