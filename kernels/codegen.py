"""C++ for rtinfer's fused elementwise bodies, compiled with g++ and loaded with ctypes.

``generate(node)`` turns a ``fused_elementwise`` node (or one elementwise node, or a body graph)
into one function

    extern "C" void rtinfer_ew_<digest>(const char* const* ins, char* out,
                                        int64_t begin, int64_t end)

that computes the elements [begin, end) of one result (row-major) from the node's inputs
(``ins[i]`` is input i, in the node's order). Shapes are static, so broadcasting is baked in:
the output's dims are coalesced where every input is contiguous or broadcast alike, the inner
dim becomes a ``#pragma omp simd`` loop in which each input is read as ``p[j]`` (it varies) or
``p[0]`` (it is broadcast), and the outer dims give each input's row offset. An input of one
element is loaded once, and a constant scalar (a ``const`` producer) is inlined as a literal.

Each op's C++ comes from one table (``EMITTERS``) that mirrors the op table's NumPy references:
integer division truncates toward zero (and x / 0 is 0, as numpy), maximum/minimum propagate
NaN, ``mod`` takes the divisor's sign, shifts past the width give 0 (or -1), casts follow numpy
``astype``. f32 exp/log/tanh/erf/sigmoid are branch-free polynomial versions the compiler
vectorizes (1-2 ulp; erf as torch's vectorized one, error < 2e-7); f64 uses <cmath>. An op or
dtype the table lacks raises ``rtinfer.errors.Unsupported`` naming it (the caller falls back
to torch).

``generate(node, in_shapes, out_shape)`` addresses the values as laid out in memory when that
differs from the IR's shapes (NCHW values stored NHWC): a body is pointwise, so only the
addressing changes.

``compile_functions`` compiles a model's functions into one shared object (about a second),
cached by content hash in ``<rtinfer cache>/codegen``: code every process trusting the cache
runs, so the folder is owner-only and its temporaries are tidied (``rtinfer.paths.codegen_dir``).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rtinfer.errors import BackendError, CacheDirError, Unsupported
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.types import DType
from rtinfer.kernels import isa
from rtinfer.kernels.build import CPP_DIR, NativeUnavailable, compiler
from rtinfer.paths import codegen_dir, temp_tag

# -fno-trapping-math: the selects in the prelude's branch-free math only vectorize when
# computing both arms may raise no FP exception; -fwrapv: integer ops wrap, as numpy's
FLAGS = ["-O3", "-std=c++17", "-fopenmp-simd", "-fno-math-errno",
         "-fno-trapping-math", "-ffp-contract=fast", "-fwrapv", "-shared", "-fPIC"]
# the CPU level's -march flags (rtinfer.kernels.isa) are added per build, and the level is in
# the cache key: code built for AVX-512 is never loaded on an AVX2 CPU
MAX_CONST_ELEMENTS = 4096  # larger constants inside a body are not baked into the source


def _unsupported(op: str, why: str = "") -> Unsupported:
    """The error for an op (or dtype, shape) the generator has no C++ for; ``op`` names it."""
    return Unsupported(op, "no native elementwise code" + (f" for {why}" if why else ""))


class Generated(NamedTuple):
    """One generated function: its symbol and its C++ (prelude included)."""

    name: str
    source: str


# -- C types ------------------------------------------------------------------------------------

CTYPE = {DType.f32: "float", DType.f64: "double", DType.i64: "int64_t", DType.i32: "int32_t",
         DType.i16: "int16_t", DType.i8: "int8_t", DType.u8: "uint8_t", DType.u16: "uint16_t",
         DType.u32: "uint32_t", DType.u64: "uint64_t", DType.bool: "bool"}


def ctype(dt: DType, op: str, what: str = "") -> str:
    """The C type of ``dt``; ``op`` (and ``what`` of it) name the value in the error."""
    if dt not in CTYPE:
        raise _unsupported(op, f"dtype {dt}" + (f" of {what}" if what else ""))
    return CTYPE[dt]


def storage(dt: DType) -> str:
    return "uint8_t" if dt is DType.bool else CTYPE[dt]


def literal(value: float | int | bool, dt: DType) -> str:
    """A C++ literal of `value` as dtype `dt` (floats exactly, in hex)."""
    if dt is DType.bool:
        return "true" if value else "false"
    if dt.is_float:
        f32 = dt is DType.f32
        v = float(np.float32(value)) if f32 else float(value)
        if math.isnan(v):
            return '__builtin_nanf("")' if f32 else '__builtin_nan("")'
        if math.isinf(v):
            inf = "__builtin_inff()" if f32 else "__builtin_inf()"
            return f"(-{inf})" if v < 0 else inf
        return f"({v.hex()}{'f' if f32 else ''})"
    v = int(value)
    t = CTYPE[dt]
    if v == -(1 << 63):
        return f"(({t})(-9223372036854775807LL - 1))"
    return f"(({t}){v}{'ULL' if v >= (1 << 63) else 'LL'})"


# -- the prelude: helpers the emitters call ------------------------------------------------------

PRELUDE = r"""
#ifndef RTINFER_EW_PRELUDE
#define RTINFER_EW_PRELUDE
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define RT_INLINE static inline __attribute__((always_inline))

@RT_EXP@
namespace rt {

RT_INLINE double exp(double x) { return std::exp(x); }

// log x = e ln2 + log(1 + f), sqrt(1/2) <= 1 + f < sqrt(2) (Cephes logf, ~1 ulp)
RT_INLINE float log(float x) {
  const bool den = x < 1.17549435e-38f;            // denormals: scale up by 2^23
  const float xs = den ? x * 8388608.0f : x;
  uint32_t bits;
  std::memcpy(&bits, &xs, 4);
  int32_t e = (int32_t)((bits >> 23) & 0xff) - 126 - (den ? 23 : 0);
  uint32_t mb = (bits & 0x007fffffu) | 0x3f000000u;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &mb, 4);
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  const float f = small ? m + m - 1.0f : m - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float fe = (float)e;
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  float r = f + y + fe * 0.693359375f;
  r = x == __builtin_inff() ? x : r;
  r = x == 0.0f ? -__builtin_inff() : r;
  r = x < 0.0f ? __builtin_nanf("") : r;
  return x != x ? x : r;
}
RT_INLINE double log(double x) { return std::log(x); }

// tanh: an odd polynomial below |x| = 0.625 (Cephes tanhf), 1 - 2 / (e^2|x| + 1) above
RT_INLINE float tanh(float x) {
  const float a = std::fabs(x), z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = x + x * z * p;
  const float big = std::copysign(1.0f - 2.0f / (rt::exp(2.0f * a) + 1.0f), x);
  return a < 0.625f ? small : big;
}
RT_INLINE double tanh(double x) { return std::tanh(x); }

// erf: its Maclaurin series below |x| = 0.5 (error < 1e-9), Abramowitz-Stegun 7.1.26 above
// (error < 1.5e-7, the formula of torch's vectorized erf)
RT_INLINE float erf(float x) {
  const float a = std::fabs(x), z = x * x;
  float s = 1.0f / 9360.0f;
  s = s * z - 1.0f / 1320.0f;
  s = s * z + 1.0f / 216.0f;
  s = s * z - 1.0f / 42.0f;
  s = s * z + 0.1f;
  s = s * z - 1.0f / 3.0f;
  s = s * z + 1.0f;
  const float small = 1.12837916709551257f * x * s;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float big = std::copysign(1.0f - p * t * rt::exp(-z), x);
  return a < 0.5f ? small : big;
}
RT_INLINE double erf(double x) { return std::erf(x); }

// e^x - 1: its Taylor series below |x| = 0.5 (no cancellation), exp(x) - 1 above
RT_INLINE float expm1(float x) {
  float p = 1.0f / 40320.0f;
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  const float small = x + x * x * p;
  return std::fabs(x) < 0.5f ? small : rt::exp(x) - 1.0f;
}
RT_INLINE double expm1(double x) { return std::expm1(x); }

// log(1 + x) for x >= 0: log(u) * x / (u - 1), u = 1 + x, corrects u's rounding
template <class T>
RT_INLINE T log1p_pos(T x) {
  const T u = T(1) + x;
  const T r = rt::log(u) * (x / (u - T(1)));
  return u == T(1) ? x : (x == __builtin_inf() ? x : r);
}

// log(1 + e^x) = max(x, 0) + log1p(e^-|x|)   (np.logaddexp(0, x))
template <class T>
RT_INLINE T logaddexp0(T x) {
  const T m = x > T(0) ? x : T(0);
  return m + log1p_pos(rt::exp(-std::fabs(x)));
}

template <class T>
RT_INLINE T sigmoid(T x) { return T(1) / (T(1) + rt::exp(-x)); }

// np.clip = minimum(maximum(x, lo), hi): NaN stays NaN
template <class T>
RT_INLINE T clip(T x, T lo, T hi) {
  const T t = x < lo ? lo : x;
  return t > hi ? hi : t;
}

// np.maximum / np.minimum: NaN propagates
template <class T>
RT_INLINE T fmax(T a, T b) { return (a > b || a != a) ? a : b; }
template <class T>
RT_INLINE T fmin(T a, T b) { return (a < b || a != a) ? a : b; }

// np.mod for floats (npy_divmod): the result has the divisor's sign
template <class T>
RT_INLINE T fmod(T a, T b) {
  T m = std::fmod(a, b);
  if (b == T(0)) return m;
  if (m != T(0)) return ((b < T(0)) != (m < T(0))) ? m + b : m;
  return std::copysign(T(0), b);
}

// integer a / b truncating toward zero; x / 0 is 0 and MIN / -1 wraps (as numpy)
template <class T>
RT_INLINE T idiv(T a, T b) {
  if (b == T(0)) return T(0);
  if (std::is_signed<T>::value && b == T(-1)) return (T)(T(0) - a);
  return (T)(a / b);
}

// integer remainder with the divisor's sign (np.mod); x % 0 is 0
template <class T>
RT_INLINE T imod(T a, T b) {
  if (b == T(0) || (std::is_signed<T>::value && b == T(-1))) return T(0);
  T r = (T)(a % b);
  return (r != T(0) && ((r < T(0)) != (b < T(0)))) ? (T)(r + b) : r;
}

// shifts as numpy: a shift of the width or more (or negative) gives 0, or -1 for a negative
// value shifted right
template <class T>
RT_INLINE T shl(T a, T b) {
  using U = typename std::make_unsigned<T>::type;
  return (uint64_t)(int64_t)b < sizeof(T) * 8 ? (T)((U)a << b) : T(0);
}
template <class T>
RT_INLINE T shr(T a, T b) {
  if ((uint64_t)(int64_t)b < sizeof(T) * 8) return (T)(a >> b);
  return a < T(0) ? T(-1) : T(0);
}

// numpy astype: float -> narrow integers goes through int32 (as the C cast numpy compiles to)
template <class To, class From>
RT_INLINE To cast(From x) {
  if constexpr (std::is_same<To, bool>::value) {
    return x != From(0);
  } else if constexpr (std::is_floating_point<From>::value && std::is_integral<To>::value &&
                       sizeof(To) < 4) {
    return (To)(int32_t)x;
  } else if constexpr (std::is_floating_point<From>::value && std::is_same<To, uint32_t>::value) {
    return (To)(int64_t)x;
  } else {
    return (To)x;
  }
}

}  // namespace rt
#endif  // RTINFER_EW_PRELUDE
"""
# rt::exp(float) comes from the header the native kernels use too: both round alike
PRELUDE = PRELUDE.replace("@RT_EXP@", (CPP_DIR / "native" / "rt_exp.h").read_text())


# -- the emitters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """An op's argument in generated code: its C expression, dtype, and value when it is a
    constant scalar (for strength reduction, e.g. pow(x, 2) -> x * x)."""

    expr: str
    dtype: DType
    const: float | int | bool | None = None


Emitter = Callable[[list[Operand], DType, dict], str]


def _need_float(op: str, args: list[Operand]) -> None:
    for a in args:
        if not a.dtype.is_float:
            raise _unsupported(op, f"dtype {a.dtype}")


def _float_unary(op: str, template: str) -> Emitter:
    """A float op from a template over {x} (the operand), {T} (its C type) and the op's
    numeric attributes ({alpha}: a literal of the operand's dtype). Constants are written
    {T}(c): the double literal rounded to T, as numpy rounds a Python float to float32."""

    def emit(args: list[Operand], out: DType, attrs: dict) -> str:
        _need_float(op, args)
        lits = {k: literal(v, out) for k, v in attrs.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
        return template.format(x=args[0].expr, T=CTYPE[out], **lits)

    return emit


def _by_kind(op: str, *, float_: str | None = None, int_: str | None = None,
             bool_: str | None = None) -> Emitter:
    """An op whose C++ depends on whether its (first) operand is float, integer or bool; the
    templates use {a}, {b}, {c}, {x} and {T} (the result's C type)."""

    def emit(args: list[Operand], out: DType, attrs: dict) -> str:
        dt = args[-1].dtype
        fmt = float_ if dt.is_float else int_ if dt.is_int else bool_
        if fmt is None:
            raise _unsupported(op, f"dtype {dt}")
        names = dict(zip("abc", (a.expr for a in args), strict=False))
        return fmt.format(x=args[0].expr, T=CTYPE[out], **names)

    return emit


def _gelu(args: list[Operand], out: DType, attrs: dict) -> str:
    tanh = attrs.get("approximate", "none") == "tanh"
    return _float_unary("gelu", GELU_TANH if tanh else GELU_ERF)(args, out, {})


def _pow(args: list[Operand], out: DType, attrs: dict) -> str:
    _need_float("pow", args)
    a, b = args
    if b.const in (1, 2, 3):  # x ** 2 rounds once, as pow does; x ** 3 within an ulp
        return "(" + " * ".join([a.expr] * int(b.const)) + ")"
    return f"std::pow({a.expr}, {b.expr})"


def _cast(args: list[Operand], out: DType, attrs: dict) -> str:
    x = args[0]
    ctype(x.dtype, "cast")
    return f"rt::cast<{ctype(out, 'cast')}, {CTYPE[x.dtype]}>({x.expr})"


def _where(args: list[Operand], out: DType, attrs: dict) -> str:
    c, a, b = args
    return f"({c.expr} ? {a.expr} : {b.expr})"


def _compare(sym: str) -> Emitter:
    return lambda args, out, attrs: f"({args[0].expr} {sym} {args[1].expr})"


# 0.5 x (1 + erf(x / sqrt 2)) and 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
GELU_ERF = "({T}(0.5) * {x} * ({T}(1) + rt::erf({x} / {T}(1.4142135623730951))))"
GELU_TANH = ("({T}(0.5) * {x} * ({T}(1) + rt::tanh({T}(0.7978845608028654) * "
             "({x} + {T}(0.044715) * {x} * {x} * {x}))))")

# float op -> C++ template for its reference (compiler/ir/ops/elementwise.py)
FLOAT_UNARY = {
    # activations
    "relu": "({x} < {T}(0) ? {T}(0) : {x})",  # NaN stays NaN, as np.maximum
    "leaky_relu": "({x} >= {T}(0) ? {x} : {x} * {alpha})",
    "elu": "({x} > {T}(0) ? {x} : rt::expm1({x}) * {alpha})",
    "selu": "({T}(1.0507009873554805) * ({x} > {T}(0) ? {x} : "
            "{T}(1.6732632423543772) * rt::expm1({x})))",
    "silu": "({x} * rt::sigmoid({x}))",
    "sigmoid": "rt::sigmoid({x})",
    "tanh": "rt::tanh({x})",
    "hardsigmoid": "rt::clip<{T}>({x} / {T}(6) + {T}(0.5), 0, 1)",
    "hardswish": "({x} * rt::clip<{T}>({x} / {T}(6) + {T}(0.5), 0, 1))",
    "mish": "({x} * rt::tanh(rt::logaddexp0({x})))",
    "softplus": "({x} * {beta} > {threshold} ? {x} : rt::logaddexp0({x} * {beta}) / {beta})",
    "clip": "rt::clip<{T}>({x}, {min}, {max})",
    # math
    "exp": "rt::exp({x})",
    "log": "rt::log({x})",
    "erf": "rt::erf({x})",
    "rsqrt": "({T}(1) / std::sqrt({x}))",
    "reciprocal": "({T}(1) / {x})",
    "round": "std::nearbyint({x})",  # half to even
    **{fn: f"std::{fn}({{x}})" for fn in ("sqrt", "floor", "ceil", "sin", "cos", "tan", "asin",
                                          "acos", "atan", "sinh", "cosh", "asinh", "acosh",
                                          "atanh")},
}

EMITTERS: dict[str, Emitter] = {
    **{op: _float_unary(op, t) for op, t in FLOAT_UNARY.items()},
    "gelu": _gelu,
    # any numeric dtype
    "abs": _by_kind("abs", float_="std::fabs({x})", int_="({T})({x} < 0 ? -{x} : {x})"),
    "neg": _by_kind("neg", float_="(-{x})", int_="({T})(-{x})"),
    "sign": _by_kind("sign", float_="({x} > 0 ? ({T})1 : ({x} < 0 ? ({T})-1 : {x}))",
                     int_="({x} > 0 ? ({T})1 : ({x} < 0 ? ({T})-1 : ({T})0))"),
    "logical_not": _by_kind("logical_not", bool_="(!{x})"),
    "bitwise_not": _by_kind("bitwise_not", int_="({T})(~{x})"),
    "identity": lambda args, out, attrs: args[0].expr,
    "cast": _cast,
    # arithmetic
    "add": _by_kind("add", float_="({a} + {b})", int_="({T})({a} + {b})", bool_="({a} || {b})"),
    "sub": _by_kind("sub", float_="({a} - {b})", int_="({T})({a} - {b})"),
    "mul": _by_kind("mul", float_="({a} * {b})", int_="({T})({a} * {b})", bool_="({a} && {b})"),
    "div": _by_kind("div", float_="({a} / {b})", int_="rt::idiv<{T}>({a}, {b})"),
    "mod": _by_kind("mod", float_="rt::fmod<{T}>({a}, {b})", int_="rt::imod<{T}>({a}, {b})"),
    "pow": _pow,
    "maximum": _by_kind("maximum", float_="rt::fmax<{T}>({a}, {b})",
                        int_="({a} > {b} ? {a} : {b})", bool_="({a} || {b})"),
    "minimum": _by_kind("minimum", float_="rt::fmin<{T}>({a}, {b})",
                        int_="({a} < {b} ? {a} : {b})", bool_="({a} && {b})"),
    # comparisons and logic
    "equal": _compare("=="),
    "not_equal": _compare("!="),
    "less": _compare("<"),
    "less_equal": _compare("<="),
    "greater": _compare(">"),
    "greater_equal": _compare(">="),
    "logical_and": _by_kind("logical_and", bool_="({a} && {b})"),
    "logical_or": _by_kind("logical_or", bool_="({a} || {b})"),
    # bitwise (integers)
    "bitwise_and": _by_kind("bitwise_and", int_="({T})({a} & {b})"),
    "bitwise_or": _by_kind("bitwise_or", int_="({T})({a} | {b})"),
    "bitwise_xor": _by_kind("bitwise_xor", int_="({T})({a} ^ {b})"),
    "shift_left": _by_kind("shift_left", int_="rt::shl<{T}>({a}, {b})"),
    "shift_right": _by_kind("shift_right", int_="rt::shr<{T}>({a}, {b})"),
    "where": _where,
}


def supported_ops() -> frozenset[str]:
    return frozenset(EMITTERS)


# -- generation ---------------------------------------------------------------------------------


@dataclass
class _Leaf:
    """A value read from memory: input `index` of the function, or a constant array baked into
    the source (`data`)."""

    value: Value
    index: int | None
    data: np.ndarray | None
    shape: tuple[int, ...]  # as laid out in memory
    strides: list[int]  # per output dim, in elements (0: broadcast)


def _static_shape(v: Value, op: str, what: str = "") -> tuple[int, ...]:
    at = f" of {what}" if what else ""
    if not v.type.is_static:
        raise _unsupported(op, f"symbolic shape {v.type}{at}")
    if v.type.quant is not None:
        raise _unsupported(op, f"quantized type {v.type}{at}")
    return tuple(int(d) for d in v.type.shape)


def _broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    strides, s = [0] * len(out), 1
    for d in range(1, len(shape) + 1):
        n = shape[-d]
        if n != 1:
            strides[len(out) - d] = s
        s *= n
    return strides


def _broadcasts(shape: tuple[int, ...], out: tuple[int, ...]) -> bool:
    return len(shape) <= len(out) and all(n in (1, m) for n, m in zip(
        shape[::-1], out[len(out) - len(shape):][::-1], strict=True))


def _coalesce(out: tuple[int, ...], leaves: list[_Leaf]) -> tuple[list[int], list[list[int]]]:
    """Output dims without the size-1 ones, merged where every leaf is contiguous (or broadcast)
    across the pair; returns the sizes and each leaf's strides over them."""
    keep = [d for d, n in enumerate(out) if n != 1]
    sizes = [out[d] for d in keep]
    strides = [[lf.strides[d] for d in keep] for lf in leaves]
    k = len(sizes) - 1
    while k > 0:
        if all(st[k - 1] == st[k] * sizes[k] for st in strides):
            sizes[k - 1:k + 1] = [sizes[k - 1] * sizes[k]]
            for st in strides:
                st[k - 1:k + 1] = [st[k]]
        k -= 1
    return sizes, strides


def _needed(nodes: list[Node], result: Value) -> list[Node]:
    need, stack = set(), [result]
    while stack:
        v = stack.pop()
        p = v.producer
        if p is not None and id(p) not in need and any(p is n for n in nodes):
            need.add(id(p))
            stack.extend(p.inputs)
    return [n for n in nodes if id(n) in need]


def _scalar(data: np.ndarray) -> float | int | bool:
    return data.reshape(-1)[0].item()


def generate(node_or_body: Node | Graph, in_shapes: Sequence[Sequence[int]] | None = None,
             out_shape: Sequence[int] | None = None, *, output: int = 0) -> Generated:
    """The C++ function computing result `output` of a fused_elementwise node, of one
    elementwise node, or of a body graph (whose inputs are the function's ``ins``).

    ``in_shapes``/``out_shape``: the inputs' and the result's shapes as laid out in memory when
    they differ from the IR's (NCHW values stored NHWC: pass [N, H, W, C]). Each keeps its
    element count and the inputs broadcast to ``out_shape``; a body is pointwise, so only the
    addressing changes (a constant array inside the body must then be a scalar)."""
    consts: dict[int, np.ndarray] = {}  # id(param) -> the constant data it is known to hold
    op = "fused_elementwise" if isinstance(node_or_body, Graph) else node_or_body.op
    if isinstance(node_or_body, Graph):
        params, nodes = list(node_or_body.inputs), list(node_or_body.nodes)
        result = node_or_body.outputs[output]
        outer = [None] * len(params)
    elif node_or_body.op == "fused_elementwise":
        body: Graph = node_or_body.attrs["body"]
        params, nodes, result = list(body.inputs), list(body.nodes), body.outputs[output]
        outer = list(node_or_body.inputs)
    else:
        if node_or_body.op not in EMITTERS:
            raise _unsupported(node_or_body.op)
        params, nodes = list(node_or_body.inputs), [node_or_body]
        result, outer = node_or_body.outputs[output], list(node_or_body.inputs)
    for p, o in zip(params, outer, strict=True):
        data = None if o is None else o.const_data
        if data is not None and not isinstance(data, ElidedTensor):
            consts[id(p)] = np.asarray(data)

    symbolic = not (result.type.is_static and all(p.type.is_static for p in params))
    logical_out: tuple[int, ...] | None
    if symbolic and out_shape is not None and in_shapes is not None:
        # symbolic IR dims with concrete shapes given (a plan for one input shape): trust
        # them; the IR's shape is unknown, so body constants must be scalars (as when relaid)
        logical_out, out_shape = None, tuple(int(d) for d in out_shape)
        shape_of = {id(p): tuple(int(d) for d in s)
                    for p, s in zip(params, in_shapes, strict=True)}
        for i, p in enumerate(params):
            if not _broadcasts(shape_of[id(p)], out_shape):
                raise ValueError(f"input {i}: shape {list(shape_of[id(p)])} does not "
                                 f"broadcast to {list(out_shape)}")
    else:
        logical_out = _static_shape(result, op, "the output")
        shape_of = {id(p): _static_shape(p, op, "an input") for p in params}
        if out_shape is not None or in_shapes is not None:
            out_shape = tuple(int(d) for d in (out_shape if out_shape is not None
                                               else logical_out))
            if math.prod(out_shape) != math.prod(logical_out):
                raise ValueError(f"out_shape {list(out_shape)} does not hold the result's "
                                 f"{list(logical_out)}")
            for i, p in enumerate(params):
                phys = tuple(int(d) for d in (in_shapes[i] if in_shapes is not None
                                              else shape_of[id(p)]))
                if math.prod(phys) != math.prod(shape_of[id(p)]) or not _broadcasts(
                        phys, out_shape):
                    raise ValueError(f"input {i}: shape {list(phys)} does not hold "
                                     f"{list(shape_of[id(p)])} or broadcast to "
                                     f"{list(out_shape)}")
                shape_of[id(p)] = phys
        else:
            out_shape = logical_out
    relaid = out_shape != logical_out
    out_dtype = result.type.dtype
    ctype(out_dtype, op, "the output")
    body_nodes = _needed(nodes, result)
    for n in body_nodes:
        if n.op != "const" and n.op not in EMITTERS:
            raise _unsupported(n.op)
        for v in (*n.inputs, *n.outputs):
            ctype(v.type.dtype, n.op)
            if not symbolic:
                _static_shape(v, n.op)
            elif v.type.quant is not None:
                raise _unsupported(n.op, f"quantized {v.type}")

    # the values read from memory or inlined
    leaves: list[_Leaf] = []
    inline: dict[int, Operand] = {}
    used = {id(v) for n in body_nodes for v in n.inputs} | {id(result)}
    sources: list[tuple[Value, int | None, np.ndarray | None]] = []
    seen: set[int] = set()
    for i, p in enumerate(params):
        if id(p) in used and id(p) not in seen:
            seen.add(id(p))
            sources.append((p, i, consts.get(id(p))))
    for n in body_nodes:
        if n.op == "const":
            sources.append((n.out, None, np.asarray(n.attrs["value"])))
    for v, index, data in sources:
        shape = shape_of.get(id(v)) or _static_shape(v, op, "a constant")
        ctype(v.type.dtype, op, "an input")
        if data is not None and data.size == 1:
            inline[id(v)] = Operand(literal(_scalar(data), v.type.dtype), v.type.dtype,
                                    _scalar(data))
        elif index is None and (data.size > MAX_CONST_ELEMENTS or relaid):
            raise _unsupported("const", f"a {data.size}-element constant inside the body"
                                       + (" of a re-laid-out node" if relaid else ""))
        else:
            leaves.append(_Leaf(v, index, data, shape, _broadcast_strides(shape, out_shape)))

    scalars = [lf for lf in leaves if math.prod(lf.shape) == 1]
    arrays = [lf for lf in leaves if lf not in scalars]
    sizes, strides = _coalesce(out_shape, arrays)
    text = _emit_function(result, out_dtype, body_nodes, leaves, scalars, arrays, sizes, strides,
                          inline)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    name = f"rtinfer_ew_{digest}"
    return Generated(name, PRELUDE + text.replace("@NAME@", name))


def _emit_function(result: Value, out_dtype: DType, body_nodes: list[Node], leaves: list[_Leaf],
                   scalars: list[_Leaf], arrays: list[_Leaf], sizes: list[int],
                   strides: list[list[int]], inline: dict[int, Operand]) -> str:
    lines = ['extern "C" void @NAME@(const char* const* ins, char* out_, int64_t begin, '
             "int64_t end) {"]
    for k, lf in enumerate(leaves):
        st = storage(lf.value.type.dtype)
        if lf.index is not None:
            lines.append(f"  const {st}* p{k} = (const {st}*)ins[{lf.index}];")
        else:
            flat = lf.data.astype(lf.value.type.dtype.np).reshape(-1)
            vals = ", ".join(literal(x, lf.value.type.dtype) for x in flat.tolist())
            lines.append(f"  static const {st} c{k}[{flat.size}] = {{{vals}}};")
            lines.append(f"  const {st}* p{k} = c{k};")
    pointer = {id(lf.value): f"p{k}" for k, lf in enumerate(leaves)}
    out_st = storage(out_dtype)
    lines.append(f"  {out_st}* out = ({out_st}*)out_;")

    def load(dt: DType, element: str) -> str:
        return f"({element} != 0)" if dt is DType.bool else element

    env: dict[int, Operand] = dict(inline)
    for k, lf in enumerate(scalars):  # one element: loaded once
        dt = lf.value.type.dtype
        lines.append(f"  const {CTYPE[dt]} s{k} = {load(dt, pointer[id(lf.value)] + '[0]')};")
        env[id(lf.value)] = Operand(f"s{k}", dt)

    def element_body(indent: str, element: Callable[[int], str], out_ref: str) -> list[str]:
        """Load array input k as element(k), compute the needed nodes, store to out_ref."""
        code, local = [], dict(env)
        for k, lf in enumerate(arrays):
            dt = lf.value.type.dtype
            code.append(f"{indent}const {CTYPE[dt]} a{k} = {load(dt, element(k))};")
            local[id(lf.value)] = Operand(f"a{k}", dt)
        for j, n in enumerate(body_nodes):
            if n.op == "const":
                continue
            t = n.out.type.dtype
            expr = EMITTERS[n.op]([local[id(v)] for v in n.inputs], t, n.attrs)
            code.append(f"{indent}const {CTYPE[t]} v{j} = {expr};")
            local[id(n.out)] = Operand(f"v{j}", t)
        r = local[id(result)].expr
        code.append(f"{indent}{out_ref} = {f'({out_st})({r})' if out_dtype is DType.bool else r};")
        return code

    if len(sizes) <= 1:  # one run: every array input is read at the output's index
        lines.append("#pragma omp simd")
        lines.append("  for (int64_t i = begin; i < end; ++i) {")
        lines += element_body("    ", lambda k: f"{pointer[id(arrays[k].value)]}[i]", "out[i]")
        lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    # rows of the inner (coalesced) dim; the outer dims give each input's row offset
    inner = sizes[-1]
    lines.append(f"  const int64_t inner = {inner};")
    lines.append("  for (int64_t i = begin; i < end;) {")
    lines.append("    const int64_t o = i / inner, j0 = i - o * inner;")
    lines.append("    const int64_t j1 = end - o * inner < inner ? end - o * inner : inner;")
    moving = [k for k in range(len(arrays)) if any(strides[k][:-1])]
    if moving:
        lines.append("    int64_t r = o;")
        lines += [f"    int64_t off{k} = 0;" for k in moving]
        for d in range(len(sizes) - 2, -1, -1):
            if d > 0:
                lines.append(f"    {{ const int64_t q = r / {sizes[d]}, x = r - q * {sizes[d]}; "
                             f"r = q;")
            else:
                lines.append("    { const int64_t x = r;")
            lines += [f"      off{k} += x * {strides[k][d]};" for k in moving if strides[k][d]]
            lines.append("    }")
    for k, lf in enumerate(arrays):
        st = storage(lf.value.type.dtype)
        off = f" + off{k}" if k in moving else ""
        lines.append(f"    const {st}* q{k} = {pointer[id(lf.value)]}{off};")
    lines.append(f"    {out_st}* po = out + o * inner;")
    lines.append("#pragma omp simd")
    lines.append("    for (int64_t j = j0; j < j1; ++j) {")
    lines += element_body("      ", lambda k: f"q{k}[{'j' if strides[k][-1] else '0'}]", "po[j]")
    lines.append("    }")
    lines.append("    i = o * inner + j1;")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- compilation --------------------------------------------------------------------------------

_LIBS: dict[str, ctypes.CDLL] = {}  # content hash -> the loaded library (kept alive)


def compile_functions(sources: dict[str, str], level: str | None = None) -> dict[str, int]:
    """Compile `sources` (symbol -> C++ defining it, e.g. ``Generated.source``) into one shared
    object for CPU level ``level`` (default ``isa.level()``), cached on disk by content, level
    and compiler, and return each symbol's address."""
    if not sources:
        return {}
    cxx = compiler()
    lv = level or isa.level()
    flags = [*FLAGS, *isa.march_flags(lv)]
    text = "\n".join(sources[k] for k in sorted(sources))
    key = hashlib.sha256("\0".join([text, " ".join(flags), isa.cpu_key(lv), cxx,
                                    isa.compiler_id(cxx)]).encode()).hexdigest()[:24]
    lib = _LIBS.get(key)
    if lib is None:
        try:
            d = codegen_dir()
        except CacheDirError as e:
            raise NativeUnavailable(f"{e}; or use backend='torch'") from None
        so = d / f"ew_{key}.so"
        if not so.is_file():
            # the tag names this process: a killed build's files are told from a running one's
            stem = f"ew_{key}.{temp_tag()}"
            src, tmp_so = d / f"{stem}.cpp", d / f"{stem}.so"
            try:
                src.write_text(text)
            except OSError as e:
                raise NativeUnavailable(f"cannot write generated code to {d}: "
                                        f"{e.strerror or e}") from None
            cmd = [cxx, *flags, str(src), "-o", str(tmp_so)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tmp_so.unlink(missing_ok=True)
                raise NativeUnavailable(f"compiling generated elementwise code failed (source "
                                        f"kept in {src}):\n{proc.stderr[-4000:]}")
            os.replace(src, d / f"ew_{key}.cpp")
            os.replace(tmp_so, so)
        lib = ctypes.CDLL(str(so))
        _LIBS[key] = lib
    addresses = {}
    for name in sources:
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise BackendError(f"the generated library has no function {name!r} (the source "
                               f"given for it defines another name)") from None
        addresses[name] = ctypes.cast(fn, ctypes.c_void_p).value
    return addresses


__all__ = ["EMITTERS", "Generated", "compile_functions", "generate", "supported_ops"]
