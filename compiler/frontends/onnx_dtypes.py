"""The one table between rtinfer's dtypes and ONNX's ``TensorProto`` element types, read one
way by the ONNX frontend and the other by the exporter."""

from __future__ import annotations

import functools

from rtinfer.ir.types import DType


@functools.cache
def _to_onnx() -> dict[DType, int]:
    from onnx import TensorProto as T  # importing rtinfer needs no onnx; only these lookups do

    return {DType.f64: T.DOUBLE, DType.f32: T.FLOAT, DType.f16: T.FLOAT16,
            DType.bf16: T.BFLOAT16, DType.i64: T.INT64, DType.i32: T.INT32, DType.i16: T.INT16,
            DType.i8: T.INT8, DType.u8: T.UINT8, DType.u16: T.UINT16, DType.u32: T.UINT32,
            DType.u64: T.UINT64, DType.bool: T.BOOL}


@functools.cache
def _from_onnx() -> dict[int, DType]:
    return {v: k for k, v in _to_onnx().items()}


def to_onnx(dt: DType) -> int:
    """The ``TensorProto`` element type of ``dt`` (every rtinfer dtype has one)."""
    return _to_onnx()[dt]


def from_onnx(elem_type: int) -> DType | None:
    """rtinfer's dtype for an ONNX element type; None for one it has none for (FLOAT8, STRING)."""
    return _from_onnx().get(elem_type)


def dtype_problem(elem_type: int, where: str = "") -> str:
    """Why a tensor of ``elem_type`` cannot be captured (``where`` names the tensor)."""
    from onnx import TensorProto

    try:
        name = TensorProto.DataType.Name(elem_type)
    except ValueError:  # not a TensorProto element type at all (a corrupted or future field)
        name = f"<unknown element type {elem_type}>"
    return (f"unsupported dtype {name}{' for ' + where if where else ''} (rtinfer supports "
            f"{', '.join(d.value for d in DType)})")


__all__ = ["dtype_problem", "from_onnx", "to_onnx"]
