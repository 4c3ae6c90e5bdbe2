"""Constants."""

from __future__ import annotations

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.constants import tensor_type
from rtinfer.ir.ops.registry import Attr, op
from rtinfer.ir.types import TensorType


def _const_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    t = tensor_type(attrs["value"])
    quant = attrs["quant"]
    if quant is None:
        return t
    if not t.dtype.is_int:
        raise IRError(f"quantization parameters on a {t.dtype} constant (int8 weights are "
                      f"stored as integers)")
    return TensorType(t.dtype, t.shape, quant)  # checks a per-channel axis against the shape


def _const_ref(*, value: np.ndarray, quant=None) -> np.ndarray:
    return value


op("const", [], _const_infer, _const_ref,
   attrs={"value": Attr("tensor"), "quant": Attr("quant", None)},
   doc="A constant tensor (weights, shapes). Its array is immutable and shared by clones. "
       "`quant`: the QuantParams of an integer constant (an int8 weight stored as int8, read "
       "through dequantize); its type carries them, and so does its printed form.")
