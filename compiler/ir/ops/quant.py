"""Quantize and dequantize: affine int quantization, ``real = scale * (q - zero_point)``.

``quantize`` encodes its parameters as attributes: ``scale`` (floats), ``zero_point`` (ints,
``[]`` = all zero) and ``axis`` (``[]`` per tensor with one scale, ``[a]`` per channel along
axis ``a`` with one scale per channel). Its output type carries them as ``QuantParams``;
``dequantize`` reads them back from its input type.
"""

from __future__ import annotations

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.ops.common import need_float, need_no_quant, norm_axis
from rtinfer.ir.ops.registry import ELEMENTWISE, KEEP, Attr, op
from rtinfer.ir.types import DType, QuantParams, TensorType

QUANT_DTYPES = (DType.i8, DType.u8, DType.i32)


def quant_params(rank: int, scale, zero_point, axis) -> QuantParams:
    """The QuantParams that ``quantize``'s attributes describe, for an input of ``rank``."""
    if len(axis) > 1:
        raise IRError(f"axis must be [] (per tensor) or one axis, got {list(axis)}")
    if zero_point and len(zero_point) != len(scale):
        raise IRError(f"{len(zero_point)} zero points for {len(scale)} scales")
    zp = list(zero_point) or [0] * len(scale)
    if not axis:
        if len(scale) != 1:
            raise IRError(f"per-tensor quantization takes one scale, got {len(scale)}; give "
                          f"axis=[a] for per-channel")
        return QuantParams(np.float32(scale[0]), np.int64(zp[0]))
    return QuantParams(np.asarray(scale, np.float32), np.asarray(zp, np.int64),
                       norm_axis(axis[0], rank))


def _quantize_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    need_float(x, "x")
    need_no_quant(ins, "x")
    qp = quant_params(x.rank, attrs["scale"], attrs["zero_point"], attrs["axis"])
    info = np.iinfo(attrs["dtype"].np)
    if np.any(qp.zero_point < info.min) or np.any(qp.zero_point > info.max):
        raise IRError(f"zero points {qp.zero_point.tolist()} do not fit {attrs['dtype']}")
    return TensorType(attrs["dtype"], x.shape, qp)


def _broadcast(qp: QuantParams, rank: int) -> tuple[np.ndarray, np.ndarray]:
    if qp.axis is None:
        return qp.scale, qp.zero_point
    shape = [1] * rank
    shape[qp.axis] = -1
    return qp.scale.reshape(shape), qp.zero_point.reshape(shape)


def _quantize_ref(x: np.ndarray, scale, zero_point, axis, dtype: DType) -> np.ndarray:
    s, zp = _broadcast(quant_params(x.ndim, scale, zero_point, axis), x.ndim)
    q = np.rint(x.astype(np.float32) / s).astype(np.float64) + zp  # rint: half to even
    info = np.iinfo(dtype.np)
    return np.clip(q, info.min, info.max).astype(dtype.np)


op("quantize", ["x"], _quantize_infer, _quantize_ref,
   attrs={"scale": Attr("floats"), "zero_point": Attr("ints", ()), "axis": Attr("ints", ()),
          "dtype": Attr("dtype", DType.i8, QUANT_DTYPES)},
   traits=[ELEMENTWISE, KEEP],
   doc="q = saturate(round_half_even(x / scale) + zero_point) to dtype (ONNX QuantizeLinear: "
       "rounds before adding the zero point); axis=[] per tensor, [a] per channel; the output "
       "type carries the QuantParams")


def _dequantize_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    q = ins[0]
    if q.quant is None:
        raise IRError(f"input {q} has no quantization parameters")
    return TensorType(DType.f32, q.shape)


def _dequantize_ref(q: np.ndarray, in_types: list[TensorType]) -> np.ndarray:
    qp = in_types[0].quant
    if qp is None:
        raise IRError(f"dequantize: input {in_types[0]} has no quantization parameters")
    s, zp = _broadcast(qp, q.ndim)
    return ((q.astype(np.int64) - zp).astype(np.float32) * s).astype(np.float32)


op("dequantize", ["q"], _dequantize_infer, _dequantize_ref, traits=[ELEMENTWISE, KEEP],
   ref_types=True,
   doc="scale * (q - zero_point) -> f32, with the QuantParams of the input type")
