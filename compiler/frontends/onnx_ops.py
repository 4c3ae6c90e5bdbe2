"""The ONNX conversion table: ONNX op_type -> a rule that builds IR ops.

Each rule gets a ``NodeContext`` (attributes, helpers that add and fold IR nodes) and the node's
inputs as IR values (None for an omitted optional input), and returns the node's outputs.
Inputs that the IR takes as attributes (shapes, axes, pads, scales) must be constants after
folding; a rule raises ``NotConstant`` otherwise. Simple one-to-one ops are the tables
``UNARY`` and ``BINARY``; everything else is one function under ``@rule``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from rtinfer.frontends.onnx_frontend import NodeContext, Unsupported, onnx_dtype
from rtinfer.ir.graph import Value
from rtinfer.ir.types import DType, make_dim

Rule = Callable[[NodeContext, list], "Value | list[Value | None]"]
CONVERTERS: dict[str, Rule] = {}


def rule(*names: str):
    def deco(fn: Rule) -> Rule:
        for n in names:
            CONVERTERS[n] = fn
        return fn
    return deco


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
    CONVERTERS[_k] = _unary(_v)
for _k, _v in BINARY.items():
    CONVERTERS[_k] = _binary(_v)
for _k, _v in VARIADIC.items():
    CONVERTERS[_k] = _variadic(_v)


# -- helpers --------------------------------------------------------------------------------------


def _rank(v: Value) -> int:
    return v.type.rank


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _to_float(cx: NodeContext, v: Value, like: Value) -> Value:
    return v if v.type.dtype == like.type.dtype else cx.op("cast", v, dtype=like.type.dtype)


def _scalar_op(cx: NodeContext, op: str, x: Value, value: float) -> Value:
    return cx.op(op, x, cx.scalar(value, x))


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
    return _scalar_op(cx, "mul", cx.op("elu", x, alpha=alpha), gamma)


@rule("Celu")
def _celu(cx, ins):
    x, alpha = ins[0], cx.attr("alpha", 1.0)
    # max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) = alpha * elu(x / alpha)
    return _scalar_op(cx, "mul", cx.op("elu", _scalar_op(cx, "div", x, alpha), alpha=1.0), alpha)


@rule("ThresholdedRelu")
def _thresholded_relu(cx, ins):
    x = ins[0]
    keep = cx.op("greater", x, cx.scalar(cx.attr("alpha", 1.0), x))
    return cx.op("where", keep, x, cx.scalar(0, x))


@rule("HardSigmoid")
def _hard_sigmoid(cx, ins):
    x = ins[0]
    alpha, beta = cx.attr("alpha", 0.2), cx.attr("beta", 0.5)
    y = _scalar_op(cx, "add", _scalar_op(cx, "mul", x, alpha), beta)  # clip(alpha x + beta, 0, 1)
    return cx.op("clip", y, min=0.0, max=1.0)


@rule("Softsign")
def _softsign(cx, ins):
    x = ins[0]  # x / (1 + |x|)
    return cx.op("div", x, _scalar_op(cx, "add", cx.op("abs", x), 1.0))


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
    if x.type.dtype.is_float and (lo is None or lo.is_const) and (hi is None or hi.is_const):
        return cx.op("clip", x,
                     min=float(cx.array(lo, "min")) if lo is not None else -math.inf,
                     max=float(cx.array(hi, "max")) if hi is not None else math.inf)
    y = x if lo is None else cx.op("maximum", x, lo)
    y = y if hi is None else cx.op("minimum", y, hi)
    return y if y is not x else cx.op("identity", x)


# -- arithmetic -----------------------------------------------------------------------------------


@rule("Pow")
def _pow(cx, ins):
    x, y = ins
    if x.type.dtype.is_float:
        return cx.op("pow", x, _to_float(cx, y, x))
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
    return _scalar_op(cx, "div", _variadic("add")(cx, ins), len(ins))


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
    return cx.op("cast", ins[0], dtype=onnx_dtype(cx.attr("to"), "Cast target"))


@rule("CastLike")
def _cast_like(cx, ins):
    return cx.op("cast", ins[0], dtype=ins[1].type.dtype)


# -- linear algebra -------------------------------------------------------------------------------


@rule("MatMul")
def _matmul(cx, ins):
    return cx.op("matmul", ins[0], ins[1])


@rule("Gemm")
def _gemm(cx, ins):
    a, b = ins[:2]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = cx.attr("alpha", 1.0), cx.attr("beta", 1.0)
    ta, tb = cx.attr("transA", 0), cx.attr("transB", 0)
    bias_ok = c is None or (beta == 1.0 and c.is_const and c.type.rank == 1
                            and c.type.shape[0] == b.type.shape[0])
    if not ta and tb and alpha == 1.0 and b.is_const and bias_ok:
        # y = a @ b^T + c with a constant weight: the IR's linear(x, weight[O, I], bias[O])
        return cx.op("linear", a, b, c) if c is not None else cx.op("linear", a, b)
    if ta:
        a = cx.op("transpose", a, perm=[1, 0])
    if tb:
        b = cx.op("transpose", b, perm=[1, 0])
    y = cx.op("matmul", a, b)
    if alpha != 1.0:
        y = _scalar_op(cx, "mul", y, alpha)
    if c is not None and beta != 0.0:
        y = cx.op("add", y, c if beta == 1.0 else _scalar_op(cx, "mul", c, beta))
    return y


# -- convolution and pooling ----------------------------------------------------------------------


def _auto_pads(cx, x: Value, kernel, strides, dilations) -> list[int]:
    nd = len(kernel)
    auto = cx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(cx.attr("pads", [0] * (2 * nd)))
    if auto == "VALID":
        return [0] * (2 * nd)
    spatial = cx.static_shape(x, "auto_pad SAME input")[2:]
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begins.append(lo)
        ends.append(total - lo)
    return begins + ends


@rule("Conv")
def _conv(cx, ins):
    x, w = ins[:2]
    b = ins[2] if len(ins) > 2 else None
    nd = _rank(x) - 2
    if nd not in (1, 2, 3):
        raise Unsupported(f"{nd}-d convolution (rtinfer has 1-d to 3-d)")
    kernel = list(cx.attr("kernel_shape", None) or [int(d) for d in w.type.shape[2:]])
    strides = list(cx.attr("strides", [1] * nd))
    dilations = list(cx.attr("dilations", [1] * nd))
    pads = _auto_pads(cx, x, kernel, strides, dilations)
    args = (x, w) if b is None else (x, w, b)
    return cx.op(f"conv{nd}d", *args, stride=strides, pad=pads, dilation=dilations,
                 groups=cx.attr("group", 1))


@rule("ConvTranspose")
def _conv_transpose(cx, ins):
    x, w = ins[:2]
    b = ins[2] if len(ins) > 2 else None
    nd = _rank(x) - 2
    if nd not in (1, 2, 3):
        raise Unsupported(f"{nd}-d transposed convolution (rtinfer has 1-d to 3-d)")
    kernel = list(cx.attr("kernel_shape", None) or [int(d) for d in w.type.shape[2:]])
    strides = list(cx.attr("strides", [1] * nd))
    dilations = list(cx.attr("dilations", [1] * nd))
    out_pad = list(cx.attr("output_padding", [0] * nd))
    pads = list(cx.attr("pads", [0] * (2 * nd)))
    auto = cx.attr("auto_pad", "NOTSET")
    out_shape = cx.attr("output_shape", None)
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        spatial = cx.static_shape(x, "ConvTranspose input")[2:]
        if not out_shape:
            out_shape = [s * st for s, st in zip(spatial, strides, strict=True)]
        out_shape = list(out_shape)[-nd:]
        begins, ends = [], []
        for i in range(nd):
            total = (strides[i] * (spatial[i] - 1) + out_pad[i]
                     + (kernel[i] - 1) * dilations[i] + 1 - out_shape[i])
            lo = total - total // 2 if auto == "SAME_LOWER" else total // 2
            begins.append(lo)
            ends.append(total - lo)
        pads = begins + ends
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    for i in range(nd):  # a negative end pad is extra output padding
        if pads[nd + i] < 0:
            out_pad[i] -= pads[nd + i]
            pads[nd + i] = 0
    args = (x, w) if b is None else (x, w, b)
    return cx.op(f"conv_transpose{nd}d", *args, stride=strides, pad=pads, dilation=dilations,
                 groups=cx.attr("group", 1), output_padding=out_pad)


def _pool(cx, ins, kind: str):
    x = ins[0]
    nd = _rank(x) - 2
    if nd not in (1, 2, 3):
        raise Unsupported(f"{nd}-d pooling (rtinfer has 1-d to 3-d)")
    if cx.wants(1):
        raise Unsupported("MaxPool's Indices output")
    kernel = list(cx.attr("kernel_shape"))
    strides = list(cx.attr("strides", [1] * nd))
    dilations = list(cx.attr("dilations", [1] * nd))
    pads = _auto_pads(cx, x, kernel, strides, dilations)
    common = dict(kernel=kernel, stride=strides, pad=pads, ceil_mode=bool(cx.attr("ceil_mode", 0)))
    if kind == "max":
        return cx.op(f"max_pool{nd}d", x, dilation=dilations, **common)
    if any(d != 1 for d in dilations):
        raise Unsupported("dilated average pooling")
    return cx.op(f"avg_pool{nd}d", x, count_include_pad=bool(cx.attr("count_include_pad", 0)),
                 **common)


CONVERTERS["MaxPool"] = lambda cx, ins: _pool(cx, ins, "max")
CONVERTERS["AveragePool"] = lambda cx, ins: _pool(cx, ins, "avg")


@rule("GlobalAveragePool")
def _global_avg(cx, ins):
    x = ins[0]
    if _rank(x) == 4:
        return cx.op("global_avg_pool2d", x)
    return cx.op("reduce_mean", x, axes=list(range(2, _rank(x))), keepdims=True)


@rule("GlobalMaxPool")
def _global_max(cx, ins):
    return cx.op("reduce_max", ins[0], axes=list(range(2, _rank(ins[0]))), keepdims=True)


# -- normalization --------------------------------------------------------------------------------


@rule("BatchNormalization")
def _batch_norm(cx, ins):
    if cx.attr("training_mode", 0) or cx.n_outputs > 1:
        raise Unsupported("training-mode BatchNormalization")
    x, scale, bias, mean, var = ins
    return cx.op("batch_norm", x, mean, var, scale, bias, eps=cx.attr("epsilon", 1e-5))


@rule("InstanceNormalization")
def _instance_norm(cx, ins):
    return cx.op("instance_norm", *ins, eps=cx.attr("epsilon", 1e-5))


@rule("LayerNormalization")
def _layer_norm(cx, ins):
    x, scale = ins[:2]
    bias = ins[2] if len(ins) > 2 else None
    axis, eps = _axis(cx.attr("axis", -1), _rank(x)), cx.attr("epsilon", 1e-5)
    axes = list(range(axis, _rank(x)))
    if not (cx.wants(1) or cx.wants(2)) and x.type.dtype == DType.f32:
        return cx.op("layer_norm", *([x, scale] + ([bias] if bias else [])), axis=axis, eps=eps)
    # spelled out to produce Mean and InvStdDev (computed in f32 when stash_type = 1)
    xs = cx.op("cast", x, dtype=DType.f32) if cx.attr("stash_type", 1) == 1 else x
    mean = cx.op("reduce_mean", xs, axes=axes, keepdims=True)
    d = cx.op("sub", xs, mean)
    var = cx.op("reduce_mean", cx.op("mul", d, d), axes=axes, keepdims=True)
    inv = cx.op("rsqrt", _scalar_op(cx, "add", var, eps))
    y = _to_float(cx, cx.op("mul", d, inv), x)
    y = cx.op("mul", y, scale)
    if bias is not None:
        y = cx.op("add", y, bias)
    return [y, mean, inv]


@rule("RMSNormalization")
def _rms_norm(cx, ins):
    x, scale = ins
    axis, eps = _axis(cx.attr("axis", -1), _rank(x)), cx.attr("epsilon", 1e-5)
    axes = list(range(axis, _rank(x)))
    xs = cx.op("cast", x, dtype=DType.f32) if cx.attr("stash_type", 1) == 1 else x
    ms = cx.op("reduce_mean", cx.op("mul", xs, xs), axes=axes, keepdims=True)
    y = _to_float(cx, cx.op("mul", xs, cx.op("rsqrt", _scalar_op(cx, "add", ms, eps))), x)
    return cx.op("mul", y, scale)


@rule("GroupNormalization")
def _group_norm(cx, ins):
    x, scale, bias = ins
    groups, eps = cx.attr("num_groups"), cx.attr("epsilon", 1e-5)
    c = x.type.shape[1]
    if scale.type.shape[0] != c:  # opset 18: one scale per group
        raise Unsupported("per-group scale and bias (opset 18 GroupNormalization)")
    return cx.op("group_norm", x, scale, bias, groups=groups, eps=eps)


@rule("Softmax", "LogSoftmax")
def _softmax(cx, ins):
    name = "softmax" if cx.node.op_type == "Softmax" else "log_softmax"
    return cx.op(name, ins[0], axis=cx.attr("axis", -1))


@rule("LpNormalization")
def _lp_norm(cx, ins):
    x, axis, p = ins[0], cx.attr("axis", -1), cx.attr("p", 2)
    a = cx.op("abs", x) if p == 1 else cx.op("mul", x, x)
    n = cx.op("reduce_sum", a, axes=[axis], keepdims=True)
    if p == 2:
        n = cx.op("sqrt", n)
    zero = cx.scalar(0, n)  # a zero vector stays zero (onnx's reference divides by 1 there)
    return cx.op("div", x, cx.op("where", cx.op("equal", n, zero), cx.scalar(1, n), n))


# -- reductions -----------------------------------------------------------------------------------


def _reduce_axes(cx, ins) -> list[int] | None:
    """Axes of a Reduce* node (attribute, or input since opset 18); None: reduce nothing."""
    if len(ins) > 1 and ins[1] is not None:
        axes = cx.ints(ins[1], "axes")
    else:
        axes = list(cx.attr("axes", []))
    if not axes and cx.attr("noop_with_empty_axes", 0):
        return None
    return axes or list(range(_rank(ins[0])))


def _reduction(pre: Callable | None, ir_op: str, post: Callable | None = None) -> Rule:
    def convert(cx, ins):
        x = ins[0]
        axes = _reduce_axes(cx, ins)
        if axes is None:
            return cx.op("identity", x)
        y = pre(cx, x) if pre else x
        y = cx.op(ir_op, y, axes=axes, keepdims=bool(cx.attr("keepdims", 1)))
        return post(cx, y) if post else y
    return convert


CONVERTERS.update({
    "ReduceSum": _reduction(None, "reduce_sum"),
    "ReduceMean": _reduction(None, "reduce_mean"),
    "ReduceMax": _reduction(None, "reduce_max"),
    "ReduceMin": _reduction(None, "reduce_min"),
    "ReduceProd": _reduction(None, "reduce_prod"),
    # sum |x|; sqrt(sum x^2); sum x^2; log(sum x); log(sum exp(x))
    "ReduceL1": _reduction(lambda cx, x: cx.op("abs", x), "reduce_sum"),
    "ReduceL2": _reduction(lambda cx, x: cx.op("mul", x, x), "reduce_sum",
                           lambda cx, y: cx.op("sqrt", y)),
    "ReduceSumSquare": _reduction(lambda cx, x: cx.op("mul", x, x), "reduce_sum"),
    "ReduceLogSum": _reduction(None, "reduce_sum", lambda cx, y: cx.op("log", y)),
    "ReduceLogSumExp": _reduction(lambda cx, x: cx.op("exp", x), "reduce_sum",
                                  lambda cx, y: cx.op("log", y)),
})


@rule("ArgMax", "ArgMin")
def _arg(cx, ins):
    x = ins[0]
    name = "argmax" if cx.node.op_type == "ArgMax" else "argmin"
    axis, keep = _axis(cx.attr("axis", 0), _rank(x)), bool(cx.attr("keepdims", 1))
    if not cx.attr("select_last_index", 0):
        return cx.op(name, x, axis=axis, keepdims=keep)
    # last index of the extreme = n - 1 - (first index in the reversed tensor)
    n = cx.static_shape(x)[axis]
    rev = cx.op("slice", x, starts=[-1], ends=[-(2**63)], axes=[axis], steps=[-1])
    i = cx.op(name, rev, axis=axis, keepdims=keep)
    return cx.op("sub", cx.const(np.int64(n - 1)), i)


@rule("CumSum")
def _cumsum(cx, ins):
    x = ins[0]
    axis = _axis(cx.ints(ins[1], "axis")[0], _rank(x))

    def flip(v):
        return cx.op("slice", v, starts=[-1], ends=[-(2**63)], axes=[axis], steps=[-1])

    y = flip(x) if cx.attr("reverse", 0) else x
    s = cx.op("cumsum", y, axis=axis)
    if cx.attr("exclusive", 0):
        s = cx.op("sub", s, y)
    return flip(s) if cx.attr("reverse", 0) else s


# -- shapes ---------------------------------------------------------------------------------------


@rule("Shape")
def _shape(cx, ins):
    x = ins[0]
    r = _rank(x)
    start, end = cx.attr("start", 0), cx.attr("end", r)
    start, end = max(0, min(r, _axis(start, r))), max(0, min(r, _axis(end, r)))
    dims = tuple(x.type.shape[start:end])
    if all(isinstance(d, int) for d in dims):
        return cx.const(np.array(dims, dtype=np.int64))
    s = cx.op("shape", x)
    if (start, end) != (0, r):
        s = cx.op("slice", s, starts=[start], ends=[end])
    cx.conv.dims[s] = dims
    return s


@rule("Size")
def _size(cx, ins):
    return cx.const(np.int64(np.prod(cx.static_shape(ins[0]))))


@rule("Reshape")
def _reshape(cx, ins):
    x, shape = ins
    target = cx.shape_vector(shape, "Reshape's shape")
    if not cx.attr("allowzero", 0):
        target = [x.type.shape[i] if isinstance(d, int) and d == 0 else d
                  for i, d in enumerate(target)]
    return cx.op("reshape", x, shape=target)


@rule("Flatten")
def _flatten(cx, ins):
    x = ins[0]
    r = _rank(x)
    axis = _axis(cx.attr("axis", 1), r)
    lead = make_dim(int(np.prod([1])) * _prod(x.type.shape[:axis]))
    return cx.op("reshape", x, shape=[lead, _prod(x.type.shape[axis:])])


def _prod(dims):
    p = 1
    for d in dims:
        p = p * d
    return make_dim(p)


@rule("Squeeze")
def _squeeze(cx, ins):
    x = ins[0]
    if len(ins) > 1 and ins[1] is not None:
        axes = cx.ints(ins[1], "Squeeze's axes")
    else:
        axes = list(cx.attr("axes", []))
    return cx.op("squeeze", x, axes=[_axis(a, _rank(x)) for a in axes])


@rule("Unsqueeze")
def _unsqueeze(cx, ins):
    x = ins[0]
    axes = cx.ints(ins[1], "Unsqueeze's axes") if len(ins) > 1 else list(cx.attr("axes"))
    r = _rank(x) + len(axes)
    out = cx.op("unsqueeze", x, axes=sorted(_axis(a, r) for a in axes))
    if x in cx.conv.dims:
        cx.conv.dims[out] = cx.conv.dims[x]
    return out


@rule("Transpose")
def _transpose(cx, ins):
    x = ins[0]
    perm = cx.attr("perm", None) or list(reversed(range(_rank(x))))
    return cx.op("transpose", x, perm=list(perm))


@rule("Expand")
def _expand(cx, ins):
    x, shape = ins
    target = cx.shape_vector(shape, "Expand's shape")
    # ONNX Expand broadcasts both ways: the result has the broadcast of x's shape and target
    r = max(len(target), _rank(x))
    xs = [1] * (r - _rank(x)) + list(x.type.shape)
    ts = [1] * (r - len(target)) + list(target)
    out = [a if isinstance(b, int) and b == 1 else b for a, b in zip(xs, ts, strict=True)]
    return cx.op("expand", x, shape=out)


@rule("Concat")
def _concat(cx, ins):
    vals = [v for v in ins if v is not None]
    axis = _axis(cx.attr("axis"), _rank(vals[0]))
    out = cx.op("concat", *vals, axis=axis)
    if axis == 0 and all(v.is_const or v in cx.conv.dims for v in vals) and _rank(vals[0]) == 1:
        dims = []
        for v in vals:
            dims += cx.conv.dims[v] if v in cx.conv.dims else cx.ints(v, "")
        cx.conv.dims[out] = tuple(dims)
    return out


@rule("Split")
def _split(cx, ins):
    x = ins[0]
    axis = _axis(cx.attr("axis", 0), _rank(x))
    n = len(cx.node.output)
    if len(ins) > 1 and ins[1] is not None:
        sizes = cx.ints(ins[1], "Split's sizes")
    elif cx.attr("split"):
        sizes = list(cx.attr("split"))
    else:
        d = x.type.shape[axis]
        if not isinstance(d, int):
            raise Unsupported(f"Split of symbolic dim {d} without sizes")
        k = cx.attr("num_outputs", n)
        chunk = -(-d // k)
        sizes = [chunk] * (d // chunk) + ([d % chunk] if d % chunk else [])
    return cx.ops("split", x, axis=axis, sizes=sizes)


@rule("Slice")
def _slice(cx, ins):
    x = ins[0]
    starts, ends = cx.ints(ins[1], "Slice's starts"), cx.ints(ins[2], "Slice's ends")
    axes = cx.ints(ins[3], "Slice's axes") if len(ins) > 3 and ins[3] is not None else []
    steps = cx.ints(ins[4], "Slice's steps") if len(ins) > 4 and ins[4] is not None else []
    axes = [_axis(a, _rank(x)) for a in axes]
    out = cx.op("slice", x, starts=starts, ends=ends, axes=axes, steps=steps)
    if x in cx.conv.dims and not steps:
        cx.conv.dims[out] = tuple(cx.conv.dims[x][slice(starts[0], ends[0])])
    return out


@rule("Gather")
def _gather(cx, ins):
    x, idx = ins
    axis = _axis(cx.attr("axis", 0), _rank(x))
    out = cx.op("gather", x, idx, axis=axis)
    if x in cx.conv.dims and idx.is_const:
        dims = cx.conv.dims[x]
        cx.conv.dims[out] = tuple(dims[i] for i in np.asarray(idx.const_data).reshape(-1))
    return out


@rule("GatherElements")
def _gather_elements(cx, ins):
    x = ins[0]
    return cx.op("gather_elements", x, ins[1], axis=_axis(cx.attr("axis", 0), _rank(x)))


@rule("Pad")
def _pad(cx, ins):
    x = ins[0]
    r = _rank(x)
    pads = cx.ints(ins[1], "Pad's pads")
    value = 0.0
    if len(ins) > 2 and ins[2] is not None:
        value = float(np.asarray(cx.array(ins[2], "Pad's constant_value")).reshape(-1)[0]) \
            if cx.array(ins[2], "").size else 0.0
    if len(ins) > 3 and ins[3] is not None:  # pads for the given axes only
        axes = [_axis(a, r) for a in cx.ints(ins[3], "Pad's axes")]
        full = [0] * (2 * r)
        for j, a in enumerate(axes):
            full[a], full[r + a] = pads[j], pads[len(axes) + j]
        pads = full
    mode = cx.attr("mode", "constant")
    if mode == "wrap":
        raise Unsupported("Pad mode 'wrap'")
    if any(p < 0 for p in pads):  # negative pads crop
        starts = [max(0, -p) for p in pads[:r]]
        ends = [-max(0, -p) if p < 0 else 2**63 - 1 for p in pads[r:]]
        x = cx.op("slice", x, starts=starts, ends=ends, axes=list(range(r)))
        pads = [max(0, p) for p in pads]
    return cx.op("pad", x, pads=pads, mode=mode, value=value)


@rule("Tile")
def _tile(cx, ins):
    return cx.op("tile", ins[0], repeats=cx.ints(ins[1], "Tile's repeats"))


@rule("Constant")
def _constant(cx, ins):
    from onnx import numpy_helper

    a = cx.node.attribute[0]
    if a.name == "value":
        onnx_dtype(a.t.data_type, "Constant")
        return cx.const(numpy_helper.to_array(a.t))
    v = cx.attr(a.name)
    if a.name == "value_float":
        return cx.const(np.float32(v))
    if a.name == "value_floats":
        return cx.const(np.array(v, np.float32))
    if a.name == "value_int":
        return cx.const(np.int64(v))
    if a.name == "value_ints":
        return cx.const(np.array(v, np.int64))
    raise Unsupported(f"unsupported dtype: Constant {a.name}")


@rule("ConstantOfShape")
def _constant_of_shape(cx, ins):
    from onnx import numpy_helper

    shape = cx.ints(ins[0], "ConstantOfShape's shape")
    t = cx.attrs.get("value")
    value = numpy_helper.to_array(t).reshape(-1) if t is not None else np.zeros(1, np.float32)
    if t is not None:
        onnx_dtype(t.data_type, "ConstantOfShape")
    return cx.const(np.full(shape, value[0], dtype=value.dtype))


@rule("Range")
def _range(cx, ins):
    start, limit, delta = (cx.array(v, "Range's bounds") for v in ins)
    return cx.const(np.arange(start, limit, delta).astype(start.dtype))


@rule("EyeLike")
def _eye_like(cx, ins):
    n, m = cx.static_shape(ins[0])
    dt = onnx_dtype(cx.attr("dtype"), "EyeLike") if "dtype" in cx.attrs else ins[0].type.dtype
    return cx.const(np.eye(n, m, k=cx.attr("k", 0), dtype=dt.np))


@rule("Trilu")
def _trilu(cx, ins):
    x = ins[0]
    k = cx.ints(ins[1], "Trilu's k")[0] if len(ins) > 1 and ins[1] is not None else 0
    n, m = cx.static_shape(x)[-2:]
    ones = np.ones((n, m), dtype=bool)
    mask = np.triu(ones, k) if cx.attr("upper", 1) else np.tril(ones, k)
    return cx.op("where", cx.const(mask), x, cx.scalar(0, x))


@rule("Dropout")
def _dropout(cx, ins):
    x = ins[0]
    y = cx.op("identity", x)
    if cx.wants(1):
        return [y, cx.op("expand", cx.const(np.array(True)), shape=list(x.type.shape))]
    return y


@rule("OneHot")
def _one_hot(cx, ins):
    idx, depth, values = ins
    d = int(np.asarray(cx.array(depth, "OneHot's depth")).reshape(-1)[0])
    r = _rank(idx) + 1
    axis = _axis(cx.attr("axis", -1), r)
    idx = cx.op("cast", idx, dtype=DType.i64) if idx.type.dtype != DType.i64 else idx
    # negative indices count from depth
    idx = cx.op("where", cx.op("less", idx, cx.const(np.int64(0))),
                cx.op("add", idx, cx.const(np.int64(d))), idx)
    shape = [1] * r
    shape[axis] = d
    ar = cx.const(np.arange(d, dtype=np.int64).reshape(shape))
    hot = cx.op("equal", cx.op("unsqueeze", idx, axes=[axis]), ar)
    off = cx.op("gather", values, cx.const(np.int64(0)))
    on = cx.op("gather", values, cx.const(np.int64(1)))
    return cx.op("where", hot, on, off)


@rule("SpaceToDepth", "DepthToSpace")
def _space_depth(cx, ins):
    x = ins[0]
    n, c, h, w = x.type.shape
    b = cx.attr("blocksize")
    if cx.node.op_type == "SpaceToDepth":
        y = cx.op("reshape", x, shape=[n, c, h // b, b, w // b, b])
        # DCR: out channel = (bh * b + bw) * c + ch; CRD: ch * b * b + bh * b + bw
        perm = [0, 3, 5, 1, 2, 4] if cx.attr("mode", "DCR") == "DCR" else [0, 1, 3, 5, 2, 4]
        y = cx.op("transpose", y, perm=perm)
        return cx.op("reshape", y, shape=[n, c * b * b, h // b, w // b])
    if cx.attr("mode", "DCR") == "DCR":
        y = cx.op("reshape", x, shape=[n, b, b, c // (b * b), h, w])
        y = cx.op("transpose", y, perm=[0, 3, 4, 1, 5, 2])
    else:
        y = cx.op("reshape", x, shape=[n, c // (b * b), b, b, h, w])
        y = cx.op("transpose", y, perm=[0, 1, 4, 2, 5, 3])
    return cx.op("reshape", y, shape=[n, c // (b * b), h * b, w * b])


# -- quantization ---------------------------------------------------------------------------------


@rule("QuantizeLinear")
def _quantize(cx, ins):
    x, scale = ins[:2]
    zp = ins[2] if len(ins) > 2 else None
    dtype = zp.type.dtype if zp is not None else onnx_dtype(cx.attr("output_dtype", 2) or 2)
    s = np.asarray(cx.array(scale, "QuantizeLinear's scale"), np.float32)
    z = np.asarray(cx.array(zp, "zero point"), np.int64) if zp is not None \
        else np.zeros(s.shape, np.int64)
    if s.ndim > 1:
        raise Unsupported("blocked quantization")
    axis = [_axis(cx.attr("axis", 1), _rank(x))] if s.ndim == 1 and s.size > 1 else []
    q = cx.op("quantize", _to_float(cx, x, cx.const(np.float32(0))),
              scale=s.reshape(-1).tolist(), zero_point=z.reshape(-1).tolist(), axis=axis,
              dtype=dtype)
    return cx.op("cast", q, dtype=dtype)  # the raw integers, as ONNX returns them


@rule("DequantizeLinear")
def _dequantize(cx, ins):
    x, scale = ins[:2]
    zp = ins[2] if len(ins) > 2 else None
    if _rank(scale) > 1:
        raise Unsupported("blocked dequantization")
    bshape = None
    if _rank(scale) == 1 and scale.type.shape[0] != 1:
        axis = _axis(cx.attr("axis", 1), _rank(x))
        bshape = [1] * _rank(x)
        bshape[axis] = scale.type.shape[0]
    # (x - zero_point) * scale, in the scale's float type
    def per_axis(v):
        return cx.op("reshape", v, shape=bshape) if bshape else v

    xf = cx.op("cast", x, dtype=scale.type.dtype)
    if zp is not None:
        xf = cx.op("sub", xf, per_axis(cx.op("cast", zp, dtype=scale.type.dtype)))
    return cx.op("mul", xf, per_axis(scale))


# -- attention ------------------------------------------------------------------------------------


@rule("Attention")
def _attention(cx, ins):
    q, k, v = ins[:3]
    mask = ins[3] if len(ins) > 3 else None
    past_k = ins[4] if len(ins) > 4 else None
    past_v = ins[5] if len(ins) > 5 else None
    if len(ins) > 6 and ins[6] is not None:
        raise Unsupported("Attention's nonpad_kv_seqlen")
    three_d = _rank(q) == 3
    if three_d:  # [B, S, H * D] -> [B, H, S, D]
        def heads(t, n):
            b, s, hd = t.type.shape
            return cx.op("transpose", cx.op("reshape", t, shape=[b, s, n, hd // n]),
                         perm=[0, 2, 1, 3])
        q = heads(q, cx.attr("q_num_heads"))
        k = heads(k, cx.attr("kv_num_heads"))
        v = heads(v, cx.attr("kv_num_heads"))
    if past_k is not None:
        k = cx.op("concat", past_k, k, axis=2)
        v = cx.op("concat", past_v, v, axis=2)
    present_k, present_v = k, v
    if cx.attr("left_window_size", -1) >= 0 or cx.attr("right_window_size", -1) >= 0:
        raise Unsupported("Attention's sliding window")
    hq, hk = q.type.shape[1], k.type.shape[1]
    if hq != hk:  # grouped-query attention: repeat each kv head hq / hk times (h0, h0, h1, ..)
        def rep(t):
            b, h, s, d = t.type.shape
            t = cx.op("expand", cx.op("unsqueeze", t, axes=[2]), shape=[b, h, hq // h, s, d])
            return cx.op("reshape", t, shape=[b, hq, s, d])
        k, v = rep(k), rep(v)
    lq, lk, d = q.type.shape[2], k.type.shape[2], q.type.shape[3]
    scale = cx.attr("scale", None) or 1.0 / math.sqrt(d)
    softcap = cx.attr("softcap", 0.0)
    mode = cx.attr("qk_matmul_output_mode", 0)
    ft = q.type.dtype
    # scores = softcap(q k^T * scale) + bias; bias = mask (bool: 0 / -inf) + causal (0 / -inf)
    s = _scalar_op(cx, "mul", cx.op("matmul", q, cx.op("transpose", k, perm=[0, 1, 3, 2])), scale)
    if softcap:
        s = _scalar_op(cx, "mul", cx.op("tanh", _scalar_op(cx, "div", s, softcap)), softcap)
    qk_raw = s
    bias = None
    if mask is not None:
        if isinstance(lk, int) and mask.type.shape[-1] != lk:  # a mask shorter than past + new
            width = lk - mask.type.shape[-1]
            pads = [0] * (2 * _rank(mask))
            pads[-1] = width
            if mask.type.dtype == DType.bool:
                mask = cx.op("pad", mask, pads=pads, value=0.0)
            else:
                mask = cx.op("pad", mask, pads=pads, value=-math.inf)
        if mask.type.dtype == DType.bool:
            bias = cx.op("where", mask, cx.scalar(0.0, s), cx.scalar(-math.inf, s))
        else:
            bias = _to_float(cx, mask, s)
    if cx.attr("is_causal", 0):
        if not (isinstance(lq, int) and isinstance(lk, int)):
            raise Unsupported("causal attention over symbolic lengths")
        past = int(past_k.type.shape[2]) if past_k is not None else 0
        keep = np.tril(np.ones((lq, lk), dtype=bool), k=past)  # key j <= query i + past
        causal = cx.const(np.where(keep, 0.0, -np.inf).astype(ft.np))
        bias = causal if bias is None else cx.op("add", bias, causal)
    if bias is not None:
        s = cx.op("add", s, bias)
    qk_bias = s
    p = cx.op("softmax", s, axis=-1)
    if bias is not None:  # rows whose every key is masked give 0, not NaN
        dead = cx.op("equal", cx.op("reduce_max", bias, axes=[-1 % _rank(bias)], keepdims=True),
                     cx.scalar(-math.inf, bias))
        p = cx.op("where", dead, cx.scalar(0.0, p), p)
    y = cx.op("matmul", p, v)
    if three_d:
        b, h, sq, dv = y.type.shape
        y = cx.op("reshape", cx.op("transpose", y, perm=[0, 2, 1, 3]), shape=[b, sq, h * dv])
    outs: list = [y, present_k, present_v]
    if cx.wants(3):
        # onnx's reference: 0 and 1 give the (softcapped) scores, 2 adds the bias, 3 softmaxes
        outs.append({0: qk_raw, 1: qk_raw, 2: qk_bias, 3: p}[mode])
    return outs


# -- losses ---------------------------------------------------------------------------------------


def _nll(cx, logp: Value, target: Value, weight: Value | None) -> Value:
    """loss[n, d..] = -logp[n, target[n, d..], d..] * weight[target], 0 where ignored;
    reduced by 'none', 'sum' or 'mean' (sum / the sum of the weights used)."""
    t = target if target.type.dtype == DType.i64 else cx.op("cast", target, dtype=DType.i64)
    ignore = cx.attrs.get("ignore_index")
    valid = None
    if ignore is not None:
        valid = cx.op("not_equal", t, cx.const(np.int64(ignore)))
        t = cx.op("where", valid, t, cx.const(np.int64(0)))
    picked = cx.op("gather_elements", logp, cx.op("unsqueeze", t, axes=[1]), axis=1)
    loss = cx.op("neg", cx.op("squeeze", picked, axes=[1]))
    w = cx.op("gather", weight, t, axis=0) if weight is not None else None
    if valid is not None:
        mask = cx.op("cast", valid, dtype=logp.type.dtype)
        w = mask if w is None else cx.op("mul", w, mask)
    if w is not None:
        loss = cx.op("mul", loss, w)
    reduction = cx.attr("reduction", "mean")
    if reduction == "none":
        return loss
    total = cx.op("reduce_sum", loss)
    if reduction == "sum":
        return total
    if w is None:
        return cx.op("reduce_mean", loss)
    return cx.op("div", total, cx.op("reduce_sum", w))


@rule("NegativeLogLikelihoodLoss")
def _nll_loss(cx, ins):
    return _nll(cx, ins[0], ins[1], ins[2] if len(ins) > 2 else None)


@rule("SoftmaxCrossEntropyLoss")
def _sce_loss(cx, ins):
    logp = cx.op("log_softmax", ins[0], axis=1)
    loss = _nll(cx, logp, ins[1], ins[2] if len(ins) > 2 else None)
    return [loss, logp] if cx.wants(1) else loss


# -- indexing, scatter, einsum, resize ------------------------------------------------------------


@rule("BitShift")
def _bitshift(cx, ins):
    name = "shift_left" if cx.attr("direction") == "LEFT" else "shift_right"
    return cx.op(name, ins[0], ins[1])


@rule("CumProd")
def _cumprod(cx, ins):
    x = ins[0]
    axis = _axis(cx.ints(ins[1], "axis")[0], _rank(x))

    def flip(v):
        return cx.op("slice", v, starts=[-1], ends=[-(2**63)], axes=[axis], steps=[-1])

    y = flip(x) if cx.attr("reverse", 0) else x
    if cx.attr("exclusive", 0):  # shift right by one, a 1 coming in: [1, y0, .., y(n-2)]
        pads = [0] * (2 * _rank(x))
        pads[axis] = 1
        y = cx.op("slice", cx.op("pad", y, pads=pads, value=1.0), starts=[0], ends=[-1],
                  axes=[axis])
    p = cx.op("cumprod", y, axis=axis)
    return flip(p) if cx.attr("reverse", 0) else p


@rule("TopK")
def _topk(cx, ins):
    k = cx.ints(ins[1], "TopK's k")[0]
    return cx.ops("topk", ins[0], k=k, axis=cx.attr("axis", -1),
                  largest=bool(cx.attr("largest", 1)), sorted=bool(cx.attr("sorted", 1)))


@rule("ScatterElements", "Scatter")
def _scatter_elements(cx, ins):
    return cx.op("scatter_elements", *ins[:3], axis=cx.attr("axis", 0),
                 reduction=cx.attr("reduction", "none"))


@rule("ScatterND")
def _scatter_nd(cx, ins):
    return cx.op("scatter_nd", *ins[:3], reduction=cx.attr("reduction", "none"))


@rule("GatherND")
def _gather_nd(cx, ins):
    return cx.op("gather_nd", ins[0], ins[1], batch_dims=cx.attr("batch_dims", 0))


@rule("Einsum")
def _einsum(cx, ins):
    return cx.op("einsum", *ins, equation=cx.attr("equation"))


@rule("Swish")
def _swish(cx, ins):
    x = ins[0]  # x * sigmoid(alpha * x)
    return cx.op("mul", x, cx.op("sigmoid", _scalar_op(cx, "mul", x, cx.attr("alpha", 1.0))))


@rule("Shrink")
def _shrink(cx, ins):
    x, lambd, bias = ins[0], cx.attr("lambd", 0.5), cx.attr("bias", 0.0)
    # x + bias below -lambd, x - bias above lambd, 0 between
    lo = cx.op("less", x, cx.scalar(-lambd, x))
    hi = cx.op("greater", x, cx.scalar(lambd, x))
    y = cx.op("where", hi, _scalar_op(cx, "sub", x, bias), cx.scalar(0, x))
    return cx.op("where", lo, _scalar_op(cx, "add", x, bias), y)


@rule("MeanVarianceNormalization")
def _mvn(cx, ins):
    x = ins[0]
    axes = list(cx.attr("axes", [0, 2, 3]))
    # (x - E[x]) / sqrt(E[(x - E[x])^2]), with ONNX's function's epsilon of 1e-9
    d = cx.op("sub", x, cx.op("reduce_mean", x, axes=axes, keepdims=True))
    var = cx.op("reduce_mean", cx.op("mul", d, d), axes=axes, keepdims=True)
    return cx.op("div", d, cx.op("sqrt", _scalar_op(cx, "add", var, 1e-9)))


@rule("LpPool")
def _lp_pool(cx, ins):
    x, p = ins[0], cx.attr("p", 2)
    nd = _rank(x) - 2
    kernel = list(cx.attr("kernel_shape"))
    strides = list(cx.attr("strides", [1] * nd))
    dilations = list(cx.attr("dilations", [1] * nd))
    if any(d != 1 for d in dilations):
        raise Unsupported("dilated LpPool")
    if nd not in (1, 2, 3):
        raise Unsupported(f"{nd}-d pooling")
    pads = _auto_pads(cx, x, kernel, strides, dilations)
    # (sum over the window of |x|^p)^(1/p) = (mean * window size)^(1/p); padding adds 0
    a = _scalar_op(cx, "pow", cx.op("abs", x), float(p))
    m = cx.op(f"avg_pool{nd}d", a, kernel=kernel, stride=strides, pad=pads,
              ceil_mode=bool(cx.attr("ceil_mode", 0)), count_include_pad=True)
    return _scalar_op(cx, "pow", _scalar_op(cx, "mul", m, float(np.prod(kernel))), 1.0 / p)


def _full_rank(vals, axes, rank: int, fill) -> list:
    out = [fill[i] if isinstance(fill, (list, tuple)) else fill for i in range(rank)]
    for v, a in zip(vals, axes, strict=True):
        out[a] = v
    return out


@rule("Resize", "Upsample")
def _resize(cx, ins):
    x = ins[0]
    r = _rank(x)
    if cx.node.op_type == "Upsample":
        roi_v, scales_v, sizes_v = None, ins[1], None
    else:
        roi_v = ins[1] if len(ins) > 1 else None
        scales_v = ins[2] if len(ins) > 2 else None
        sizes_v = ins[3] if len(ins) > 3 else None
    axes = [_axis(a, r) for a in cx.attr("axes", None) or range(r)]
    scales = [float(v) for v in cx.array(scales_v, "Resize's scales").reshape(-1)] \
        if scales_v is not None and np.size(cx.array(scales_v, "Resize's scales")) else []
    sizes = cx.ints(sizes_v, "Resize's sizes") if sizes_v is not None else []
    ctm = cx.attr("coordinate_transformation_mode", "half_pixel")
    roi = []
    if ctm == "tf_crop_and_resize" and roi_v is not None:
        rv = [float(v) for v in cx.array(roi_v, "Resize's roi").reshape(-1)]
        n = len(axes)
        roi = _full_rank(rv[:n], axes, r, 0.0) + _full_rank(rv[n:], axes, r, 1.0)
    policy = cx.attr("keep_aspect_ratio_policy", "stretch")
    attrs = {}
    if sizes:
        shape = cx.static_shape(x, "Resize input") if policy != "stretch" else x.type.shape
        sizes = _full_rank(sizes, axes, r, list(shape))
        if policy != "stretch":  # one scale for the resized axes, the sizes rounded half up
            ratios = [sizes[a] / shape[a] for a in axes]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(s * shape[i] + 0.5) if i in axes else shape[i] for i in range(r)]
            attrs["scales"] = [s if i in axes else 1.0 for i in range(r)]
        attrs["sizes"] = sizes
    else:
        attrs["scales"] = _full_rank(scales, axes, r, 1.0)
    mode = cx.attr("mode", "nearest")
    return cx.op("resize", x, mode={"bilinear": "linear", "trilinear": "linear"}.get(mode, mode),
                 coordinate_transformation_mode=ctm,
                 nearest_mode=cx.attr("nearest_mode", "round_prefer_floor"),
                 cubic_coeff_a=cx.attr("cubic_coeff_a", -0.75),
                 exclude_outside=bool(cx.attr("exclude_outside", 0)),
                 extrapolation_value=cx.attr("extrapolation_value", 0.0),
                 antialias=bool(cx.attr("antialias", 0)), roi=roi, **attrs)
