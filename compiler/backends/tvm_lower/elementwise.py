"""Lowerings of the elementwise ops: unary and binary math, activations, casts, select."""

from __future__ import annotations

import functools
import math
from typing import Any

from rtinfer.backends.tvm_lower.context import (
    TVM_DTYPES,
    LowerContext,
    LowerFn,
    lower_table,
    lowers,
    relax_ops,
)

# op -> its Relax op, as an attribute path of ``tvm.relax.op`` (TVM is imported on first use)
UNARY: dict[str, str] = {
    "relu": "nn.relu", "selu": "nn.selu", "silu": "nn.silu", "sigmoid": "sigmoid",
    "tanh": "tanh", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "sin": "sin",
    "cos": "cos", "erf": "erf", "floor": "floor", "ceil": "ceil", "round": "round", "tan": "tan",
    "asin": "asin", "acos": "acos", "atan": "atan", "sinh": "sinh", "cosh": "cosh",
    "asinh": "asinh", "acosh": "acosh", "atanh": "atanh", "abs": "abs", "neg": "negative",
    "sign": "sign", "logical_not": "logical_not", "bitwise_not": "bitwise_not",
}
BINARY: dict[str, str] = {
    "add": "add", "sub": "subtract", "mul": "multiply", "pow": "power", "mod": "floor_mod",
    "maximum": "maximum", "minimum": "minimum", "equal": "equal", "not_equal": "not_equal",
    "less": "less", "less_equal": "less_equal", "greater": "greater",
    "greater_equal": "greater_equal", "logical_and": "logical_and", "logical_or": "logical_or",
    "bitwise_and": "bitwise_and", "bitwise_or": "bitwise_or", "bitwise_xor": "bitwise_xor",
    "shift_left": "left_shift", "shift_right": "right_shift",
}


def _relax_op(path: str) -> Any:
    return functools.reduce(getattr, path.split("."), relax_ops())


def _unary(path: str) -> LowerFn:
    return lambda cx, x: _relax_op(path)(x)


def _binary(path: str) -> LowerFn:
    return lambda cx, a, b: _relax_op(path)(a, b)


lower_table({name: _unary(path) for name, path in UNARY.items()})
lower_table({name: _binary(path) for name, path in BINARY.items()})


@lowers("hardsigmoid")
def _hardsigmoid(cx: LowerContext, x: Any) -> Any:
    # relu6(x + 3) / 6
    R = relax_ops()
    y = cx.emit(R.add(x, cx.scalar(3.0)))
    return R.divide(R.clip(y, 0.0, 6.0), cx.scalar(6.0))


@lowers("softplus")
def _softplus(cx: LowerContext, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    return relax_ops().nn.softplus(x, beta, threshold)


@lowers("clip")
def _clip(cx: LowerContext, x: Any, min: float, max: float) -> Any:
    R = relax_ops()
    if math.isinf(min) and math.isinf(max):
        return x
    if math.isinf(min):
        return R.minimum(x, cx.scalar(max))
    if math.isinf(max):
        return R.maximum(x, cx.scalar(min))
    return R.clip(x, min, max)


@lowers("div")
def _div(cx: LowerContext, a: Any, b: Any) -> Any:
    # Relax's integer division truncates (C-style), as the op table's div does
    return relax_ops().divide(a, b)


@lowers("elu")
def _elu(cx: LowerContext, x: Any, alpha: float) -> Any:
    # x > 0 ? x : alpha * (exp(x) - 1)
    R = relax_ops()
    positive = cx.emit(R.greater(x, cx.scalar(0.0)))
    neg = cx.emit(R.multiply(cx.scalar(alpha),
                             cx.emit(R.subtract(cx.emit(R.exp(x)), cx.scalar(1.0)))))
    return R.where(positive, x, neg)


lower_table({
    "leaky_relu": lambda cx, x, alpha: relax_ops().nn.leakyrelu(x, alpha),
    "gelu": lambda cx, x, approximate: (relax_ops().nn.gelu(x) if approximate == "none"
                                        else relax_ops().nn.gelu_tanh(x)),
    "hardswish": lambda cx, x: relax_ops().multiply(x, cx.emit(_hardsigmoid(cx, x))),
    "mish": lambda cx, x: relax_ops().multiply(
        x, cx.emit(relax_ops().tanh(cx.emit(_softplus(cx, x))))),
    "reciprocal": lambda cx, x: relax_ops().divide(cx.scalar(1.0), x),
    "identity": lambda cx, x: x,
    "cast": lambda cx, x, dtype: relax_ops().astype(x, TVM_DTYPES[dtype]),
    "where": lambda cx, cond, a, b: relax_ops().where(cond, a, b),
})


__all__ = ["BINARY", "UNARY"]
