"""Emitters of the neural-network ops: linear algebra, convolution, pooling, resizing,
normalization and softmax."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rtinfer.backends.torch_emit.context import (
    EMITTERS,
    EmitContext,
    Emitter,
    emits,
    torch_pads,
)
from rtinfer.backends.torch_emit.mkldnn import mkldnn_conv, use_mkldnn
from rtinfer.ir.ops.common import conv_out_dim, expand_ints, expand_pads
from rtinfer.ir.ops.nn import resize_axis, resize_geometry

# -- linear algebra ---------------------------------------------------------------------------

EMITTERS.update({
    "matmul": lambda cx, a, b: torch.matmul(a, b),
    "bmm": lambda cx, a, b: torch.bmm(a, b),
    "linear": lambda cx, x, weight, bias: F.linear(x, weight, bias),
    "einsum": lambda cx, xs, equation: torch.einsum(equation, *xs),
})

# -- convolution ------------------------------------------------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_emitter(nd: int) -> Emitter:
    def emit(cx: EmitContext, x, weight, bias, stride, pad, dilation, groups):
        pads = expand_pads(pad, nd)
        if nd == 2 and pads[:nd] == pads[nd:] and use_mkldnn(cx):
            geo = (list(pads[:nd]), list(expand_ints(stride, nd, "stride")),
                   list(expand_ints(dilation, nd, "dilation")), groups)
            y = mkldnn_conv(cx, x, weight, bias, geo, None, "none", [], None)
            if y is not None:
                return y
        if pads[:nd] != pads[nd:]:
            x, pads = F.pad(x, torch_pads(pads)), (0,) * (2 * nd)
        return _CONV[nd](x, weight, bias, expand_ints(stride, nd, "stride"), pads[:nd],
                         expand_ints(dilation, nd, "dilation"), groups)
    return emit


def _conv_transpose_emitter(nd: int) -> Emitter:
    def emit(cx: EmitContext, x, weight, bias, stride, pad, output_padding, dilation, groups):
        pads = expand_pads(pad, nd)
        stride = expand_ints(stride, nd, "stride")
        dilation = expand_ints(dilation, nd, "dilation")
        opad = expand_ints(output_padding, nd, "output_padding")
        if pads[:nd] == pads[nd:]:
            return _CONV_T[nd](x, weight, bias, stride, pads[:nd], opad, groups, dilation)
        # the full output, zero-extended by output_padding at the end, cropped by the pads
        y = _CONV_T[nd](x, weight, None, stride, 0, 0, groups, dilation)
        y = F.pad(y, [p for i in reversed(range(nd)) for p in (0, opad[i])])
        idx = (slice(None), slice(None)) + tuple(
            slice(pads[i], -pads[nd + i] if pads[nd + i] else None) for i in range(nd))
        y = y[idx]
        if bias is not None:
            y = y + bias.reshape((1, -1) + (1,) * nd)
        return y
    return emit


for _nd in (1, 2, 3):
    EMITTERS[f"conv{_nd}d"] = _conv_emitter(_nd)
    EMITTERS[f"conv_transpose{_nd}d"] = _conv_transpose_emitter(_nd)

# -- pooling ----------------------------------------------------------------------------------


def _pool_geometry(nd: int, kernel, stride, pad, dilation=(1,)):
    kernel = expand_ints(kernel, nd, "kernel")
    stride = expand_ints(stride or kernel, nd, "stride")
    return kernel, stride, expand_pads(pad, nd), expand_ints(dilation, nd, "dilation")


def _torch_pool_ok(kernel, pads, nd) -> bool:
    """torch's pooling takes symmetric pads of at most half the kernel."""
    return pads[:nd] == pads[nd:] and all(p <= k // 2 for p, k in zip(pads, kernel, strict=False))


def _general_pool(x: torch.Tensor, kind: str, kernel, stride, pads, dilation, ceil_mode: bool,
                  count_include_pad: bool) -> torch.Tensor:
    """Pooling with any pads (asymmetric, wider than half the kernel), at run time: pad by hand
    so that every output window is present, pool without padding, keep the output's windows.
    Average pools divide by the count of positions inside the input (and its padding when
    count_include_pad), never those past the end padding, as torch does."""
    nd = len(kernel)
    spatial = x.shape[2:]
    out = [conv_out_dim(spatial[i], kernel[i], stride[i], pads[i], pads[nd + i], dilation[i],
                        ceil_mode) for i in range(nd)]
    need = [(out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    extra = [max(need[i] - spatial[i] - pads[i], 0) for i in range(nd)]
    flat = [p for i in reversed(range(nd)) for p in (pads[i], extra[i])]
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in out)
    if kind == "max":
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
        xp = F.pad(x, flat, value=-math.inf)
        return fn(xp, kernel, stride, 0, dilation)[crop]
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    xp = F.pad(x, flat)
    # 1 where a padded position counts toward the divisor
    valid = []
    for i in range(nd):
        p = torch.arange(xp.shape[2 + i])
        lo, hi = pads[i], pads[i] + spatial[i]
        if count_include_pad:
            lo, hi = 0, hi + pads[nd + i]
        valid.append(((p >= lo) & (p < hi)).to(x.dtype))
    inside = functools.reduce(lambda a, b: a[..., None] * b, valid)[None, None]
    return (fn(xp, kernel, stride) / fn(inside, kernel, stride))[crop]


def _pool_emitter(nd: int, kind: str) -> Emitter:
    def pool(cx: EmitContext, x, kernel, stride, pads, dilation, ceil_mode, count_include_pad):
        if _torch_pool_ok(kernel, pads, nd):
            if kind == "max":
                fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
                return fn(x, kernel, stride, pads[:nd], dilation, ceil_mode)
            fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
            return fn(x, kernel, stride, pads[:nd], ceil_mode, count_include_pad)
        return cx.call(_general_pool, x, kind, kernel, stride, pads, dilation, ceil_mode,
                       count_include_pad)

    def emit(cx: EmitContext, x, kernel, stride, pad, ceil_mode, dilation=(1,),
             count_include_pad=True):
        geometry = _pool_geometry(nd, kernel, stride, pad, dilation)
        dtype = cx.in_types[0].dtype
        if dtype.is_float:
            return pool(cx, x, *geometry, ceil_mode, count_include_pad)
        # integer (quantized) max pooling, exact in a wide enough float
        wide = torch.float64 if dtype.bits > 16 else torch.float32
        y = pool(cx, x.to(wide), *geometry, ceil_mode, count_include_pad)
        return y.to(dtype.torch)
    return emit


for _nd in (1, 2, 3):
    EMITTERS[f"max_pool{_nd}d"] = _pool_emitter(_nd, "max")
    EMITTERS[f"avg_pool{_nd}d"] = _pool_emitter(_nd, "avg")

_INTERP_MODE = {("nearest", 1): "nearest", ("nearest", 2): "nearest", ("nearest", 3): "nearest",
                ("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear"}


@emits("interpolate")
def _interpolate(cx: EmitContext, x, size, scale, mode, align_corners):
    nd = cx.in_types[0].rank - 2
    kw: dict[str, Any] = {"align_corners": align_corners} if mode == "linear" else {}
    if size:
        kw["size"] = expand_ints(size, nd, "size")
    else:
        kw["scale_factor"] = tuple(scale) * nd if len(scale) == 1 else tuple(scale)
    return F.interpolate(x, mode=_INTERP_MODE[mode, nd], **kw)


EMITTERS.update({
    "adaptive_avg_pool2d": lambda cx, x, output_size: F.adaptive_avg_pool2d(
        x, expand_ints(output_size, 2, "output_size")),
    "global_avg_pool2d": lambda cx, x: x.mean((2, 3), keepdim=True),
})


@functools.lru_cache(maxsize=256)
def _resize_matrix(n_in: int, axis_scale: float, n_out: int, roi: tuple[float, float],
                   attrs: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Resize along one axis is affine in the input: ``y = M @ x + c``. M and c come from the
    op table's own reference, applied to the identity (and to zeros for c, which is the
    extrapolation value outside a tf_crop_and_resize ROI)."""
    a = dict(attrs)
    c = resize_axis(np.zeros((n_in, 1)), 0, axis_scale, n_out, roi, a)
    m = resize_axis(np.eye(n_in), 0, axis_scale, n_out, roi, a) - c
    return m, c[:, 0]


def _resize(x: torch.Tensor, attrs: tuple) -> torch.Tensor:
    """ONNX Resize at run time, axis by axis, in float64 as the reference computes."""
    a = dict(attrs)
    out, scales = resize_geometry(tuple(x.shape), a)
    rank = x.dim()
    roi = a["roi"] or (0.0,) * rank + (1.0,) * rank
    y = x.to(torch.float64)
    for ax in range(rank):
        if out[ax] == y.shape[ax] and math.isclose(scales[ax], 1.0) and (
                roi[ax], roi[rank + ax]) == (0.0, 1.0):
            continue
        m, c = _resize_matrix(int(y.shape[ax]), float(scales[ax]), int(out[ax]),
                              (roi[ax], roi[rank + ax]), attrs)
        y = torch.tensordot(torch.from_numpy(m), y.movedim(ax, 0), dims=1)
        y = (y + torch.from_numpy(c).reshape((-1,) + (1,) * (rank - 1))).movedim(0, ax)
    if not x.dtype.is_floating_point:
        info = torch.iinfo(x.dtype)
        y = y.round().clamp(info.min, info.max)
    return y.to(x.dtype)


@emits("resize")
def _resize_emit(cx: EmitContext, x, **attrs):
    return cx.call(_resize, x, tuple(sorted(attrs.items())))


# -- normalization ----------------------------------------------------------------------------


@emits("batch_norm")
def _batch_norm(cx: EmitContext, x, mean, var, gamma, beta, eps):
    return F.batch_norm(x, mean, var, gamma, beta, False, 0.0, eps)


@emits("layer_norm", "rms_norm")
def _last_axes_norm(cx: EmitContext, x, gamma, beta=None, *, axis, eps):
    t = cx.in_types[0]
    tail = cx.shape(t.shape[axis % t.rank:])
    if cx.node.op == "rms_norm":
        return F.rms_norm(x, tail, gamma, eps)
    return F.layer_norm(x, tail, gamma, beta, eps)


EMITTERS.update({
    "group_norm": lambda cx, x, gamma, beta, groups, eps: F.group_norm(x, groups, gamma, beta,
                                                                      eps),
    "instance_norm": lambda cx, x, gamma, beta, eps: F.instance_norm(x, weight=gamma, bias=beta,
                                                                     eps=eps),
    "softmax": lambda cx, x, axis: torch.softmax(x, axis),
    "log_softmax": lambda cx, x, axis: torch.log_softmax(x, axis),
    "hardmax": lambda cx, x, axis: torch.zeros_like(x).scatter(
        axis, torch.argmax(x, axis, keepdim=True), 1.0),
})
