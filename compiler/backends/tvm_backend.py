"""The TVM backend: an IR graph becomes a Relax module, built for an LLVM target, run by the
Relax VM.

    build_tvm_module(graph, target="cpu", strict=False, tune=0) -> TVMModule

Untuned, the kernels keep the naive loop nests of Relax's legalization (convolutions run ~100x
slower than oneDNN's); ``tune=N`` has MetaSchedule tune them first (``tvm_tune``).

``LOWERINGS`` is one table, op name -> lowering. A lowering receives the context and the node's
inputs as Relax expressions (``None`` for a missing optional input; variadic inputs as one
list) and the node's attributes by name, and returns the Relax expression (or expressions) of
its results; intermediate results it binds with ``cx.emit``. A lowering that cannot handle a
node's attributes raises ``Unsupported``.

rtinfer's fusion decisions are kept: a ``fused_*`` node is lowered inside its own Relax function
marked ``Primitive`` (as ``relax.transform.FuseOps`` marks the groups it forms), which
``FuseTIR`` turns into one kernel; the other nodes become one kernel each (``FuseOps`` does not
run, so TVM makes no fusion decisions of its own).

A node without a lowering (or whose lowering declines) runs in the torch backend: it becomes a
``call_dps_packed`` of a Python function that calls the node's torch module on DLPack views of
the VM's tensors. ``TVMModule.fallback_ops`` names those ops; with ``strict=True`` they are a
``BackendError`` instead. Tensors cross between torch and TVM through DLPack without copies
(inputs that are not 64-byte aligned and contiguous are copied once).

Symbolic dims become ``tirx.Var`` s of the Relax function's signature, so one build serves
every size the IR allows.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch

from rtinfer.backends.registry import registrar
from rtinfer.errors import BackendError
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Graph, Node
from rtinfer.ir.ops import OPS, get_op
from rtinfer.ir.ops.common import expand_ints, expand_pads
from rtinfer.ir.ops.fused import activation_op
from rtinfer.ir.types import Dim, DType, TensorType
from rtinfer.paths import tuning_root


def _tvm():
    """TVM, imported on first use (importing it costs about a second)."""
    try:
        import tvm
        import tvm.relax  # noqa: F401
    except ImportError as e:
        raise BackendError(f"the TVM backend needs apache-tvm (pip install apache-tvm): {e}"
                           ) from None
    return tvm


TVM_DTYPES: dict[DType, str] = {
    DType.f64: "float64", DType.f32: "float32", DType.f16: "float16", DType.bf16: "bfloat16",
    DType.i64: "int64", DType.i32: "int32", DType.i16: "int16", DType.i8: "int8",
    DType.u8: "uint8", DType.u16: "uint16", DType.u32: "uint32", DType.u64: "uint64",
    DType.bool: "bool",
}

Lowering = Callable[..., Any]
LOWERINGS: dict[str, Lowering] = {}
# ops lowered inside a Primitive function of their own: one fused kernel each (the fused ops,
# and the ops whose lowering adds their bias after the base op: otherwise a second kernel, and
# a second tuning task)
GROUPED = frozenset({"fused_conv1d", "fused_conv2d", "fused_linear", "fused_matmul",
                     "fused_elementwise", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                     "conv_transpose2d", "conv_transpose3d", "linear"})


# op -> why it has no lowering (it then runs in the torch backend)
UNSUPPORTED: dict[str, str] = {
    "interpolate": "Relax's resize2d/3d coordinate rules differ from torch's; not lowered yet",
    "resize": "ONNX Resize's coordinate modes and antialias have no Relax equivalent yet",
    "scaled_dot_product_attention": "Relax's attention takes [B, S, N, H]; not lowered yet",
    "multi_head_attention": "not lowered yet (its parts are: linear, reshape, attention)",
    "quantize": "int8 (QuantParams on types) is not lowered to TVM yet",
    "dequantize": "int8 (QuantParams on types) is not lowered to TVM yet",
    "hardmax": "argmax + one_hot: not lowered yet",
}


class Unsupported(Exception):
    """Raised by a lowering for a node it cannot lower (the node then falls back)."""


lowers = registrar(LOWERINGS, "lowering")


# -- the lowering context ---------------------------------------------------------------------


@dataclass
class LowerContext:
    """What a lowering can see: the block builder, the IR node and its types, the symbols."""

    bb: Any  # relax.BlockBuilder (the current function's)
    symbols: dict[sympy.Symbol, Any] = field(default_factory=dict)  # -> tirx.Var
    node: Node | None = None

    @property
    def in_types(self) -> list[TensorType]:
        return [v.type for v in self.node.inputs]

    @property
    def out_types(self) -> list[TensorType]:
        return [v.type for v in self.node.outputs]

    def emit(self, expr: Any) -> Any:
        return self.bb.emit(expr)

    def const(self, value: Any, dtype: DType | str) -> Any:
        from tvm import relax

        dt = TVM_DTYPES[dtype] if isinstance(dtype, DType) else dtype
        return relax.const(value, dt)

    def dim(self, d: Dim) -> Any:
        """A dim as a TIR expression over the symbols' variables."""
        return _prim(self, sympy.sympify(d))

    def shape(self, dims: Sequence[Dim]) -> list[Any]:
        return [self.dim(d) for d in dims]

    def tensor_type(self, t: TensorType) -> Any:
        from tvm import relax

        return relax.TensorType(self.shape(t.shape), TVM_DTYPES[t.dtype])

    def static(self, t: TensorType, what: str) -> tuple[int, ...]:
        if not t.is_static:
            raise Unsupported(f"{what} needs a static shape, got {t}")
        return tuple(int(d) for d in t.shape)


def _prim(cx: LowerContext, e: sympy.Expr) -> Any:
    from tvm import tirx

    if e.is_Integer:
        return tirx.IntImm("int64", int(e))
    if e.is_Symbol:
        if e not in cx.symbols:
            raise Unsupported(f"symbolic dim {e} is not the size of any input axis")
        return cx.symbols[e]
    if e.is_Add or e.is_Mul:
        return functools.reduce(operator.add if e.is_Add else operator.mul,
                                [_prim(cx, a) for a in e.args])
    if e.is_Pow and e.exp.is_Integer and e.exp > 0:
        return functools.reduce(operator.mul, [_prim(cx, e.base)] * int(e.exp))
    if isinstance(e, sympy.floor):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        if den.is_Integer:
            return tirx.floordiv(_prim(cx, sympy.expand(num)), int(den))
    raise Unsupported(f"symbolic dim {e} has no TIR form")


def _R():
    from tvm.relax import op

    return op


# -- elementwise ------------------------------------------------------------------------------

def _unary_table() -> dict[str, Callable[[Any], Any]]:
    R = _R()
    return {
        "relu": R.nn.relu, "selu": R.nn.selu, "silu": R.nn.silu, "sigmoid": R.sigmoid,
        "tanh": R.tanh, "exp": R.exp, "log": R.log, "sqrt": R.sqrt, "rsqrt": R.rsqrt,
        "sin": R.sin, "cos": R.cos, "erf": R.erf, "floor": R.floor, "ceil": R.ceil,
        "round": R.round, "tan": R.tan, "asin": R.asin, "acos": R.acos, "atan": R.atan,
        "sinh": R.sinh, "cosh": R.cosh, "asinh": R.asinh, "acosh": R.acosh, "atanh": R.atanh,
        "abs": R.abs, "neg": R.negative, "sign": R.sign, "logical_not": R.logical_not,
        "bitwise_not": R.bitwise_not,
    }


def _binary_table() -> dict[str, Callable[[Any, Any], Any]]:
    R = _R()
    return {
        "add": R.add, "sub": R.subtract, "mul": R.multiply, "pow": R.power,
        "mod": R.floor_mod, "maximum": R.maximum, "minimum": R.minimum, "equal": R.equal,
        "not_equal": R.not_equal, "less": R.less, "less_equal": R.less_equal,
        "greater": R.greater, "greater_equal": R.greater_equal, "logical_and": R.logical_and,
        "logical_or": R.logical_or, "bitwise_and": R.bitwise_and, "bitwise_or": R.bitwise_or,
        "bitwise_xor": R.bitwise_xor, "shift_left": R.left_shift, "shift_right": R.right_shift,
    }


UNARY_OPS = ("relu", "selu", "silu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "sin",
             "cos", "erf", "floor", "ceil", "round", "tan", "asin", "acos", "atan", "sinh",
             "cosh", "asinh", "acosh", "atanh", "abs", "neg", "sign", "logical_not",
             "bitwise_not")
BINARY_OPS = ("add", "sub", "mul", "pow", "mod", "maximum", "minimum", "equal", "not_equal",
              "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or",
              "bitwise_and", "bitwise_or", "bitwise_xor", "shift_left", "shift_right")


def _unary(name: str) -> Lowering:
    return lambda cx, x: _unary_table()[name](x)


def _binary(name: str) -> Lowering:
    return lambda cx, a, b: _binary_table()[name](a, b)


for _n in UNARY_OPS:
    LOWERINGS[_n] = _unary(_n)
for _n in BINARY_OPS:
    LOWERINGS[_n] = _binary(_n)


def _scalar(cx: LowerContext, v: float) -> Any:
    return cx.const(v, cx.in_types[0].dtype)


def _hardsigmoid(cx: LowerContext, x: Any) -> Any:
    # relu6(x + 3) / 6
    R = _R()
    y = cx.emit(R.add(x, _scalar(cx, 3.0)))
    return R.divide(R.clip(y, 0.0, 6.0), _scalar(cx, 6.0))


def _softplus(cx: LowerContext, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    return _R().nn.softplus(x, beta, threshold)


def _clip(cx: LowerContext, x: Any, min: float, max: float) -> Any:
    R = _R()
    if math.isinf(min) and math.isinf(max):
        return x
    if math.isinf(min):
        return R.minimum(x, _scalar(cx, max))
    if math.isinf(max):
        return R.maximum(x, _scalar(cx, min))
    return R.clip(x, min, max)


@lowers("div")
def _div(cx: LowerContext, a: Any, b: Any) -> Any:
    # Relax's integer division truncates (C-style), as the op table's div does
    return _R().divide(a, b)


LOWERINGS.update({
    "leaky_relu": lambda cx, x, alpha: _R().nn.leakyrelu(x, alpha),
    "elu": lambda cx, x, alpha: _R().where(
        cx.emit(_R().greater(x, _scalar(cx, 0.0))), x,
        cx.emit(_R().multiply(_scalar(cx, alpha),
                              cx.emit(_R().subtract(cx.emit(_R().exp(x)), _scalar(cx, 1.0)))))),
    "gelu": lambda cx, x, approximate: (_R().nn.gelu(x) if approximate == "none"
                                        else _R().nn.gelu_tanh(x)),
    "hardsigmoid": _hardsigmoid,
    "hardswish": lambda cx, x: _R().multiply(x, cx.emit(_hardsigmoid(cx, x))),
    "mish": lambda cx, x: _R().multiply(x, cx.emit(_R().tanh(cx.emit(_softplus(cx, x))))),
    "softplus": _softplus,
    "clip": _clip,
    "reciprocal": lambda cx, x: _R().divide(_scalar(cx, 1.0), x),
    "identity": lambda cx, x: x,
    "cast": lambda cx, x, dtype: _R().astype(x, TVM_DTYPES[dtype]),
    "where": lambda cx, cond, a, b: _R().where(cond, a, b),
})

# -- linear algebra ---------------------------------------------------------------------------


def _linear(cx: LowerContext, x: Any, weight: Any, bias: Any) -> Any:
    R = _R()
    y = R.matmul(x, cx.emit(R.permute_dims(weight)))
    return y if bias is None else R.add(cx.emit(y), bias)


LOWERINGS.update({
    "matmul": lambda cx, a, b: _R().matmul(a, b),
    "bmm": lambda cx, a, b: _R().matmul(a, b),
    "linear": _linear,
})


@lowers("einsum")
def _einsum(cx: LowerContext, xs: list, equation: str) -> Any:
    if "->" not in equation:
        raise Unsupported("einsum without an explicit output ('->')")
    return _R().einsum(xs, equation)


# -- convolution and pooling ------------------------------------------------------------------

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _layouts(nd: int, layout: str) -> tuple[str, str]:
    """(data layout, weight layout) for Relax."""
    s = _SPATIAL[nd]
    return ("N" + s + "C" if layout == "NHWC" else "NC" + s), "OI" + s


def _channel_bias(cx: LowerContext, y: Any, bias: Any, rank: int, layout: str) -> Any:
    R = _R()
    if bias is None:
        return y
    if layout == "NHWC":
        return R.add(cx.emit(y), bias)
    # [C] -> [C, 1, ..., 1] by expand_dims, not reshape: reshape's TIR indexes the bias
    # modulo C, which MetaSchedule cannot inline into the conv's epilogue
    return R.add(cx.emit(y), cx.emit(R.expand_dims(bias, list(range(1, rank - 1)))))


def _conv(nd: int) -> Lowering:
    def lower(cx: LowerContext, x, weight, bias, stride, pad, dilation, groups, layout="NCHW"):
        R = _R()
        data_layout, kernel_layout = _layouts(nd, layout)
        fn = (R.nn.conv1d, R.nn.conv2d, R.nn.conv3d)[nd - 1]
        y = fn(x, weight, expand_ints(stride, nd, "stride"), expand_pads(pad, nd),
               expand_ints(dilation, nd, "dilation"), groups, data_layout=data_layout,
               kernel_layout=kernel_layout, out_layout=data_layout)
        return _channel_bias(cx, y, bias, nd + 2, layout)
    return lower


def _conv_transpose(nd: int) -> Lowering:
    def lower(cx: LowerContext, x, weight, bias, stride, pad, output_padding, dilation, groups):
        R = _R()
        fn = (R.nn.conv1d_transpose, R.nn.conv2d_transpose, R.nn.conv3d_transpose)[nd - 1]
        y = fn(x, weight, expand_ints(stride, nd, "stride"), expand_pads(pad, nd),
               expand_ints(output_padding, nd, "output_padding"),
               expand_ints(dilation, nd, "dilation"), groups)
        return _channel_bias(cx, y, bias, nd + 2, "NCHW")
    return lower


def _pool(nd: int, kind: str) -> Lowering:
    def lower(cx: LowerContext, x, kernel, stride, pad, ceil_mode, dilation=(1,),
              count_include_pad=True, layout="NCHW"):
        R = _R()
        if kind == "avg" and not cx.in_types[0].dtype.is_float:
            raise Unsupported("integer average pooling")
        kernel = expand_ints(kernel, nd, "kernel")
        stride = expand_ints(stride or kernel, nd, "stride")
        pads = expand_pads(pad, nd)
        if any(p > k // 2 for p, k in zip(pads, kernel, strict=False)):
            raise Unsupported("pads wider than half the kernel")
        data_layout = _layouts(nd, layout)[0]
        name = f"{kind}_pool{nd}d"
        args = dict(pool_size=kernel, strides=stride, padding=pads,
                    dilation=expand_ints(dilation, nd, "dilation"), ceil_mode=ceil_mode,
                    layout=data_layout)
        if kind == "avg":
            args["count_include_pad"] = count_include_pad
        return getattr(R.nn, name)(x, **args)
    return lower


for _nd in (1, 2, 3):
    LOWERINGS[f"conv{_nd}d"] = _conv(_nd)
    LOWERINGS[f"conv_transpose{_nd}d"] = _conv_transpose(_nd)
    LOWERINGS[f"max_pool{_nd}d"] = _pool(_nd, "max")
    LOWERINGS[f"avg_pool{_nd}d"] = _pool(_nd, "avg")

LOWERINGS.update({
    "adaptive_avg_pool2d": lambda cx, x, output_size, layout: _R().nn.adaptive_avg_pool2d(
        x, expand_ints(output_size, 2, "output_size"), layout=layout),
    "global_avg_pool2d": lambda cx, x, layout: _R().nn.adaptive_avg_pool2d(
        x, (1, 1), layout=layout),
})

# -- normalization ----------------------------------------------------------------------------


@lowers("batch_norm")
def _batch_norm(cx: LowerContext, x, mean, var, gamma, beta, eps, layout):
    # (x - mean) * (gamma / sqrt(var + eps)) + beta, per channel
    R = _R()
    rank = cx.in_types[0].rank

    def per_channel(v):
        return v if layout == "NHWC" else cx.emit(R.expand_dims(v, list(range(1, rank - 1))))

    s = cx.emit(R.rsqrt(cx.emit(R.add(var, _scalar(cx, eps)))))
    if gamma is not None:
        s = cx.emit(R.multiply(s, gamma))
    y = cx.emit(R.multiply(cx.emit(R.subtract(x, per_channel(mean))), per_channel(s)))
    return y if beta is None else R.add(y, per_channel(beta))


def _affine_params(cx: LowerContext, axis: int, gamma, beta):
    t = cx.in_types[0]
    axis %= t.rank
    shape = cx.static(TensorType(t.dtype, t.shape[axis:]), "layer_norm's gamma/beta")
    ones = cx.const(np.ones(shape, t.dtype.np), t.dtype)
    zeros = cx.const(np.zeros(shape, t.dtype.np), t.dtype)
    return list(range(axis, t.rank)), (ones if gamma is None else gamma), \
        (zeros if beta is None else beta)


@lowers("layer_norm")
def _layer_norm(cx: LowerContext, x, gamma, beta, axis, eps):
    axes, g, b = _affine_params(cx, axis, gamma, beta)
    return _R().nn.layer_norm(x, g, b, axes, eps)


@lowers("rms_norm")
def _rms_norm(cx: LowerContext, x, gamma, axis, eps):
    axes, g, _ = _affine_params(cx, axis, gamma, None)
    return _R().nn.rms_norm(x, g, axes, eps)


def _channel_params(cx: LowerContext, gamma, beta):
    t = cx.in_types[0]
    c = t.shape[1]
    if not isinstance(c, int):
        if gamma is None or beta is None:
            raise Unsupported("a symbolic channel count without gamma and beta")
        return gamma, beta
    return (cx.const(np.ones(c, t.dtype.np), t.dtype) if gamma is None else gamma,
            cx.const(np.zeros(c, t.dtype.np), t.dtype) if beta is None else beta)


@lowers("group_norm")
def _group_norm(cx: LowerContext, x, gamma, beta, groups, eps):
    g, b = _channel_params(cx, gamma, beta)
    return _R().nn.group_norm(x, g, b, groups, 1, list(range(2, cx.in_types[0].rank)), eps)


@lowers("instance_norm")
def _instance_norm(cx: LowerContext, x, gamma, beta, eps):
    g, b = _channel_params(cx, gamma, beta)
    return _R().nn.instance_norm(x, g, b, 1, list(range(2, cx.in_types[0].rank)), eps)


LOWERINGS.update({
    "softmax": lambda cx, x, axis: _R().nn.softmax(x, axis),
    "log_softmax": lambda cx, x, axis: _R().nn.log_softmax(x, axis),
})

# -- reductions -------------------------------------------------------------------------------


def _reduce(name: str) -> Lowering:
    def lower(cx: LowerContext, x, axes, keepdims):
        fn = getattr(_R(), name)
        return fn(x, list(axes) if axes else None, keepdims)
    return lower


for _n, _fn in [("reduce_sum", "sum"), ("reduce_mean", "mean"), ("reduce_max", "max"),
                ("reduce_min", "min"), ("reduce_prod", "prod")]:
    LOWERINGS[_n] = _reduce(_fn)

LOWERINGS.update({
    "argmax": lambda cx, x, axis, keepdims: _R().argmax(x, axis, keepdims),
    "argmin": lambda cx, x, axis, keepdims: _R().argmin(x, axis, keepdims),
    "cumsum": lambda cx, x, axis: _R().cumsum(x, axis),
    "cumprod": lambda cx, x, axis: _R().cumprod(x, axis),
})

# -- shape ops --------------------------------------------------------------------------------


def _to_out_shape(cx: LowerContext, x: Any, *_: Any, **__: Any) -> Any:
    """reshape, flatten, squeeze, unsqueeze: a reshape to the inferred output shape."""
    return _R().reshape(x, cx.shape(cx.out_types[0].shape))


for _n in ("reshape", "flatten", "squeeze", "unsqueeze"):
    LOWERINGS[_n] = _to_out_shape


@lowers("transpose")
def _transpose(cx: LowerContext, x, perm):
    return _R().permute_dims(x, list(perm) if perm else None)


@lowers("expand")
def _expand(cx: LowerContext, x, shape):
    return _R().broadcast_to(x, cx.shape(cx.out_types[0].shape))


@lowers("split")
def _split(cx: LowerContext, x, axis, sizes):
    from tvm import relax

    indices = list(itertools.accumulate(sizes))[:-1]
    parts = cx.emit(_R().split(x, indices, axis))
    return [relax.TupleGetItem(parts, i) for i in range(len(sizes))]


@lowers("slice")
def _slice(cx: LowerContext, x, starts, ends, axes, steps):
    from rtinfer.ir.ops.shape import _slice_params, _slice_range

    R = _R()
    t = cx.in_types[0]
    for axis, start, end, step in _slice_params(t.rank, dict(starts=starts, ends=ends,
                                                              axes=axes, steps=steps)):
        d = t.shape[axis]
        if not isinstance(d, int):
            raise Unsupported(f"slice of the symbolic axis {axis}")
        s, e, n = (int(v) for v in _slice_range(d, start, end, step))
        index = cx.const(np.arange(s, s + n * step, step, dtype=np.int64)[:n], DType.i64)
        x = cx.emit(R.take(x, index, axis))
    return x


@lowers("gather")
def _gather(cx: LowerContext, x, indices, axis):
    return _R().take(x, indices, axis, mode="wrap")


@lowers("embedding")
def _embedding(cx: LowerContext, weight, indices):
    return _R().take(weight, indices, 0, mode="wrap")


LOWERINGS.update({
    "gather_elements": lambda cx, x, indices, axis: _R().gather_elements(x, indices, axis),
    "concat": lambda cx, xs, axis: _R().concat(xs, axis),
    "tile": lambda cx, x, repeats: _R().tile(x, list(repeats)),
})


@lowers("topk")
def _topk(cx: LowerContext, x, k, axis, largest, sorted):
    from tvm import relax

    if not sorted:
        raise Unsupported("topk with sorted=False (the order of its results is the reference's)")
    both = cx.emit(_R().topk(x, k, axis, "both", largest, "int64"))
    return [relax.TupleGetItem(both, 0), relax.TupleGetItem(both, 1)]


_SCATTER_REDUCTIONS = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def _scatter_reduction(reduction: str) -> str:
    if reduction not in _SCATTER_REDUCTIONS:
        raise Unsupported(f"scatter reduction {reduction}")
    return _SCATTER_REDUCTIONS[reduction]


LOWERINGS.update({
    "gather_nd": lambda cx, x, indices, batch_dims: _R().gather_nd(x, indices, batch_dims),
    "scatter_elements": lambda cx, x, indices, updates, axis, reduction: _R().scatter_elements(
        x, indices, updates, axis, _scatter_reduction(reduction)),
    "scatter_nd": lambda cx, x, indices, updates, reduction: _R().scatter_nd(
        x, indices, updates, _scatter_reduction(reduction)),
})


@lowers("pad")
def _pad(cx: LowerContext, x, pads, mode, value):
    rank = cx.in_types[0].rank
    if mode != "constant":
        raise Unsupported(f"pad mode {mode}")
    width = [p for i in range(rank) for p in (pads[i], pads[rank + i])]
    return _R().nn.pad(x, width, "constant", value)


@lowers("shape")
def _shape(cx: LowerContext, x):
    shape = cx.static(cx.in_types[0], "shape")
    return cx.const(np.array(shape, np.int64), DType.i64)


# -- fused ops: the base op and its epilogue in one Primitive function -------------------------


def _epilogue(cx: LowerContext, y: Any, residual: Any, attrs: dict) -> Any:
    """act(y + r), act(y) + r or act(y), each step the table's own lowering."""
    R = _R()
    if attrs["residual"] == "pre":
        y = cx.emit(R.add(y, residual))
    act = activation_op(attrs["activation"], attrs["alpha"], attrs["beta"])
    if act is not None:
        name, act_attrs = act
        y = cx.emit(LOWERINGS[name](cx, y, **get_op(name).complete_attrs(act_attrs)))
    if attrs["residual"] == "post":
        y = cx.emit(R.add(y, residual))
    return y


def _fused(base: str) -> Lowering:
    base_attr_names = tuple(get_op(base).attrs)

    def lower(cx: LowerContext, x, w, bias, residual, /, **attrs):
        base_attrs = {k: attrs[k] for k in base_attr_names}
        if base == "matmul":
            y = cx.emit(LOWERINGS[base](cx, x, w))
            if bias is not None:
                y = cx.emit(_R().add(y, bias))
        else:
            y = cx.emit(LOWERINGS[base](cx, x, w, bias, **base_attrs))
        return _epilogue(cx, y, residual, attrs)
    return lower


for _base in ("conv1d", "conv2d", "linear", "matmul"):
    LOWERINGS[f"fused_{_base}"] = _fused(_base)


@lowers("fused_elementwise")
def _fused_elementwise(cx: LowerContext, xs: list, body: Graph):
    node = cx.node
    env = {id(v): x for v, x in zip(body.inputs, xs, strict=True)}
    for inner in body.nodes:
        if inner.op != "const" and inner.op not in LOWERINGS:
            raise Unsupported(f"the body's op {inner.op} has no lowering")
        _lower_node(cx, inner, env)
    cx.node = node
    return [env[id(v)] for v in body.outputs]


# -- driving the lowering ---------------------------------------------------------------------


def _const_expr(cx: LowerContext, node: Node) -> Any:
    value = node.attrs["value"]
    if isinstance(value, ElidedTensor):
        raise BackendError(f"constant {value} has no data (it was elided from the IR text); "
                           f"load the graph with its weights")
    return cx.const(np.array(value), node.out.type.dtype)


def _node_args(node: Node, env: dict[int, Any]) -> list[Any]:
    return node.opdef.positional([env[id(v)] for v in node.inputs])


def _lower_node(cx: LowerContext, node: Node, env: dict[int, Any]) -> None:
    """Lower one node into ``cx.bb``, binding its outputs in ``env``; checks the results'
    dtypes and ranks against the IR's."""
    if node.op == "const":
        env[id(node.out)] = _const_expr(cx, node)
        return
    cx.node = node
    out = LOWERINGS[node.op](cx, *_node_args(node, env), **node.attrs)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(outs) != len(node.outputs):
        raise Unsupported(f"the lowering gave {len(outs)} results for {len(node.outputs)}")
    for v, o in zip(node.outputs, outs, strict=True):
        o = cx.emit(o)
        ty = o.ty
        want = TVM_DTYPES[v.type.dtype]
        if str(ty.dtype) != want or ty.ndim != v.type.rank:
            raise Unsupported(f"the lowering gave {ty.dtype}[{ty.ndim} dims] for {v.type}")
        env[id(v)] = o


def _lower_grouped(cx: LowerContext, node: Node, env: dict[int, Any], name: str) -> Any:
    """Lower ``node`` inside a Relax function of its own marked Primitive (one kernel after
    FuseTIR); returns the call."""
    from tvm import relax

    sub = relax.BlockBuilder()
    args, params, inner_env = [], [], {}
    for i, v in enumerate(node.inputs):
        p = relax.Var(f"p{i}", cx.tensor_type(v.type))
        params.append(p)
        args.append(env[id(v)])
        inner_env[id(v)] = p
    inner = LowerContext(sub, cx.symbols)
    with sub.function(name, params, attrs={"Primitive": True}, private=True):
        with sub.dataflow():
            _lower_node(inner, node, inner_env)
            outs = [inner_env[id(v)] for v in node.outputs]
            result = sub.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        sub.emit_func_output(result)
    gv = cx.bb.add_func(sub.get()[name], name)
    return relax.Call(gv, args)


class _Fallback:
    """A node run by the torch backend, called by the VM in destination-passing style."""

    def __init__(self, node: Node):
        from rtinfer.backends.torch_backend import build_module

        g = Graph(node.op)
        ins = [g.add_input(v.type, f"x{i}") for i, v in enumerate(node.inputs)]
        m = g.create_node(node.op, ins, node.attrs, [v.type for v in node.outputs])
        g.set_outputs(m.outputs)
        self.module = build_module(g)
        self.n_in = len(node.inputs)

    def __call__(self, *args: Any) -> None:
        ins = [torch.from_dlpack(a) for a in args[:self.n_in]]
        with torch.no_grad():
            outs = self.module(*ins)
        for dst, src in zip(args[self.n_in:], outs, strict=True):
            torch.from_dlpack(dst).copy_(src)


_fallback_ids = itertools.count()


def _lower_fallback(cx: LowerContext, node: Node, env: dict[int, Any],
                    registry: dict[str, _Fallback]) -> None:
    import tvm_ffi
    from tvm import relax

    for v in node.outputs:
        for s in v.type.symbols():
            if s not in cx.symbols:
                raise BackendError(f"TVM backend: {node.op} has the output {v.type}, whose dim "
                                   f"{s} no input determines; it cannot run as a fallback")
    fn = _Fallback(node)
    name = f"rtinfer.tvm_fallback.{next(_fallback_ids)}.{node.op}"
    tvm_ffi.register_global_func(name, fn, override=True)
    registry[name] = fn
    out_types = [cx.tensor_type(v.type) for v in node.outputs]
    call = cx.emit(relax.call_dps_packed(
        name, relax.Tuple([env[id(v)] for v in node.inputs]),
        out_types[0] if len(out_types) == 1 else out_types))
    if len(out_types) == 1:
        env[id(node.out)] = call
    else:
        for i, v in enumerate(node.outputs):
            env[id(v)] = cx.emit(relax.TupleGetItem(call, i))


@dataclass
class Lowered:
    """A graph as a Relax module (before the build), with what fell back and why."""

    mod: Any  # tvm.IRModule
    fallbacks: dict[str, str]  # op -> why (the first reason seen)
    callbacks: dict[str, _Fallback]
    n_kernels_fused: int


def lower_graph(graph: Graph, *, strict: bool = False) -> Lowered:
    """The Relax module of ``graph`` (its function ``main``)."""
    from tvm import relax, tirx

    from rtinfer.ir.printer import format_node

    bb = relax.BlockBuilder()
    cx = LowerContext(bb)
    for v in graph.inputs:
        for s in sorted(v.type.symbols(), key=str):
            cx.symbols.setdefault(s, tirx.Var(str(s), "int64"))
    params = [relax.Var(v.name or f"input_{i}", cx.tensor_type(v.type))
              for i, v in enumerate(graph.inputs)]
    env: dict[int, Any] = {id(v): p for v, p in zip(graph.inputs, params, strict=True)}
    fallbacks: dict[str, str] = {}
    callbacks: dict[str, _Fallback] = {}
    grouped = 0
    with bb.function("main", params):
        with bb.dataflow():
            for node in graph.nodes:
                try:
                    if node.op != "const" and node.op not in LOWERINGS:
                        raise Unsupported(UNSUPPORTED.get(node.op, "no lowering"))
                    if node.op in GROUPED:
                        call = cx.emit(_lower_grouped(cx, node, env,
                                                      f"{node.op}_{grouped}"))
                        grouped += 1
                        if len(node.outputs) == 1:
                            env[id(node.out)] = call
                        else:
                            for i, v in enumerate(node.outputs):
                                env[id(v)] = cx.emit(relax.TupleGetItem(call, i))
                    else:
                        _lower_node(cx, node, env)
                except Exception as e:  # a declined (or failed) lowering falls back
                    if isinstance(e, BackendError):
                        raise
                    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                    if strict:
                        raise BackendError(
                            f"TVM backend: cannot lower {node.op} ({reason})\n  at: "
                            f"{format_node(node)}\n(strict=False runs it in the torch "
                            f"backend instead)") from None
                    fallbacks.setdefault(node.op, reason)
                    _lower_fallback(cx, node, env, callbacks)
            outs = [env[id(v)] for v in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return Lowered(bb.get(), fallbacks, callbacks, grouped)


# -- targets ----------------------------------------------------------------------------------


def resolve_target(target: Any) -> Any:
    """A ``tvm.target.Target`` for ``target``: ``"cpu"`` (the host, ISA detected), an LLVM
    target string (``"llvm"``, ``"llvm -mcpu=znver4 -mattr=+avx2"``, or the JSON form) or a
    ``tvm.target.Target``. Only LLVM (CPU) targets run here."""
    tvm = _tvm()
    if isinstance(target, tvm.target.Target):
        t = target
    elif target in (None, "cpu"):
        t = tvm.target.Target.from_device("cpu")
    elif isinstance(target, (str, dict)):
        spec: Any = target
        if isinstance(target, str) and target.lstrip().startswith("{"):
            spec = json.loads(target)
        elif isinstance(target, str) and " " in target.strip():
            # TVM 0.27 reads only the JSON form; "llvm -mcpu=x -mattr=+a,+b" becomes it
            kind, *opts = target.split()
            spec = {"kind": kind}
            for o in opts:
                k, _, v = o.lstrip("-").partition("=")
                spec[k] = (v.split(",") if k in ("mattr", "libs", "keys")
                           else int(v) if v.lstrip("-").isdigit() else (v or True))
        try:
            t = tvm.target.Target(spec)
        except Exception as e:
            raise BackendError(f"unknown TVM target {target!r}: {str(e).splitlines()[0]} "
                               f"(use 'cpu', 'llvm', 'llvm -mcpu=<cpu>' or a "
                               f"tvm.target.Target)") from None
    else:
        raise BackendError(f"target must be 'cpu', an LLVM target string or a "
                           f"tvm.target.Target, got {type(target).__name__}")
    if t.kind.name != "llvm":
        raise BackendError(f"the TVM backend runs on the CPU: target {target!r} is a "
                           f"{t.kind.name} target; use 'cpu' or an LLVM target")
    return t


# -- building and running ---------------------------------------------------------------------


def relax_pipeline() -> Any:
    """Legalize to TIR and fuse each Primitive function (rtinfer's fused nodes) into one
    kernel; no FuseOps: TVM makes no fusion decisions of its own."""
    tvm = _tvm()
    from tvm import relax

    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])


class TVMModule:
    """The built model: ``module(*tensors)`` returns a tuple of torch tensors (DLPack views of
    the VM's outputs)."""

    def __init__(self, lowered: Lowered, executable: Any, target: Any, n_outputs: int):
        tvm = _tvm()
        from tvm import relax

        self.relax_module = lowered.mod
        self.executable = executable
        self.target = target
        self.vm = relax.VirtualMachine(executable, tvm.cpu())
        self._main = self.vm["main"]
        self._callbacks = lowered.callbacks  # keeps the fallbacks alive with the module
        self.fallback_reasons = dict(lowered.fallbacks)
        self.rtinfer_fallback_ops = sorted(lowered.fallbacks)
        self.rtinfer_mkldnn = False
        self.n_fused_kernels = lowered.n_kernels_fused
        self.n_outputs = n_outputs
        self.tuning: Any = None  # a tvm_tune.TuneReport when built with tune=N

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._main(*[_to_tvm(t) for t in tensors])
        outs = list(out) if self.n_outputs > 1 else [out]
        return tuple(torch.from_dlpack(o) for o in outs)

    forward = __call__

    def __repr__(self) -> str:
        return (f"<TVMModule target={self.target.kind.name} fused kernels="
                f"{self.n_fused_kernels} fallbacks={self.rtinfer_fallback_ops}>")


def _to_tvm(t: torch.Tensor) -> Any:
    import tvm_ffi

    t = t.detach()
    if not t.is_contiguous() or t.data_ptr() % 64:
        t = t.clone(memory_format=torch.contiguous_format)
    try:
        return tvm_ffi.from_dlpack(t, require_alignment=64, require_contiguous=True)
    except Exception:  # an odd allocation: copy into a fresh (aligned) tensor
        return tvm_ffi.from_dlpack(t.clone(), require_alignment=64, require_contiguous=True)


def build_tvm_module(graph: Graph, *, target: Any = "cpu", strict: bool = False,
                     tune: int = 0, tune_root: str | os.PathLike | None = None) -> TVMModule:
    """Lower ``graph`` to Relax, build it for ``target`` and load it in the Relax VM.

    ``tune=N``: MetaSchedule tunes the kernels first, N measured trials in all, and the build
    applies its best schedules; the records persist in
    ``tvm_tune.database_dir(tuning_root(tune_root), target)`` (``tune_root``: the rtinfer cache
    directory by default), so kernels tuned before
    are not tuned again. ``TVMModule.tuning`` says what was done."""
    _tvm()
    from tvm import relax

    from rtinfer.backends import tvm_tune

    tune = tvm_tune.check_tune(tune, "tvm")
    t = resolve_target(target)
    if tune:
        t = tvm_tune.tuning_target(t)
        if not all(v.type.is_static for v in graph.inputs):
            raise BackendError("TVM backend: tune=N needs static input shapes (MetaSchedule "
                               "tunes kernels for one shape); compile without dynamic dims")
    lowered = lower_graph(graph, strict=strict)
    tuning = None
    try:
        with t:
            mod = relax_pipeline()(lowered.mod)
        if tune:
            db_dir = tvm_tune.database_dir(tuning_root(tune_root), t)
            tuning = tvm_tune.tune_module(mod, t, tune, db_dir)
            executable = tvm_tune.build_tuned(mod, t, db_dir)
        else:
            executable = relax.build(mod, t)
    except BackendError:
        raise
    except Exception as e:
        what = "tuning or building" if tune else "building"
        raise BackendError(f"TVM backend: {what} @{graph.name} for {t} failed: "
                           f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    module = TVMModule(lowered, executable, t, len(graph.outputs))
    module.tuning = tuning
    return module


def coverage() -> tuple[int, int, list[str]]:
    """(ops with a lowering, ops in the table, ops without one); ``const`` counts as lowered."""
    names = OPS.names()
    missing = [n for n in names if n != "const" and n not in LOWERINGS]
    return len(names) - len(missing), len(names), missing


def fallback_ops(graph: Graph) -> list[str]:
    """The ops of ``graph`` with no lowering at all (others may still decline a node)."""
    return sorted({n.op for n in graph.nodes if n.op != "const" and n.op not in LOWERINGS})


# ops whose untuned TVM kernels run about 100x slower than oneDNN's (ResNet-18: seconds a call)
SLOW_UNTUNED = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                          "conv_transpose3d", "fused_conv1d", "fused_conv2d"})


def declines(graph: Graph) -> str | None:
    """Why ``backend="auto"`` should not build ``graph`` with TVM (ops it would hand to the torch
    backend, untuned kernels known to be far slower), or None."""
    missing = fallback_ops(graph)
    if missing:
        return f"no TVM lowering for {', '.join(missing)}"
    slow = sorted({n.op for n in graph.nodes} & SLOW_UNTUNED)
    if slow:
        return f"untuned TVM kernels for {', '.join(slow)} are ~100x slower than oneDNN's"
    return None


__all__ = ["GROUPED", "LOWERINGS", "TVM_DTYPES", "UNSUPPORTED", "LowerContext", "Lowered",
           "SLOW_UNTUNED", "TVMModule", "Unsupported", "build_tvm_module", "coverage", "declines",
           "fallback_ops",
           "lower_graph", "lowers", "relax_pipeline", "resolve_target"]
