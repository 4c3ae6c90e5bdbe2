"""ONNX -> IR rules: QuantizeLinear and DequantizeLinear."""

from __future__ import annotations

import numpy as np

from rtinfer.frontends.onnx_frontend.context import pos_axis, rule, to_float


@rule("QuantizeLinear")
def _quantize(cx, ins):
    x, scale = ins[:2]
    zp = ins[2] if len(ins) > 2 else None
    dtype = zp.type.dtype if zp is not None else cx.dtype(cx.attr("output_dtype", 2) or 2)
    s = np.asarray(cx.array(scale, "QuantizeLinear's scale"), np.float32)
    z = np.asarray(cx.array(zp, "zero point"), np.int64) if zp is not None \
        else np.zeros(s.shape, np.int64)
    if s.ndim > 1:
        raise cx.unsupported("blocked quantization")
    axis = [pos_axis(cx.attr("axis", 1), x.type.rank)] if s.ndim == 1 and s.size > 1 else []
    q = cx.op("quantize", to_float(cx, x, cx.const(np.float32(0))),
              scale=s.reshape(-1).tolist(), zero_point=z.reshape(-1).tolist(), axis=axis,
              dtype=dtype)
    return cx.op("cast", q, dtype=dtype)  # the raw integers, as ONNX returns them


@rule("DequantizeLinear")
def _dequantize(cx, ins):
    x, scale = ins[:2]
    zp = ins[2] if len(ins) > 2 else None
    if scale.type.rank > 1:
        raise cx.unsupported("blocked dequantization")
    bshape = None
    if scale.type.rank == 1 and scale.type.shape[0] != 1:
        axis = pos_axis(cx.attr("axis", 1), x.type.rank)
        bshape = [1] * x.type.rank
        bshape[axis] = scale.type.shape[0]
    # (x - zero_point) * scale, in the scale's float type
    def per_axis(v):
        return cx.op("reshape", v, shape=bshape) if bshape else v

    xf = cx.op("cast", x, dtype=scale.type.dtype)
    if zp is not None:
        xf = cx.op("sub", xf, per_axis(cx.op("cast", zp, dtype=scale.type.dtype)))
    return cx.op("mul", xf, per_axis(scale))
