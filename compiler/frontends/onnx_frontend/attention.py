"""ONNX -> IR rules: Attention (opset 23), spelled out as matmuls and a softmax, and
RotaryEmbedding, as slices, products and a concat."""

from __future__ import annotations

import math

import numpy as np

from rtinfer.frontends.onnx_frontend.context import rule, scalar_op, to_float
from rtinfer.ir.types import DType


@rule("Attention")
def _attention(cx, ins):
    q, k, v = ins[:3]
    mask = ins[3] if len(ins) > 3 else None
    past_k = ins[4] if len(ins) > 4 else None
    past_v = ins[5] if len(ins) > 5 else None
    if len(ins) > 6 and ins[6] is not None:
        raise cx.unsupported("Attention's nonpad_kv_seqlen")
    three_d = q.type.rank == 3
    if three_d:  # [B, S, H * D] -> [B, H, S, D]
        def heads(t, n):
            b, s, hd = t.type.shape
            return cx.op("transpose", cx.op("reshape", t, shape=[b, s, n, hd // n]),
                         perm=[0, 2, 1, 3])
        q = heads(q, cx.attr("q_num_heads"))
        k = heads(k, cx.attr("kv_num_heads"))
        v = heads(v, cx.attr("kv_num_heads"))
    if past_k is not None:
        k = cx.op("concat", past_k, k, axis=2)
        v = cx.op("concat", past_v, v, axis=2)
    present_k, present_v = k, v
    if cx.attr("left_window_size", -1) >= 0 or cx.attr("right_window_size", -1) >= 0:
        raise cx.unsupported("Attention's sliding window")
    hq, hk = q.type.shape[1], k.type.shape[1]
    if hq != hk:  # grouped-query attention: repeat each kv head hq / hk times (h0, h0, h1, ..)
        def rep(t):
            b, h, s, d = t.type.shape
            t = cx.op("expand", cx.op("unsqueeze", t, axes=[2]), shape=[b, h, hq // h, s, d])
            return cx.op("reshape", t, shape=[b, hq, s, d])
        k, v = rep(k), rep(v)
    lq, lk, d = q.type.shape[2], k.type.shape[2], q.type.shape[3]
    scale = cx.attr("scale", None) or 1.0 / math.sqrt(d)
    softcap = cx.attr("softcap", 0.0)
    mode = cx.attr("qk_matmul_output_mode", 0)
    ft = q.type.dtype
    # scores = softcap(q k^T * scale) + bias; bias = mask (bool: 0 / -inf) + causal (0 / -inf)
    s = scalar_op(cx, "mul", cx.op("matmul", q, cx.op("transpose", k, perm=[0, 1, 3, 2])), scale)
    if softcap:
        s = scalar_op(cx, "mul", cx.op("tanh", scalar_op(cx, "div", s, softcap)), softcap)
    qk_raw = s
    bias = None
    if mask is not None:
        if isinstance(lk, int) and mask.type.shape[-1] != lk:  # a mask shorter than past + new
            width = lk - mask.type.shape[-1]
            pads = [0] * (2 * mask.type.rank)
            pads[-1] = width
            if mask.type.dtype == DType.bool:
                mask = cx.op("pad", mask, pads=pads, value=0.0)
            else:
                mask = cx.op("pad", mask, pads=pads, value=-math.inf)
        if mask.type.dtype == DType.bool:
            bias = cx.op("where", mask, cx.scalar(0.0, s), cx.scalar(-math.inf, s))
        else:
            bias = to_float(cx, mask, s)
    if cx.attr("is_causal", 0):
        if not (isinstance(lq, int) and isinstance(lk, int)):
            raise cx.unsupported("causal attention over symbolic lengths")
        past = int(past_k.type.shape[2]) if past_k is not None else 0
        keep = np.tril(np.ones((lq, lk), dtype=bool), k=past)  # key j <= query i + past
        causal = cx.const(np.where(keep, 0.0, -np.inf).astype(ft.np))
        bias = causal if bias is None else cx.op("add", bias, causal)
    if bias is not None:
        s = cx.op("add", s, bias)
    qk_bias = s
    p = cx.op("softmax", s, axis=-1)
    if bias is not None:  # rows whose every key is masked give 0, not NaN
        dead = cx.op("equal", cx.op("reduce_max", bias, axes=[-1 % bias.type.rank], keepdims=True),
                     cx.scalar(-math.inf, bias))
        p = cx.op("where", dead, cx.scalar(0.0, p), p)
    y = cx.op("matmul", p, v)
    if three_d:
        b, h, sq, dv = y.type.shape
        y = cx.op("reshape", cx.op("transpose", y, perm=[0, 2, 1, 3]), shape=[b, sq, h * dv])
    outs: list = [y, present_k, present_v]
    if cx.wants(3):
        # onnx's reference: 0 and 1 give the (softcapped) scores, 2 adds the bias, 3 softmaxes
        outs.append({0: qk_raw, 1: qk_raw, 2: qk_bias, 3: p}[mode])
    return outs


@rule("RotaryEmbedding")
def _rotary_embedding(cx, ins):
    # With x1, x2 the two halves of each head's first rotary_embedding_dim features (or its
    # even and odd features, interleaved) and cos, sin the caches (at position_ids):
    #     [x1, x2] -> [cos * x1 - sin * x2, sin * x1 + cos * x2]; the other features pass.
    x, cos, sin = ins[0], ins[1], ins[2]
    pos = ins[3] if len(ins) > 3 else None
    shape = cx.static_shape(x)
    if len(shape) == 4:  # [batch, heads, seq, head_size] -> [batch, seq, heads, head_size]
        h = cx.op("transpose", x, perm=[0, 2, 1, 3])
    elif len(shape) == 3:
        heads = cx.attr("num_heads", 0)
        if heads <= 0 or shape[2] % heads:
            raise cx.invalid(f"a rank-3 input {x.type} needs num_heads (a positive divisor of "
                             f"{shape[2]}), got {heads}")
        h = cx.op("reshape", x, shape=[shape[0], shape[1], heads, shape[2] // heads])
    else:
        raise cx.invalid(f"input {x.type} must be rank 3 or 4")
    head = cx.static_shape(h)[3]
    rd = cx.attr("rotary_embedding_dim", 0) or head
    if rd % 2 or rd > head:
        raise cx.invalid(f"rotary_embedding_dim {rd} must be even and at most the head size "
                         f"{head}")
    if pos is not None:
        cos, sin = cx.op("gather", cos, pos, axis=0), cx.op("gather", sin, pos, axis=0)
    for c in (cos, sin):
        if c.type.rank != 3 or c.type.shape[-1] != rd // 2:
            raise cx.invalid(f"the cos/sin cache (at position_ids) is {c.type}, expected "
                             f"[batch, seq, {rd // 2}]")
    cos, sin = cx.op("unsqueeze", cos, axes=[2]), cx.op("unsqueeze", sin, axes=[2])
    if cx.attr("interleaved", 0):
        x1 = cx.op("slice", h, starts=[0], ends=[rd], axes=[3], steps=[2])
        x2 = cx.op("slice", h, starts=[1], ends=[rd], axes=[3], steps=[2])
    else:
        x1 = cx.op("slice", h, starts=[0], ends=[rd // 2], axes=[3])
        x2 = cx.op("slice", h, starts=[rd // 2], ends=[rd], axes=[3])
    real = cx.op("sub", cx.op("mul", cos, x1), cx.op("mul", sin, x2))
    imag = cx.op("add", cx.op("mul", sin, x1), cx.op("mul", cos, x2))
    if cx.attr("interleaved", 0):  # back to real0, imag0, real1, imag1, ...
        pairs = cx.op("concat", cx.op("unsqueeze", real, axes=[4]),
                      cx.op("unsqueeze", imag, axes=[4]), axis=4)
        rotated = cx.op("reshape", pairs, shape=[*cx.static_shape(h)[:3], rd])
    else:
        rotated = cx.op("concat", real, imag, axis=3)
    if rd < head:
        rotated = cx.op("concat", rotated,
                        cx.op("slice", h, starts=[rd], ends=[head], axes=[3]), axis=3)
    if len(shape) == 4:
        return cx.op("transpose", rotated, perm=[0, 2, 1, 3])
    return cx.op("reshape", rotated, shape=list(shape))
