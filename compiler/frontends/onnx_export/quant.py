"""ONNX export rules: quantization (QuantizeLinear, DequantizeLinear) and the quantized ops.

An int8 constant that carries ``QuantParams`` exports as an int8 initializer, which its reader
``dequantize`` turns into a DequantizeLinear (per channel with ``axis``). ``qconv2d``,
``qlinear`` and ``qmatmul`` export as the QDQ graph their reference is (docs/int8.md), the form
ONNX Runtime's own quantizer writes and fuses into its integer kernels:

    DequantizeLinear(x), DequantizeLinear(weight) [, DequantizeLinear(residual)]
      -> Conv / Gemm / MatMul (+ bias), the epilogue (residual add, activation)
      -> QuantizeLinear(out_scale, out_zero_point)     (none for out_dtype=f32)
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site
from rtinfer.ir.ops import get_op
from rtinfer.ir.ops.fused import FUSED_OPS
from rtinfer.ir.ops.quant import QUANTIZED_OPS, quant_params
from rtinfer.ir.types import DType, TensorType


def _quant_vectors(e: Emitter, qp, dt: DType) -> tuple[gs.Tensor, gs.Tensor]:
    return e.const(qp.scale, np.float32), e.const(qp.zero_point.astype(dt.np))


def _broadcast_param(a: np.ndarray, axis: int | None, rank: int) -> np.ndarray:
    if axis is None:
        return a
    shape = [1] * rank
    shape[axis] = -1
    return a.reshape(shape)


def _quantize(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    qp, dt = s.out.quant, s.out.dtype
    v = x[0] if s.x.dtype is DType.f32 else e.cast(x[0], DType.f32)
    if dt in (DType.i8, DType.u8):
        attrs = {} if qp.axis is None else {"axis": qp.axis}
        return e.op("QuantizeLinear", [v, *_quant_vectors(e, qp, dt)], attrs)
    # other widths (QuantizeLinear has no int32 output): saturate(rint(x / s) + zp) in f64
    scale = e.const(_broadcast_param(qp.scale, qp.axis, s.x.rank), np.float32)
    q = e.cast(e.op("Round", [e.op("Div", [v, scale])]), DType.f64)
    zp = e.const(_broadcast_param(qp.zero_point, qp.axis, s.x.rank), np.float64)
    info = np.iinfo(dt.np)
    q = e.op("Clip", [e.op("Add", [q, zp]), e.scalar(info.min, DType.f64),
                      e.scalar(info.max, DType.f64)])
    return e.cast(q, dt)


def _dequantize(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    qp, dt = s.x.quant, s.x.dtype
    if dt in (DType.i8, DType.u8):
        attrs = {} if qp.axis is None else {"axis": qp.axis}
        return e.op("DequantizeLinear", [x[0], *_quant_vectors(e, qp, dt)], attrs)
    # (q - zp) * scale, subtracting in int64 as the reference does
    zp = e.const(_broadcast_param(qp.zero_point, qp.axis, s.x.rank), np.int64)
    d = e.cast(e.op("Sub", [e.cast(x[0], DType.i64), zp]), DType.f32)
    return e.op("Mul", [d, e.const(_broadcast_param(qp.scale, qp.axis, s.x.rank), np.float32)])


RULES: dict[str, Rule] = {
    "quantize": _quantize,
    "dequantize": _dequantize,
}


def _real(e: Emitter, s: Site, t: TensorType, x: gs.Tensor) -> gs.Tensor:
    """An input of a quantized op as its real f32 value (a quantized one dequantized)."""
    if t.quant is None:
        return x
    return _dequantize(e, Site(s.node, s.name, [t], [TensorType(DType.f32, t.shape)], {}), [x])


def _quantized(base: str, rules: dict[str, Rule]) -> Rule:
    """q<base>: the fused op's rule over the dequantized inputs, then QuantizeLinear."""
    fused = FUSED_OPS[base]
    fused_attrs = tuple(get_op(fused).attrs)

    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        real_types = [t if t.quant is None else TensorType(DType.f32, t.shape)
                      for t in s.in_types]
        real = [_real(e, s, t, v) for t, v in zip(s.in_types, x, strict=True)]
        out_dt = s.attrs["out_dtype"]
        real_out = TensorType(DType.f32, s.out.shape)
        y = rules[fused](e, Site(s.node, s.name, real_types, [real_out],
                                 {k: s.attrs[k] for k in fused_attrs}), real)
        if out_dt == DType.f32:
            return y
        qp = quant_params(s.out.rank, [s.attrs["out_scale"]], [s.attrs["out_zero_point"]], [])
        return _quantize(e, Site(s.node, s.name, [real_out],
                                 [TensorType(out_dt, s.out.shape, qp)], {}), [y])
    return rule


def _row_fake_quant(e: Emitter, x: gs.Tensor) -> gs.Tensor:
    """``dynamic_row_fake_quant`` (rtinfer.ir.ops.quant) in f32 ONNX ops, step for step: each
    row's range widened to 0, ``scale = (hi - lo) / 255`` (1 where 0), ``zp = rint(-lo /
    scale)``, codes ``clip(rint(x / scale) + zp, 0, 255)``, then ``(q - zp) * scale``. ONNX
    Round rounds half to even, as NumPy's rint does."""
    axes, zero = e.const(np.array([-1], np.int64)), e.scalar(0.0, DType.f32)
    lo = e.op("Min", [e.op("ReduceMin", [x, axes], {"keepdims": 1}), zero])
    hi = e.op("Max", [e.op("ReduceMax", [x, axes], {"keepdims": 1}), zero])
    scale = e.op("Div", [e.op("Sub", [hi, lo]), e.scalar(255.0, DType.f32)])
    scale = e.op("Where", [e.op("Greater", [scale, zero]), scale, e.scalar(1.0, DType.f32)])
    # a row holding NaN or an infinity gives NaN outputs: x - x sums to NaN over such a row
    # and to 0 over any other, and adding it to the scale changes no finite scale
    scale = e.op("Add", [scale, e.op("ReduceSum", [e.op("Sub", [x, x]), axes],
                                     {"keepdims": 1})])
    top = e.scalar(255.0, DType.f32)
    zp = e.op("Clip", [e.op("Round", [e.op("Div", [e.op("Neg", [lo]), scale])]), zero, top])
    q = e.op("Clip", [e.op("Add", [e.op("Round", [e.op("Div", [x, scale])]), zp]), zero, top])
    return e.op("Mul", [e.op("Sub", [q, zp]), scale])


def _weight_by_cast(e: Emitter, t: TensorType, w: gs.Tensor) -> gs.Tensor:
    """A quantized weight as ``(Cast(w) - zero_point) * scale``: not DequantizeLinear, which
    ONNX Runtime's extended optimizations fuse with the MatMul into MatMulNBits, a kernel that
    quantizes the activation itself again (off by whole codes from rtinfer's row codes)."""
    qp = t.quant
    shape = [1] * t.rank
    if qp.axis is not None:
        shape[qp.axis] = -1
    real = e.op("Cast", [w], {"to": TensorProto.FLOAT})
    zp = np.asarray(qp.zero_point, np.float32).reshape(shape if qp.axis is not None else ())
    if np.any(zp != 0):
        real = e.op("Sub", [real, e.const(zp)])
    scale = np.asarray(qp.scale, np.float32).reshape(shape if qp.axis is not None else ())
    return e.op("Mul", [real, e.const(scale)])


def _dynamic_linear(rules: dict[str, Rule]) -> Rule:
    """qlinear_dynamic: its reference, fused_linear over the row-fake-quantized activation and
    the dequantized weight (float ops: ONNX has no per-row dynamic quantization)."""
    fused = FUSED_OPS["linear"]
    fused_attrs = tuple(get_op(fused).attrs)

    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        real_types = [t if t.quant is None else TensorType(DType.f32, t.shape)
                      for t in s.in_types]
        real = [_row_fake_quant(e, x[0])] + [
            v if t.quant is None else _weight_by_cast(e, t, v)
            for t, v in zip(s.in_types[1:], x[1:], strict=True)]
        return rules[fused](e, Site(s.node, s.name, real_types, [s.out],
                                    {k: s.attrs[k] for k in fused_attrs}), real)
    return rule


def quantized_rules(rules: dict[str, Rule]) -> dict[str, Rule]:
    """The rules of qconv2d, qlinear, qmatmul and qlinear_dynamic, emitting through ``rules``
    (the whole table, which holds the fused ops' rules they spell their real computation
    with)."""
    out = {q: _quantized(base, rules) for base, (q, _) in QUANTIZED_OPS.items()}
    out["qlinear_dynamic"] = _dynamic_linear(rules)
    return out
