"""ONNX -> IR rules: quantization, in rtinfer's QDQ form (docs/int8.md).

- ``QuantizeLinear`` is ``quantize`` (the scale and zero point become its attributes), then a
  ``cast`` to the same integer dtype that drops the ``QuantParams``: ONNX's raw integers, which
  any ONNX op may read.
- ``DequantizeLinear`` is ``dequantize``: of an int8/uint8 initializer, an integer ``const``
  carrying its ``QuantParams`` (the weight stays int8, as ``insert-qdq`` writes it); of a
  ``QuantizeLinear``'s output with the same parameters, the ``quantize`` itself (the cast is
  looked through). Anything else (an int32 bias, an integer graph input, a run-time scale) is
  ``(x - zero_point) * scale`` in floats, folded when constant.
- ``QLinearConv`` / ``QLinearMatMul`` (ONNX Runtime's QOperator format) are
  ``quantize(conv|matmul(dequantize(x), dequantize(w)) + bias)``, which lower-int8 folds into
  ``qconv2d`` / ``qmatmul``.
- ``ConvInteger`` / ``MatMulInteger`` and ``DynamicQuantizeLinear`` (ONNX Runtime's dynamic
  quantization) have run-time zero points and scales, which ``quantize``'s attributes cannot
  hold: they are float arithmetic on integers that floats represent exactly, so they equal ONNX
  Runtime's integer results bit for bit.
"""

from __future__ import annotations

import numpy as np

from rtinfer.frontends.onnx_frontend.context import CONVERTERS, NodeContext, pos_axis, rule
from rtinfer.ir.graph import Value
from rtinfer.ir.ops import get_op
from rtinfer.ir.types import DType, QuantParams, TensorType

_QDTYPES = (DType.i8, DType.u8)  # what DequantizeLinear keeps as a quantized const
_F32_EXACT = 2**24  # every integer up to this magnitude is a float32


# -- quantization parameters ----------------------------------------------------------------------


def _qdtype(cx: NodeContext, zp: Value | None, default: DType, what: str) -> DType:
    if zp is None:
        return default
    dt = zp.type.dtype
    if dt not in (DType.i8, DType.u8, DType.i16, DType.u16, DType.i32):
        raise cx.unsupported(f"{what} zero point of type {dt} (rtinfer quantizes to 8-, 16- "
                             "and 32-bit integers)")
    return dt


def _params(cx: NodeContext, scale: Value | None, zp: Value | None, rank: int, what: str, *,
            axis: int | None = None) -> QuantParams:
    """The constant ``scale``/``zero_point`` inputs as ``QuantParams`` for a tensor of
    ``rank``: per tensor for one value, per channel along ``axis`` (default: the node's
    ``axis`` attribute, ONNX's 1) for a vector. Run-time parameters raise ``NotConstant``
    naming the input and the node."""
    s = np.asarray(cx.array(scale, f"{what} scale"), np.float32)
    z = (np.zeros(s.shape, np.int64) if zp is None
         else np.asarray(cx.array(zp, f"{what} zero point"), np.int64))
    if s.ndim > 1 or z.ndim > 1:
        raise cx.unsupported(f"{what}: blocked quantization (scale {list(s.shape)})")
    if z.size not in (1, s.size):
        raise cx.invalid(f"{what}: {z.size} zero points for {s.size} scales")
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise cx.invalid(f"{what} scale must be finite and positive, got {s.tolist()}")
    if s.size == 1 and z.size == 1:
        return QuantParams(s.reshape(()), z.reshape(()))
    a = pos_axis(cx.attr("axis", 1) if axis is None else axis, rank)
    return QuantParams(s.reshape(-1), np.broadcast_to(z.reshape(-1), (s.size,)).copy(), a)


def _qtype(cx: NodeContext, t: TensorType, dt: DType, qp: QuantParams, what: str) -> TensorType:
    if qp.axis is not None and t.shape[qp.axis] != qp.scale.size:
        raise cx.invalid(f"{what}: {qp.scale.size} scales for axis {qp.axis} of {t}")
    return TensorType(dt, t.shape, qp)


# -- the QDQ building blocks ----------------------------------------------------------------------


def _quantize(cx: NodeContext, x: Value, qp: QuantParams, dt: DType) -> Value:
    """ONNX's quantized integers of ``x``: ``cast(quantize(x))``, the cast dropping the
    QuantParams so that any op may read them (``_dequantize`` looks through it)."""
    if x.type.dtype is not DType.f32:
        x = cx.op("cast", x, dtype=DType.f32)
    axis = [] if qp.axis is None else [qp.axis]
    q = cx.op("quantize", x, scale=np.atleast_1d(qp.scale).tolist(),
              zero_point=np.atleast_1d(qp.zero_point).tolist(), axis=axis, dtype=dt)
    return cx.op("cast", q, dtype=dt)


def _quantized_source(v: Value, qp: QuantParams) -> Value | None:
    """The ``quantize`` output behind ``v`` (``v`` itself, or what ``_quantize``'s cast reads)
    when it carries exactly ``qp`` in ``v``'s dtype."""
    if v.type.quant is not None:
        return v if v.type.quant == qp else None
    p = v.producer
    if p is not None and p.op == "cast" and p.inputs[0].type.dtype is v.type.dtype \
            and p.inputs[0].type.quant == qp:
        return p.inputs[0]
    return None


def _dequantize(cx: NodeContext, v: Value, qp: QuantParams, what: str) -> Value:
    """``scale * (v - zero_point)`` in f32, as a ``dequantize`` wherever the IR can carry the
    parameters: an int8/uint8 constant becomes a quantized ``const`` (kept, not folded: the
    weight stays int8), a ``QuantizeLinear``'s output is read through its ``quantize``."""
    dt = v.type.dtype
    t = _qtype(cx, v.type, dt, qp, what)
    if v.is_const and dt in _QDTYPES:
        w = cx.graph.add_const(v.const_data, provenance=cx.origin, quant=qp)
        return cx.graph.create_node("dequantize", [w], {}, provenance=cx.origin).out
    if v.is_const:  # an int32 bias and the like: a real f32 constant, as the fused ops take
        return cx.const(get_op("dequantize").evaluate([v.const_data], {}, [t])[0])
    src = _quantized_source(v, qp)
    if src is not None:
        return cx.op("dequantize", src)
    return _dequantize_math(cx, v, cx.const(qp.scale), cx.const(qp.zero_point.astype(dt.np)),
                            qp.axis)


def _along(cx: NodeContext, p: Value, axis: int | None, rank: int) -> Value:
    """A parameter vector shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if axis is None or p.type.rank == 0:
        return p
    shape = [1] * rank
    shape[axis] = -1
    return cx.op("reshape", p, shape=shape)


def _dequantize_math(cx: NodeContext, x: Value, scale: Value, zp: Value | None,
                     axis: int | None) -> Value:
    """``(x - zero_point) * scale`` with float ops, in the scale's float type (per channel
    along ``axis`` for vector parameters)."""
    ft, rank = scale.type.dtype, x.type.rank
    xf = cx.op("cast", x, dtype=ft)
    if zp is not None:
        xf = cx.op("sub", xf, _along(cx, cx.op("cast", zp, dtype=ft), axis, rank))
    return cx.op("mul", xf, _along(cx, scale, axis, rank))


def _quantize_math(cx: NodeContext, x: Value, scale: Value, zp: Value | None, axis: int | None,
                   dt: DType) -> Value:
    """``saturate(round_half_even(x / scale) + zero_point)`` with f32 ops, for parameters
    computed at run time (or 16-bit types, which ``quantize`` lacks): exact, as every 16-bit
    integer is an f32."""
    rank = x.type.rank
    y = cx.op("round", cx.op("div", cx.op("cast", x, dtype=DType.f32),
                             _along(cx, cx.op("cast", scale, dtype=DType.f32), axis, rank)))
    if zp is not None:
        y = cx.op("add", y, _along(cx, cx.op("cast", zp, dtype=DType.f32), axis, rank))
    info = np.iinfo(dt.np)
    return cx.op("cast", cx.op("clip", y, min=float(info.min), max=float(info.max)), dtype=dt)


# -- QuantizeLinear / DequantizeLinear ------------------------------------------------------------


@rule("QuantizeLinear")
def _quantize_linear(cx, ins):
    x, scale = ins[:2]
    zp = ins[2] if len(ins) > 2 else None
    # no zero point: output_dtype (opset 21), else ONNX's default, uint8
    dt = _qdtype(cx, zp, cx.dtype(cx.attr("output_dtype", 0) or 2, "output_dtype"),
                 "QuantizeLinear's")
    if dt not in (*_QDTYPES, DType.i32, DType.i16, DType.u16):
        raise cx.unsupported(f"quantization to {dt}")
    if scale.type.rank > 1:
        raise cx.unsupported(f"blocked quantization (scale {scale.type})")
    if dt in (*_QDTYPES, DType.i32) and scale.is_const and (zp is None or zp.is_const):
        qp = _params(cx, scale, zp, x.type.rank, "QuantizeLinear's")
        _qtype(cx, x.type, dt, qp, "QuantizeLinear's")
        return _quantize(cx, x, qp, dt)
    if dt is DType.i32:  # f32 cannot hold every int32: the quantize op's f64 path only
        raise cx.unsupported("quantization to int32 with a scale computed at run time")
    per_channel = scale.type.rank == 1 and scale.type.shape[0] != 1
    axis = pos_axis(cx.attr("axis", 1), x.type.rank) if per_channel else None
    return _quantize_math(cx, x, scale, zp, axis, dt)


@rule("DequantizeLinear")
def _dequantize_linear(cx, ins):
    x, scale = ins[:2]
    zp = ins[2] if len(ins) > 2 else None
    if scale.type.rank > 1:
        raise cx.unsupported("blocked dequantization")
    if x.type.dtype in (*_QDTYPES, DType.i32) and scale.type.dtype is DType.f32 \
            and scale.is_const and (zp is None or zp.is_const):
        return _dequantize(cx, x, _params(cx, scale, zp, x.type.rank, "DequantizeLinear's"),
                           "DequantizeLinear's")
    # a run-time scale or zero point (or another integer type): the arithmetic itself
    per_channel = scale.type.rank == 1 and scale.type.shape[0] != 1
    axis = pos_axis(cx.attr("axis", 1), x.type.rank) if per_channel else None
    return _dequantize_math(cx, x, scale, zp, axis)


# -- QOperator format: QLinearConv, QLinearMatMul -------------------------------------------------


@rule("QLinearConv")
def _qlinear_conv(cx, ins):
    x, xs, xz, w, ws, wz, ys, yz = ins[:8]
    b = ins[8] if len(ins) > 8 else None
    xq = _params(cx, xs, xz, x.type.rank, "x")
    if xq.axis is not None:
        raise cx.unsupported("a per-channel x scale (ONNX takes one per tensor)")
    wq = _params(cx, ws, wz, w.type.rank, "w", axis=0)  # per output channel
    yq = _params(cx, ys, yz, x.type.rank, "y")
    if yq.axis is not None:
        raise cx.unsupported("a per-channel y scale (ONNX takes one per tensor)")
    xd = _dequantize(cx, x, xq, "x")
    wd = _dequantize(cx, w, wq, "w")
    conv_ins = [xd, wd]
    if b is not None:
        # the int32 bias is quantized with scale x_scale * w_scale and zero point 0: its real
        # value, an f32 [C] constant, as the fused ops take it
        bq = QuantParams(xq.scale * wq.scale, np.zeros_like(wq.zero_point),
                         None if wq.axis is None else 0)
        conv_ins.append(_dequantize(cx, b, bq, "B"))
    y = CONVERTERS["Conv"](cx, conv_ins)  # kernel, strides, pads, group: Conv's attributes
    return _quantize(cx, y, yq, _qdtype(cx, yz, DType.u8, "y"))


@rule("QLinearMatMul")
def _qlinear_matmul(cx, ins):
    a, as_, az, b, bs, bz, ys, yz = ins[:8]
    aq = _params(cx, as_, az, a.type.rank, "a")
    if aq.axis is not None:
        raise cx.unsupported("a per-row a scale (rtinfer quantizes activations per tensor)")
    bq = _params(cx, bs, bz, b.type.rank, "b", axis=-1)  # per column of b
    yq = _params(cx, ys, yz, max(a.type.rank, b.type.rank), "y")
    if yq.axis is not None:
        raise cx.unsupported("a per-channel y scale (rtinfer quantizes outputs per tensor)")
    y = cx.op("matmul", _dequantize(cx, a, aq, "a"), _dequantize(cx, b, bq, "b"))
    return _quantize(cx, y, yq, _qdtype(cx, yz, DType.u8, "y"))


# -- dynamic quantization: DynamicQuantizeLinear, ConvInteger, MatMulInteger ----------------------


@rule("DynamicQuantizeLinear")
def _dynamic_quantize_linear(cx, ins):
    """uint8 with parameters from the input's range, as ONNX Runtime computes them:

        lo, hi = min(min(x), 0), max(max(x), 0)
        scale = (hi - lo) / 255, or 1 where hi == lo (ONNX Runtime; the spec would divide by 0)
        zero_point = round_half_even(clip(-lo / scale, 0, 255))
        y = clip(round_half_even(x / scale) + zero_point, 0, 255)
    """
    x = ins[0]
    if x.type.dtype is not DType.f32:
        raise cx.invalid(f"x must be float32, got {x.type}")
    axes = list(range(x.type.rank))
    zero = cx.const(np.float32(0))
    lo = cx.op("minimum", cx.op("reduce_min", x, axes=axes, keepdims=False), zero)
    hi = cx.op("maximum", cx.op("reduce_max", x, axes=axes, keepdims=False), zero)
    span = cx.op("sub", hi, lo)
    scale = cx.op("where", cx.op("equal", span, zero), cx.const(np.float32(1)),
                  cx.op("div", span, cx.const(np.float32(255))))
    zp = cx.op("round", cx.op("clip", cx.op("div", cx.op("neg", lo), scale), min=0.0, max=255.0))
    y = cx.op("clip", cx.op("add", cx.op("round", cx.op("div", x, scale)), zp), min=0.0,
              max=255.0)
    return [cx.op("cast", y, dtype=DType.u8), scale, cx.op("cast", zp, dtype=DType.u8)]


def _offset_range(v: Value, zp: Value | None) -> int:
    """The largest ``|v - zero_point|`` over ``v``'s integer type (``zp`` constant or not)."""
    info = np.iinfo(v.type.dtype.np)
    if zp is None:
        return max(-int(info.min), int(info.max))
    if zp.is_const:
        z = np.asarray(zp.const_data, np.int64)
        return int(max(np.max(z) - info.min, info.max - np.min(z)))
    return int(info.max) - int(info.min)


def _centered(cx: NodeContext, v: Value, zp: Value | None, zp_axis: int | None,
              ft: DType) -> Value:
    """``v - zero_point`` as floats of ``ft`` (exact: both are small integers); the zero point
    per ``zp_axis`` of ``v`` when it is a vector (folded when both are constants)."""
    vf = cx.op("cast", v, dtype=ft)
    if zp is None:
        return vf
    zf = cx.op("cast", zp, dtype=ft)
    if zp.type.rank == 1 and zp_axis is not None and zp_axis != v.type.rank - 1:
        shape = [1] * (v.type.rank - zp_axis)
        shape[0] = -1
        zf = cx.op("reshape", zf, shape=shape)
    return cx.op("sub", vf, zf)


def _integer_float(cx: NodeContext, x: Value, xz: Value | None, w: Value, wz: Value | None,
                   terms: int, w_axis: int) -> DType:
    """The float type in which ``sum (x - xz) * (w - wz)`` over ``terms`` products is exact:
    f32 when every partial sum stays within 2**24 (bounded per output channel from a constant
    weight), f64 otherwise (exact up to 2**53, beyond any real reduction)."""
    x_max = _offset_range(x, xz)
    if w.is_const and (wz is None or wz.is_const):
        wd = np.asarray(w.const_data, np.int64)
        z = 0 if wz is None else np.asarray(wz.const_data, np.int64)
        if np.ndim(z) == 1:
            shape = [1] * wd.ndim
            shape[w_axis] = -1
            z = z.reshape(shape)
        off = np.abs(wd - z)
        per_out = np.moveaxis(off, w_axis, 0).reshape(off.shape[w_axis], -1).sum(axis=1)
        bound = int(per_out.max(initial=0)) * x_max
    else:
        bound = terms * x_max * _offset_range(w, wz)
    return DType.f32 if bound <= _F32_EXACT else DType.f64


def _check_int(cx: NodeContext, v: Value | None, what: str) -> None:
    if v is not None and v.type.dtype not in _QDTYPES:
        raise cx.invalid(f"{what} must be int8 or uint8, got {v.type}")


@rule("ConvInteger")
def _conv_integer(cx, ins):
    x, w = ins[:2]
    xz = ins[2] if len(ins) > 2 else None
    wz = ins[3] if len(ins) > 3 else None
    for v, what in ((x, "x"), (w, "w"), (xz, "x_zero_point"), (wz, "w_zero_point")):
        _check_int(cx, v, what)
    if xz is not None and xz.type.rank > 0 and xz.type.shape != (1,):
        raise cx.invalid(f"x_zero_point must be a scalar, got {xz.type}")
    if w.type.rank < 3 or not all(isinstance(d, int) for d in w.type.shape[1:]):
        raise cx.invalid(f"the weight needs static [O, C/group, *kernel] dims, got {w.type}")
    terms = int(np.prod(w.type.shape[1:]))
    ft = _integer_float(cx, x, xz, w, wz, terms, 0)
    xf = _centered(cx, x, xz, None, ft)
    wf = _centered(cx, w, wz, 0, ft)  # a w_zero_point vector is per output channel
    return cx.op("cast", CONVERTERS["Conv"](cx, [xf, wf]), dtype=DType.i32)


@rule("MatMulInteger")
def _matmul_integer(cx, ins):
    a, b = ins[:2]
    az = ins[2] if len(ins) > 2 else None
    bz = ins[3] if len(ins) > 3 else None
    for v, what in ((a, "A"), (b, "B"), (az, "a_zero_point"), (bz, "b_zero_point")):
        _check_int(cx, v, what)
    if a.type.rank < 1 or b.type.rank < 1 or not isinstance(a.type.shape[-1], int):
        raise cx.invalid(f"A {a.type} and B {b.type} need a static inner dim")
    ft = _integer_float(cx, a, az, b, bz, int(a.type.shape[-1]), b.type.rank - 1)
    # a vector a_zero_point is per row of A (its axis -2), b_zero_point per column of B
    af = _centered(cx, a, az, max(a.type.rank - 2, 0), ft)
    bf = _centered(cx, b, bz, b.type.rank - 1, ft)
    return cx.op("cast", cx.op("matmul", af, bf), dtype=DType.i32)
