"""Converters of softmax and the reductions."""

from __future__ import annotations

import math
import operator
from typing import Any

from rtinfer.errors import CaptureError
from rtinfer.frontends.torch_frontend.context import Converter, Ctx, converts, ir_dtype, norm_axes
from rtinfer.ir.graph import Value
from rtinfer.ir.types import DType

# -- softmax, reductions ----------------------------------------------------------------------


@converts("aten._softmax.default", "aten.softmax.int", "aten._log_softmax.default",
          "aten.log_softmax.int")
def _softmax(cx: Ctx, self: Value, dim: int, half_to_float: bool = False,
             dtype: Any = None) -> Value:
    if dtype is not None:
        self = cx.cast(self, ir_dtype(dtype))
    name = "log_softmax" if "log" in str(cx.node.target) else "softmax"
    return cx.op(name, self, axis=dim)


def _reduce(ir_op: str) -> Converter:
    def conv(cx: Ctx, self: Value, dim: Any = None, keepdim: bool = False,
             dtype: Any = None) -> Value:
        x = self
        if dtype is not None:
            x = cx.cast(x, ir_dtype(dtype))
        elif x.type.dtype != cx.out_dtype:  # sum of bools/ints promotes to i64
            x = cx.cast(x, cx.out_dtype)
        axes = [] if dim in (None, []) else norm_axes(dim, x.type.rank)
        return cx.op(ir_op, x, axes=axes, keepdims=bool(keepdim))
    return conv


converts("aten.sum.dim_IntList", "aten.sum.default")(_reduce("reduce_sum"))
converts("aten.mean.dim", "aten.mean.default")(_reduce("reduce_mean"))
converts("aten.amax.default", "aten.max.default")(_reduce("reduce_max"))
converts("aten.amin.default", "aten.min.default")(_reduce("reduce_min"))
converts("aten.prod.dim_int", "aten.prod.default")(_reduce("reduce_prod"))


@converts("aten.any.default", "aten.any.dim", "aten.any.dims", "aten.all.default",
          "aten.all.dim", "aten.all.dims")
def _any_all(cx: Ctx, self: Value, dim: Any = None, keepdim: bool = False) -> Value:
    # any = max over bools, all = min; torch reads any nonzero (NaN too) as true
    x = self
    if x.type.dtype is not DType.bool:
        x = cx.op("not_equal", x, cx.scalar(0, x.type.dtype))
    axes = [] if dim in (None, []) else norm_axes(dim, x.type.rank)
    red = "reduce_max" if "any" in str(cx.node.target) else "reduce_min"
    return cx.cast(cx.op(red, x, axes=axes, keepdims=bool(keepdim)), cx.out_dtype)


@converts("aten.max.dim", "aten.min.dim")
def _max_dim(cx: Ctx, self: Value, dim: int, keepdim: bool = False) -> list[Value]:
    is_max = "max" in str(cx.node.target)
    users = {u.args[1] for u in cx.node.users if u.target is operator.getitem}
    vals = cx.op("reduce_max" if is_max else "reduce_min", self, axes=[dim],
                 keepdims=keepdim) if 0 in users else None
    idx = cx.op("argmax" if is_max else "argmin", self, axis=dim,
                keepdims=keepdim) if 1 in users else None
    return [vals, idx]


@converts("aten.argmax.default", "aten.argmin.default")
def _argmax(cx: Ctx, self: Value, dim: int | None = None, keepdim: bool = False) -> Value:
    name = "argmax" if "argmax" in str(cx.node.target) else "argmin"
    if dim is None:
        flat = cx.op("reshape", self, shape=[-1])
        out = cx.op(name, flat, axis=0)
        return cx.op("reshape", out, shape=[1] * self.type.rank) if keepdim else out
    return cx.op(name, self, axis=dim, keepdims=keepdim)


@converts("aten.cumsum.default")
def _cumsum(cx: Ctx, self: Value, dim: int, dtype: Any = None) -> Value:
    return cx.op("cumsum", cx.cast(self, cx.out_dtype), axis=dim)


@converts("aten.linalg_vector_norm.default")
def _vector_norm(cx: Ctx, self: Value, ord: Any = 2, dim: Any = None, keepdim: bool = False,
                 dtype: Any = None) -> Value:
    axes = [] if dim in (None, []) else norm_axes(dim, self.type.rank)
    x = self if dtype is None else cx.cast(self, ir_dtype(dtype))
    dt = x.type.dtype
    if ord == 2:  # sqrt(sum(x^2))
        return cx.op("sqrt", cx.op("reduce_sum", cx.op("mul", x, x), axes=axes,
                                   keepdims=keepdim))
    if ord == 1:
        return cx.op("reduce_sum", cx.op("abs", x), axes=axes, keepdims=keepdim)
    if ord in (math.inf, -math.inf):
        red = "reduce_max" if ord > 0 else "reduce_min"
        return cx.op(red, cx.op("abs", x), axes=axes, keepdims=keepdim)
    if ord == 0:  # the "0-norm": how many elements are nonzero
        nz = cx.cast(cx.op("not_equal", x, cx.scalar(0, dt)), dt)
        return cx.op("reduce_sum", nz, axes=axes, keepdims=keepdim)
    # (sum |x|^p)^(1/p)
    s = cx.op("reduce_sum", cx.op("pow", cx.op("abs", x), cx.scalar(ord, dt)), axes=axes,
              keepdims=keepdim)
    return cx.op("pow", s, cx.scalar(1.0 / ord, dt))


@converts("aten.var.correction", "aten.std.correction")
def _var(cx: Ctx, self: Value, dim: Any = None, correction: Any = None,
         keepdim: bool = False) -> Value:
    axes = norm_axes(dim, self.type.rank)
    d = cx.op("sub", self, cx.op("reduce_mean", self, axes=axes, keepdims=True))
    ss = cx.op("reduce_sum", cx.op("mul", d, d), axes=axes, keepdims=keepdim)
    n = 1
    for a in axes:
        n = n * self.type.shape[a]
    corr = 1 if correction is None else correction
    if not isinstance(n, int):
        raise CaptureError("var/std over a symbolic axis is not supported")
    v = cx.op("div", ss, cx.scalar(float(n - corr), self.type.dtype))
    return cx.op("sqrt", v) if "std" in str(cx.node.target) else v
