"""Elementwise and broadcasting ops: activations, arithmetic, comparisons, selection."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rtinfer.ir.ops.common import broadcast_shapes, need_float, same_dtype
from rtinfer.ir.ops.registry import (
    BROADCAST,
    COMMUTATIVE,
    ELEMENTWISE,
    Attr,
    elementwise_channels,
    op,
)
from rtinfer.ir.types import DType, TensorType


def _same_type(ins: list[TensorType], attrs: dict) -> TensorType:
    return ins[0].with_shape(ins[0].shape)


def _float_same_type(ins: list[TensorType], attrs: dict) -> TensorType:
    need_float(ins[0])
    return _same_type(ins, attrs)


def unary(name: str, ref: Callable[..., np.ndarray], *, float_only: bool = True,
          attrs: dict[str, Attr] | None = None, doc: str = "") -> None:
    """A one-input elementwise op whose output has the input's type."""
    op(name, ["x"], _float_same_type if float_only else _same_type, ref, attrs=attrs,
       traits=[ELEMENTWISE], channels=elementwise_channels, doc=doc)


def binary(name: str, ref: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
           commutative: bool = False, out_dtype: DType | None = None, doc: str = "") -> None:
    """A two-input broadcasting op; output dtype is the inputs' (or ``out_dtype``)."""

    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        dt = same_dtype(ins)
        return TensorType(out_dtype or dt, broadcast_shapes(ins[0].shape, ins[1].shape))

    def ref_cast(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = ref(a, b)
        return np.asarray(out, dtype=(out_dtype.np if out_dtype else a.dtype))

    traits = [ELEMENTWISE, BROADCAST] + ([COMMUTATIVE] if commutative else [])
    op(name, ["a", "b"], infer, ref_cast, traits=traits, channels=elementwise_channels, doc=doc)


# -- activations ------------------------------------------------------------------------------

unary("relu", lambda x: np.maximum(x, x.dtype.type(0)), doc="max(x, 0)")

# -- arithmetic -------------------------------------------------------------------------------

binary("add", np.add, commutative=True, doc="a + b")
binary("sub", np.subtract, doc="a - b")
binary("mul", np.multiply, commutative=True, doc="a * b")
