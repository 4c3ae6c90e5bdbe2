"""Converters of the elementwise ATen ops: arithmetic, activations, comparisons, casts."""

from __future__ import annotations

import math
from typing import Any

import torch

from rtinfer.errors import CaptureError
from rtinfer.frontends.torch_frontend.context import (
    Converter,
    Ctx,
    aten,
    converts,
    ir_dtype,
)
from rtinfer.ir.graph import Value
from rtinfer.ir.types import DType

# -- elementwise ------------------------------------------------------------------------------


def _operands(cx: Ctx, a: Any, b: Any, dtype: DType) -> tuple[Value, Value]:
    return cx.scalar(a, dtype), cx.scalar(b, dtype)


def _compute_dtype(a: Any, b: Any) -> DType:
    """torch's type promotion for a binary op (scalars are weak)."""
    def as_torch(x):
        if isinstance(x, Value):
            return torch.empty((), dtype=x.type.dtype.torch) if x.type.rank == 0 else \
                torch.empty((1,), dtype=x.type.dtype.torch)
        return x
    return ir_dtype(torch.result_type(as_torch(a), as_torch(b)))




def _binary(ir_op: str, compare: bool = False) -> Converter:
    def conv(cx: Ctx, self: Any, other: Any = None, alpha: Any = 1, exponent: Any = None
             ) -> Value:
        other = exponent if other is None else other
        dt = _compute_dtype(self, other) if compare else cx.out_dtype
        a, b = _operands(cx, self, other, dt)
        if alpha not in (None, 1):
            b = cx.op("mul", b, cx.scalar(alpha, dt))
        return cx.op(ir_op, a, b)
    return conv


for _ir, _targets in {
    "add": ("add.Tensor", "add.Scalar"), "sub": ("sub.Tensor", "sub.Scalar"),
    "mul": ("mul.Tensor", "mul.Scalar"), "maximum": ("maximum.default",),
    "minimum": ("minimum.default",), "mod": ("remainder.Tensor", "remainder.Scalar"),
    "pow": ("pow.Tensor_Tensor", "pow.Tensor_Scalar"),
}.items():
    converts(*(f"aten.{t}" for t in _targets))(_binary(_ir))

for _name, _ir in [("eq", "equal"), ("ne", "not_equal"), ("lt", "less"), ("le", "less_equal"),
                   ("gt", "greater"), ("ge", "greater_equal")]:
    converts(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar")(_binary(_ir, compare=True))


@converts("aten.pow.Scalar")
def _pow_scalar(cx: Ctx, self: Any, exponent: Any) -> Value:
    dt = cx.out_dtype
    return cx.op("pow", cx.scalar(self, dt), cx.scalar(exponent, dt))


@converts("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(cx: Ctx, self: Any, other: Any, alpha: Any = 1) -> Value:
    dt = cx.out_dtype
    a, b = _operands(cx, self, other, dt)
    if alpha not in (None, 1):
        a = cx.op("mul", a, cx.scalar(alpha, dt))
    return cx.op("sub", b, a)


@converts("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode", "aten.div.Scalar_mode",
          "aten.floor_divide.default")
def _div(cx: Ctx, self: Any, other: Any, rounding_mode: str | None = None) -> Value:
    if cx.node.target is aten.floor_divide.default:
        rounding_mode = "floor"
    dt = cx.out_dtype
    a, b = _operands(cx, self, other, dt)
    if rounding_mode is None or not dt.is_int:
        q = cx.op("div", a, b)
        if rounding_mode == "floor":
            q = cx.op("floor", q)
        elif rounding_mode == "trunc":  # trunc(q) = sign(q) * floor(|q|)
            q = cx.op("mul", cx.op("sign", q), cx.op("floor", cx.op("abs", q)))
        return q
    if rounding_mode == "trunc":
        return cx.op("div", a, b)
    # integer floor division: a - mod(a, b) is an exact multiple of b
    return cx.op("div", cx.op("sub", a, cx.op("mod", a, b)), b)


def _unary(ir_op: str, **fixed: Any) -> Converter:
    def conv(cx: Ctx, self: Value, **_: Any) -> Value:
        return cx.op(ir_op, self, **fixed)
    return conv


for _name, _ir in [("relu", "relu"), ("sigmoid", "sigmoid"), ("tanh", "tanh"), ("exp", "exp"),
                   ("log", "log"), ("sqrt", "sqrt"), ("rsqrt", "rsqrt"), ("erf", "erf"),
                   ("abs", "abs"), ("neg", "neg"), ("reciprocal", "reciprocal"), ("sin", "sin"),
                   ("cos", "cos"), ("floor", "floor"), ("ceil", "ceil"), ("round", "round"),
                   ("sign", "sign"), ("silu", "silu"), ("hardswish", "hardswish"),
                   ("hardsigmoid", "hardsigmoid"), ("mish", "mish"),
                   ("bitwise_not", "logical_not")]:
    converts(f"aten.{_name}.default")(_unary(_ir))
converts("aten.relu6.default")(_unary("clip", min=0.0, max=6.0))

for _name, _ir in [("bitwise_and", "logical_and"), ("bitwise_or", "logical_or")]:
    converts(f"aten.{_name}.Tensor")(_binary(_ir))


def _truth(cx: Ctx, x: Any) -> Value:
    """``x`` as bool the way torch's logical ops read it: any nonzero (NaN included) is true."""
    if isinstance(x, Value) and x.type.dtype is DType.bool:
        return x
    if not isinstance(x, Value):
        return cx.scalar(bool(x), DType.bool)
    return cx.op("not_equal", x, cx.scalar(0, x.type.dtype))


@converts("aten.logical_not.default")
def _logical_not(cx: Ctx, self: Value) -> Value:
    return cx.cast(cx.op("logical_not", _truth(cx, self)), cx.out_dtype)


@converts("aten.logical_and.default", "aten.logical_or.default")
def _logical_binary(cx: Ctx, self: Any, other: Any) -> Value:
    name = "logical_and" if "and" in str(cx.node.target) else "logical_or"
    return cx.cast(cx.op(name, _truth(cx, self), _truth(cx, other)), cx.out_dtype)


@converts("aten.gelu.default")
def _gelu(cx: Ctx, self: Value, approximate: str = "none") -> Value:
    return cx.op("gelu", self, approximate=approximate)


@converts("aten.elu.default")
def _elu(cx: Ctx, self: Value, alpha: float = 1.0, scale: float = 1.0,
         input_scale: float = 1.0) -> Value:
    if scale != 1.0 or input_scale != 1.0:
        if (alpha, scale) == (1.6732632423543772, 1.0507009873554805):
            return cx.op("selu", self)
        x = cx.op("mul", self, cx.scalar(input_scale, cx.out_dtype))
        return cx.op("mul", cx.op("elu", x, alpha=alpha), cx.scalar(scale, cx.out_dtype))
    return cx.op("elu", self, alpha=alpha)


@converts("aten.leaky_relu.default")
def _leaky_relu(cx: Ctx, self: Value, negative_slope: float = 0.01) -> Value:
    return cx.op("leaky_relu", self, alpha=negative_slope)


@converts("aten.softplus.default")
def _softplus(cx: Ctx, self: Value, beta: float = 1.0, threshold: float = 20.0) -> Value:
    return cx.op("softplus", self, beta=beta, threshold=threshold)


@converts("aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default",
          "aten.hardtanh.default", "aten.clamp.Tensor")
def _clamp(cx: Ctx, self: Value, min: Any = None, max: Any = None, min_val: Any = None,
           max_val: Any = None) -> Value:
    t = cx.node.target
    if t is aten.clamp_max.default:
        min, max = None, min
    if t is aten.hardtanh.default:
        min, max = (-1.0 if min_val is None else min_val), (1.0 if max_val is None else max_val)
    if isinstance(min, Value) or isinstance(max, Value):
        x = self
        if min is not None:
            x = cx.op("maximum", x, cx.scalar(min, self.type.dtype))
        if max is not None:
            x = cx.op("minimum", x, cx.scalar(max, self.type.dtype))
        return x
    if not self.type.dtype.is_float:
        x = self
        if min is not None:
            x = cx.op("maximum", x, cx.scalar(min, self.type.dtype))
        if max is not None:
            x = cx.op("minimum", x, cx.scalar(max, self.type.dtype))
        return x
    return cx.op("clip", self, min=-math.inf if min is None else float(min),
                 max=math.inf if max is None else float(max))


@converts("aten.log1p.default")
def _log1p(cx: Ctx, self: Value) -> Value:
    return cx.op("log", cx.op("add", self, cx.scalar(1.0, self.type.dtype)))


@converts("aten.expm1.default")
def _expm1(cx: Ctx, self: Value) -> Value:
    return cx.op("sub", cx.op("exp", self), cx.scalar(1.0, self.type.dtype))


@converts("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf",
          "aten.where.Scalar")
def _where(cx: Ctx, condition: Value, self: Any, other: Any) -> Value:
    dt = cx.out_dtype
    return cx.op("where", cx.cast(condition, DType.bool), cx.scalar(self, dt),
                 cx.scalar(other, dt))


@converts("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(cx: Ctx, self: Value, mask: Value, value: Any) -> Value:
    return cx.op("where", cx.cast(mask, DType.bool), cx.scalar(value, self.type.dtype), self)


@converts("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout",
          "aten._assert_tensor_metadata.default")
def _to_copy(cx: Ctx, self: Value, dtype: Any = None, **_: Any) -> Value | None:
    if cx.node.target is aten._assert_tensor_metadata.default:
        return None
    return self if dtype is None else cx.cast(self, ir_dtype(dtype))


@converts("aten.clone.default", "aten.alias.default", "aten.detach.default",
          "aten.contiguous.default", "aten.lift_fresh_copy.default", "aten.dropout.default",
          "aten.feature_dropout.default", "aten.alpha_dropout.default")
def _identity(cx: Ctx, self: Value = None, input: Value = None, **_: Any) -> Value:
    return self if self is not None else input


@converts("aten.native_dropout.default")
def _native_dropout(cx: Ctx, input: Value, p: float, train: bool | None) -> list:
    if train:
        raise CaptureError("dropout in training mode cannot be captured")
    return [input, None]
