"""Emitters of quantize and dequantize (the parameters are the types' ``QuantParams``)."""

from __future__ import annotations

import numpy as np
import torch

from rtinfer.backends.torch_emit.context import EmitContext, emits
from rtinfer.ir.ops import get_op
from rtinfer.ir.ops.quant import DYNAMIC_LEVELS, QUANTIZED_OPS


def _quant_tensors(scale, zero_point, axis: int | None, rank: int):
    shape = (-1,) + (1,) * (rank - 1 - axis) if axis is not None else ()
    s = torch.as_tensor(np.asarray(scale, np.float32)).reshape(shape)
    zp = torch.as_tensor(np.asarray(zero_point, np.int64)).reshape(shape)
    return s, zp


def _quantize(x: torch.Tensor, scale: tuple, zero_point: tuple, axis: int | None,
              dtype: torch.dtype) -> torch.Tensor:
    s, zp = _quant_tensors(scale, zero_point, axis, x.dim())
    q = torch.round(x.float() / s).double() + zp  # round half to even, then the zero point
    q = torch.where(q.isnan(), zp.to(q.dtype), q)  # NaN: the code of 0.0
    info = torch.iinfo(dtype)
    return q.clamp(info.min, info.max).to(dtype)


def _dequantize(q: torch.Tensor, scale: tuple, zero_point: tuple,
                axis: int | None) -> torch.Tensor:
    s, zp = _quant_tensors(scale, zero_point, axis, q.dim())
    return (q.long() - zp).float() * s


@emits("quantize")
def _quantize_emit(cx: EmitContext, x, scale, zero_point, axis, dtype):
    qp = cx.out_types[0].quant
    return cx.call(_quantize, x, tuple(np.atleast_1d(qp.scale).tolist()),
                   tuple(np.atleast_1d(qp.zero_point).tolist()), qp.axis, dtype.torch)


@emits("dequantize")
def _dequantize_emit(cx: EmitContext, q):
    qp = cx.in_types[0].quant
    return cx.call(_dequantize, q, tuple(np.atleast_1d(qp.scale).tolist()),
                   tuple(np.atleast_1d(qp.zero_point).tolist()), qp.axis)


def _dequantize_value(cx: EmitContext, x, t):
    """``x`` as real values: dequantized when its type is quantized."""
    if t.quant is None:
        return x
    qp = t.quant
    return cx.call(_dequantize, x, tuple(np.atleast_1d(qp.scale).tolist()),
                   tuple(np.atleast_1d(qp.zero_point).tolist()), qp.axis)


def _quantized_emitter(base: str):
    """Fake-quant: the fused fp32 op of the dequantized inputs, then quantize (the reference's
    own definition; the native backend runs these on integers)."""
    from rtinfer.backends.torch_emit.fused import add_epilogue, base_op

    base_attrs = tuple(get_op(base).attrs)

    def emit(cx: EmitContext, x, w, bias, residual, /, **attrs):
        types = cx.in_types
        x, w = _dequantize_value(cx, x, types[0]), _dequantize_value(cx, w, types[1])
        if residual is not None:
            residual = _dequantize_value(cx, residual, types[3])
        own = {k: attrs[k] for k in base_attrs if k in attrs}
        y = base_op(cx, base, x, w, bias, own)
        y = add_epilogue(cx, y, residual, attrs, done_pre=False, done_act=False)
        out = cx.out_types[0]
        if out.quant is None:
            return y
        return cx.call(_quantize, y, (float(out.quant.scale),), (int(out.quant.zero_point),),
                       None, out.dtype.torch)
    return emit


for _base, (_name, _) in QUANTIZED_OPS.items():
    emits(_name)(_quantized_emitter(_base))


def _dynamic_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` quantized to u8 with its run-time range and dequantized, in f32 as
    ``rtinfer.ir.ops.quant.dynamic_row_params`` computes it (bit for bit: the same IEEE ops)."""
    x = x.float()
    bad = ~torch.isfinite(x).all(-1, keepdim=True)  # no range: NaN scale, codes 0, NaN row
    lo = x.amin(-1, keepdim=True).masked_fill(bad, 0.0).clamp(max=0.0)
    hi = x.amax(-1, keepdim=True).masked_fill(bad, 0.0).clamp(min=0.0)
    scale = (hi - lo) / DYNAMIC_LEVELS
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.round(-lo / scale).clamp(0, DYNAMIC_LEVELS)
    q = (torch.round(x / scale) + zp).clamp(0, DYNAMIC_LEVELS).masked_fill(bad, 0.0)
    return (q - zp) * scale.masked_fill(bad, float("nan"))


@emits("qlinear_dynamic")
def _qlinear_dynamic_emit(cx: EmitContext, x, w, bias, residual, /, **attrs):
    from rtinfer.backends.torch_emit.fused import add_epilogue, base_op

    x = cx.call(_dynamic_fake_quant, x)
    w = _dequantize_value(cx, w, cx.in_types[1])
    y = base_op(cx, "linear", x, w, bias, {})
    return add_epilogue(cx, y, residual, attrs, done_pre=False, done_act=False)
