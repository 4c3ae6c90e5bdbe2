"""ONNX -> IR rules: normalization (BatchNormalization, InstanceNormalization,
LayerNormalization, RMSNormalization, GroupNormalization, LpNormalization,
MeanVarianceNormalization, LRN) and Softmax / LogSoftmax."""

from __future__ import annotations

from rtinfer.frontends.onnx_frontend.context import pos_axis, rule, scalar_op, to_float
from rtinfer.ir.types import DType


@rule("BatchNormalization")
def _batch_norm(cx, ins):
    if cx.attr("training_mode", 0) or cx.n_outputs > 1:
        raise cx.unsupported("training-mode BatchNormalization")
    x, scale, bias, mean, var = ins
    return cx.op("batch_norm", x, mean, var, scale, bias, eps=cx.attr("epsilon", 1e-5))


@rule("InstanceNormalization")
def _instance_norm(cx, ins):
    return cx.op("instance_norm", *ins, eps=cx.attr("epsilon", 1e-5))


@rule("LayerNormalization")
def _layer_norm(cx, ins):
    x, scale = ins[:2]
    bias = ins[2] if len(ins) > 2 else None
    axis, eps = pos_axis(cx.attr("axis", -1), x.type.rank), cx.attr("epsilon", 1e-5)
    axes = list(range(axis, x.type.rank))
    if not (cx.wants(1) or cx.wants(2)) and x.type.dtype == DType.f32:
        return cx.op("layer_norm", *([x, scale] + ([bias] if bias else [])), axis=axis, eps=eps)
    # spelled out to produce Mean and InvStdDev (computed in f32 when stash_type = 1)
    xs = cx.op("cast", x, dtype=DType.f32) if cx.attr("stash_type", 1) == 1 else x
    mean = cx.op("reduce_mean", xs, axes=axes, keepdims=True)
    d = cx.op("sub", xs, mean)
    var = cx.op("reduce_mean", cx.op("mul", d, d), axes=axes, keepdims=True)
    inv = cx.op("rsqrt", scalar_op(cx, "add", var, eps))
    y = to_float(cx, cx.op("mul", d, inv), x)
    y = cx.op("mul", y, scale)
    if bias is not None:
        y = cx.op("add", y, bias)
    return [y, mean, inv]


@rule("RMSNormalization")
def _rms_norm(cx, ins):
    x, scale = ins
    axis, eps = pos_axis(cx.attr("axis", -1), x.type.rank), cx.attr("epsilon", 1e-5)
    axes = list(range(axis, x.type.rank))
    xs = cx.op("cast", x, dtype=DType.f32) if cx.attr("stash_type", 1) == 1 else x
    ms = cx.op("reduce_mean", cx.op("mul", xs, xs), axes=axes, keepdims=True)
    y = to_float(cx, cx.op("mul", xs, cx.op("rsqrt", scalar_op(cx, "add", ms, eps))), x)
    return cx.op("mul", y, scale)


@rule("GroupNormalization")
def _group_norm(cx, ins):
    x, scale, bias = ins
    groups, eps = cx.attr("num_groups"), cx.attr("epsilon", 1e-5)
    c = x.type.shape[1]
    if scale.type.shape[0] != c:  # opset 18: one scale per group
        raise cx.unsupported("per-group scale and bias (opset 18 GroupNormalization)")
    return cx.op("group_norm", x, scale, bias, groups=groups, eps=eps)


@rule("Softmax", "LogSoftmax")
def _softmax(cx, ins):
    name = "softmax" if cx.node.op_type == "Softmax" else "log_softmax"
    return cx.op(name, ins[0], axis=cx.attr("axis", -1))


@rule("LpNormalization")
def _lp_norm(cx, ins):
    x, axis, p = ins[0], cx.attr("axis", -1), cx.attr("p", 2)
    a = cx.op("abs", x) if p == 1 else cx.op("mul", x, x)
    n = cx.op("reduce_sum", a, axes=[axis], keepdims=True)
    if p == 2:
        n = cx.op("sqrt", n)
    zero = cx.scalar(0, n)  # a zero vector stays zero (onnx's reference divides by 1 there)
    return cx.op("div", x, cx.op("where", cx.op("equal", n, zero), cx.scalar(1, n), n))


@rule("MeanVarianceNormalization")
def _mvn(cx, ins):
    x = ins[0]
    axes = list(cx.attr("axes", [0, 2, 3]))
    # (x - E[x]) / sqrt(E[(x - E[x])^2]), with ONNX's function's epsilon of 1e-9
    d = cx.op("sub", x, cx.op("reduce_mean", x, axes=axes, keepdims=True))
    var = cx.op("reduce_mean", cx.op("mul", d, d), axes=axes, keepdims=True)
    return cx.op("div", d, cx.op("sqrt", scalar_op(cx, "add", var, 1e-9)))


@rule("LRN")
def _lrn(cx, ins):
    # y = x / (bias + alpha / size * sum of x^2 over channels c - floor((size-1)/2) ..
    #     c + ceil((size-1)/2))^beta: the window sum as shifted slices of the zero-padded squares
    x = ins[0]
    size = int(cx.attr("size", 0))
    if size < 1:
        raise cx.invalid(f"size must be positive, got {size}")
    if x.type.rank < 3:
        raise cx.invalid(f"input {x.type} must have a channel axis and spatial axes")
    channels = cx.static_shape(x)[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    r = x.type.rank
    pads = [0] * (2 * r)
    pads[1], pads[r + 1] = lo, hi
    sq = cx.op("pad", cx.op("mul", x, x), pads=pads)
    total = None
    for j in range(size):
        part = cx.op("slice", sq, starts=[j], ends=[j + channels], axes=[1])
        total = part if total is None else cx.op("add", total, part)
    scale = scalar_op(cx, "mul", total, cx.attr("alpha", 1e-4) / size)
    denom = cx.op("pow", scalar_op(cx, "add", scale, cx.attr("bias", 1.0)),
                  cx.scalar(cx.attr("beta", 0.75), x))
    return cx.op("div", x, denom)
