"""int8 (docs/int8.md): quantize and dequantize as rtinfer's own loops, and the quantized heavy
ops (qconv2d, qlinear, qmatmul with a constant weight) as oneDNN int8 primitives: u8/i8
activations with a zero point, symmetric i8 weights (per tensor or per output channel) prepacked
once, an f32 bias, the fused epilogue as post-ops, and a requantized (u8/i8) or f32 output.
Activations stay NHWC from conv to conv as the f32 ones do; int8 max pooling is in ``pool``, and
the shape ops (views and copies) move int8 bytes as they move any others.

Without VNNI, oneDNN multiplies u8 x s8 pairs with ``vpmaddubsw``, whose int16 pair sums
saturate: ``reduced_weight_range`` says when weights must stay within +-63 for exact results.
"""

from __future__ import annotations

import math

import numpy as np

from rtinfer.backends.native.conv import _conv_window
from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.backends.native.plan import View
from rtinfer.ir.graph import Node, Value
from rtinfer.ir.types import DType, QuantParams
from rtinfer.kernels import build

INT8 = (DType.u8, DType.i8)
# the weight range that never saturates vpmaddubsw's int16 pair sums: 255 * 63 * 2 < 2**15
REDUCED_WEIGHT_MAX = 63
FULL_WEIGHT_MAX = 127


def reduced_weight_range(level: str | None = None) -> bool:
    """Whether int8 weights must stay within +-63 (``REDUCED_WEIGHT_MAX``) on the native
    backend's CPU level ``level`` (default: the level in use) for its int8 kernels to be exact:
    True where oneDNN runs without VNNI (its u8 x s8 products then pass through int16 pair sums
    that saturate past 32767, e.g. 255 * 127 * 2). oneDNN's ISA is fixed per process by the
    first extension loaded (``$RTINFER_CPU_ISA`` caps it), so the answer is for this process."""
    return not build.load(level=level).onednn_has_vnni()


def weight_max(level: str | None = None) -> int:
    """The largest int8 weight magnitude exact at ``level``: 127, or 63 without VNNI."""
    return REDUCED_WEIGHT_MAX if reduced_weight_range(level) else FULL_WEIGHT_MAX


def _params(qp: QuantParams) -> tuple[list[float], list[int]]:
    return (np.atleast_1d(qp.scale).astype(float).tolist(),
            np.atleast_1d(qp.zero_point).astype(int).tolist())


def _extent(view: View, axis: int | None) -> tuple[int, int, int]:
    """[outer, channels, inner] of ``view``'s bytes for a per-tensor (``axis`` None) or a
    per-channel map (a plain view, or NHWC along the channels)."""
    if axis is None:
        return 1, 1, view.numel
    if view.nhwc:  # axis 1 of [N, C, H, W] stored [N, H, W, C]
        n, c, h, w = view.shape
        return n * h * w, c, 1
    return (math.prod(view.shape[:axis]), view.shape[axis], math.prod(view.shape[axis + 1:]))


def _layout_input(cx: Lowerer, v: Value, axis: int | None) -> View:
    """``v`` as it lies where the map allows (per tensor: any dense layout; per channel along
    the channels: NHWC too), else plain."""
    x = cx.view(v)
    if x.nhwc and x.offset == 0 and (axis is None or axis == 1):
        return x
    return cx.plain(v)


def _affine_step(cx: Lowerer, x: View, y: View, qp: QuantParams, dtype: DType,
                 dequantize: bool) -> None:
    axis = None if qp.axis is None else qp.axis % len(x.shape)
    outer, channels, inner = _extent(x, axis)
    scale, zp = _params(qp)
    args = (cx.base_pointer(x), y.buf, outer, channels, inner, scale, zp, str(dtype), dequantize)
    kind = "dequantize" if dequantize else "quantize"
    cx.step(kind, lambda ext, plan, name: ext.add_quantize(plan, name, *args), [args[0]],
            [y.buf])


def _feeds_qconv_only(cx: Lowerer, v: Value) -> bool:
    """Whether every use of ``v`` is the source of an NCHW qconv2d (which reads it NHWC)."""
    return bool(v.uses) and not cx.graph.is_output(v) and all(
        n.op == "qconv2d" and slot == 0 and n.attrs.get("layout", "NCHW") == "NCHW"
        for n, slot in v.uses)


def _quantize_to_nhwc(cx: Lowerer, node: Node) -> bool:
    """An NCHW f32 image quantized for the convolutions that read it NHWC: one step writes the
    NHWC codes (a quantize, then a byte reorder of a 3-channel image, cost ResNet-18 0.26 ms).
    False: the usual quantize."""
    qp = node.out.type.quant
    x = cx.view(node.inputs[0])
    if (len(x.shape) != 4 or x.nhwc or not x.contiguous or x.dtype is not DType.f32
            or qp.axis is not None or node.out.type.dtype not in INT8
            or x.shape[1] > 16 or not _feeds_qconv_only(cx, node.out)):
        return False
    n, c, h, w = x.shape
    y = cx.new_value(node.out, nhwc=True)
    scale, zp = _params(qp)
    args = (cx.base_pointer(x), y.buf, n, c, h * w, scale, zp, str(node.out.type.dtype))
    cx.step("quantize to NHWC", lambda ext, plan, name: ext.add_quantize_nhwc(plan, name, *args),
            [args[0]], [y.buf])
    return True


@lowers("quantize")
def _quantize(cx: Lowerer, node: Node) -> None:
    if _quantize_to_nhwc(cx, node):
        return
    qp = node.out.type.quant
    x = _layout_input(cx, node.inputs[0], qp.axis)
    cx.need_f32(x)
    y = cx.new_value(node.out, nhwc=x.nhwc)
    _affine_step(cx, x, y, qp, node.out.type.dtype, dequantize=False)


@lowers("dequantize")
def _dequantize(cx: Lowerer, node: Node) -> None:
    t = node.inputs[0].type
    x = _layout_input(cx, node.inputs[0], t.quant.axis)
    if x.dtype not in (*INT8, DType.i32):
        raise cx.unsupported(f"dequantize of {x.dtype}")
    y = cx.new_value(node.out, nhwc=x.nhwc)
    _affine_step(cx, x, y, t.quant, t.dtype, dequantize=True)


# -- the quantized heavy ops ------------------------------------------------------------------


def _act(cx: Lowerer, v: Value) -> tuple[str, float, int]:
    """(dtype, scale, zero point) of a per-tensor quantized activation."""
    t = v.type
    if t.dtype not in INT8 or t.quant is None or t.quant.per_channel:
        raise cx.unsupported(f"the activation must be u8/i8 quantized per tensor, got {t}")
    return str(t.dtype), float(t.quant.scale), int(t.quant.zero_point)


def _weight(cx: Lowerer, v: Value):
    w = cx.const_tensor(v)
    qp = v.type.quant
    if w is None or qp is None or v.type.dtype != DType.i8:
        raise cx.unsupported("the weight is not a constant i8 tensor with QuantParams")
    if np.any(qp.zero_point != 0):
        raise cx.unsupported("the weight is not quantized symmetrically")
    return w, np.atleast_1d(qp.scale).astype(float).tolist()


def _bias(cx: Lowerer, node: Node):
    if len(node.inputs) < 3:
        return None
    b = cx.const_tensor(node.inputs[2])
    if b is None or node.inputs[2].type.dtype != DType.f32:
        raise cx.unsupported("the bias is not a constant f32 tensor")
    return b


def _out(node: Node) -> tuple[str, float, int]:
    a = node.attrs
    return str(a["out_dtype"]), float(a["out_scale"]), int(a["out_zero_point"])


def _residual(cx: Lowerer, node: Node, nhwc: bool, out_dtype: str) -> tuple[View | None, tuple]:
    """The residual's view in the output's layout and (dtype, scale, zero point); a quantized
    residual of an f32 output is dequantized first (oneDNN's sum post-op needs same-size
    types)."""
    if node.attrs.get("residual", "none") == "none":
        return None, ("f32", 1.0, 0)
    v = node.inputs[3]
    r = cx.as_nhwc(v) if nhwc else cx.plain(v)
    t = v.type
    if t.quant is None:
        cx.need_f32(r)
        return r, ("f32", 1.0, 0)
    if t.dtype not in INT8 or t.quant.per_channel:
        raise cx.unsupported(f"a residual of {t}")
    if out_dtype != "f32":
        return r, (str(t.dtype), float(t.quant.scale), int(t.quant.zero_point))
    real = cx.scratch_view(r.shape, DType.f32, nhwc=r.nhwc)
    _affine_step(cx, r, real, t.quant, t.dtype, dequantize=True)
    return real, ("f32", 1.0, 0)


@lowers("qconv2d")
def _qconv2d(cx: Lowerer, node: Node) -> None:
    a = node.attrs
    if a.get("layout", "NCHW") != "NCHW":
        raise cx.unsupported("an NHWC-attributed qconv2d")
    src_dt, src_scale, src_zp = _act(cx, node.inputs[0])
    w, w_scales = _weight(cx, node.inputs[1])
    bias = _bias(cx, node)
    out_dt, out_scale, out_zp = _out(node)
    src = cx.as_nhwc(node.inputs[0])
    y = cx.new_value(node.out, nhwc=True)
    residual, (res_dt, res_scale, res_zp) = _residual(cx, node, True, out_dt)
    res_buf = cx.base_pointer(residual) if residual is not None else -1
    stride, pad, dil = _conv_window(a, 2)
    args = (cx.base_pointer(src), y.buf, res_buf, list(src.shape), src_dt, src_scale, src_zp, w,
            w_scales, bias, stride, pad[:2], pad[2:], dil, int(a["groups"]),
            a.get("activation", "none"), float(a.get("alpha", 0.0)), float(a.get("beta", 0.0)),
            a.get("residual", "none"), res_dt, res_scale, res_zp, out_dt, out_scale, out_zp,
            cx.threads, list(y.shape))
    reads = [args[0]] + ([res_buf] if residual is not None else [])
    cx.step("oneDNN int8 conv", lambda ext, plan, name: ext.add_qconv(plan, name, *args), reads,
            [y.buf])


def _qmatmul_step(cx: Lowerer, node: Node, w_kn, w_scales: list[float]) -> None:
    src_dt, src_scale, src_zp = _act(cx, node.inputs[0])
    x = cx.plain(node.inputs[0])
    if len(x.shape) < 1 or x.shape[-1] != w_kn.shape[0]:
        raise cx.unsupported(f"an operand of shape {x.shape} for a [{w_kn.shape[0]}, "
                             f"{w_kn.shape[1]}] weight")
    bias = _bias(cx, node)
    out_dt, out_scale, out_zp = _out(node)
    y = cx.new_value(node.out)
    residual, (res_dt, res_scale, res_zp) = _residual(cx, node, False, out_dt)
    res_buf = cx.base_pointer(residual) if residual is not None else -1
    a = node.attrs
    rows = math.prod(x.shape[:-1])
    args = (cx.base_pointer(x), y.buf, res_buf, rows, src_dt, src_scale, src_zp, w_kn, w_scales,
            bias, a.get("activation", "none"), float(a.get("alpha", 0.0)),
            float(a.get("beta", 0.0)), a.get("residual", "none"), res_dt, res_scale, res_zp,
            out_dt, out_scale, out_zp, cx.threads)
    reads = [args[0]] + ([res_buf] if residual is not None else [])
    cx.step("oneDNN int8 matmul", lambda ext, plan, name: ext.add_qmatmul(plan, name, *args),
            reads, [y.buf])


@lowers("qlinear")
def _qlinear(cx: Lowerer, node: Node) -> None:
    w, w_scales = _weight(cx, node.inputs[1])  # [N, K], scales along N
    _qmatmul_step(cx, node, w.t().contiguous(), w_scales)


@lowers("qmatmul")
def _qmatmul(cx: Lowerer, node: Node) -> None:
    b = node.inputs[1]
    if not b.is_const:
        raise cx.unsupported("an activation x activation qmatmul (no native int8 kernel yet)")
    if len(b.type.shape) != 2:
        raise cx.unsupported("a batched constant qmatmul weight")
    w, w_scales = _weight(cx, b)  # [K, N], scales along N (the last axis)
    _qmatmul_step(cx, node, w, w_scales)


__all__ = ["FULL_WEIGHT_MAX", "REDUCED_WEIGHT_MAX", "reduced_weight_range", "weight_max"]
