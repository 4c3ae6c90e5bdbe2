"""ONNX -> IR rules: convolution, pooling and resizing (Conv, ConvTranspose, MaxPool,
AveragePool, LpPool, MaxUnpool, the global pools, Resize and Upsample, CausalConvWithState)."""

from __future__ import annotations

import numpy as np

from rtinfer.frontends.onnx_frontend.context import pos_axis, rule, scalar_op
from rtinfer.ir.graph import Value

_AUTO_PADS = ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER")


def _window(cx, nd: int, w: Value | None = None) -> tuple[list[int], list[int], list[int]]:
    """kernel_shape, strides and dilations of a conv or pool over ``nd`` spatial axes, each of
    ``nd`` positive entries; a conv's kernel_shape must agree with its weight (as ONNX Runtime
    requires) and defaults to it."""
    weight_kernel = None
    if w is not None:
        if w.type.rank != nd + 2:
            raise cx.invalid(f"the weight has type {w.type}, expected rank {nd + 2} for "
                             f"{nd}-d input")
        if all(isinstance(d, int) for d in w.type.shape[2:]):
            weight_kernel = [int(d) for d in w.type.shape[2:]]
    if "kernel_shape" in cx.attrs:
        kernel = cx.int_list("kernel_shape", nd, 1)
        if weight_kernel is not None and kernel != weight_kernel:
            raise cx.invalid(f"kernel_shape {kernel} disagrees with the weight's spatial dims "
                             f"{weight_kernel} (weight {w.type})")
    elif weight_kernel is not None:
        kernel = weight_kernel
    else:
        raise cx.invalid("kernel_shape is missing and the weight's shape is not static")
    strides = cx.int_list("strides", nd, 1)
    dilations = cx.int_list("dilations", nd, 1)
    for name, vals in (("kernel_shape", kernel), ("strides", strides), ("dilations", dilations)):
        if any(v < 1 for v in vals):
            raise cx.invalid(f"{name} {vals} must be positive")
    if cx.attr("auto_pad", "NOTSET") not in _AUTO_PADS:
        raise cx.invalid(f"auto_pad {cx.attr('auto_pad')!r} is not one of "
                         f"{', '.join(a for a in _AUTO_PADS if a)}")
    return kernel, strides, dilations


def _auto_pads(cx, x: Value, kernel, strides, dilations) -> list[int]:
    nd = len(kernel)
    auto = cx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return cx.int_list("pads", 2 * nd, 0)
    if auto == "VALID":
        return [0] * (2 * nd)
    spatial = cx.static_shape(x, "auto_pad SAME input")[2:]
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begins.append(lo)
        ends.append(total - lo)
    return begins + ends


@rule("Conv")
def _conv(cx, ins):
    x, w = ins[:2]
    b = ins[2] if len(ins) > 2 else None
    nd = x.type.rank - 2
    if nd not in (1, 2, 3):
        raise cx.unsupported(f"{nd}-d convolution (rtinfer has 1-d to 3-d)")
    kernel, strides, dilations = _window(cx, nd, w)
    pads = _auto_pads(cx, x, kernel, strides, dilations)
    args = (x, w) if b is None else (x, w, b)
    return cx.op(f"conv{nd}d", *args, stride=strides, pad=pads, dilation=dilations,
                 groups=cx.attr("group", 1))


@rule("ConvTranspose")
def _conv_transpose(cx, ins):
    x, w = ins[:2]
    b = ins[2] if len(ins) > 2 else None
    nd = x.type.rank - 2
    if nd not in (1, 2, 3):
        raise cx.unsupported(f"{nd}-d transposed convolution (rtinfer has 1-d to 3-d)")
    kernel, strides, dilations = _window(cx, nd, w)
    out_pad = cx.int_list("output_padding", nd, 0)
    pads = cx.int_list("pads", 2 * nd, 0)
    auto = cx.attr("auto_pad", "NOTSET")
    out_shape = cx.attr("output_shape", None)
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        spatial = cx.static_shape(x, "ConvTranspose input")[2:]
        if not out_shape:
            out_shape = [s * st for s, st in zip(spatial, strides, strict=True)]
        if len(out_shape) < nd:
            raise cx.invalid(f"output_shape {list(out_shape)} has fewer than {nd} entries")
        out_shape = list(out_shape)[-nd:]
        begins, ends = [], []
        for i in range(nd):
            total = (strides[i] * (spatial[i] - 1) + out_pad[i]
                     + (kernel[i] - 1) * dilations[i] + 1 - out_shape[i])
            lo = total - total // 2 if auto == "SAME_LOWER" else total // 2
            begins.append(lo)
            ends.append(total - lo)
        pads = begins + ends
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    for i in range(nd):  # a negative end pad is extra output padding
        if pads[nd + i] < 0:
            out_pad[i] -= pads[nd + i]
            pads[nd + i] = 0
    args = (x, w) if b is None else (x, w, b)
    return cx.op(f"conv_transpose{nd}d", *args, stride=strides, pad=pads, dilation=dilations,
                 groups=cx.attr("group", 1), output_padding=out_pad)


def _pool(cx, ins, kind: str):
    x = ins[0]
    nd = x.type.rank - 2
    if nd not in (1, 2, 3):
        raise cx.unsupported(f"{nd}-d pooling (rtinfer has 1-d to 3-d)")
    if cx.wants(1):
        raise cx.unsupported("MaxPool's Indices output")
    kernel, strides, dilations = _window(cx, nd)
    pads = _auto_pads(cx, x, kernel, strides, dilations)
    common = dict(kernel=kernel, stride=strides, pad=pads, ceil_mode=bool(cx.attr("ceil_mode", 0)))
    if kind == "max":
        return cx.op(f"max_pool{nd}d", x, dilation=dilations, **common)
    if any(d != 1 for d in dilations):
        raise cx.unsupported("dilated average pooling")
    return cx.op(f"avg_pool{nd}d", x, count_include_pad=bool(cx.attr("count_include_pad", 0)),
                 **common)


rule("MaxPool")(lambda cx, ins: _pool(cx, ins, "max"))
rule("AveragePool")(lambda cx, ins: _pool(cx, ins, "avg"))


@rule("GlobalAveragePool")
def _global_avg(cx, ins):
    x = ins[0]
    if x.type.rank == 4:
        return cx.op("global_avg_pool2d", x)
    return cx.op("reduce_mean", x, axes=list(range(2, x.type.rank)), keepdims=True)


@rule("GlobalMaxPool")
def _global_max(cx, ins):
    return cx.op("reduce_max", ins[0], axes=list(range(2, ins[0].type.rank)), keepdims=True)


@rule("LpPool")
def _lp_pool(cx, ins):
    x, p = ins[0], cx.attr("p", 2)
    nd = x.type.rank - 2
    if nd not in (1, 2, 3):
        raise cx.unsupported(f"{nd}-d pooling")
    kernel, strides, dilations = _window(cx, nd)
    if any(d != 1 for d in dilations):
        raise cx.unsupported("dilated LpPool")
    if p == 0:
        raise cx.invalid("p must not be 0 (the pool takes the 1/p-th power)")
    pads = _auto_pads(cx, x, kernel, strides, dilations)
    # (sum over the window of |x|^p)^(1/p) = (mean * window size)^(1/p); padding adds 0
    a = scalar_op(cx, "pow", cx.op("abs", x), float(p))
    m = cx.op(f"avg_pool{nd}d", a, kernel=kernel, stride=strides, pad=pads,
              ceil_mode=bool(cx.attr("ceil_mode", 0)), count_include_pad=True)
    return scalar_op(cx, "pow", scalar_op(cx, "mul", m, float(np.prod(kernel))), 1.0 / p)


def _full_rank(vals, axes, rank: int, fill) -> list:
    out = [fill[i] if isinstance(fill, (list, tuple)) else fill for i in range(rank)]
    for v, a in zip(vals, axes, strict=True):
        out[a] = v
    return out


@rule("Resize", "Upsample")
def _resize(cx, ins):
    x = ins[0]
    r = x.type.rank
    if cx.node.op_type == "Upsample":
        roi_v, scales_v, sizes_v = None, ins[1], None
    else:
        roi_v = ins[1] if len(ins) > 1 else None
        scales_v = ins[2] if len(ins) > 2 else None
        sizes_v = ins[3] if len(ins) > 3 else None
    axes = [pos_axis(a, r) for a in cx.attr("axes", None) or range(r)]
    scales = [float(v) for v in cx.array(scales_v, "Resize's scales").reshape(-1)] \
        if scales_v is not None and np.size(cx.array(scales_v, "Resize's scales")) else []
    sizes = cx.ints(sizes_v, "Resize's sizes") if sizes_v is not None else []
    if any(not 0 <= a < r for a in axes) or len(set(axes)) != len(axes):
        raise cx.invalid(f"axes {cx.attr('axes')} must be distinct axes of a rank-{r} input")
    if not scales and not sizes:
        raise cx.invalid("needs a non-empty scales or sizes input")
    for name, vals in (("scales", scales), ("sizes", sizes)):
        if vals and len(vals) != len(axes):
            raise cx.invalid(f"{name} has {len(vals)} entries, expected {len(axes)} (one per "
                             "resized axis)")
    ctm = cx.attr("coordinate_transformation_mode", "half_pixel")
    roi = []
    if ctm == "tf_crop_and_resize" and roi_v is not None:
        rv = [float(v) for v in cx.array(roi_v, "Resize's roi").reshape(-1)]
        n = len(axes)
        roi = _full_rank(rv[:n], axes, r, 0.0) + _full_rank(rv[n:], axes, r, 1.0)
    policy = cx.attr("keep_aspect_ratio_policy", "stretch")
    attrs = {}
    if sizes:
        shape = cx.static_shape(x, "Resize input") if policy != "stretch" else x.type.shape
        sizes = _full_rank(sizes, axes, r, list(shape))
        if policy != "stretch":  # one scale for the resized axes, the sizes rounded half up
            ratios = [sizes[a] / shape[a] for a in axes]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(s * shape[i] + 0.5) if i in axes else shape[i] for i in range(r)]
            attrs["scales"] = [s if i in axes else 1.0 for i in range(r)]
        attrs["sizes"] = sizes
    else:
        attrs["scales"] = _full_rank(scales, axes, r, 1.0)
    mode = cx.attr("mode", "nearest")
    return cx.op("resize", x, mode={"bilinear": "linear", "trilinear": "linear"}.get(mode, mode),
                 coordinate_transformation_mode=ctm,
                 nearest_mode=cx.attr("nearest_mode", "round_prefer_floor"),
                 cubic_coeff_a=cx.attr("cubic_coeff_a", -0.75),
                 exclude_outside=bool(cx.attr("exclude_outside", 0)),
                 extrapolation_value=cx.attr("extrapolation_value", 0.0),
                 antialias=bool(cx.attr("antialias", 0)), roi=roi, **attrs)


@rule("CausalConvWithState")
def _causal_conv_with_state(cx, ins):
    # a depthwise 1-d conv over [past_state (zeros when absent), input] along the time axis, with
    # no padding, so output t sees inputs t-k+1..t; present_state is the last k-1 steps of that
    # concatenation (the next call's past_state)
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    past = ins[3] if len(ins) > 3 else None
    act = cx.attr("activation", "none")
    if act not in ("none", "silu", "swish"):
        raise cx.invalid(f"activation {act!r} is not one of 'none', 'silu', 'swish'")
    if x.type.rank != 3 or w.type.rank != 3:
        raise cx.invalid(f"input {x.type} and weight {w.type} must both be rank 3 "
                         "([batch, channels, length] and [channels, 1, k])")
    channels, _, k = cx.static_shape(w, "the weight")
    if past is None:
        padded = cx.op("pad", x, pads=[0, 0, k - 1, 0, 0, 0])
    else:
        padded = cx.op("concat", past, x, axis=2)
    length = cx.static_shape(padded, "the padded input")[2]
    args = (padded, w) if b is None else (padded, w, b)
    y = cx.op("conv1d", *args, groups=channels)
    if act != "none":
        y = cx.op("silu", y)
    present = cx.op("slice", padded, starts=[length - (k - 1)], ends=[length], axes=[2])
    return [y, present]


@rule("MaxUnpool")
def _max_unpool(cx, ins):
    # zeros of the inferred shape ((in - 1) * stride - pads + kernel) with each X value written
    # where MaxPool's Indices say it came from (indices into that whole shape, flattened), then
    # zero-padded at the ends up to output_shape when one is given
    x, idx = ins[0], ins[1]
    shape = cx.static_shape(x)
    nd = len(shape) - 2
    if nd < 1:
        raise cx.invalid(f"input {x.type} has no spatial axes")
    kernel = cx.int_list("kernel_shape", nd, 0)
    strides, pads = cx.int_list("strides", nd, 1), cx.int_list("pads", 2 * nd, 0)
    if any(k < 1 for k in kernel):
        raise cx.invalid(f"kernel_shape {kernel} must be given and positive")
    inferred = list(shape[:2]) + [(d - 1) * s - pads[i] - pads[nd + i] + k for i, (d, s, k)
                                  in enumerate(zip(shape[2:], strides, kernel, strict=True))]
    flat = cx.op("scatter_elements", cx.const(np.zeros(int(np.prod(inferred)),
                                                       x.type.dtype.np)),
                 cx.op("reshape", idx, shape=[int(np.prod(shape))]),
                 cx.op("reshape", x, shape=[int(np.prod(shape))]), axis=0)
    y = cx.op("reshape", flat, shape=inferred)
    if len(ins) < 3 or ins[2] is None:
        return y
    out = cx.ints(ins[2], "MaxUnpool's output_shape")
    if len(out) != len(shape) or any(o < i for o, i in zip(out, inferred, strict=True)):
        raise cx.invalid(f"output_shape {out} must have rank {len(shape)} and hold the "
                         f"unpooled shape {inferred}")
    return cx.op("pad", y, pads=[0] * len(out) + [o - i for o, i in zip(out, inferred,
                                                                     strict=True)])
