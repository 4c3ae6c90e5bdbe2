"""ONNX export rules: elementwise ops (activations, math, comparisons, bitwise, casts)."""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from rtinfer.errors import Unsupported
from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site, chain, simple
from rtinfer.ir.types import DType


def _gelu(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    if e.opset >= 20:
        return e.op("Gelu", x, {"approximate": s.attrs["approximate"]})
    dt, v = s.x.dtype, x[0]
    if s.attrs["approximate"] == "tanh":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = e.op("Mul", [e.op("Mul", [v, v]), v])
        inner = e.op("Add", [v, e.op("Mul", [cube, e.scalar(0.044715, dt)])])
        t = e.op("Tanh", [e.op("Mul", [inner, e.scalar(math.sqrt(2 / math.pi), dt)])])
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        t = e.op("Erf", [e.op("Mul", [v, e.scalar(1 / math.sqrt(2), dt)])])
    half_x = e.op("Mul", [v, e.scalar(0.5, dt)])
    return e.op("Mul", [half_x, e.op("Add", [t, e.scalar(1.0, dt)])])


def _silu(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # x * sigmoid(x)
    return e.op("Mul", [x[0], e.op("Sigmoid", x)])


def _softplus(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # x where beta x > threshold, else softplus(beta x) / beta
    dt, beta = s.x.dtype, s.attrs["beta"]
    bx = x[0] if beta == 1.0 else e.op("Mul", [x[0], e.scalar(beta, dt)])
    sp = e.op("Softplus", [bx])
    if beta != 1.0:
        sp = e.op("Div", [sp, e.scalar(beta, dt)])
    linear = e.op("Greater", [bx, e.scalar(s.attrs["threshold"], dt)])
    return e.op("Where", [linear, x[0], sp])


def _clip(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    lo, hi, dt = s.attrs["min"], s.attrs["max"], s.x.dtype
    return e.op("Clip", [x[0], None if lo == -math.inf else e.scalar(lo, dt),
                         None if hi == math.inf else e.scalar(hi, dt)])


def _cast(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    return e.cast(x[0], s.attrs["dtype"])


def _mod(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    if not s.x.dtype.is_float:
        return e.op("Mod", x, {"fmod": 0})  # integer Mod takes the divisor's sign
    # floats need fmod=1 (C fmod, the dividend's sign); move r to the divisor's sign:
    # r = fmod(a, b); r + b where r * b < 0
    r = e.op("Mod", x, {"fmod": 1})
    flip = e.op("Less", [e.op("Mul", [r, x[1]]), e.scalar(0, s.x.dtype)])
    return e.op("Where", [flip, e.op("Add", [r, x[1]]), r])


def _not(op_type: str) -> Rule:
    return lambda e, s, x: e.op("Not", [e.op(op_type, x)])


def _shift(direction: str) -> Rule:
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        if s.x.dtype not in (DType.u8, DType.u16, DType.u32, DType.u64):
            raise Unsupported(s.node.op, f"ONNX BitShift takes unsigned integers, got {s.x.dtype}")
        return e.op("BitShift", x, {"direction": direction})
    return rule


RULES: dict[str, Rule] = {
    # activations
    "relu": simple("Relu"),
    "leaky_relu": simple("LeakyRelu", lambda a: {"alpha": a["alpha"]}),
    "elu": simple("Elu", lambda a: {"alpha": a["alpha"]}),
    "selu": simple("Selu"),  # ONNX's default alpha and gamma are torch's constants
    "gelu": _gelu,  # Gelu (opset 20) or its erf / tanh formula
    "silu": _silu,
    "sigmoid": simple("Sigmoid"),
    "tanh": simple("Tanh"),
    "hardsigmoid": simple("HardSigmoid", lambda a: {"alpha": 1 / 6, "beta": 0.5}),
    "hardswish": simple("HardSwish"),
    "mish": simple("Mish"),
    "softplus": _softplus,
    "clip": _clip,
    # math
    "exp": simple("Exp"),
    "log": simple("Log"),
    "sqrt": simple("Sqrt"),
    "rsqrt": chain("Sqrt", "Reciprocal"),
    "reciprocal": simple("Reciprocal"),
    "sin": simple("Sin"),
    "cos": simple("Cos"),
    "erf": simple("Erf"),
    "floor": simple("Floor"),
    "ceil": simple("Ceil"),
    "round": simple("Round"),  # half to even in both
    "abs": simple("Abs"),
    "neg": simple("Neg"),
    "sign": simple("Sign"),
    "logical_not": simple("Not"),
    "tan": simple("Tan"),
    "asin": simple("Asin"),
    "acos": simple("Acos"),
    "atan": simple("Atan"),
    "sinh": simple("Sinh"),
    "cosh": simple("Cosh"),
    "asinh": simple("Asinh"),
    "acosh": simple("Acosh"),
    "atanh": simple("Atanh"),
    "bitwise_not": simple("BitwiseNot"),
    "bitwise_and": simple("BitwiseAnd"),
    "bitwise_or": simple("BitwiseOr"),
    "bitwise_xor": simple("BitwiseXor"),
    "shift_left": _shift("LEFT"),
    "shift_right": _shift("RIGHT"),
    "identity": simple("Identity"),
    "cast": _cast,
    # binary
    "add": simple("Add"),
    "sub": simple("Sub"),
    "mul": simple("Mul"),
    "div": simple("Div"),  # integer Div truncates toward zero, as the IR's
    "pow": simple("Pow"),
    "mod": _mod,
    "maximum": simple("Max"),
    "minimum": simple("Min"),
    "equal": simple("Equal"),
    "not_equal": _not("Equal"),
    "less": simple("Less"),
    "less_equal": simple("LessOrEqual"),
    "greater": simple("Greater"),
    "greater_equal": simple("GreaterOrEqual"),
    "logical_and": simple("And"),
    "logical_or": simple("Or"),
    "where": simple("Where"),
}
