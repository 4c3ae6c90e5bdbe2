"""The PyTorch frontend: ``torch.export`` a module, decompose to core ATen, walk the FX graph.

    capture_torch(model, example_inputs, dynamic_dims=None) -> Graph

Each ATen overload maps to one converter in ``CONVERTERS`` (``"aten.add.Tensor" -> fn``). A
converter takes the conversion context and the op's arguments bound by name from the ATen schema
(tensors already turned into IR values, SymInts into sympy dims, Python scalars as they are) and
returns the IR value(s) for the node. Before converting anything, every node is checked against
the table so that one ``UnsupportedOpsError`` lists all the ops a model needs.

The exported program's pytree specs and input names are kept in ``graph.meta["torch"]``;
``unflatten_outputs(graph, arrays)`` rebuilds the eager output structure (tuple, dict,
``ModelOutput``) from the graph's flat outputs.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch
import torch.utils._pytree as pytree

from rtinfer.errors import CaptureError, UnsupportedOpsError
from rtinfer.ir.graph import Graph, Provenance, Value
from rtinfer.ir.ops.common import to_numpy
from rtinfer.ir.types import DType, TensorType, make_dim, sym

aten = torch.ops.aten

# Ops left undecomposed because the IR has a better (fusable, named) op for them.
KEEP_OPS = (
    aten.layer_norm.default, aten.linear.default, aten.gelu.default, aten.silu.default,
    aten.scaled_dot_product_attention.default, aten.hardswish.default,
    aten.hardsigmoid.default, aten.mish.default, aten.softplus.default, aten.rms_norm.default,
    aten.group_norm.default, aten.matmul.default, aten.pixel_shuffle.default,
)

_TORCH_DTYPES = {
    torch.float64: DType.f64, torch.float32: DType.f32, torch.float16: DType.f16,
    torch.bfloat16: DType.bf16, torch.int64: DType.i64, torch.int32: DType.i32,
    torch.int16: DType.i16, torch.int8: DType.i8, torch.uint8: DType.u8, torch.bool: DType.bool,
}


def ir_dtype(dt: torch.dtype) -> DType:
    try:
        return _TORCH_DTYPES[dt]
    except KeyError:
        raise CaptureError(f"torch dtype {dt} has no rtinfer dtype") from None


# -- conversion context -----------------------------------------------------------------------


@dataclass
class Ctx:
    """State of one conversion: the graph being built and the current FX node."""

    graph: Graph
    symbols: dict[sympy.Symbol, sympy.Expr]  # torch's s0, s1... -> the user's B, S
    node: torch.fx.Node | None = None
    provenance: Provenance = field(default_factory=Provenance)

    # -- building ---------------------------------------------------------------------------

    def op(self, name: str, *inputs: Value | None, **attrs: Any) -> Value:
        return self.ops(name, *inputs, **attrs)[0]

    def ops(self, name: str, *inputs: Value | None, **attrs: Any) -> list[Value]:
        ins = list(inputs)
        while ins and ins[-1] is None:  # trailing optional inputs left out
            ins.pop()
        n = self.graph.create_node(name, ins, attrs, provenance=self.provenance)
        return n.outputs

    def const(self, array: Any, dtype: DType | None = None) -> Value:
        a = np.asarray(array)
        if dtype is not None:
            a = a.astype(dtype.np)
        return self.graph.add_const(a, provenance=self.provenance)

    def scalar(self, x: Any, dtype: DType) -> Value:
        """A Python scalar (or sympy dim, or value) as a value of ``dtype``."""
        if isinstance(x, Value):
            return self.cast(x, dtype)
        if isinstance(x, sympy.Expr) and not x.is_number:
            raise CaptureError(f"a symbolic scalar ({x}) used as a tensor is not supported")
        return self.const(np.array(x, dtype=dtype.np))

    def cast(self, v: Value, dtype: DType) -> Value:
        return v if v.type.dtype is dtype else self.op("cast", v, dtype=dtype)

    # -- facts about the current node -------------------------------------------------------

    @property
    def out_dtype(self) -> DType:
        val = self.node.meta["val"]
        val = val[0] if isinstance(val, (list, tuple)) else val
        return ir_dtype(val.dtype)

    @property
    def out_shape(self) -> tuple:
        val = self.node.meta["val"]
        val = val[0] if isinstance(val, (list, tuple)) else val
        return tuple(self.dim(d) for d in val.shape)

    def dim(self, d: Any) -> Any:
        """A torch size (int or SymInt) as an IR dim in the user's symbols."""
        if isinstance(d, torch.SymInt):
            d = d.node.expr
        if isinstance(d, sympy.Expr):
            return make_dim(sympy.sympify(d).xreplace(self.symbols))
        return int(d)

    def shape(self, dims: Sequence[Any]) -> tuple:
        return tuple(self.dim(d) if not isinstance(d, sympy.Expr) else make_dim(d) for d in dims)


Converter = Callable[..., Any]
CONVERTERS: dict[str, Converter] = {}


def converts(*names: str) -> Callable[[Converter], Converter]:
    """Register a converter for ATen overloads (``"aten.add.Tensor"``)."""

    def deco(fn: Converter) -> Converter:
        for n in names:
            if n in CONVERTERS:
                raise ValueError(f"two converters for {n}")
            CONVERTERS[n] = fn
        return fn

    return deco


def _axis(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _axes(dims: Any, rank: int) -> list[int]:
    if dims is None:
        return list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return [_axis(d, rank) for d in dims]


# -- elementwise ------------------------------------------------------------------------------


def _operands(cx: Ctx, a: Any, b: Any, dtype: DType) -> tuple[Value, Value]:
    return cx.scalar(a, dtype), cx.scalar(b, dtype)


def _compute_dtype(a: Any, b: Any) -> DType:
    """torch's type promotion for a binary op (scalars are weak)."""
    def as_torch(x):
        if isinstance(x, Value):
            return torch.empty((), dtype=_FROM_IR[x.type.dtype]) if x.type.rank == 0 else \
                torch.empty((1,), dtype=_FROM_IR[x.type.dtype])
        return x
    return ir_dtype(torch.result_type(as_torch(a), as_torch(b)))


_FROM_IR = {v: k for k, v in _TORCH_DTYPES.items()}


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
                   ("logical_not", "logical_not"), ("bitwise_not", "logical_not")]:
    converts(f"aten.{_name}.default")(_unary(_ir))
converts("aten.relu6.default")(_unary("clip", min=0.0, max=6.0))

for _name, _ir in [("logical_and", "logical_and"), ("logical_or", "logical_or"),
                   ("bitwise_and", "logical_and"), ("bitwise_or", "logical_or")]:
    converts(f"aten.{_name}.default" if _name.startswith("logical") else
             f"aten.{_name}.Tensor")(_binary(_ir))


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
        axes = [] if dim in (None, []) else _axes(dim, x.type.rank)
        return cx.op(ir_op, x, axes=axes, keepdims=bool(keepdim))
    return conv


converts("aten.sum.dim_IntList", "aten.sum.default")(_reduce("reduce_sum"))
converts("aten.mean.dim", "aten.mean.default")(_reduce("reduce_mean"))
converts("aten.amax.default", "aten.max.default")(_reduce("reduce_max"))
converts("aten.amin.default", "aten.min.default")(_reduce("reduce_min"))
converts("aten.prod.dim_int", "aten.prod.default")(_reduce("reduce_prod"))


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
    axes = [] if dim in (None, []) else _axes(dim, self.type.rank)
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
    # (sum |x|^p)^(1/p)
    s = cx.op("reduce_sum", cx.op("pow", cx.op("abs", x), cx.scalar(ord, dt)), axes=axes,
              keepdims=keepdim)
    return cx.op("pow", s, cx.scalar(1.0 / ord, dt))


@converts("aten.var.correction", "aten.std.correction")
def _var(cx: Ctx, self: Value, dim: Any = None, correction: Any = None,
         keepdim: bool = False) -> Value:
    axes = _axes(dim, self.type.rank)
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


# -- linear algebra ---------------------------------------------------------------------------


@converts("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _mm(cx: Ctx, self: Value, other: Value = None, mat2: Value = None) -> Value:
    b = other if other is not None else mat2
    if cx.node.target is aten.bmm.default:
        return cx.op("bmm", self, b)
    return cx.op("matmul", self, b)


@converts("aten.addmm.default", "aten.baddbmm.default")
def _addmm(cx: Ctx, self: Value, mat1: Value = None, mat2: Value = None, batch1: Value = None,
           batch2: Value = None, beta: Any = 1, alpha: Any = 1) -> Value:
    if batch1 is not None:
        p = cx.op("bmm", batch1, batch2)
    else:
        p = cx.op("matmul", mat1, mat2)
    dt = p.type.dtype
    if alpha != 1:
        p = cx.op("mul", p, cx.scalar(alpha, dt))
    bias = self if beta == 1 else cx.op("mul", self, cx.scalar(beta, dt))
    if beta == 0:
        return p
    return cx.op("add", p, bias)


@converts("aten.linear.default")
def _linear(cx: Ctx, input: Value, weight: Value, bias: Value | None = None) -> Value:
    return cx.op("linear", input, weight, bias)


@converts("aten.convolution.default", "aten.conv1d.default", "aten.conv2d.default")
def _conv(cx: Ctx, input: Value, weight: Value, bias: Value | None = None, stride: Any = 1,
          padding: Any = 0, dilation: Any = 1, transposed: bool = False,
          output_padding: Any = 0, groups: int = 1) -> Value:
    nd = weight.type.rank - 2
    if nd not in (1, 2):
        raise CaptureError(f"{nd}-d convolution is not supported (the IR has conv1d, conv2d)")
    if isinstance(padding, str):
        raise CaptureError(f"convolution padding={padding!r} is not supported")

    def ints(v: Any) -> list[int]:
        v = [v] if isinstance(v, int) else list(v)
        return v * nd if len(v) == 1 else v

    pad = ints(padding)
    attrs = dict(stride=ints(stride), pad=pad + pad, dilation=ints(dilation), groups=groups)
    if transposed:
        return cx.op(f"conv_transpose{nd}d", input, weight, bias,
                     output_padding=ints(output_padding), **attrs)
    return cx.op(f"conv{nd}d", input, weight, bias, **attrs)


# -- pooling, resize --------------------------------------------------------------------------


def _pool_args(kernel_size: Any, stride: Any, padding: Any, nd: int) -> tuple:
    def ints(v: Any) -> list[int]:
        v = [v] if isinstance(v, int) else list(v)
        return v * nd if len(v) == 1 else v
    k = ints(kernel_size)
    s = ints(stride) if stride not in (None, []) else k
    p = ints(padding)
    return k, s, p + p


@converts("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default",
          "aten.max_pool1d.default", "aten.max_pool1d_with_indices.default")
def _max_pool(cx: Ctx, self: Value, kernel_size: Any, stride: Any = None, padding: Any = 0,
              dilation: Any = 1, ceil_mode: bool = False) -> Value | list:
    nd = self.type.rank - 2
    k, s, p = _pool_args(kernel_size, stride, padding, nd)
    d = [dilation] * nd if isinstance(dilation, int) else list(dilation)
    d = d * nd if len(d) == 1 else d
    out = cx.op(f"max_pool{nd}d", self, kernel=k, stride=s, pad=p, dilation=d,
                ceil_mode=ceil_mode)
    if "with_indices" in str(cx.node.target):
        return [out, None]  # indices: unsupported if used (getitem reports it)
    return out


@converts("aten.avg_pool2d.default", "aten.avg_pool1d.default")
def _avg_pool(cx: Ctx, self: Value, kernel_size: Any, stride: Any = None, padding: Any = 0,
              ceil_mode: bool = False, count_include_pad: bool = True,
              divisor_override: Any = None) -> Value:
    if divisor_override is not None:
        raise CaptureError("avg_pool with divisor_override is not supported")
    nd = self.type.rank - 2
    k, s, p = _pool_args(kernel_size, stride, padding, nd)
    return cx.op(f"avg_pool{nd}d", self, kernel=k, stride=s, pad=p, ceil_mode=ceil_mode,
                 count_include_pad=count_include_pad)


@converts("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default")
def _adaptive_avg_pool(cx: Ctx, self: Value, output_size: Any) -> Value:
    size = [cx.dim(d) for d in output_size]
    if size == [1, 1]:
        return cx.op("global_avg_pool2d", self)
    return cx.op("adaptive_avg_pool2d", self, output_size=size)


@converts("aten.upsample_nearest2d.vec", "aten.upsample_bilinear2d.vec",
          "aten.upsample_nearest2d.default", "aten.upsample_bilinear2d.default")
def _upsample(cx: Ctx, input: Value = None, self: Value = None, output_size: Any = None,
              align_corners: bool = False, scale_factors: Any = None, scales_h: Any = None,
              scales_w: Any = None) -> Value:
    x = input if input is not None else self
    mode = "bilinear" if "bilinear" in str(cx.node.target) else "nearest"
    size = [int(cx.dim(d)) for d in cx.out_shape[2:]]
    return cx.op("interpolate", x, size=size, mode=mode, align_corners=bool(align_corners))


# -- normalization ----------------------------------------------------------------------------


@converts("aten._native_batch_norm_legit_no_training.default")
def _batch_norm(cx: Ctx, input: Value, weight: Value | None, bias: Value | None,
                running_mean: Value, running_var: Value, momentum: float,
                eps: float) -> list:
    return [cx.op("batch_norm", input, running_mean, running_var, weight, bias, eps=eps),
            None, None]


@converts("aten.batch_norm.default")
def _batch_norm_full(cx: Ctx, input: Value, weight: Value | None, bias: Value | None,
                     running_mean: Value, running_var: Value, training: bool,
                     momentum: float, eps: float, cudnn_enabled: bool = False) -> Value:
    return cx.op("batch_norm", input, running_mean, running_var, weight, bias, eps=eps)


@converts("aten.native_layer_norm.default", "aten.layer_norm.default")
def _layer_norm(cx: Ctx, input: Value, normalized_shape: Any, weight: Value | None = None,
                bias: Value | None = None, eps: float = 1e-5, **_: Any) -> Any:
    axis = input.type.rank - len(normalized_shape)
    if weight is None and bias is not None:
        weight = cx.const(np.ones([int(d) for d in normalized_shape]), input.type.dtype)
    y = cx.op("layer_norm", input, weight, bias, axis=axis, eps=eps)
    return [y, None, None] if cx.node.target is aten.native_layer_norm.default else y


@converts("aten.native_group_norm.default", "aten.group_norm.default")
def _group_norm(cx: Ctx, input: Value, weight: Value | None = None, bias: Value | None = None,
                N: Any = None, C: Any = None, HxW: Any = None, group: int = 1,
                num_groups: int = 1, eps: float = 1e-5, **_: Any) -> Any:
    native = cx.node.target is aten.native_group_norm.default
    g = group if native else num_groups
    y = cx.op("group_norm", input, weight, bias, groups=g, eps=eps)
    return [y, None, None] if native else y


@converts("aten.rms_norm.default")
def _rms_norm(cx: Ctx, input: Value, normalized_shape: Any, weight: Value | None = None,
              eps: float | None = None) -> Value:
    eps = float(torch.finfo(_FROM_IR[input.type.dtype]).eps) if eps is None else eps
    return cx.op("rms_norm", input, weight, axis=input.type.rank - len(normalized_shape),
                 eps=eps)


@converts("aten.scaled_dot_product_attention.default")
def _sdpa(cx: Ctx, query: Value, key: Value, value: Value, attn_mask: Value | None = None,
          dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
          enable_gqa: bool = False) -> Value:
    if enable_gqa and key.type.shape[-3] != query.type.shape[-3]:
        rep = query.type.shape[-3] // key.type.shape[-3]
        key = _repeat_heads(cx, key, rep)
        value = _repeat_heads(cx, value, rep)
    if attn_mask is not None and attn_mask.type.dtype not in (DType.bool, query.type.dtype):
        attn_mask = cx.cast(attn_mask, query.type.dtype)
    return cx.op("scaled_dot_product_attention", query, key, value, attn_mask,
                 scale=scale or 0.0, causal=bool(is_causal))


def _repeat_heads(cx: Ctx, x: Value, rep: int) -> Value:
    s = x.type.shape
    e = cx.op("expand", cx.op("unsqueeze", x, axes=[len(s) - 2]),
              shape=(*s[:-2], rep, *s[-2:]))
    return cx.op("reshape", e, shape=(*s[:-3], s[-3] * rep, *s[-2:]))


# -- shapes -----------------------------------------------------------------------------------


@converts("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def _view(cx: Ctx, self: Value, size: Any = None, shape: Any = None) -> Value:
    dims = size if size is not None else shape
    out = []
    for d in dims:
        d = cx.dim(d)
        out.append(-1 if isinstance(d, int) and d < 0 else d)
    if -1 in out:  # torch knows the size: use it unless symbolic elsewhere
        out = list(cx.out_shape)
    return cx.op("reshape", self, shape=out)


@converts("aten.as_strided.default")
def _as_strided(cx: Ctx, self: Value, size: Any, stride: Any, storage_offset: Any = 0) -> Value:
    # only the reshape case: a contiguous input viewed with contiguous strides
    size = [cx.dim(d) for d in size]
    want, acc = [], 1
    for d in reversed(size):
        want.append(acc)
        acc = acc * d
    want.reverse()
    src = cx.node.args[0].meta.get("val")
    ok = (storage_offset in (0, None) and src is not None and src.is_contiguous()
          and all(d == 1 or cx.dim(st) == w for d, st, w in zip(size, stride, want, strict=True))
          and sympy.simplify(sympy.sympify(acc) - sympy.sympify(self.type.numel)) == 0)
    if not ok:
        raise CaptureError(f"as_strided with strides {list(stride)} (not a plain reshape) is not "
                           "supported")
    return cx.op("reshape", self, shape=size)


@converts("aten.permute.default")
def _permute(cx: Ctx, self: Value, dims: Any) -> Value:
    return cx.op("transpose", self, perm=_axes(dims, self.type.rank))


@converts("aten.transpose.int")
def _transpose(cx: Ctx, self: Value, dim0: int, dim1: int) -> Value:
    perm = list(range(self.type.rank))
    a, b = _axis(dim0, self.type.rank), _axis(dim1, self.type.rank)
    perm[a], perm[b] = perm[b], perm[a]
    return cx.op("transpose", self, perm=perm)


@converts("aten.t.default", "aten.numpy_T.default")
def _t(cx: Ctx, self: Value) -> Value:
    return self if self.type.rank < 2 else cx.op("transpose", self)


@converts("aten.expand.default")
def _expand(cx: Ctx, self: Value, size: Any, implicit: bool = False) -> Value:
    shape = [cx.dim(d) for d in size]
    shape = [-1 if isinstance(d, int) and d < 0 else d for d in shape]
    return cx.op("expand", self, shape=shape)


@converts("aten.unsqueeze.default")
def _unsqueeze(cx: Ctx, self: Value, dim: int) -> Value:
    return cx.op("unsqueeze", self, axes=[_axis(dim, self.type.rank + 1)])


@converts("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(cx: Ctx, self: Value, dim: Any = None) -> Value:
    axes = [a for a in _axes(dim, self.type.rank) if self.type.shape[a] == 1]
    return cx.op("squeeze", self, axes=axes) if axes else self


@converts("aten.flatten.using_ints")
def _flatten(cx: Ctx, self: Value, start_dim: int = 0, end_dim: int = -1) -> Value:
    if self.type.rank == 0:
        return cx.op("reshape", self, shape=[1])
    return cx.op("flatten", self, axis=start_dim, end_axis=end_dim)


@converts("aten.cat.default", "aten.concat.default")
def _cat(cx: Ctx, tensors: list, dim: int = 0) -> Value:
    dt = cx.out_dtype
    xs = [cx.cast(t, dt) for t in tensors if t.type.rank != 1 or t.type.shape[0] != 0]
    return xs[0] if len(xs) == 1 else cx.op("concat", *xs, axis=dim)


@converts("aten.stack.default")
def _stack(cx: Ctx, tensors: list, dim: int = 0) -> Value:
    ax = _axis(dim, tensors[0].type.rank + 1)
    xs = [cx.op("unsqueeze", t, axes=[ax]) for t in tensors]
    return xs[0] if len(xs) == 1 else cx.op("concat", *xs, axis=ax)


@converts("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default",
          "aten.unbind.int", "aten.unsafe_split.Tensor")
def _split(cx: Ctx, self: Value, split_size: Any = None, split_sizes: Any = None,
           chunks: Any = None, dim: int = 0) -> list[Value]:
    vals = cx.node.meta["val"]
    ax = _axis(dim, self.type.rank)
    sizes = [int(cx.dim(v.shape[ax])) for v in vals]
    if cx.node.target is aten.unbind.int:
        parts = cx.ops("split", self, axis=ax, sizes=[1] * len(vals))
        return [cx.op("squeeze", p, axes=[ax]) for p in parts]
    if len(sizes) == 1:
        return [self]
    return cx.ops("split", self, axis=ax, sizes=sizes)


@converts("aten.slice.Tensor")
def _slice(cx: Ctx, self: Value, dim: int = 0, start: Any = None, end: Any = None,
           step: int = 1) -> Value:
    ax = _axis(dim, self.type.rank)
    start = 0 if start is None else cx.dim(start)
    end = 2**63 - 1 if end is None else cx.dim(end)
    if not isinstance(start, int) or not isinstance(end, int):
        if start == 0 and end == self.type.shape[ax] and step == 1:
            return self
        if not isinstance(start, int):
            raise CaptureError(f"slice with a symbolic start ({start}) is not supported")
        # x[start:end:step] with symbolic end = gather(x, start + step * arange(n)) along ax
        n = cx.out_shape[ax]
        idx = _iota(cx, n, DType.i64)
        if step != 1:
            idx = cx.op("mul", idx, cx.scalar(step, DType.i64))
        if start != 0:
            idx = cx.op("add", idx, cx.scalar(start, DType.i64))
        return cx.op("gather", self, idx, axis=ax)
    if start == 0 and end >= 2**62 and step == 1:
        return self
    end = min(end, 2**62)
    return cx.op("slice", self, starts=[start], ends=[end], axes=[ax], steps=[step])


@converts("aten.select.int")
def _select(cx: Ctx, self: Value, dim: int, index: Any) -> Value:
    ax = _axis(dim, self.type.rank)
    index = cx.dim(index)
    end = index + 1 if index != -1 else 2**62
    s = cx.op("slice", self, starts=[index], ends=[end], axes=[ax], steps=[1])
    return cx.op("squeeze", s, axes=[ax])


@converts("aten.index_select.default")
def _index_select(cx: Ctx, self: Value, dim: int, index: Value) -> Value:
    return cx.op("gather", self, index, axis=_axis(dim, self.type.rank))


@converts("aten.index.Tensor")
def _index(cx: Ctx, self: Value, indices: list) -> Value:
    used = [i for i, v in enumerate(indices) if v is not None]
    if any(indices[i].type.dtype is DType.bool for i in used):
        raise CaptureError("boolean-mask indexing (data-dependent shape) is not supported")
    if used != list(range(used[0], used[-1] + 1)):
        raise CaptureError("advanced indexing with non-adjacent index tensors is not supported")
    a = used[0]
    if len(used) == 1:
        return cx.op("gather", self, indices[a], axis=a)
    # adjacent index tensors on axes a..b: flatten those axes and gather one linear index,
    #   x[..., i, j, ...] = reshape(x, [..., d_a*d_b, ...])[..., i * d_b + j, ...]
    shape = list(self.type.shape)
    lin = None
    stride = 1
    dims = None
    for ax in reversed(used):
        idx = cx.cast(indices[ax], DType.i64)
        if isinstance(stride, int):
            term = idx if stride == 1 else cx.op("mul", idx, cx.scalar(stride, DType.i64))
        else:  # a symbolic stride is read off the input's shape at run time
            dims = dims or cx.op("shape", self)
            st = None
            for b in range(ax + 1, used[-1] + 1):
                d = cx.op("slice", dims, starts=[b], ends=[b + 1])
                st = d if st is None else cx.op("mul", st, d)
            term = cx.op("mul", idx, st)
        lin = term if lin is None else cx.op("add", term, lin)
        stride = stride * shape[ax]
    flat = cx.op("reshape", self, shape=shape[:a] + [make_dim(stride)] + shape[used[-1] + 1:])
    return cx.op("gather", flat, lin, axis=a)


@converts("aten.embedding.default")
def _embedding(cx: Ctx, weight: Value, indices: Value, **_: Any) -> Value:
    return cx.op("embedding", weight, indices)


@converts("aten.gather.default")
def _gather(cx: Ctx, self: Value, dim: int, index: Value, sparse_grad: bool = False) -> Value:
    return cx.op("gather_elements", self, index, axis=_axis(dim, self.type.rank))


@converts("aten.constant_pad_nd.default", "aten.pad.default")
def _pad(cx: Ctx, self: Value, pad: Any, value: Any = 0.0, mode: str = "constant") -> Value:
    r = self.type.rank
    begin, end = [0] * r, [0] * r
    for i in range(len(pad) // 2):  # torch pads list the last axis first
        begin[r - 1 - i], end[r - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    if any(p < 0 for p in begin + end):
        raise CaptureError("negative padding is not supported")
    mode = {"replicate": "edge"}.get(mode, mode)
    return cx.op("pad", self, pads=begin + end, mode=mode, value=float(value or 0.0))


@converts("aten.repeat.default")
def _repeat(cx: Ctx, self: Value, repeats: Any) -> Value:
    reps = [int(r) for r in repeats]
    x = self
    if len(reps) > x.type.rank:
        x = cx.op("reshape", x, shape=[1] * (len(reps) - x.type.rank) + list(x.type.shape))
    return cx.op("tile", x, repeats=reps)


@converts("aten.pixel_shuffle.default")
def _pixel_shuffle(cx: Ctx, self: Value, upscale_factor: int) -> Value:
    n, c, h, w = self.type.shape
    r = upscale_factor
    x = cx.op("reshape", self, shape=[n, c // (r * r), r, r, h, w])
    x = cx.op("transpose", x, perm=[0, 1, 4, 2, 5, 3])
    return cx.op("reshape", x, shape=[n, c // (r * r), h * r, w * r])


# -- creation ---------------------------------------------------------------------------------


def _filled(cx: Ctx, value: Any, dtype: DType) -> Value:
    shape = cx.out_shape
    if all(isinstance(d, int) for d in shape):
        return cx.const(np.full(shape, value, dtype=dtype.np))
    return cx.op("expand", cx.const(np.array(value, dtype=dtype.np)), shape=shape)


@converts("aten.full.default", "aten.ones.default", "aten.zeros.default",
          "aten.empty.memory_format",
          "aten.full_like.default", "aten.ones_like.default", "aten.zeros_like.default",
          "aten.empty_like.default", "aten.new_ones.default", "aten.new_zeros.default",
          "aten.new_full.default", "aten.new_empty.default", "aten.scalar_tensor.default",
          "aten.empty.default")
def _full(cx: Ctx, fill_value: Any = None, s: Any = None, **_: Any) -> Value:
    t = str(cx.node.target)
    if "ones" in t:
        v = 1
    elif "full" in t or "scalar_tensor" in t:
        v = fill_value if fill_value is not None else s
    else:
        v = 0
    if isinstance(v, Value):
        raise CaptureError("full() with a tensor fill value is not supported")
    if isinstance(v, sympy.Expr):
        raise CaptureError("full() with a symbolic fill value is not supported")
    return _filled(cx, v, cx.out_dtype)


@converts("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(cx: Ctx, start: Any = 0, end: Any = None, step: Any = 1, **_: Any) -> Value:
    if end is None and cx.node.target is aten.arange.default:
        start, end = 0, start
    dt = cx.out_dtype
    start, end, step = (cx.dim(x) if not isinstance(x, float) else x for x in (start, end, step))
    if all(isinstance(x, (int, float)) for x in (start, end, step)):
        return cx.const(np.arange(start, end, step).astype(dt.np))
    # symbolic length: arange(n) = cumsum(ones[n]) - 1, then * step + start
    r = _iota(cx, cx.out_shape[0], dt)
    if step != 1:
        r = cx.op("mul", r, cx.scalar(_static(step), dt))
    if start != 0:
        r = cx.op("add", r, cx.scalar(_static(start), dt))
    return r


def _iota(cx: Ctx, n: Any, dt: DType) -> Value:
    """[0, 1, ..., n-1] for a symbolic n: cumsum(ones[n]) - 1."""
    ones = cx.op("expand", cx.const(np.array(1, dt.np)), shape=[n])
    return cx.op("sub", cx.op("cumsum", ones, axis=0), cx.const(np.array(1, dt.np)))


def _static(x: Any) -> Any:
    if isinstance(x, sympy.Expr) and not x.is_number:
        raise CaptureError(f"arange with a symbolic start or step ({x}) is not supported")
    return x


@converts("aten.tril.default", "aten.triu.default")
def _tril(cx: Ctx, self: Value, diagonal: int = 0) -> Value:
    r, c = self.type.shape[-2:]
    if not isinstance(r, int) or not isinstance(c, int):
        raise CaptureError("tril/triu of a symbolic-size matrix is not supported")
    fn = np.tril if cx.node.target is aten.tril.default else np.triu
    keep = cx.const(fn(np.ones((r, c), dtype=bool), diagonal))
    return cx.op("where", keep, self, cx.scalar(0, self.type.dtype))


# -- capture ----------------------------------------------------------------------------------


_SKIP = {
    "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg", "aten.sym_constrain_range.default",
    "aten._assert_tensor_metadata.default",
}
_SYM_FUNCS = {operator.mul, operator.add, operator.sub, operator.floordiv, operator.mod,
              operator.truediv, operator.neg, operator.eq, operator.ge, operator.gt,
              operator.le, operator.lt, operator.ne}


def _is_symbolic_node(n: torch.fx.Node) -> bool:
    return isinstance(n.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool, int,
                                          float, bool))


def _module_path(n: torch.fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L['self']", "")


def _bind(target: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by schema name (defaults left to the converter)."""
    schema = target._schema
    out: dict[str, Any] = {}
    pos = [a for a in schema.arguments if not a.kwarg_only]
    for a, v in zip(pos, args, strict=False):
        out[a.name] = v
    out.update(kwargs)
    for k in ("layout", "device", "pin_memory", "memory_format", "non_blocking", "generator",
              "out"):
        out.pop(k, None)
    return out


def example_args(model: torch.nn.Module, example_inputs: Any) -> tuple[tuple, dict]:
    if example_inputs is None:
        raise CaptureError("capturing a torch module needs example_inputs (a tensor, a tuple of "
                           "arguments, a dict of keyword arguments, or (args, kwargs))")
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if (isinstance(example_inputs, tuple) and len(example_inputs) == 2
            and isinstance(example_inputs[0], (tuple, list))
            and isinstance(example_inputs[1], dict)):
        return tuple(example_inputs[0]), dict(example_inputs[1])
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _dynamic_shapes(model: torch.nn.Module, args: tuple, kwargs: dict,
                    dynamic_dims: Any) -> tuple[Any, dict[str, str]]:
    """torch.export ``dynamic_shapes`` from ``{input: {axis: "B"}}`` (or a torch spec as is)."""
    if dynamic_dims is None:
        return None, {}
    is_user = all(isinstance(v, dict) and all(isinstance(a, int) and isinstance(s, str)
                                              for a, s in v.items())
                  for v in dynamic_dims.values()) if isinstance(dynamic_dims, dict) else False
    if not is_user:
        return dynamic_dims, {}
    try:
        sig = inspect.signature(model.forward)
        bound = sig.bind_partial(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise CaptureError(f"cannot match example inputs to forward(): {e}") from None
    unknown = set(dynamic_dims) - set(bound.arguments)
    if unknown:
        raise CaptureError(f"dynamic_dims names unknown input(s) {sorted(unknown)}; the "
                           f"inputs are {list(bound.arguments)}")
    # Dim.DYNAMIC rather than named Dims: torch then keeps guards it cannot prove (S >= 1 and
    # the like) as runtime checks instead of refusing the export; a dim it specialized anyway
    # is reported by _symbol_map.
    spec: dict[str, Any] = {}
    for name in bound.arguments:
        if name not in dynamic_dims:
            spec[name] = None
            continue
        spec[name] = {ax: torch.export.Dim.DYNAMIC for ax in dynamic_dims[name]}
    # keep **kwargs-style parameters nested as torch expects
    for pname, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD and pname in spec:
            spec[pname] = {k: spec.get(k) for k in bound.arguments[pname]}
    return spec, {}


def _export(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes: Any):
    try:
        ep = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes,
                                 strict=False)
    except Exception as e:  # torch raises many kinds; all mean "could not trace"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = " ".join(lines[:2])[:400] if lines else type(e).__name__
        hint = ("Hint: torch.export needs a model whose control flow does not depend on tensor "
                "values (use torch.cond or torch.where), and whose dynamic dims are really "
                "free (a dim the code specializes must not be marked dynamic).")
        err = CaptureError(f"torch.export could not capture {type(model).__name__}: "
                           f"{type(e).__name__}: {first}\n{hint}")
        err.torch_error = e
        raise err from None
    table = torch.export.default_decompositions()
    for o in KEEP_OPS:
        table.pop(o, None)
    try:
        return ep.run_decompositions(table)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        err = CaptureError(f"decomposing the exported {type(model).__name__} to core ATen "
                           f"failed: {type(e).__name__}: {first}")
        err.torch_error = e
        raise err from None


def _tensor_of(ep: Any, spec: Any) -> torch.Tensor:
    t = spec.target
    if t in ep.state_dict:
        return ep.state_dict[t]
    return ep.constants[t]


def capture_torch(model: torch.nn.Module, example_inputs: Any = None,
                  dynamic_dims: Any = None) -> Graph:
    """Capture ``model`` (an ``nn.Module`` or ``fx.GraphModule``) into an IR graph."""
    args, kwargs = example_args(model, example_inputs)
    dyn, _ = _dynamic_shapes(model, args, kwargs, dynamic_dims)
    # export a copy in eval mode: the user's module (training flag, parameters) is untouched
    work = copy.deepcopy(model)
    work.eval()
    with torch.no_grad():
        ep = _export(work, args, kwargs, dyn)
    return _convert(ep, type(model).__name__, dynamic_dims)


def _symbol_map(ep: Any, user_inputs: list, dynamic_dims: Any) -> dict[sympy.Symbol, Any]:
    """torch's shape symbols (s0, s1...) -> the user's names, read off the input placeholders."""
    out: dict[sympy.Symbol, Any] = {}
    names = dynamic_dims if isinstance(dynamic_dims, dict) else {}
    for n in user_inputs:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        want = names.get(n.name) or {}
        for ax, d in enumerate(val.shape):
            uname = want.get(ax) if isinstance(want, dict) else None
            if isinstance(d, torch.SymInt) and isinstance(d.node.expr, sympy.Symbol):
                s = d.node.expr
                if s in out:
                    if isinstance(uname, str) and out[s] != sym(uname):
                        raise CaptureError(
                            f"torch.export found dims {out[s]} and {uname} equal; give them "
                            "one name in dynamic_dims")
                    continue
                out[s] = sym(uname if isinstance(uname, str) else str(s))
            elif isinstance(uname, str):
                raise CaptureError(
                    f"dynamic dim {uname} (axis {ax} of input {n.name}) was specialized by "
                    f"torch.export to {d}: the model's code requires that size (or relates it "
                    "to another dim in a way torch could not keep symbolic)")
    return out


def _convert(ep: Any, model_name: str, dynamic_dims: Any) -> Graph:
    gm = ep.graph_module
    fx_nodes = list(gm.graph.nodes)
    # first pass: every op the model needs, so one error names them all
    missing = []
    for n in fx_nodes:
        if n.op != "call_function" or n.target is operator.getitem or n.target in _SYM_FUNCS:
            continue
        name = str(n.target)
        if name in CONVERTERS or name in _SKIP or _is_symbolic_node(n):
            continue
        missing.append((name, n.name, _module_path(n)))
    if missing:
        raise UnsupportedOpsError(
            "torch", missing,
            hint="To support an op, add one entry to CONVERTERS in "
                 "compiler/frontends/torch_frontend.py (and, if the IR lacks the op, one entry "
                 "in compiler/ir/ops/ with a case in tests/ir/test_ops.py).")

    g = Graph(model_name)
    sig = ep.graph_signature
    kinds = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
    user_nodes = [n for n in fx_nodes if n.op == "placeholder"
                  and kinds[n.name].kind.name == "USER_INPUT"]
    cx = Ctx(g, _symbol_map(ep, user_nodes, dynamic_dims))
    env: dict[torch.fx.Node, Any] = {}
    input_names: list[str] = []
    flat_kinds: list[str] = []  # per flat user input: "tensor" or "literal"
    for n in fx_nodes:
        if n.op != "placeholder":
            continue
        spec = kinds[n.name]
        kind = spec.kind.name
        cx.node = n
        cx.provenance = Provenance(f"torch:{spec.target or n.name}" if kind != "USER_INPUT"
                                   else f"torch:input {n.name}")
        if kind == "USER_INPUT":
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor):
                t = TensorType(ir_dtype(val.dtype), tuple(cx.dim(d) for d in val.shape))
                env[n] = g.add_input(t, n.name)
                input_names.append(n.name)
                flat_kinds.append("tensor")
            else:
                env[n] = cx.dim(val) if isinstance(val, torch.SymInt) else val
                flat_kinds.append("literal")
        elif kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            t = _tensor_of(ep, spec)
            arr = to_numpy(t.detach().cpu())
            v = g.add_const(arr, provenance=cx.provenance)
            v.name = (spec.target or n.name).replace(".", "_")
            env[n] = v
        else:
            raise CaptureError(f"exported input {n.name} of kind {kind} is not supported")

    for n in fx_nodes:
        if n.op != "call_function":
            continue
        cx.node = n
        name = str(n.target)
        path = _module_path(n)
        cx.provenance = Provenance(f"torch:{path} ({name})" if path else f"torch:({name})")
        if n.target is operator.getitem:
            src, i = env[n.args[0]], n.args[1]
            if src is None or src[i] is None:
                raise UnsupportedOpsError("torch", [(f"{n.args[0].target} output {i}", n.name,
                                                     path)])
            env[n] = src[i]
            continue
        if name in _SKIP:
            continue
        if n.target in _SYM_FUNCS or (_is_symbolic_node(n) and name.startswith("aten.sym_")):
            env[n] = cx.dim(n.meta["val"]) if isinstance(n.meta["val"], torch.SymInt) \
                else n.meta["val"]
            continue
        if _is_symbolic_node(n):
            env[n] = n.meta["val"]
            continue
        a = _bind(n.target, tuple(_resolve(env, x) for x in n.args),
                  {k: _resolve(env, x) for k, x in n.kwargs.items()})
        try:
            out = CONVERTERS[name](cx, **a)
        except TypeError as e:
            raise CaptureError(f"converting {name} at {n.name} ({path}): {e}") from None
        if isinstance(out, Value):
            out.name = out.name or n.name
        elif isinstance(out, list):
            for i, v in enumerate(out):
                if isinstance(v, Value) and v.name is None:
                    v.name = f"{n.name}_{i}"
        env[n] = out

    out_node = next(n for n in fx_nodes if n.op == "output")
    flat_out = list(out_node.args[0])
    outputs: list[Value] = []
    template: list[Any] = []  # per flat output: an output index, or a literal
    for o in flat_out:
        v = env.get(o) if isinstance(o, torch.fx.Node) else o
        if isinstance(v, Value):
            template.append(("out", len(outputs)))
            outputs.append(v)
        else:
            template.append(("literal", v))
    g.set_outputs(outputs)
    for node in reversed(list(g.nodes)):  # parameters and buffers the graph never reads
        if node.op == "const" and not g.has_uses(node.out):
            g.remove_node(node)
    g.meta["torch"] = {"in_spec": ep.call_spec.in_spec, "out_spec": ep.call_spec.out_spec,
                       "input_names": input_names, "input_kinds": flat_kinds,
                       "outputs": template}
    return g


def _resolve(env: dict, x: Any) -> Any:
    if isinstance(x, torch.fx.Node):
        return env[x]
    if isinstance(x, (list, tuple)):
        return type(x)(_resolve(env, y) for y in x)
    return x


def unflatten_outputs(graph: Graph, arrays: Any, as_torch: bool = False) -> Any:
    """Rebuild the eager output structure (tuple, dict, ``ModelOutput``) from flat outputs."""
    meta = graph.meta.get("torch")
    if meta is None:
        raise CaptureError("this graph was not captured from torch (no graph.meta['torch'])")
    if not isinstance(arrays, (list, tuple)):
        arrays = [arrays]
    arrays = [torch.from_numpy(np.array(a)) if as_torch else a for a in arrays]
    spec, outputs = meta["out_spec"], meta["outputs"]
    if spec.is_leaf() and len(outputs) == 1 and outputs[0][0] == "out":
        return arrays[outputs[0][1]]  # a model returning one tensor: no tree to rebuild
    flat = [arrays[i] if kind == "out" else i for kind, i in meta["outputs"]]
    return pytree.tree_unflatten(flat, meta["out_spec"])


def flatten_inputs(graph: Graph, *args: Any, **kwargs: Any) -> list[Any]:
    """The graph's input arrays from eager-style ``(*args, **kwargs)`` (non-tensors dropped)."""
    meta = graph.meta["torch"]
    kw_spec = meta["in_spec"].child(1)
    kwargs = {k: kwargs[k] for k in kw_spec.context if k in kwargs}
    flat = pytree.tree_leaves((tuple(args), kwargs))
    return [x for x, k in zip(flat, meta["input_kinds"], strict=False) if k == "tensor"]


__all__ = ["CONVERTERS", "KEEP_OPS", "capture_torch", "converts", "example_args", "flatten_inputs",
           "unflatten_outputs"]
