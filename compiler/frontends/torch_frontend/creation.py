"""Converters of the ATen ops that create tensors: full, arange, tril/triu."""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy

from rtinfer.errors import CaptureError
from rtinfer.frontends.torch_frontend.context import Ctx, aten, converts
from rtinfer.ir.graph import Value
from rtinfer.ir.types import DType

# -- creation ---------------------------------------------------------------------------------


def _filled(cx: Ctx, value: Any, dtype: DType) -> Value:
    shape = cx.out_shape
    if all(isinstance(d, int) for d in shape):
        return cx.const(np.full(shape, value, dtype=dtype.np))
    return cx.op("expand", cx.const(np.array(value, dtype=dtype.np)), shape=shape)


@converts("aten.full.default", "aten.ones.default", "aten.zeros.default",
          "aten.empty.memory_format",
          "aten.full_like.default", "aten.ones_like.default", "aten.zeros_like.default",
          "aten.empty_like.default", "aten.new_ones.default", "aten.new_zeros.default",
          "aten.new_full.default", "aten.new_empty.default", "aten.scalar_tensor.default",
          "aten.empty.default")
def _full(cx: Ctx, fill_value: Any = None, s: Any = None, **_: Any) -> Value:
    t = str(cx.node.target)
    if "ones" in t:
        v = 1
    elif "full" in t or "scalar_tensor" in t:
        v = fill_value if fill_value is not None else s
    else:
        v = 0
    if isinstance(v, Value):
        raise CaptureError("full() with a tensor fill value is not supported")
    if isinstance(v, sympy.Expr):
        raise CaptureError("full() with a symbolic fill value is not supported")
    return _filled(cx, v, cx.out_dtype)


@converts("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(cx: Ctx, start: Any = 0, end: Any = None, step: Any = 1, **_: Any) -> Value:
    if end is None and cx.node.target is aten.arange.default:
        start, end = 0, start
    dt = cx.out_dtype
    start, end, step = (cx.dim(x) if not isinstance(x, float) else x for x in (start, end, step))
    if all(isinstance(x, (int, float)) for x in (start, end, step)):
        return cx.const(np.arange(start, end, step).astype(dt.np))
    # symbolic length: arange(n) = cumsum(ones[n]) - 1, then * step + start
    r = iota(cx, cx.out_shape[0], dt)
    if step != 1:
        r = cx.op("mul", r, cx.scalar(_static(step), dt))
    if start != 0:
        r = cx.op("add", r, cx.scalar(_static(start), dt))
    return r


def iota(cx: Ctx, n: Any, dt: DType) -> Value:
    """[0, 1, ..., n-1] for a symbolic n: cumsum(ones[n]) - 1."""
    ones = cx.op("expand", cx.const(np.array(1, dt.np)), shape=[n])
    return cx.op("sub", cx.op("cumsum", ones, axis=0), cx.const(np.array(1, dt.np)))


def _static(x: Any) -> Any:
    if isinstance(x, sympy.Expr) and not x.is_number:
        raise CaptureError(f"arange with a symbolic start or step ({x}) is not supported")
    return x


@converts("aten.tril.default", "aten.triu.default")
def _tril(cx: Ctx, self: Value, diagonal: int = 0) -> Value:
    r, c = self.type.shape[-2:]
    if not isinstance(r, int) or not isinstance(c, int):
        raise CaptureError("tril/triu of a symbolic-size matrix is not supported")
    fn = np.tril if cx.node.target is aten.tril.default else np.triu
    keep = cx.const(fn(np.ones((r, c), dtype=bool), diagonal))
    return cx.op("where", keep, self, cx.scalar(0, self.type.dtype))
