"""Converters of the neural-network ATen ops: linear algebra, convolution, pooling, resizing,
normalization and attention."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rtinfer.errors import CaptureError
from rtinfer.frontends.torch_frontend.context import Ctx, aten, converts
from rtinfer.ir.graph import Value
from rtinfer.ir.types import DType

# -- linear algebra ---------------------------------------------------------------------------


@converts("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _mm(cx: Ctx, self: Value, other: Value = None, mat2: Value = None) -> Value:
    b = other if other is not None else mat2
    if cx.node.target is aten.bmm.default:
        return cx.op("bmm", self, b)
    return cx.op("matmul", self, b)


@converts("aten.addmm.default", "aten.baddbmm.default")
def _addmm(cx: Ctx, self: Value, mat1: Value = None, mat2: Value = None, batch1: Value = None,
           batch2: Value = None, beta: Any = 1, alpha: Any = 1) -> Value:
    if batch1 is not None:
        p = cx.op("bmm", batch1, batch2)
    else:
        p = cx.op("matmul", mat1, mat2)
    dt = p.type.dtype
    if alpha != 1:
        p = cx.op("mul", p, cx.scalar(alpha, dt))
    bias = self if beta == 1 else cx.op("mul", self, cx.scalar(beta, dt))
    if beta == 0:
        return p
    return cx.op("add", p, bias)


@converts("aten.linear.default")
def _linear(cx: Ctx, input: Value, weight: Value, bias: Value | None = None) -> Value:
    return cx.op("linear", input, weight, bias)


@converts("aten.convolution.default", "aten.conv1d.default", "aten.conv2d.default")
def _conv(cx: Ctx, input: Value, weight: Value, bias: Value | None = None, stride: Any = 1,
          padding: Any = 0, dilation: Any = 1, transposed: bool = False,
          output_padding: Any = 0, groups: int = 1) -> Value:
    nd = weight.type.rank - 2
    if nd not in (1, 2):
        raise CaptureError(f"{nd}-d convolution is not supported (the IR has conv1d, conv2d)")
    if isinstance(padding, str):
        raise CaptureError(f"convolution padding={padding!r} is not supported")

    def ints(v: Any) -> list[int]:
        v = [v] if isinstance(v, int) else list(v)
        return v * nd if len(v) == 1 else v

    pad = ints(padding)
    attrs = dict(stride=ints(stride), pad=pad + pad, dilation=ints(dilation), groups=groups)
    if transposed:
        return cx.op(f"conv_transpose{nd}d", input, weight, bias,
                     output_padding=ints(output_padding), **attrs)
    return cx.op(f"conv{nd}d", input, weight, bias, **attrs)


# -- pooling, resize --------------------------------------------------------------------------


def _pool_args(kernel_size: Any, stride: Any, padding: Any, nd: int) -> tuple:
    def ints(v: Any) -> list[int]:
        v = [v] if isinstance(v, int) else list(v)
        return v * nd if len(v) == 1 else v
    k = ints(kernel_size)
    s = ints(stride) if stride not in (None, []) else k
    p = ints(padding)
    return k, s, p + p


@converts("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default",
          "aten.max_pool1d.default", "aten.max_pool1d_with_indices.default")
def _max_pool(cx: Ctx, self: Value, kernel_size: Any, stride: Any = None, padding: Any = 0,
              dilation: Any = 1, ceil_mode: bool = False) -> Value | list:
    nd = self.type.rank - 2
    k, s, p = _pool_args(kernel_size, stride, padding, nd)
    d = [dilation] * nd if isinstance(dilation, int) else list(dilation)
    d = d * nd if len(d) == 1 else d
    out = cx.op(f"max_pool{nd}d", self, kernel=k, stride=s, pad=p, dilation=d,
                ceil_mode=ceil_mode)
    if "with_indices" in str(cx.node.target):
        return [out, None]  # indices: unsupported if used (getitem reports it)
    return out


@converts("aten.avg_pool2d.default", "aten.avg_pool1d.default")
def _avg_pool(cx: Ctx, self: Value, kernel_size: Any, stride: Any = None, padding: Any = 0,
              ceil_mode: bool = False, count_include_pad: bool = True,
              divisor_override: Any = None) -> Value:
    nd = self.type.rank - 2
    k, s, p = _pool_args(kernel_size, stride, padding, nd)
    if divisor_override is None:
        return cx.op(f"avg_pool{nd}d", self, kernel=k, stride=s, pad=p, ceil_mode=ceil_mode,
                     count_include_pad=count_include_pad)
    # window sum / divisor_override. The mean counting the padding divides each window's sum by
    # its size clipped to the padded input (torch: end = min(start + k, in + pad)), which is
    # prod(k) except for the last windows under ceil_mode: multiply that size back per position.
    ins, outs = self.type.shape[2:], cx.out_shape[2:]
    if not all(isinstance(d, int) for d in (*ins, *outs)):
        raise CaptureError("avg_pool with divisor_override over symbolic sizes is not supported")
    size = np.ones((), np.float64)
    for n_in, n_out, kk, ss, pp in zip(ins, outs, k, s, p[:nd], strict=True):
        start = np.arange(n_out) * ss - pp
        size = np.multiply.outer(size, np.minimum(start + kk, n_in + pp) - start)
    mean = cx.op(f"avg_pool{nd}d", self, kernel=k, stride=s, pad=p, ceil_mode=ceil_mode,
                 count_include_pad=True)
    return cx.op("mul", mean, cx.const(size / divisor_override, mean.type.dtype))


@converts("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default")
def _adaptive_avg_pool(cx: Ctx, self: Value, output_size: Any) -> Value:
    size = [cx.dim(d) for d in output_size]
    x = self
    if x.type.rank == 3:  # unbatched [C, H, W]: a batch of one
        x = cx.op("unsqueeze", x, axes=[0])
    if size == [1, 1]:
        y = cx.op("global_avg_pool2d", x)
    else:
        y = cx.op("adaptive_avg_pool2d", x, output_size=size)
    return cx.op("squeeze", y, axes=[0]) if self.type.rank == 3 else y


@converts("aten.upsample_nearest2d.vec", "aten.upsample_bilinear2d.vec",
          "aten.upsample_nearest2d.default", "aten.upsample_bilinear2d.default")
def _upsample(cx: Ctx, input: Value = None, self: Value = None, output_size: Any = None,
              align_corners: bool | None = None, scale_factors: Any = None,
              scales_h: Any = None, scales_w: Any = None) -> Value:
    x = input if input is not None else self
    mode = "nearest" if "nearest" in str(cx.node.target) else "linear"
    size = [int(cx.dim(d)) for d in cx.out_shape[2:]]
    corners = bool(align_corners) and mode == "linear"
    scales = list(scale_factors) if scale_factors else (
        [scales_h, scales_w] if scales_h is not None and scales_w is not None else None)
    # torch maps output to input coordinates by 1/scale when a scale is given, by in/out
    # otherwise; those differ when in * scale is not whole (5 * 1.7 -> 8, 1/1.7 != 5/8), so
    # the scale is kept where it gives the same output size
    if scales and not corners and all(
            isinstance(d, int) and math.floor(d * f) == o
            for d, f, o in zip(x.type.shape[2:], scales, size, strict=True)):
        return cx.op("interpolate", x, scale=[float(f) for f in scales], mode=mode)
    return cx.op("interpolate", x, size=size, mode=mode, align_corners=corners)


# -- normalization ----------------------------------------------------------------------------


@converts("aten._native_batch_norm_legit_no_training.default")
def _batch_norm(cx: Ctx, input: Value, weight: Value | None, bias: Value | None,
                running_mean: Value, running_var: Value, momentum: float,
                eps: float) -> list:
    return [cx.op("batch_norm", input, running_mean, running_var, weight, bias, eps=eps),
            None, None]


@converts("aten.batch_norm.default")
def _batch_norm_full(cx: Ctx, input: Value, weight: Value | None, bias: Value | None,
                     running_mean: Value, running_var: Value, training: bool,
                     momentum: float, eps: float, cudnn_enabled: bool = False) -> Value:
    return cx.op("batch_norm", input, running_mean, running_var, weight, bias, eps=eps)


@converts("aten.native_layer_norm.default", "aten.layer_norm.default")
def _layer_norm(cx: Ctx, input: Value, normalized_shape: Any, weight: Value | None = None,
                bias: Value | None = None, eps: float = 1e-5, **_: Any) -> Any:
    axis = input.type.rank - len(normalized_shape)
    if weight is None and bias is not None:
        weight = cx.const(np.ones([int(d) for d in normalized_shape]), input.type.dtype)
    y = cx.op("layer_norm", input, weight, bias, axis=axis, eps=eps)
    return [y, None, None] if cx.node.target is aten.native_layer_norm.default else y


@converts("aten.native_group_norm.default", "aten.group_norm.default")
def _group_norm(cx: Ctx, input: Value, weight: Value | None = None, bias: Value | None = None,
                N: Any = None, C: Any = None, HxW: Any = None, group: int = 1,
                num_groups: int = 1, eps: float = 1e-5, **_: Any) -> Any:
    native = cx.node.target is aten.native_group_norm.default
    g = group if native else num_groups
    y = cx.op("group_norm", input, weight, bias, groups=g, eps=eps)
    return [y, None, None] if native else y


@converts("aten.rms_norm.default")
def _rms_norm(cx: Ctx, input: Value, normalized_shape: Any, weight: Value | None = None,
              eps: float | None = None) -> Value:
    eps = float(torch.finfo(input.type.dtype.torch).eps) if eps is None else eps
    return cx.op("rms_norm", input, weight, axis=input.type.rank - len(normalized_shape),
                 eps=eps)


@converts("aten.scaled_dot_product_attention.default")
def _sdpa(cx: Ctx, query: Value, key: Value, value: Value, attn_mask: Value | None = None,
          dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
          enable_gqa: bool = False) -> Value:
    if enable_gqa and key.type.shape[-3] != query.type.shape[-3]:
        rep = query.type.shape[-3] // key.type.shape[-3]
        key = _repeat_heads(cx, key, rep)
        value = _repeat_heads(cx, value, rep)
    if attn_mask is not None and attn_mask.type.dtype not in (DType.bool, query.type.dtype):
        attn_mask = cx.cast(attn_mask, query.type.dtype)
    return cx.op("scaled_dot_product_attention", query, key, value, attn_mask,
                 scale=scale or 0.0, causal=bool(is_causal))


def _repeat_heads(cx: Ctx, x: Value, rep: int) -> Value:
    s = x.type.shape
    e = cx.op("expand", cx.op("unsqueeze", x, axes=[len(s) - 2]),
              shape=(*s[:-2], rep, *s[-2:]))
    return cx.op("reshape", e, shape=(*s[:-3], s[-3] * rep, *s[-2:]))
