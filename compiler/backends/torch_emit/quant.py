"""Emitters of quantize and dequantize (the parameters are the types' ``QuantParams``)."""

from __future__ import annotations

import numpy as np
import torch

from rtinfer.backends.torch_emit.context import EmitContext, emits


def _quant_tensors(scale, zero_point, axis: int | None, rank: int):
    shape = (-1,) + (1,) * (rank - 1 - axis) if axis is not None else ()
    s = torch.as_tensor(np.asarray(scale, np.float32)).reshape(shape)
    zp = torch.as_tensor(np.asarray(zero_point, np.int64)).reshape(shape)
    return s, zp


def _quantize(x: torch.Tensor, scale: tuple, zero_point: tuple, axis: int | None,
              dtype: torch.dtype) -> torch.Tensor:
    s, zp = _quant_tensors(scale, zero_point, axis, x.dim())
    q = torch.round(x.float() / s).double() + zp  # round half to even, then the zero point
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
