"""Lowerings of the neural-network ops: linear algebra, convolution, pooling, normalization
and softmax."""

from __future__ import annotations

from typing import Any

import numpy as np

from rtinfer.backends.tvm_lower.context import (
    LowerContext,
    LowerFn,
    lower_table,
    lowers,
    relax_ops,
)
from rtinfer.ir.ops.common import expand_ints, expand_pads
from rtinfer.ir.types import TensorType

# -- linear algebra ---------------------------------------------------------------------------


@lowers("linear", grouped=True)
def _linear(cx: LowerContext, x: Any, weight: Any, bias: Any) -> Any:
    R = relax_ops()
    y = R.matmul(x, cx.emit(R.permute_dims(weight)))
    return y if bias is None else R.add(cx.emit(y), bias)


lower_table({
    "matmul": lambda cx, a, b: relax_ops().matmul(a, b),
    "bmm": lambda cx, a, b: relax_ops().matmul(a, b),
})


@lowers("einsum")
def _einsum(cx: LowerContext, xs: list, equation: str) -> Any:
    if "->" not in equation:
        raise cx.unsupported("einsum without an explicit output ('->')")
    return relax_ops().einsum(xs, equation)


# -- convolution and pooling ------------------------------------------------------------------

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _layouts(nd: int, layout: str) -> tuple[str, str]:
    """(data layout, weight layout) for Relax."""
    s = _SPATIAL[nd]
    return ("N" + s + "C" if layout == "NHWC" else "NC" + s), "OI" + s


def _channel_bias(cx: LowerContext, y: Any, bias: Any, rank: int, layout: str) -> Any:
    R = relax_ops()
    if bias is None:
        return y
    if layout == "NHWC":
        return R.add(cx.emit(y), bias)
    # [C] -> [C, 1, ..., 1] by expand_dims, not reshape: reshape's TIR indexes the bias
    # modulo C, which MetaSchedule cannot inline into the conv's epilogue
    return R.add(cx.emit(y), cx.emit(R.expand_dims(bias, list(range(1, rank - 1)))))


def _conv(nd: int) -> LowerFn:
    def lower(cx: LowerContext, x, weight, bias, stride, pad, dilation, groups, layout="NCHW"):
        R = relax_ops()
        data_layout, kernel_layout = _layouts(nd, layout)
        fn = (R.nn.conv1d, R.nn.conv2d, R.nn.conv3d)[nd - 1]
        y = fn(x, weight, expand_ints(stride, nd, "stride"), expand_pads(pad, nd),
               expand_ints(dilation, nd, "dilation"), groups, data_layout=data_layout,
               kernel_layout=kernel_layout, out_layout=data_layout)
        return _channel_bias(cx, y, bias, nd + 2, layout)
    return lower


def _conv_transpose(nd: int) -> LowerFn:
    def lower(cx: LowerContext, x, weight, bias, stride, pad, output_padding, dilation, groups):
        R = relax_ops()
        fn = (R.nn.conv1d_transpose, R.nn.conv2d_transpose, R.nn.conv3d_transpose)[nd - 1]
        y = fn(x, weight, expand_ints(stride, nd, "stride"), expand_pads(pad, nd),
               expand_ints(output_padding, nd, "output_padding"),
               expand_ints(dilation, nd, "dilation"), groups)
        return _channel_bias(cx, y, bias, nd + 2, "NCHW")
    return lower


def _pool(nd: int, kind: str) -> LowerFn:
    def lower(cx: LowerContext, x, kernel, stride, pad, ceil_mode, dilation=(1,),
              count_include_pad=True, layout="NCHW"):
        R = relax_ops()
        if kind == "avg" and not cx.in_types[0].dtype.is_float:
            raise cx.unsupported("integer average pooling")
        kernel = expand_ints(kernel, nd, "kernel")
        stride = expand_ints(stride or kernel, nd, "stride")
        pads = expand_pads(pad, nd)
        if any(p > k // 2 for p, k in zip(pads, kernel, strict=False)):
            raise cx.unsupported("pads wider than half the kernel")
        data_layout = _layouts(nd, layout)[0]
        name = f"{kind}_pool{nd}d"
        args = dict(pool_size=kernel, strides=stride, padding=pads,
                    dilation=expand_ints(dilation, nd, "dilation"), ceil_mode=ceil_mode,
                    layout=data_layout)
        if kind == "avg":
            args["count_include_pad"] = count_include_pad
        return getattr(R.nn, name)(x, **args)
    return lower


for _nd in (1, 2, 3):
    lowers(f"conv{_nd}d", grouped=True, slow_untuned=True)(_conv(_nd))
    lowers(f"conv_transpose{_nd}d", grouped=True, slow_untuned=True)(_conv_transpose(_nd))
    lowers(f"max_pool{_nd}d")(_pool(_nd, "max"))
    lowers(f"avg_pool{_nd}d")(_pool(_nd, "avg"))

lower_table({
    "adaptive_avg_pool2d": lambda cx, x, output_size, layout: (
        relax_ops().nn.adaptive_avg_pool2d(x, expand_ints(output_size, 2, "output_size"),
                                           layout=layout)),
    "global_avg_pool2d": lambda cx, x, layout: relax_ops().nn.adaptive_avg_pool2d(
        x, (1, 1), layout=layout),
})

# -- normalization ----------------------------------------------------------------------------


@lowers("batch_norm")
def _batch_norm(cx: LowerContext, x, mean, var, gamma, beta, eps, layout):
    # (x - mean) * (gamma / sqrt(var + eps)) + beta, per channel
    R = relax_ops()
    rank = cx.in_types[0].rank

    def per_channel(v):
        return v if layout == "NHWC" else cx.emit(R.expand_dims(v, list(range(1, rank - 1))))

    s = cx.emit(R.rsqrt(cx.emit(R.add(var, cx.scalar(eps)))))
    if gamma is not None:
        s = cx.emit(R.multiply(s, gamma))
    y = cx.emit(R.multiply(cx.emit(R.subtract(x, per_channel(mean))), per_channel(s)))
    return y if beta is None else R.add(y, per_channel(beta))


def _affine_params(cx: LowerContext, axis: int, gamma, beta):
    t = cx.in_types[0]
    axis %= t.rank
    shape = cx.static(TensorType(t.dtype, t.shape[axis:]), "layer_norm's gamma/beta")
    ones = cx.const(np.ones(shape, t.dtype.np), t.dtype)
    zeros = cx.const(np.zeros(shape, t.dtype.np), t.dtype)
    return list(range(axis, t.rank)), (ones if gamma is None else gamma), \
        (zeros if beta is None else beta)


@lowers("layer_norm")
def _layer_norm(cx: LowerContext, x, gamma, beta, axis, eps):
    axes, g, b = _affine_params(cx, axis, gamma, beta)
    return relax_ops().nn.layer_norm(x, g, b, axes, eps)


@lowers("rms_norm")
def _rms_norm(cx: LowerContext, x, gamma, axis, eps):
    axes, g, _ = _affine_params(cx, axis, gamma, None)
    return relax_ops().nn.rms_norm(x, g, axes, eps)


def _channel_params(cx: LowerContext, gamma, beta):
    t = cx.in_types[0]
    c = t.shape[1]
    if not isinstance(c, int):
        if gamma is None or beta is None:
            raise cx.unsupported("a symbolic channel count without gamma and beta")
        return gamma, beta
    return (cx.const(np.ones(c, t.dtype.np), t.dtype) if gamma is None else gamma,
            cx.const(np.zeros(c, t.dtype.np), t.dtype) if beta is None else beta)


@lowers("group_norm")
def _group_norm(cx: LowerContext, x, gamma, beta, groups, eps):
    g, b = _channel_params(cx, gamma, beta)
    return relax_ops().nn.group_norm(x, g, b, groups, 1, list(range(2, cx.in_types[0].rank)),
                                     eps)


@lowers("instance_norm")
def _instance_norm(cx: LowerContext, x, gamma, beta, eps):
    g, b = _channel_params(cx, gamma, beta)
    return relax_ops().nn.instance_norm(x, g, b, 1, list(range(2, cx.in_types[0].rank)), eps)


lower_table({
    "softmax": lambda cx, x, axis: relax_ops().nn.softmax(x, axis),
    "log_softmax": lambda cx, x, axis: relax_ops().nn.log_softmax(x, axis),
})
