"""Constants."""

from __future__ import annotations

import numpy as np

from rtinfer.ir.ops.registry import Attr, op
from rtinfer.ir.types import TensorType


def _const_ref(*, value: np.ndarray) -> np.ndarray:
    return value


op("const", [], lambda ins, a: TensorType.of(a["value"]), _const_ref,
   attrs={"value": Attr("tensor")},
   doc="A constant tensor (weights, shapes). Its array is immutable and shared by clones.")
