"""ONNX export rules: quantization (QuantizeLinear, DequantizeLinear)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site
from rtinfer.ir.types import DType


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
