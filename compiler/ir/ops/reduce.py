"""Reductions over axes, arg-reductions and cumulative sums.

``axes=[]`` reduces every axis. Results keep the input dtype (integer sums wrap rather than
widen, unlike torch's int64 promotion); f16/bf16 accumulate in f32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.ops.common import need_float, need_no_quant, norm_axes, norm_axis, upcast
from rtinfer.ir.ops.registry import OPAQUE, REDUCE, Attr, PortAxis, op
from rtinfer.ir.types import DType, TensorType


def _reduced(t: TensorType, axes: tuple[int, ...], keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


def _axes(t: TensorType, axes) -> tuple[int, ...]:
    axes = norm_axes(axes, t.rank) if axes else tuple(range(t.rank))
    # a 0-d tensor accepts axis 0 or -1 (as in torch) and has no axis to reduce
    return axes if t.rank else ()


def _reduce_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    """Kept axes flow to the output (shifted left past dropped axes)."""
    t = ins[0]
    axes = _axes(t, attrs["axes"]) if "axes" in attrs else (norm_axis(attrs["axis"], t.rank),)
    groups, j = [], 0
    for i in range(t.rank):
        if i in axes:
            j += attrs["keepdims"]
            continue
        groups.append(frozenset({("in", 0, i), ("out", 0, j)}))
        j += 1
    return groups


def _reduction(name: str, fn: Callable, *, accept: str, doc: str) -> None:
    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        x = ins[0]
        if accept == "float":
            need_float(x, "x")
        elif accept == "numeric" and x.dtype is DType.bool:
            raise IRError(f"{name} needs a numeric input, got bool")
        need_no_quant(ins, "x")
        axes = _axes(x, attrs["axes"])
        if name in ("reduce_max", "reduce_min"):
            for i in axes:
                if x.shape[i] == 0:
                    raise IRError(f"{name} over the empty axis {i} of {x}")
        return x.with_shape(_reduced(x, axes, attrs["keepdims"]))

    def ref(x: np.ndarray, axes, keepdims: bool) -> np.ndarray:
        ax = tuple(a % x.ndim for a in axes) if axes and x.ndim else None
        return np.asarray(fn(upcast(x), axis=ax, keepdims=keepdims)).astype(x.dtype, copy=False)

    op(name, ["x"], infer, ref, attrs={"axes": Attr("ints", ()), "keepdims": Attr("bool", False)},
       traits=[REDUCE], channels=_reduce_channels, doc=doc)


_reduction("reduce_sum", np.sum, accept="numeric", doc="sum over axes ([] = all)")
_reduction("reduce_mean", np.mean, accept="float", doc="mean over axes ([] = all)")
_reduction("reduce_max", np.max, accept="any", doc="max over axes ([] = all)")
_reduction("reduce_min", np.min, accept="any", doc="min over axes ([] = all)")
_reduction("reduce_prod", np.prod, accept="numeric", doc="product over axes ([] = all)")


def _arg(name: str, fn: Callable) -> None:
    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        x = ins[0]
        if x.dtype is DType.bool:
            raise IRError(f"{name} needs a numeric input, got bool")
        axis = norm_axis(attrs["axis"], x.rank)
        if x.rank == 0:  # axis 0 of a 0-d tensor: its one element, index 0 (as in torch)
            return TensorType(DType.i64, ())
        if x.shape[axis] == 0:
            raise IRError(f"{name} over the empty axis {axis} of {x}")
        return TensorType(DType.i64, _reduced(x, (axis,), attrs["keepdims"]))

    def ref(x: np.ndarray, axis: int, keepdims: bool) -> np.ndarray:
        if x.ndim == 0:
            return np.zeros((), np.int64)
        return fn(x, axis=axis, keepdims=keepdims).astype(np.int64)

    what = "largest" if name == "argmax" else "smallest"
    op(name, ["x"], infer, ref, attrs={"axis": Attr("int"), "keepdims": Attr("bool", False)},
       traits=[REDUCE], channels=_reduce_channels,
       doc=f"index of the {what} element along axis (first on ties) -> i64")


_arg("argmax", np.argmax)
_arg("argmin", np.argmin)


def _cumsum_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    if x.dtype is DType.bool:
        raise IRError("cumsum needs a numeric input, got bool")
    need_no_quant(ins, "x")
    norm_axis(attrs["axis"], x.rank)
    return x.with_shape(x.shape)


def _cumsum_ref(x: np.ndarray, axis: int) -> np.ndarray:
    return np.cumsum(upcast(x), axis=axis).astype(x.dtype, copy=False)


def _cumsum_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    axis = norm_axis(attrs["axis"], ins[0].rank)
    return [frozenset({("in", 0, i), ("out", 0, i)}) for i in range(ins[0].rank) if i != axis]


op("cumsum", ["x"], _cumsum_infer, _cumsum_ref, attrs={"axis": Attr("int")}, traits=[OPAQUE],
   channels=_cumsum_channels, doc="inclusive running sum along axis")


def _cumprod_ref(x: np.ndarray, axis: int) -> np.ndarray:
    return np.cumprod(upcast(x), axis=axis).astype(x.dtype, copy=False)


op("cumprod", ["x"], _cumsum_infer, _cumprod_ref, attrs={"axis": Attr("int")}, traits=[OPAQUE],
   channels=_cumsum_channels, doc="inclusive running product along axis")


def _topk_infer(ins: list[TensorType], attrs: dict) -> list[TensorType]:
    x = ins[0]
    need_no_quant(ins, "x")
    if x.dtype is DType.bool:
        raise IRError("topk needs a numeric input, got bool")
    axis = norm_axis(attrs["axis"], x.rank)
    k, n = attrs["k"], x.shape[axis]
    if k < 0 or (isinstance(n, int) and k > n):
        raise IRError(f"k={k} is out of range for axis {axis} of {x}")
    shape = x.shape[:axis] + (k,) + x.shape[axis + 1:]
    return [x.with_shape(shape), TensorType(DType.i64, shape)]


def _topk_ref(x: np.ndarray, k: int, axis: int, largest: bool, sorted: bool):
    # a stable sort keeps equal values in index order (ONNX: the lower index wins a tie)
    key = upcast(x)
    if largest:
        key = -key if key.dtype.kind == "f" else ~key  # ~k = -k - 1 reverses ints, no overflow
    idx = np.take(np.argsort(key, axis=axis, kind="stable"), np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


op("topk", ["x"], _topk_infer, _topk_ref,
   attrs={"k": Attr("int"), "axis": Attr("int", -1), "largest": Attr("bool", True),
          "sorted": Attr("bool", True)},
   traits=[OPAQUE], channels=_cumsum_channels,
   doc="the k largest (or smallest) values along axis and their i64 indices, sorted; ties go "
       "to the lower index (ONNX TopK, torch.topk)")
