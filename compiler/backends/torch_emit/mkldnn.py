"""oneDNN for inference: its fused conv/linear primitives, prepacked weights, channels-last.

With oneDNN (``trainable=False``) a constant conv2d weight is reordered once, at build time, into
the blocked layout oneDNN's convolution wants for the node's (static) input size, and a constant
linear weight into the layout for its (static) row count; the packed tensors are plain
(non-buffer) attributes of the module, so its buffers and state_dict stay the IR's constants.
A conv's input is made channels-last (a no-op when it already is: every oneDNN conv's output
is), so activations stay NHWC from conv to conv; the graph's 4-d outputs are made contiguous.
The packed weights are a snapshot: writing into the module's constant buffers afterwards does
not change them (``trainable=True`` modules use the buffers / parameters directly).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.fx.proxy import Proxy

from rtinfer.backends.torch_emit.context import EmitContext, attr_name
from rtinfer.ir.types import DType, TensorType

# activation -> (oneDNN eltwise attr, its scalars from (alpha, beta), algorithm)
MKLDNN_ACTIVATIONS: dict[str, tuple[str, Callable[[float, float], list], str | None]] = {
    "none": ("none", lambda a, b: [], None),
    "relu": ("relu", lambda a, b: [], None),
    "leaky_relu": ("leaky_relu", lambda a, b: [a], None),
    "clip": ("hardtanh", lambda a, b: [a, b], None),
    "gelu": ("gelu", lambda a, b: [], "none"),
    "gelu_tanh": ("gelu", lambda a, b: [], "tanh"),
    "silu": ("swish", lambda a, b: [], None),
    "sigmoid": ("sigmoid", lambda a, b: [], None),
    "hardswish": ("hardswish", lambda a, b: [], None),
    "tanh": ("tanh", lambda a, b: [], None),
}
# oneDNN's binary (residual add) post-op takes only "none" and relu after the sum; relu is left
# out for NaN (see mkldnn_keeps_nan) and runs in ATen after the primitive
MKLDNN_BINARY_ACTIVATIONS: dict[str, str | None] = {"none": None}


def mkldnn_keeps_nan(activation: str, alpha: float) -> bool:
    """Whether oneDNN's post-op computes ``activation`` as torch does where its input is NaN.
    Its JIT relu (slope 0) is ``max(x, 0)`` and its clip (hardtanh) ``min(max(x, lo), hi)`` as
    vmaxps/vminps, which return the bound for a NaN x (a NaN pixel through conv+relu came out
    0); those run in ATen after the primitive, whose relu and clamp keep NaN."""
    if activation == "leaky_relu":
        return alpha != 0.0  # a nonzero slope takes oneDNN's compare-and-blend path
    return activation not in ("relu", "clip")

# Below this many input rows a linear is a matrix-vector product: oneDNN's pointwise linear then
# costs ~25 us of fixed overhead per call against ~8 us for ATen's linear + activation (measured
# on a 1x64 -> 128 layer), so small batches take the ATen path.
MIN_MKLDNN_LINEAR_ROWS = 16


@functools.lru_cache(maxsize=1)
def mkldnn_available() -> bool:
    """Whether oneDNN's fused conv/linear ops exist in this torch build and run."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn
        x, w = torch.ones(1, 2, 3, 3), torch.ones(2, 2, 1, 1)
        ops._convolution_pointwise(x, w, None, [0, 0], [1, 1], [1, 1], 1, "relu", [], None)
        ops._convolution_pointwise.binary(x, x, w, None, [0, 0], [1, 1], [1, 1], 1, "add",
                                          None, "relu", [], None)
        ops._linear_pointwise(torch.ones(2, 3), torch.ones(4, 3), None, "relu", [], None)
        ops._linear_pointwise.binary(torch.ones(2, 3), torch.ones(2, 4), torch.ones(4, 3), None,
                                     "add")
    except (AttributeError, RuntimeError):
        return False
    return True


def use_mkldnn(cx: EmitContext) -> bool:
    """Whether this node takes oneDNN's path: inference, f32, and oneDNN present."""
    return (cx.mkldnn and not cx.trainable and cx.in_types[0].dtype is DType.f32
            and mkldnn_available())


def _const_of(cx: EmitContext, proxy: Any) -> torch.Tensor | None:
    """The tensor behind ``proxy`` if it is a constant (non-parameter) attribute of the module."""
    if not isinstance(proxy, Proxy) or proxy.node.op != "get_attr":
        return None
    t = getattr(cx.root, proxy.node.target, None)
    if not isinstance(t, torch.Tensor) or isinstance(t, torch.nn.Parameter) or t.is_mkldnn:
        return None
    return t


def _packed(cx: EmitContext, proxy: Any, key: tuple, make: Callable) -> Proxy | None:
    """A proxy of ``make(constant)``, made once per (constant, key); None if not a constant."""
    t = _const_of(cx, proxy)
    if t is None or t.dtype != torch.float32:
        return None
    k = (proxy.node.target, *key)
    name = cx.packed.get(k)
    if name is None:
        try:
            packed = make(t)
        except RuntimeError:  # a geometry this oneDNN build does not pack: the plain weight
            return None
        name = attr_name(f"{proxy.node.target}_packed", cx.taken, "packed")
        setattr(cx.root, name, packed)
        cx.packed[k] = name
    return Proxy(cx.graph.get_attr(name), cx.tracer)


def _static_shape(t: TensorType) -> list[int] | None:
    if all(isinstance(d, (int, np.integer)) for d in t.shape):
        return [int(d) for d in t.shape]
    return None


def _channels_last(cx: EmitContext, x: Any) -> Any:
    """``x`` with NHWC strides (a copy only the first time an NCHW tensor meets a conv)."""
    if not isinstance(x, Proxy) or x.node in cx.channels_last:
        return x
    y = x.contiguous(memory_format=torch.channels_last)
    cx.channels_last.add(y.node)
    return y


def mkldnn_conv(cx: EmitContext, x, w, bias, geo, residual, attr, scalars, algorithm, *,
                packed_only: bool = True) -> Proxy | None:
    """oneDNN's conv2d (with ``residual`` added before ``attr`` when given) on a prepacked
    weight and channels-last activations. A weight that is not a constant: the plain weight
    (or None when ``packed_only``)."""
    ops = torch.ops.mkldnn
    pads, stride, dilation, groups = geo
    size = _static_shape(cx.in_types[0])
    if len(pads) != 2:  # conv1d: oneDNN's plain path
        pw = None
    elif size is not None:
        pw = _packed(cx, w, ("conv", *map(tuple, geo[:3]), groups, tuple(size)),
                     lambda t: ops._reorder_convolution_weight(t, pads, stride, dilation,
                                                               groups, size))
    else:  # dynamic sizes: oneDNN picks the blocking per call, NHWC weights still help
        pw = _packed(cx, w, ("channels_last",),
                     lambda t: t.contiguous(memory_format=torch.channels_last))
    if pw is None:
        if packed_only:
            return None
        pw = w
    else:
        x = _channels_last(cx, x)
        if residual is not None:
            residual = _channels_last(cx, residual)
    if residual is not None:
        y = cx.call(ops._convolution_pointwise.binary, x, residual, pw, bias, *geo, "add", None,
                    attr, scalars, algorithm)
    else:
        y = cx.call(ops._convolution_pointwise.default, x, pw, bias, *geo, attr, scalars,
                    algorithm)
    if pw is not w:
        cx.channels_last.add(y.node)
    return y


def packed_linear_weight(cx: EmitContext, x, w) -> Any:
    """``w`` reordered for oneDNN's linear at the input's (static) row count, else as is."""
    shape = _static_shape(cx.in_types[0])
    if shape is None or len(shape) < 2:
        return w
    rows = math.prod(shape[:-1])
    pw = _packed(cx, w, ("linear", rows),
                 lambda t: torch.ops.mkldnn._reorder_linear_weight(t, rows))
    return w if pw is None else pw


def few_rows(cx: EmitContext) -> bool:
    """Whether a linear's (static) input has too few rows for oneDNN's linear to pay off."""
    shape = _static_shape(cx.in_types[0])
    return shape is not None and math.prod(shape[:-1]) < MIN_MKLDNN_LINEAR_ROWS


__all__ = ["MIN_MKLDNN_LINEAR_ROWS", "MKLDNN_ACTIVATIONS", "MKLDNN_BINARY_ACTIVATIONS",
           "mkldnn_keeps_nan",
           "few_rows", "mkldnn_available", "mkldnn_conv", "packed_linear_weight", "use_mkldnn"]
