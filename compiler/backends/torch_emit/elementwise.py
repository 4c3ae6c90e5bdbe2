"""Emitters of the elementwise ops: unary and binary math, activations, casts, select."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.fx.proxy import Proxy

from rtinfer.backends.torch_emit.context import EMITTERS, EmitContext, emits

UNARY: dict[str, Callable] = {
    "relu": torch.relu, "selu": F.selu, "silu": F.silu, "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "hardsigmoid": F.hardsigmoid, "hardswish": F.hardswish, "mish": F.mish,
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
    "reciprocal": torch.reciprocal, "sin": torch.sin, "cos": torch.cos, "erf": torch.erf,
    "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "tan": torch.tan,
    "asin": torch.asin, "acos": torch.acos, "atan": torch.atan, "sinh": torch.sinh,
    "cosh": torch.cosh, "asinh": torch.asinh, "acosh": torch.acosh, "atanh": torch.atanh,
    "abs": torch.abs, "neg": torch.neg, "sign": torch.sign, "logical_not": torch.logical_not,
    "bitwise_not": torch.bitwise_not,
}
BINARY: dict[str, Callable] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "pow": torch.pow,
    "mod": torch.remainder, "maximum": torch.maximum, "minimum": torch.minimum,
    "equal": torch.eq, "not_equal": torch.ne, "less": torch.lt, "less_equal": torch.le,
    "greater": torch.gt, "greater_equal": torch.ge, "logical_and": torch.logical_and,
    "logical_or": torch.logical_or, "bitwise_and": torch.bitwise_and,
    "bitwise_or": torch.bitwise_or, "bitwise_xor": torch.bitwise_xor,
    "shift_left": torch.bitwise_left_shift, "shift_right": torch.bitwise_right_shift,
}
for _name, _fn in UNARY.items():
    emits(_name)(functools.partial(lambda fn, cx, x: fn(x), _fn))
for _name, _fn in BINARY.items():
    emits(_name)(functools.partial(lambda fn, cx, a, b: fn(a, b), _fn))

EMITTERS.update({
    "leaky_relu": lambda cx, x, alpha: F.leaky_relu(x, alpha),
    "elu": lambda cx, x, alpha: F.elu(x, alpha),
    "gelu": lambda cx, x, approximate: F.gelu(x, approximate=approximate),
    "softplus": lambda cx, x, beta, threshold: F.softplus(x, beta, threshold),
    "clip": lambda cx, x, min, max: x if min == -math.inf and max == math.inf else torch.clamp(
        x, None if min == -math.inf else min, None if max == math.inf else max),
    "identity": lambda cx, x: x,
    "cast": lambda cx, x, dtype: x.to(dtype.torch),
    "where": lambda cx, cond, a, b: torch.where(cond, a, b),
})


@emits("div")
def _div(cx: EmitContext, a: Proxy, b: Proxy) -> Proxy:
    if cx.in_types[0].dtype.is_float:
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")  # C-style integer division


__all__ = ["BINARY", "UNARY"]
