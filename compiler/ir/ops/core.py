"""Constants."""

from __future__ import annotations

import numpy as np

from rtinfer.ir.constants import tensor_type
from rtinfer.ir.ops.registry import Attr, op


def _const_ref(*, value: np.ndarray) -> np.ndarray:
    return value


op("const", [], lambda ins, a: tensor_type(a["value"]), _const_ref,
   attrs={"value": Attr("tensor")},
   doc="A constant tensor (weights, shapes). Its array is immutable and shared by clones.")
