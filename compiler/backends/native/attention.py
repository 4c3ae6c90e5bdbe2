"""Attention (SDPA, and multi-head attention over packed [B, S, H*D] projections): one
kernel reading strided q/k/v views and a broadcast mask."""

from __future__ import annotations

import math

from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.backends.native.plan import View
from rtinfer.ir.graph import Node, Value
from rtinfer.ir.types import DType


def _mask_args(cx: Lowerer, mask_v: Value | None, rank4: tuple[int, int, int, int]):
    """(buffer, kind, [b, h, q, k] strides) of an attention mask broadcast to ``rank4``."""
    if mask_v is None:
        return -1, 0, [0, 0, 0, 0], []
    m = cx.view(mask_v)
    if m.dtype is DType.bool:
        kind = 1
    elif m.dtype is DType.f32:
        kind = 2
    else:
        raise cx.unsupported(f"a {m.dtype} attention mask")
    if m.nhwc or len(m.shape) > 4:
        m = cx.plain(mask_v)
    pad = 4 - len(m.shape)
    shape = (1,) * pad + m.shape
    strides = (0,) * pad + m.strides
    out = []
    for n, s, full in zip(shape, strides, rank4, strict=True):
        if n == full:
            out.append(s if n != 1 else 0)
        elif n == 1:
            out.append(0)
        else:
            raise cx.unsupported(f"mask shape {m.shape} does not broadcast to {rank4}")
    if m.offset:
        raise cx.unsupported("an offset mask view")
    return m.buf, kind, out, [m.buf]


def _attention_view(cx: Lowerer, v: View, heads: int, packed: bool) -> tuple[View, list[int]]:
    """(view, [b, h, s] strides) with the last axis contiguous; ``packed``: [B, S, H*D]."""
    if v.strides[-1] != 1 or v.nhwc:
        raise cx.unsupported("attention operand with a strided last axis")
    if packed:
        if len(v.shape) != 3:
            raise cx.unsupported("multi_head_attention operands of rank != 3")
        b, s, hd = v.strides
        d = v.shape[2] // heads
        return v, [b, d, s]
    if len(v.shape) == 4:
        return v, list(v.strides[:3])
    if len(v.shape) == 3:
        return v, [v.strides[0], 0, v.strides[1]]
    raise cx.unsupported("attention operands of rank < 3 or > 4")


@lowers("multi_head_attention", "scaled_dot_product_attention")
def _attention(cx: Lowerer, node: Node) -> None:
    packed = node.op == "multi_head_attention"
    views = []
    for v in node.inputs[:3]:
        view = cx.view(v)
        if view.strides[-1] != 1 or view.nhwc or view.offset < 0:
            view = cx.plain(v)
        views.append(view)
    cx.need_f32(*views)
    q, k, v = views
    if packed:
        h = int(node.attrs["num_heads"])
        if len(q.shape) != 3 or len(k.shape) != 3 or len(v.shape) != 3 or not (
                q.shape[0] == k.shape[0] == v.shape[0]):
            raise cx.unsupported("multi_head_attention over rank != 3 or broadcast batches")
        b, sq, e = q.shape[0], q.shape[1], q.shape[2] // h
        skv, ev = k.shape[1], v.shape[2] // h
    else:
        if not (len(q.shape) == len(k.shape) == len(v.shape)) or q.shape[:-2] != k.shape[:-2] \
                or k.shape[:-2] != v.shape[:-2]:
            raise cx.unsupported("attention with broadcast batch dims")
        if len(q.shape) == 4:
            b, h = q.shape[0], q.shape[1]
        elif len(q.shape) == 3:
            b, h = q.shape[0], 1
        else:
            raise cx.unsupported("attention over rank < 3 or > 4")
        sq, e, skv, ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    if e != ev:
        raise cx.unsupported("attention with different q/k and v head sizes")
    _, qs = _attention_view(cx, q, h, packed)
    _, ks = _attention_view(cx, k, h, packed)
    _, vs = _attention_view(cx, v, h, packed)
    mask_v = node.inputs[3] if len(node.inputs) > 3 else None
    mbuf, mkind, mstr, mreads = _mask_args(cx, mask_v, (b, h, sq, skv))
    y = cx.new_value(node.out)
    if packed:
        ys = [sq * h * e, e, h * e]
    elif len(y.shape) == 4:
        ys = list(y.strides[:3])
    else:
        ys = [y.strides[0], 0, y.strides[1]]
    scale = float(node.attrs["scale"]) or 1.0 / math.sqrt(e)
    # views carry element offsets (a split of the merged QKV projection): fold them into the
    # slot with an alias buffer so the kernel sees a base pointer
    bufs = [cx.base_pointer(t) for t in (q, k, v)]
    args = (bufs[0], bufs[1], bufs[2], mbuf, y.buf, b, h, sq, skv, e, qs, ks, vs, ys, mkind,
            mstr, scale, bool(node.attrs["causal"]))
    cx.step("attention", lambda ext, plan, name: ext.add_attention(plan, name, *args),
            bufs + mreads, [y.buf])
