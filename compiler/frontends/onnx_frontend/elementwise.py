"""ONNX -> IR rules: elementwise ops (activations, arithmetic, comparisons, logic, casts,
SwiGLU).

The one-to-one ops are the tables ``UNARY``, ``BINARY`` and ``VARIADIC``; every other op is one
rule.
"""

from __future__ import annotations

import math

import numpy as np

from rtinfer.frontends.onnx_frontend.context import NodeContext, Rule, rule, scalar_op, to_float
from rtinfer.ir.graph import Value
from rtinfer.ir.types import DType

# -- one-to-one tables ----------------------------------------------------------------------------

UNARY = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log",
    "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Sin": "sin", "Cos": "cos", "Erf": "erf",
    "Floor": "floor", "Ceil": "ceil", "Round": "round", "Abs": "abs", "Neg": "neg",
    "Sign": "sign", "Not": "logical_not", "Identity": "identity", "Softplus": "softplus",
    "HardSwish": "hardswish", "Mish": "mish", "Tan": "tan", "Asin": "asin", "Acos": "acos",
    "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh",
    "Atanh": "atanh", "BitwiseNot": "bitwise_not", "Hardmax": "hardmax",
}
BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "equal",
    "Greater": "greater", "Less": "less", "GreaterOrEqual": "greater_equal",
    "LessOrEqual": "less_equal", "And": "logical_and", "Or": "logical_or", "Xor": "not_equal",
    "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor",
}
VARIADIC = {"Max": "maximum", "Min": "minimum", "Sum": "add"}


def _unary(ir_op: str) -> Rule:
    if ir_op == "hardmax":
        return lambda cx, ins: cx.op(ir_op, ins[0], axis=cx.attr("axis", -1))
    return lambda cx, ins: cx.op(ir_op, ins[0])


def _binary(ir_op: str) -> Rule:
    return lambda cx, ins: cx.op(ir_op, ins[0], ins[1])


def _variadic(ir_op: str) -> Rule:
    def convert(cx: NodeContext, ins: list) -> Value:
        out = ins[0]
        for v in ins[1:]:
            out = cx.op(ir_op, out, v)
        if len(ins) == 1:
            out = cx.op("identity", out)
        return out
    return convert


for _k, _v in UNARY.items():
    rule(_k)(_unary(_v))
for _k, _v in BINARY.items():
    rule(_k)(_binary(_v))
for _k, _v in VARIADIC.items():
    rule(_k)(_variadic(_v))

# -- activations ----------------------------------------------------------------------------------


@rule("LeakyRelu")
def _leaky_relu(cx, ins):
    return cx.op("leaky_relu", ins[0], alpha=cx.attr("alpha", 0.01))


@rule("Elu")
def _elu(cx, ins):
    return cx.op("elu", ins[0], alpha=cx.attr("alpha", 1.0))


@rule("Selu")
def _selu(cx, ins):
    x = ins[0]
    alpha = cx.attr("alpha", 1.67326319217681884765625)
    gamma = cx.attr("gamma", 1.05070102214813232421875)
    # gamma * (x if x > 0 else alpha * (exp(x) - 1))
    return scalar_op(cx, "mul", cx.op("elu", x, alpha=alpha), gamma)


@rule("Celu")
def _celu(cx, ins):
    x, alpha = ins[0], cx.attr("alpha", 1.0)
    # max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) = alpha * elu(x / alpha)
    return scalar_op(cx, "mul", cx.op("elu", scalar_op(cx, "div", x, alpha), alpha=1.0), alpha)


@rule("ThresholdedRelu")
def _thresholded_relu(cx, ins):
    x = ins[0]
    keep = cx.op("greater", x, cx.scalar(cx.attr("alpha", 1.0), x))
    return cx.op("where", keep, x, cx.scalar(0, x))


@rule("HardSigmoid")
def _hard_sigmoid(cx, ins):
    x = ins[0]
    alpha, beta = cx.attr("alpha", 0.2), cx.attr("beta", 0.5)
    y = scalar_op(cx, "add", scalar_op(cx, "mul", x, alpha), beta)  # clip(alpha x + beta, 0, 1)
    return cx.op("clip", y, min=0.0, max=1.0)


@rule("Softsign")
def _softsign(cx, ins):
    x = ins[0]  # x / (1 + |x|)
    return cx.op("div", x, scalar_op(cx, "add", cx.op("abs", x), 1.0))


@rule("Gelu")
def _gelu(cx, ins):
    return cx.op("gelu", ins[0], approximate=cx.attr("approximate", "none"))


@rule("PRelu")
def _prelu(cx, ins):
    x, slope = ins  # x if x >= 0 else slope * x
    neg = cx.op("less", x, cx.scalar(0, x))
    return cx.op("where", neg, cx.op("mul", x, slope), x)


@rule("Clip")
def _clip(cx, ins):
    x = ins[0]
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    for name, v in (("min", lo), ("max", hi)):  # ONNX: scalars (a 1-element tensor passes too)
        if v is not None and not all(d == 1 for d in v.type.shape):
            raise cx.invalid(f"{name} must be a scalar, got {v.type}")
    if x.type.dtype.is_float and (lo is None or lo.is_const) and (hi is None or hi.is_const):
        return cx.op("clip", x,
                     min=float(cx.array(lo, "min")) if lo is not None else -math.inf,
                     max=float(cx.array(hi, "max")) if hi is not None else math.inf)
    y = x if lo is None else cx.op("maximum", x, lo)
    y = y if hi is None else cx.op("minimum", y, hi)
    return y if y is not x else cx.op("identity", x)

# -- arithmetic, logic, casts --------------------------------------------------------------------


@rule("Pow")
def _pow(cx, ins):
    x, y = ins
    if x.type.dtype.is_float:
        return cx.op("pow", x, to_float(cx, y, x))
    xf = cx.op("cast", x, dtype=DType.f64)
    return cx.op("cast", cx.op("pow", xf, cx.op("cast", y, dtype=DType.f64)), dtype=x.type.dtype)


@rule("Mod")
def _mod(cx, ins):
    a, b = ins
    if not cx.attr("fmod", 0):
        return cx.op("mod", a, b)
    # C fmod: the result has the dividend's sign: r = mod(a, b); r - b where r and a differ in sign
    r = cx.op("mod", a, b)
    zero = cx.scalar(0, a)
    differ = cx.op("logical_and", cx.op("not_equal", r, zero),
                   cx.op("not_equal", cx.op("less", r, zero), cx.op("less", a, zero)))
    return cx.op("where", differ, cx.op("sub", r, b), r)


@rule("Mean")
def _mean(cx, ins):
    return scalar_op(cx, "div", _variadic("add")(cx, ins), len(ins))


@rule("Where")
def _where(cx, ins):
    return cx.op("where", *ins)


@rule("IsNaN")
def _isnan(cx, ins):
    return cx.op("not_equal", ins[0], ins[0])


@rule("IsInf")
def _isinf(cx, ins):
    x = ins[0]
    pos = cx.op("equal", x, cx.scalar(math.inf, x))
    neg = cx.op("equal", x, cx.scalar(-math.inf, x))
    d_pos, d_neg = cx.attr("detect_positive", 1), cx.attr("detect_negative", 1)
    if d_pos and d_neg:
        return cx.op("logical_or", pos, neg)
    if d_pos:
        return pos
    if d_neg:
        return neg
    return cx.op("logical_and", pos, neg)


@rule("Cast")
def _cast(cx, ins):
    return cx.op("cast", ins[0], dtype=cx.dtype(cx.attr("to"), "Cast target"))


@rule("CastLike")
def _cast_like(cx, ins):
    return cx.op("cast", ins[0], dtype=ins[1].type.dtype)


@rule("BitShift")
def _bitshift(cx, ins):
    name = "shift_left" if cx.attr("direction") == "LEFT" else "shift_right"
    return cx.op(name, ins[0], ins[1])


@rule("Dropout")
def _dropout(cx, ins):
    x = ins[0]
    y = cx.op("identity", x)
    if cx.wants(1):
        return [y, cx.op("expand", cx.const(np.array(True)), shape=list(x.type.shape))]
    return y


@rule("Swish")
def _swish(cx, ins):
    x = ins[0]  # x * sigmoid(alpha * x)
    return cx.op("mul", x, cx.op("sigmoid", scalar_op(cx, "mul", x, cx.attr("alpha", 1.0))))


@rule("Shrink")
def _shrink(cx, ins):
    x, lambd, bias = ins[0], cx.attr("lambd", 0.5), cx.attr("bias", 0.0)
    # x + bias below -lambd, x - bias above lambd, 0 between
    lo = cx.op("less", x, cx.scalar(-lambd, x))
    hi = cx.op("greater", x, cx.scalar(lambd, x))
    y = cx.op("where", hi, scalar_op(cx, "sub", x, bias), cx.scalar(0, x))
    return cx.op("where", lo, scalar_op(cx, "add", x, bias), y)


@rule("SwiGLU")
def _swiglu(cx, ins):
    a, b = ins[0], ins[1]  # (a * sigmoid(alpha * a)) * b, with A and B of one type
    if a.type != b.type:
        raise cx.invalid(f"A is {a.type} and B is {b.type}; SwiGLU takes one type for both "
                         "(no broadcasting)")
    gate = cx.op("mul", a, cx.op("sigmoid", scalar_op(cx, "mul", a, cx.attr("alpha", 1.0))))
    return cx.op("mul", gate, b)
