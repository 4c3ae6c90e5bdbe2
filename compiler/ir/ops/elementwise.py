"""Elementwise and broadcasting ops: activations, arithmetic, comparisons, selection, casts.

References compute f16/bf16 in f32 (as torch's CPU kernels do) and return the input's dtype;
numpy's scalar promotion never widens an f32 result to f64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from rtinfer.errors import IRError
from rtinfer.ir.ops.common import (
    broadcast_shapes,
    need_float,
    need_no_quant,
    need_numeric,
    same_dtype,
    to_numpy,
    to_torch,
    upcast,
)
from rtinfer.ir.ops.registry import (
    BROADCAST,
    COMMUTATIVE,
    ELEMENTWISE,
    Attr,
    elementwise_channels,
    op,
)
from rtinfer.ir.types import DType, TensorType

# What an op accepts: "float", "numeric" (not bool), "bool", "int", or "any".
Accept = str


def _check_dtype(t: TensorType, accept: Accept, what: str = "input") -> None:
    if accept == "float":
        need_float(t, what)
    elif accept == "numeric":
        need_numeric(t, what)
    elif accept == "bool" and t.dtype is not DType.bool:
        raise IRError(f"{what} must be bool, got {t.dtype}")
    elif accept == "int" and not t.dtype.is_int:
        raise IRError(f"{what} must be an integer tensor, got {t.dtype}")


def unary(name: str, ref: Callable[..., np.ndarray], *, accept: Accept = "float",
          attrs: dict[str, Attr] | None = None, doc: str = "") -> None:
    """A one-input elementwise op whose output has the input's type. ``ref`` sees f16/bf16
    upcast to f32; its result is cast back to the input dtype."""

    def infer(ins: list[TensorType], a: dict) -> TensorType:
        _check_dtype(ins[0], accept, "x")
        need_no_quant(ins, "x")
        return ins[0].with_shape(ins[0].shape)

    def ref_cast(x: np.ndarray, **kw) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = ref(upcast(x) if accept == "float" else x, **kw)
        return np.asarray(out).astype(x.dtype, copy=False)

    op(name, ["x"], infer, ref_cast, attrs=attrs, traits=[ELEMENTWISE],
       channels=elementwise_channels, doc=doc)


def binary(name: str, ref: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
           accept: Accept = "any", commutative: bool = False, out_dtype: DType | None = None,
           doc: str = "") -> None:
    """A two-input broadcasting op; output dtype is the inputs' (or ``out_dtype``)."""

    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        dt = same_dtype(ins)
        _check_dtype(ins[0], accept, "inputs")
        need_no_quant(ins)
        return TensorType(out_dtype or dt, broadcast_shapes(ins[0].shape, ins[1].shape))

    def ref_cast(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = ref(upcast(a), upcast(b)) if accept == "float" else ref(a, b)
        return np.asarray(out).astype(out_dtype.np if out_dtype else a.dtype, copy=False)

    traits = [ELEMENTWISE, BROADCAST] + ([COMMUTATIVE] if commutative else [])
    op(name, ["a", "b"], infer, ref_cast, traits=traits, channels=elementwise_channels, doc=doc)


def _torch_unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: to_numpy(fn(to_torch(x)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -x))  # exact in both tails, no overflow


def _softplus(x: np.ndarray, beta: float, threshold: float) -> np.ndarray:
    # torch: x where beta * x > threshold, else log(1 + exp(beta * x)) / beta
    return np.where(x * beta > threshold, x, np.logaddexp(0, x * beta) / beta)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


_erf = _torch_unary(torch.erf)
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946

# -- activations (float) ----------------------------------------------------------------------

unary("relu", lambda x: np.maximum(x, x.dtype.type(0)), doc="max(x, 0)")
unary("leaky_relu", lambda x, alpha: np.where(x >= 0, x, x * alpha),
      attrs={"alpha": Attr("float", 0.01)}, doc="x if x >= 0 else alpha * x")
unary("elu", lambda x, alpha: np.where(x > 0, x, np.expm1(x) * alpha),
      attrs={"alpha": Attr("float", 1.0)}, doc="x if x > 0 else alpha * (exp(x) - 1)")
unary("selu", lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(x)),
      doc="scale * elu(x, alpha) with the self-normalizing constants (torch.nn.SELU)")
unary("gelu", _gelu, attrs={"approximate": Attr("str", "none", ("none", "tanh"))},
      doc="x * Phi(x) (exact, via erf) or its tanh approximation (torch F.gelu)")
unary("silu", lambda x: x * _sigmoid(x), doc="x * sigmoid(x) (swish)")
unary("sigmoid", _sigmoid, doc="1 / (1 + exp(-x))")
unary("tanh", np.tanh, doc="tanh(x)")
unary("hardsigmoid", lambda x: np.clip(x / 6 + 0.5, 0, 1), doc="relu6(x + 3) / 6")
unary("hardswish", lambda x: x * np.clip(x / 6 + 0.5, 0, 1), doc="x * relu6(x + 3) / 6")
unary("mish", lambda x: x * np.tanh(np.logaddexp(0, x)), doc="x * tanh(softplus(x))")
unary("softplus", _softplus,
      attrs={"beta": Attr("float", 1.0), "threshold": Attr("float", 20.0)},
      doc="log(1 + exp(beta * x)) / beta, linear above threshold (torch F.softplus)")
unary("clip", lambda x, min, max: np.clip(x, min, max),
      attrs={"min": Attr("float", -math.inf), "max": Attr("float", math.inf)},
      doc="min(max(x, min), max); relu6 is clip{min=0, max=6}")

# -- math (float) -----------------------------------------------------------------------------

unary("exp", np.exp, doc="e ** x")
unary("log", np.log, doc="natural logarithm")
unary("sqrt", np.sqrt, doc="square root")
unary("rsqrt", lambda x: 1 / np.sqrt(x), doc="1 / sqrt(x)")
unary("reciprocal", lambda x: 1 / x, doc="1 / x")
unary("sin", np.sin, doc="sine")
unary("cos", np.cos, doc="cosine")
unary("erf", _erf, doc="the error function")
unary("floor", np.floor, doc="round toward -inf")
unary("ceil", np.ceil, doc="round toward +inf")
unary("round", np.round, doc="round half to even (torch.round)")
unary("tan", np.tan, doc="tangent")
unary("asin", np.arcsin, doc="arcsine (NaN outside [-1, 1])")
unary("acos", np.arccos, doc="arccosine (NaN outside [-1, 1])")
unary("atan", np.arctan, doc="arctangent")
unary("sinh", np.sinh, doc="hyperbolic sine")
unary("cosh", np.cosh, doc="hyperbolic cosine")
unary("asinh", np.arcsinh, doc="inverse hyperbolic sine")
unary("acosh", np.arccosh, doc="inverse hyperbolic cosine (NaN below 1)")
unary("atanh", np.arctanh, doc="inverse hyperbolic tangent (NaN outside [-1, 1])")

# -- any dtype --------------------------------------------------------------------------------

unary("abs", np.abs, accept="numeric", doc="|x|")
unary("neg", np.negative, accept="numeric", doc="-x")
unary("sign", np.sign, accept="numeric", doc="-1, 0 or 1 by the sign of x")
unary("logical_not", np.logical_not, accept="bool", doc="not x (bool)")


def _identity_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    return ins[0]  # keeps quantization parameters


op("identity", ["x"], _identity_infer, lambda x: x.copy(), traits=[ELEMENTWISE],
   channels=elementwise_channels, doc="x, unchanged (type and quantization included)")


def _cast_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    return ins[0].with_dtype(attrs["dtype"])


op("cast", ["x"], _cast_infer, lambda x, dtype: x.astype(dtype.np),
   attrs={"dtype": Attr("dtype")}, traits=[ELEMENTWISE], channels=elementwise_channels,
   doc="convert to dtype (numpy astype: float -> int truncates; quantized input casts raw "
       "integers)")

# -- arithmetic -------------------------------------------------------------------------------


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        q = np.floor_divide(a, b)  # trunc toward zero: fix floor where signs differ
        return q + ((q < 0) & (q * b != a))
    return np.true_divide(a, b)


binary("add", np.add, commutative=True, doc="a + b")
binary("sub", np.subtract, doc="a - b")
binary("mul", np.multiply, commutative=True, doc="a * b")
binary("div", _div, accept="numeric",
       doc="a / b (integers truncate toward zero, as torch rounding_mode='trunc')")
binary("pow", np.power, accept="float", doc="a ** b (float)")
binary("mod", np.mod, accept="numeric",
       doc="a - b * floor(a / b): the result has the divisor's sign (torch.remainder)")
binary("maximum", np.maximum, commutative=True, doc="elementwise max (NaN propagates)")
binary("minimum", np.minimum, commutative=True, doc="elementwise min (NaN propagates)")

# -- comparisons and logic --------------------------------------------------------------------

binary("equal", np.equal, commutative=True, out_dtype=DType.bool, doc="a == b -> bool")
binary("not_equal", np.not_equal, commutative=True, out_dtype=DType.bool, doc="a != b -> bool")
binary("less", np.less, out_dtype=DType.bool, doc="a < b -> bool")
binary("less_equal", np.less_equal, out_dtype=DType.bool, doc="a <= b -> bool")
binary("greater", np.greater, out_dtype=DType.bool, doc="a > b -> bool")
binary("greater_equal", np.greater_equal, out_dtype=DType.bool, doc="a >= b -> bool")
binary("logical_and", np.logical_and, accept="bool", commutative=True, doc="a and b (bool)")
binary("logical_or", np.logical_or, accept="bool", commutative=True, doc="a or b (bool)")

# -- bitwise (integers) -----------------------------------------------------------------------

unary("bitwise_not", np.invert, accept="int", doc="~x, every bit flipped (two's complement)")
binary("bitwise_and", np.bitwise_and, accept="int", commutative=True, doc="a & b")
binary("bitwise_or", np.bitwise_or, accept="int", commutative=True, doc="a | b")
binary("bitwise_xor", np.bitwise_xor, accept="int", commutative=True, doc="a ^ b")
binary("shift_left", np.left_shift, accept="int",
       doc="a << b (bits shifted past the top are lost; ONNX BitShift LEFT)")
binary("shift_right", np.right_shift, accept="int",
       doc="a >> b (arithmetic for signed a, logical for unsigned; ONNX BitShift RIGHT)")


def _where_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    cond, a, b = ins
    if cond.dtype is not DType.bool:
        raise IRError(f"cond must be bool, got {cond.dtype}")
    dt = same_dtype([a, b], "a and b")
    need_no_quant([a, b], "a and b")
    return TensorType(dt, broadcast_shapes(cond.shape, a.shape, b.shape))


op("where", ["cond", "a", "b"], _where_infer, lambda c, a, b: np.where(c, a, b),
   traits=[ELEMENTWISE, BROADCAST], channels=elementwise_channels,
   doc="a where cond else b, all three broadcast together")
