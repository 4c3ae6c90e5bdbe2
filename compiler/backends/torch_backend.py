"""The torch backend: an IR graph becomes a ``torch.fx.GraphModule`` that calls ATen.

    build_module(graph, trainable=False, mkldnn=None) -> TorchModule

``EMITTERS`` is one table, op name -> emitter. An emitter receives the conversion context and the
node's inputs as ``torch.fx.Proxy`` objects (``None`` for a missing optional input; variadic
inputs as one list, as the op table's references take them) and the node's attributes by name,
and returns the proxy (or proxies) of its results. Most emitters are plain torch code over the
proxies; ops whose geometry depends on run-time sizes call a helper of this module at run time
(``cx.call``), so the generated module accepts any size the IR's symbolic dims allow.

Constants become buffers of the generated module, or parameters (float ones) with
``trainable=True``, so gradients flow to them. With ``trainable=False`` the fused ops
(``fused_conv1d/2d``, ``fused_linear``) lower to oneDNN's fused primitives
(``torch.ops.mkldnn._convolution_pointwise`` / ``_linear_pointwise``), which have no autograd
kernel; with ``trainable=True`` they lower to ATen conv/linear plus the epilogue. For inference,
constant conv2d/linear weights are also prepacked once for oneDNN and conv activations kept
channels-last (see "weight prepacking" below).

An op with no emitter runs its op-table reference (NumPy) at run time: correct, but neither
differentiable nor fast. ``fallback_ops(graph)`` names those ops; ``UNSUPPORTED`` gives the
reason for each op that knowingly has no emitter.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch
import torch.fx
import torch.nn.functional as F
from torch.fx.proxy import GraphAppendingTracer, Proxy

from rtinfer.backends.registry import registrar
from rtinfer.errors import BackendError
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Graph, Node
from rtinfer.ir.ops import OPS, get_op
from rtinfer.ir.ops.common import expand_ints, expand_pads, to_numpy, to_torch
from rtinfer.ir.ops.fused import activation_op
from rtinfer.ir.types import Dim, DType, TensorType

TORCH_DTYPES: dict[DType, torch.dtype] = {
    DType.f64: torch.float64, DType.f32: torch.float32, DType.f16: torch.float16,
    DType.bf16: torch.bfloat16, DType.i64: torch.int64, DType.i32: torch.int32,
    DType.i16: torch.int16, DType.i8: torch.int8, DType.u8: torch.uint8,
    DType.u16: torch.uint16, DType.u32: torch.uint32, DType.u64: torch.uint64,
    DType.bool: torch.bool,
}

Emitter = Callable[..., Any]
EMITTERS: dict[str, Emitter] = {}
# op -> why it has no emitter (it then runs its NumPy reference at run time)
UNSUPPORTED: dict[str, str] = {}


emits = registrar(EMITTERS, "emitter")


# -- the conversion context -------------------------------------------------------------------


@dataclass
class EmitContext:
    """What an emitter can see: the IR node, its types, options, and run-time dims."""

    graph: torch.fx.Graph
    tracer: GraphAppendingTracer
    trainable: bool
    mkldnn: bool
    root: torch.nn.Module = field(default_factory=torch.nn.Module)
    node: Node | None = None
    # the node's input/output types as the emitter sees them (channels-first for NHWC nodes)
    types: tuple[list[TensorType], list[TensorType]] | None = None
    taken: set[str] = field(default_factory=set)
    const_names: dict[int, str] = field(default_factory=dict)  # id(const Value) -> attribute
    # symbol -> (proxy of a tensor, axis) whose size is the symbol's value at run time
    sym_sources: dict[sympy.Symbol, tuple[Proxy, int]] = field(default_factory=dict)
    sym_cache: dict[sympy.Symbol, Proxy] = field(default_factory=dict)
    # (constant attribute, packing key) -> attribute of its weight prepacked for oneDNN
    packed: dict[tuple, str] = field(default_factory=dict)
    # fx nodes whose run-time value is known to be channels-last (NHWC strides)
    channels_last: set[torch.fx.Node] = field(default_factory=set)

    @property
    def in_types(self) -> list[TensorType]:
        return self.types[0] if self.types else [v.type for v in self.node.inputs]

    @property
    def out_types(self) -> list[TensorType]:
        return self.types[1] if self.types else [v.type for v in self.node.outputs]

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Proxy:
        """A call of ``fn`` at run time (not while emitting)."""
        return self.tracer.create_proxy("call_function", fn, args, kwargs)

    def dim(self, d: Dim) -> int | Proxy:
        """A dim's value: an int, or a proxy computing it from the run-time sizes."""
        if isinstance(d, (int, np.integer)):
            return int(d)
        return _sym_value(self, d)

    def shape(self, dims: Sequence[Dim]) -> list[int | Proxy]:
        return [self.dim(d) for d in dims]


def _sym_value(cx: EmitContext, e: sympy.Expr) -> int | Proxy:
    if e.is_Integer:
        return int(e)
    if e.is_Symbol:
        if e not in cx.sym_cache:
            if e not in cx.sym_sources:
                raise BackendError(f"symbolic dim {e} is not the size of any input axis, so its "
                                   f"value is unknown at run time")
            src, axis = cx.sym_sources[e]
            cx.sym_cache[e] = src.size(axis)
        return cx.sym_cache[e]
    if e.is_Add or e.is_Mul:
        parts = [_sym_value(cx, a) for a in e.args]
        return functools.reduce(operator.add if e.is_Add else operator.mul, parts)
    if e.is_Pow and e.exp.is_Integer and e.exp > 0:
        return functools.reduce(operator.mul, [_sym_value(cx, e.base)] * int(e.exp))
    if isinstance(e, sympy.floor):
        return _floor_value(cx, e.args[0])
    raise BackendError(f"cannot compute the symbolic dim {e} at run time")


def _floor_value(cx: EmitContext, e: sympy.Expr) -> int | Proxy:
    num, den = sympy.fraction(sympy.together(e))
    if den.is_Integer:
        return operator.floordiv(_sym_value(cx, sympy.expand(num)), int(den))
    raise BackendError(f"cannot compute floor({e}) at run time")


# -- elementwise ------------------------------------------------------------------------------

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
    EMITTERS[_name] = functools.partial(lambda fn, cx, x: fn(x), _fn)
for _name, _fn in BINARY.items():
    EMITTERS[_name] = functools.partial(lambda fn, cx, a, b: fn(a, b), _fn)

EMITTERS.update({
    "leaky_relu": lambda cx, x, alpha: F.leaky_relu(x, alpha),
    "elu": lambda cx, x, alpha: F.elu(x, alpha),
    "gelu": lambda cx, x, approximate: F.gelu(x, approximate=approximate),
    "softplus": lambda cx, x, beta, threshold: F.softplus(x, beta, threshold),
    "clip": lambda cx, x, min, max: x if min == -math.inf and max == math.inf else torch.clamp(
        x, None if min == -math.inf else min, None if max == math.inf else max),
    "identity": lambda cx, x: x,
    "cast": lambda cx, x, dtype: x.to(TORCH_DTYPES[dtype]),
    "where": lambda cx, cond, a, b: torch.where(cond, a, b),
})


@emits("div")
def _div(cx: EmitContext, a: Proxy, b: Proxy) -> Proxy:
    if cx.in_types[0].dtype.is_float:
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")  # C-style integer division


# -- linear algebra ---------------------------------------------------------------------------

EMITTERS.update({
    "matmul": lambda cx, a, b: torch.matmul(a, b),
    "bmm": lambda cx, a, b: torch.bmm(a, b),
    "linear": lambda cx, x, weight, bias: F.linear(x, weight, bias),
    "einsum": lambda cx, xs, equation: torch.einsum(equation, *xs),
})

# -- convolution ------------------------------------------------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX-layout pads [b0, .., bn-1, e0, .., en-1] as F.pad's list (last axis first)."""
    nd = len(pads) // 2
    return [p for i in reversed(range(nd)) for p in (pads[i], pads[nd + i])]


def _conv_emitter(nd: int) -> Emitter:
    def emit(cx: EmitContext, x, weight, bias, stride, pad, dilation, groups):
        pads = expand_pads(pad, nd)
        if nd == 2 and pads[:nd] == pads[nd:] and _use_mkldnn(cx):
            geo = (list(pads[:nd]), list(expand_ints(stride, nd, "stride")),
                   list(expand_ints(dilation, nd, "dilation")), groups)
            y = _mkldnn_conv(cx, x, weight, bias, geo, None, "none", [], None)
            if y is not None:
                return y
        if pads[:nd] != pads[nd:]:
            x, pads = F.pad(x, _torch_pads(pads)), (0,) * (2 * nd)
        return _CONV[nd](x, weight, bias, expand_ints(stride, nd, "stride"), pads[:nd],
                         expand_ints(dilation, nd, "dilation"), groups)
    return emit


def _conv_transpose_emitter(nd: int) -> Emitter:
    def emit(cx: EmitContext, x, weight, bias, stride, pad, output_padding, dilation, groups):
        pads = expand_pads(pad, nd)
        stride = expand_ints(stride, nd, "stride")
        dilation = expand_ints(dilation, nd, "dilation")
        opad = expand_ints(output_padding, nd, "output_padding")
        if pads[:nd] == pads[nd:]:
            return _CONV_T[nd](x, weight, bias, stride, pads[:nd], opad, groups, dilation)
        # the full output, zero-extended by output_padding at the end, cropped by the pads
        y = _CONV_T[nd](x, weight, None, stride, 0, 0, groups, dilation)
        y = F.pad(y, [p for i in reversed(range(nd)) for p in (0, opad[i])])
        idx = (slice(None), slice(None)) + tuple(
            slice(pads[i], -pads[nd + i] if pads[nd + i] else None) for i in range(nd))
        y = y[idx]
        if bias is not None:
            y = y + bias.reshape((1, -1) + (1,) * nd)
        return y
    return emit


for _nd in (1, 2, 3):
    EMITTERS[f"conv{_nd}d"] = _conv_emitter(_nd)
    EMITTERS[f"conv_transpose{_nd}d"] = _conv_transpose_emitter(_nd)

# -- pooling ----------------------------------------------------------------------------------


def _pool_geometry(nd: int, kernel, stride, pad, dilation=(1,)):
    kernel = expand_ints(kernel, nd, "kernel")
    stride = expand_ints(stride or kernel, nd, "stride")
    return kernel, stride, expand_pads(pad, nd), expand_ints(dilation, nd, "dilation")


def _torch_pool_ok(kernel, pads, nd) -> bool:
    """torch's pooling takes symmetric pads of at most half the kernel."""
    return pads[:nd] == pads[nd:] and all(p <= k // 2 for p, k in zip(pads, kernel, strict=False))


def _pool_out(size: int, k: int, s: int, lo: int, hi: int, d: int, ceil_mode: bool) -> int:
    from rtinfer.ir.ops.common import conv_out_dim

    return conv_out_dim(size, k, s, lo, hi, d, ceil_mode)


def _general_pool(x: torch.Tensor, kind: str, kernel, stride, pads, dilation, ceil_mode: bool,
                  count_include_pad: bool) -> torch.Tensor:
    """Pooling with any pads (asymmetric, wider than half the kernel), at run time: pad by hand
    so that every output window is present, pool without padding, keep the output's windows.
    Average pools divide by the count of positions inside the input (and its padding when
    count_include_pad), never those past the end padding, as torch does."""
    nd = len(kernel)
    spatial = x.shape[2:]
    out = [_pool_out(spatial[i], kernel[i], stride[i], pads[i], pads[nd + i], dilation[i],
                     ceil_mode) for i in range(nd)]
    need = [(out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    extra = [max(need[i] - spatial[i] - pads[i], 0) for i in range(nd)]
    flat = [p for i in reversed(range(nd)) for p in (pads[i], extra[i])]
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in out)
    if kind == "max":
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
        xp = F.pad(x, flat, value=-math.inf)
        return fn(xp, kernel, stride, 0, dilation)[crop]
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    xp = F.pad(x, flat)
    # 1 where a padded position counts toward the divisor
    valid = []
    for i in range(nd):
        p = torch.arange(xp.shape[2 + i])
        lo, hi = pads[i], pads[i] + spatial[i]
        if count_include_pad:
            lo, hi = 0, hi + pads[nd + i]
        valid.append(((p >= lo) & (p < hi)).to(x.dtype))
    inside = functools.reduce(lambda a, b: a[..., None] * b, valid)[None, None]
    return (fn(xp, kernel, stride) / fn(inside, kernel, stride))[crop]


def _pool_emitter(nd: int, kind: str) -> Emitter:
    def pool(cx: EmitContext, x, kernel, stride, pads, dilation, ceil_mode, count_include_pad):
        if _torch_pool_ok(kernel, pads, nd):
            if kind == "max":
                fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
                return fn(x, kernel, stride, pads[:nd], dilation, ceil_mode)
            fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
            return fn(x, kernel, stride, pads[:nd], ceil_mode, count_include_pad)
        return cx.call(_general_pool, x, kind, kernel, stride, pads, dilation, ceil_mode,
                       count_include_pad)

    def emit(cx: EmitContext, x, kernel, stride, pad, ceil_mode, dilation=(1,),
             count_include_pad=True):
        geometry = _pool_geometry(nd, kernel, stride, pad, dilation)
        dtype = cx.in_types[0].dtype
        if dtype.is_float:
            return pool(cx, x, *geometry, ceil_mode, count_include_pad)
        # integer (quantized) max pooling, exact in a wide enough float
        wide = torch.float64 if dtype.bits > 16 else torch.float32
        y = pool(cx, x.to(wide), *geometry, ceil_mode, count_include_pad)
        return y.to(TORCH_DTYPES[dtype])
    return emit


for _nd in (1, 2, 3):
    EMITTERS[f"max_pool{_nd}d"] = _pool_emitter(_nd, "max")
    EMITTERS[f"avg_pool{_nd}d"] = _pool_emitter(_nd, "avg")

_INTERP_MODE = {("nearest", 1): "nearest", ("nearest", 2): "nearest", ("nearest", 3): "nearest",
                ("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear"}


@emits("interpolate")
def _interpolate(cx: EmitContext, x, size, scale, mode, align_corners):
    nd = cx.in_types[0].rank - 2
    kw: dict[str, Any] = {"align_corners": align_corners} if mode == "linear" else {}
    if size:
        kw["size"] = expand_ints(size, nd, "size")
    else:
        kw["scale_factor"] = tuple(scale) * nd if len(scale) == 1 else tuple(scale)
    return F.interpolate(x, mode=_INTERP_MODE[mode, nd], **kw)


EMITTERS.update({
    "adaptive_avg_pool2d": lambda cx, x, output_size: F.adaptive_avg_pool2d(
        x, expand_ints(output_size, 2, "output_size")),
    "global_avg_pool2d": lambda cx, x: x.mean((2, 3), keepdim=True),
})


@functools.lru_cache(maxsize=256)
def _resize_matrix(n_in: int, axis_scale: float, n_out: int, roi: tuple[float, float],
                   attrs: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Resize along one axis is affine in the input: ``y = M @ x + c``. M and c come from the
    op table's own reference, applied to the identity (and to zeros for c, which is the
    extrapolation value outside a tf_crop_and_resize ROI)."""
    from rtinfer.ir.ops.nn import _resize_axis

    a = dict(attrs)
    c = _resize_axis(np.zeros((n_in, 1)), 0, axis_scale, n_out, roi, a)
    m = _resize_axis(np.eye(n_in), 0, axis_scale, n_out, roi, a) - c
    return m, c[:, 0]


def _resize(x: torch.Tensor, attrs: tuple) -> torch.Tensor:
    """ONNX Resize at run time, axis by axis, in float64 as the reference computes."""
    from rtinfer.ir.ops.nn import _resize_geometry

    a = dict(attrs)
    out, scales = _resize_geometry(tuple(x.shape), a)
    rank = x.dim()
    roi = a["roi"] or (0.0,) * rank + (1.0,) * rank
    y = x.to(torch.float64)
    for ax in range(rank):
        if out[ax] == y.shape[ax] and math.isclose(scales[ax], 1.0) and (
                roi[ax], roi[rank + ax]) == (0.0, 1.0):
            continue
        m, c = _resize_matrix(int(y.shape[ax]), float(scales[ax]), int(out[ax]),
                              (roi[ax], roi[rank + ax]), attrs)
        y = torch.tensordot(torch.from_numpy(m), y.movedim(ax, 0), dims=1)
        y = (y + torch.from_numpy(c).reshape((-1,) + (1,) * (rank - 1))).movedim(0, ax)
    if not x.dtype.is_floating_point:
        info = torch.iinfo(x.dtype)
        y = y.round().clamp(info.min, info.max)
    return y.to(x.dtype)


@emits("resize")
def _resize_emit(cx: EmitContext, x, **attrs):
    return cx.call(_resize, x, tuple(sorted(attrs.items())))


# -- normalization ----------------------------------------------------------------------------


@emits("batch_norm")
def _batch_norm(cx: EmitContext, x, mean, var, gamma, beta, eps):
    return F.batch_norm(x, mean, var, gamma, beta, False, 0.0, eps)


@emits("layer_norm", "rms_norm")
def _last_axes_norm(cx: EmitContext, x, gamma, beta=None, *, axis, eps):
    t = cx.in_types[0]
    tail = cx.shape(t.shape[axis % t.rank:])
    if cx.node.op == "rms_norm":
        return F.rms_norm(x, tail, gamma, eps)
    return F.layer_norm(x, tail, gamma, beta, eps)


EMITTERS.update({
    "group_norm": lambda cx, x, gamma, beta, groups, eps: F.group_norm(x, groups, gamma, beta,
                                                                      eps),
    "instance_norm": lambda cx, x, gamma, beta, eps: F.instance_norm(x, weight=gamma, bias=beta,
                                                                     eps=eps),
    "softmax": lambda cx, x, axis: torch.softmax(x, axis),
    "log_softmax": lambda cx, x, axis: torch.log_softmax(x, axis),
    "hardmax": lambda cx, x, axis: torch.zeros_like(x).scatter(
        axis, torch.argmax(x, axis, keepdim=True), 1.0),
})

# -- reductions -------------------------------------------------------------------------------


def _reduce_dims(cx: EmitContext, axes) -> list[int]:
    rank = cx.in_types[0].rank
    return sorted(a % rank for a in axes) if axes else list(range(rank))


def _reduction(fn: Callable, keep_dtype: bool) -> Emitter:
    def emit(cx: EmitContext, x, axes, keepdims):
        dims = _reduce_dims(cx, axes)
        if not dims:
            return x
        kw = {"dtype": TORCH_DTYPES[cx.in_types[0].dtype]} if keep_dtype else {}
        return fn(x, dims, keepdim=keepdims, **kw)
    return emit


@emits("reduce_prod")
def _reduce_prod(cx: EmitContext, x, axes, keepdims):
    dtype = TORCH_DTYPES[cx.in_types[0].dtype]
    for d in sorted(_reduce_dims(cx, axes), reverse=True):
        x = torch.prod(x, d, keepdim=keepdims, dtype=dtype)
    return x


EMITTERS.update({
    "reduce_sum": _reduction(torch.sum, keep_dtype=True),
    "reduce_mean": _reduction(torch.mean, keep_dtype=False),
    "reduce_max": _reduction(torch.amax, keep_dtype=False),
    "reduce_min": _reduction(torch.amin, keep_dtype=False),
    "argmax": lambda cx, x, axis, keepdims: torch.argmax(x, axis, keepdim=keepdims),
    "argmin": lambda cx, x, axis, keepdims: torch.argmin(x, axis, keepdim=keepdims),
    "cumsum": lambda cx, x, axis: torch.cumsum(x, axis, dtype=TORCH_DTYPES[cx.in_types[0].dtype]),
    "cumprod": lambda cx, x, axis: torch.cumprod(x, axis,
                                                 dtype=TORCH_DTYPES[cx.in_types[0].dtype]),
})


@emits("topk")
def _topk(cx: EmitContext, x, k, axis, largest, sorted):
    # a stable sort keeps ties in index order: the lower index wins, as ONNX TopK
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return [values.narrow(axis, 0, k), indices.narrow(axis, 0, k)]


# -- shape and data movement ------------------------------------------------------------------


def _target_shape(cx: EmitContext, shape: Sequence[Dim]) -> list[int | Proxy]:
    """A reshape target: ints as they are, and a single unknown entry as -1."""
    unknown = [i for i, d in enumerate(shape) if not isinstance(d, int) or d < 0]
    if len(unknown) <= 1:
        return [-1 if i in unknown else int(d) for i, d in enumerate(shape)]
    return [d if isinstance(d, int) else cx.dim(d) for d in shape]


@emits("reshape")
def _reshape(cx: EmitContext, x, shape):
    return x.reshape(_target_shape(cx, shape))


@emits("flatten")
def _flatten(cx: EmitContext, x, axis, end_axis):
    rank = cx.in_types[0].rank
    if rank == 0:
        return x.reshape(1)
    return torch.flatten(x, axis % rank, end_axis % rank)


@emits("squeeze")
def _squeeze(cx: EmitContext, x, axes):
    t = cx.in_types[0]
    drop = [a % t.rank for a in axes] if axes else [i for i, d in enumerate(t.shape) if d == 1]
    return torch.squeeze(x, tuple(drop)) if drop else x


@emits("unsqueeze")
def _unsqueeze(cx: EmitContext, x, axes):
    rank = cx.in_types[0].rank + len(axes)
    for a in sorted(a % rank for a in axes):
        x = torch.unsqueeze(x, a)
    return x


@emits("transpose")
def _transpose(cx: EmitContext, x, perm):
    rank = cx.in_types[0].rank
    return x.permute(tuple(p % rank for p in perm) if perm else tuple(reversed(range(rank))))


@emits("expand")
def _expand(cx: EmitContext, x, shape):
    t = cx.in_types[0]
    out = cx.out_types[0].shape
    lead = len(shape) - t.rank
    target = []
    for j, d in enumerate(out):
        same = j >= lead and t.shape[j - lead] == d
        target.append(-1 if same else cx.dim(d))
    return x.expand(target)


EMITTERS["concat"] = lambda cx, xs, axis: torch.cat(xs, axis)


@emits("split")
def _split(cx: EmitContext, x, axis, sizes):
    axis = axis % cx.in_types[0].rank
    parts = torch.split(x, [cx.dim(t.shape[axis]) for t in cx.out_types], axis)
    return [parts[i] for i in range(len(cx.out_types))]


@emits("slice")
def _slice(cx: EmitContext, x, starts, ends, axes, steps):
    from rtinfer.ir.ops.shape import _BIG, _slice_params, _slice_range

    t = cx.in_types[0]
    for axis, start, end, step in _slice_params(t.rank, dict(starts=starts, ends=ends, axes=axes,
                                                             steps=steps)):
        d = t.shape[axis]
        idx: list[Any] = [slice(None)] * t.rank
        if isinstance(d, int):  # exact ONNX clamping
            s, e, n = (int(v) for v in _slice_range(d, start, end, step))
            if step < 0:  # torch has no negative steps: flip, then slice forward
                x, s, step = torch.flip(x, (axis,)), d - 1 - s, -step
            idx[axis] = slice(s, s + (n - 1) * step + 1 if n else s, step)
        else:  # indices assumed in range (as the op table infers the length)
            start = None if abs(start) >= _BIG else start
            end = None if abs(end) >= _BIG else end
            if step < 0:  # element i of the flipped axis is element d-1-i
                x, step = torch.flip(x, (axis,)), -step
                start = None if start is None else -1 - start
                end = None if end is None else -1 - end
            idx[axis] = slice(start, end, step)
        x = x[tuple(idx)]
    return x


def _normalize_index(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


@emits("gather")
def _gather(cx: EmitContext, x, indices, axis):
    axis = axis % cx.in_types[0].rank
    return x[(slice(None),) * axis + (indices.long(),)]


@emits("gather_elements")
def _gather_elements(cx: EmitContext, x, indices, axis):
    axis = axis % cx.in_types[0].rank
    return torch.gather(x, axis, cx.call(_normalize_index, indices, x.size(axis)))


EMITTERS["embedding"] = lambda cx, weight, indices: weight[indices.long()]


def _gather_nd(x: torch.Tensor, indices: torch.Tensor, batch_dims: int) -> torch.Tensor:
    b, k = batch_dims, indices.shape[-1]
    n = math.prod(x.shape[:b])
    xs = x.reshape((n,) + tuple(x.shape[b:]))
    ids = indices.long().reshape((n,) + tuple(indices.shape[b:]))
    batch = torch.arange(n).reshape((n,) + (1,) * (ids.dim() - 2))
    out = xs[(batch,) + tuple(ids.unbind(-1))]
    return out.reshape(tuple(indices.shape[:-1]) + tuple(x.shape[b + k:]))


EMITTERS["gather_nd"] = lambda cx, x, indices, batch_dims: cx.call(_gather_nd, x, indices,
                                                                   batch_dims)

_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _scatter_elements(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, axis: int,
                      reduction: str) -> torch.Tensor:
    idx = _normalize_index(indices, x.shape[axis])
    if reduction == "none":
        return torch.scatter(x, axis, idx, updates)
    return torch.scatter_reduce(x, axis, idx, updates, _SCATTER_REDUCE[reduction])


def _scatter_nd(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor,
                reduction: str) -> torch.Tensor:
    k = indices.shape[-1]
    lead, rest = tuple(x.shape[:k]), tuple(x.shape[k:])
    lin = torch.zeros(indices.shape[:-1], dtype=torch.long)
    for j in range(k):  # row-major linear index into the first k axes
        lin = lin * lead[j] + _normalize_index(indices[..., j], lead[j])
    xf = x.reshape((math.prod(lead),) + rest)
    upd = updates.reshape((-1,) + rest)
    idx = lin.reshape((-1,) + (1,) * len(rest)).expand(upd.shape)
    if reduction == "none":
        out = torch.scatter(xf, 0, idx, upd)
    else:
        out = torch.scatter_reduce(xf, 0, idx, upd, _SCATTER_REDUCE[reduction])
    return out.reshape(x.shape)


EMITTERS.update({
    "scatter_elements": lambda cx, x, indices, updates, axis, reduction: cx.call(
        _scatter_elements, x, indices, updates, axis % cx.in_types[0].rank, reduction),
    "scatter_nd": lambda cx, x, indices, updates, reduction: cx.call(
        _scatter_nd, x, indices, updates, reduction),
})


def _pad_index(size: int, lo: int, hi: int, mode: str) -> torch.Tensor:
    return torch.from_numpy(np.pad(np.arange(size), (lo, hi), mode=mode))


def _pad_by_index(x: torch.Tensor, pads: tuple[int, ...], mode: str) -> torch.Tensor:
    """reflect / edge padding of any axes, as a gather along each padded axis."""
    rank = x.dim()
    for ax in range(rank):
        lo, hi = pads[ax], pads[rank + ax]
        if lo or hi:
            x = x.index_select(ax, _pad_index(x.shape[ax], lo, hi, mode))
    return x


@emits("pad")
def _pad(cx: EmitContext, x, pads, mode, value):
    if mode != "constant":
        return cx.call(_pad_by_index, x, tuple(pads), mode)
    dtype = cx.in_types[0].dtype
    value = value if dtype.is_float else int(value)
    return F.pad(x, _torch_pads(pads), value=value)


EMITTERS["tile"] = lambda cx, x, repeats: x.repeat(tuple(repeats))


def _shape_of(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.shape, dtype=torch.int64)


EMITTERS["shape"] = lambda cx, x: cx.call(_shape_of, x)

# -- attention --------------------------------------------------------------------------------


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
          scale: float, causal: bool) -> torch.Tensor:
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (t.expand(batch + t.shape[-2:]) for t in (q, k, v))
    if causal and mask is not None:  # torch takes one or the other: combine them
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        mask = mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, -math.inf)
        causal = False
    return F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal, scale=scale or None)


@emits("scaled_dot_product_attention")
def _sdpa_emit(cx: EmitContext, q, k, v, mask, scale, causal):
    ts = cx.in_types
    if ts[0].rank == ts[1].rank == ts[2].rank and ts[1].shape[:-2] == ts[0].shape[:-2] == \
            ts[2].shape[:-2] and not (causal and mask is not None):
        return F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal,
                                              scale=scale or None)
    return cx.call(_sdpa, q, k, v, mask, scale, causal)


@emits("multi_head_attention")
def _mha_emit(cx: EmitContext, q, k, v, mask, num_heads, scale, causal):
    # [..., S, H*D] -> [..., H, S, D], the SDPA core, and back to [..., L, H*Dv]
    q4, k4, v4 = (t.unflatten(-1, (num_heads, -1)).transpose(-3, -2) for t in (q, k, v))
    ts = cx.in_types
    if ts[0].rank == ts[1].rank == ts[2].rank and ts[1].shape[:-2] == ts[0].shape[:-2] == \
            ts[2].shape[:-2] and not (causal and mask is not None):
        o = F.scaled_dot_product_attention(q4, k4, v4, mask, is_causal=causal,
                                           scale=scale or None)
    else:
        o = cx.call(_sdpa, q4, k4, v4, mask, scale, causal)
    return o.transpose(-3, -2).flatten(-2)


# -- quantization -----------------------------------------------------------------------------


def _quant_tensors(scale, zero_point, axis: int | None, rank: int):
    shape = (-1,) + (1,) * (rank - 1 - axis) if axis is not None else ()
    s = torch.as_tensor(np.asarray(scale, np.float32)).reshape(shape)
    zp = torch.as_tensor(np.asarray(zero_point, np.int64)).reshape(shape)
    return s, zp


def _quantize(x: torch.Tensor, scale: tuple, zero_point: tuple, axis: int | None,
              dtype: torch.dtype) -> torch.Tensor:
    s, zp = _quant_tensors(scale, zero_point, axis, x.dim())
    q = torch.round(x.float() / s).double() + zp  # round half to even, then the zero point
    info = torch.iinfo(dtype)
    return q.clamp(info.min, info.max).to(dtype)


def _dequantize(q: torch.Tensor, scale: tuple, zero_point: tuple,
                axis: int | None) -> torch.Tensor:
    s, zp = _quant_tensors(scale, zero_point, axis, q.dim())
    return (q.long() - zp).float() * s


@emits("quantize")
def _quantize_emit(cx: EmitContext, x, scale, zero_point, axis, dtype):
    qp = cx.out_types[0].quant
    return cx.call(_quantize, x, tuple(np.atleast_1d(qp.scale).tolist()),
                   tuple(np.atleast_1d(qp.zero_point).tolist()), qp.axis, TORCH_DTYPES[dtype])


@emits("dequantize")
def _dequantize_emit(cx: EmitContext, q):
    qp = cx.in_types[0].quant
    return cx.call(_dequantize, q, tuple(np.atleast_1d(qp.scale).tolist()),
                   tuple(np.atleast_1d(qp.zero_point).tolist()), qp.axis)


# -- fused ops: oneDNN's fused primitives for inference, ATen + epilogue otherwise -------------

# activation -> (oneDNN eltwise attr, its scalars from (alpha, beta), algorithm)
MKLDNN_ACTIVATIONS: dict[str, tuple[str, Callable[[float, float], list], str | None]] = {
    "none": ("none", lambda a, b: [], None),
    "relu": ("relu", lambda a, b: [], None),
    "leaky_relu": ("leaky_relu", lambda a, b: [a], None),
    "clip": ("hardtanh", lambda a, b: [a, b], None),
    "gelu": ("gelu", lambda a, b: [], "none"),
    "gelu_tanh": ("gelu", lambda a, b: [], "tanh"),
    "silu": ("swish", lambda a, b: [], None),
    "sigmoid": ("sigmoid", lambda a, b: [], None),
    "hardswish": ("hardswish", lambda a, b: [], None),
    "tanh": ("tanh", lambda a, b: [], None),
}
# oneDNN's binary (residual add) post-op takes only these activations after the sum
MKLDNN_BINARY_ACTIVATIONS = {"none": None, "relu": "relu"}


@functools.lru_cache(maxsize=1)
def mkldnn_available() -> bool:
    """Whether oneDNN's fused conv/linear ops exist in this torch build and run."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn
        x, w = torch.ones(1, 2, 3, 3), torch.ones(2, 2, 1, 1)
        ops._convolution_pointwise(x, w, None, [0, 0], [1, 1], [1, 1], 1, "relu", [], None)
        ops._convolution_pointwise.binary(x, x, w, None, [0, 0], [1, 1], [1, 1], 1, "add",
                                          None, "relu", [], None)
        ops._linear_pointwise(torch.ones(2, 3), torch.ones(4, 3), None, "relu", [], None)
        ops._linear_pointwise.binary(torch.ones(2, 3), torch.ones(2, 4), torch.ones(4, 3), None,
                                     "add")
    except (AttributeError, RuntimeError):
        return False
    return True


def _add_act(cx: EmitContext, y, residual, attrs: dict, *, done_pre: bool, done_act: bool):
    """The rest of the epilogue in ATen: (y + r), the activation (the op table's own op), + r."""
    if attrs["residual"] == "pre" and not done_pre:
        y = y + residual
    act = activation_op(attrs["activation"], attrs["alpha"], attrs["beta"])
    if act is not None and not done_act:
        name, act_attrs = act
        y = EMITTERS[name](cx, y, **get_op(name).complete_attrs(act_attrs))
    if attrs["residual"] == "post":
        y = y + residual
    return y


def _use_mkldnn(cx: EmitContext) -> bool:
    return (cx.mkldnn and not cx.trainable and cx.in_types[0].dtype is DType.f32
            and mkldnn_available())


# -- weight prepacking and channels-last activations (inference only) --------------------------
#
# With oneDNN (``trainable=False``) a constant conv2d weight is reordered once, at build time,
# into the blocked layout oneDNN's convolution wants for the node's (static) input size, and a
# constant linear weight into the layout for its (static) row count; the packed tensors are
# plain (non-buffer) attributes of the module, so its buffers and state_dict stay the IR's
# constants.
# A conv's input is made channels-last (a no-op when it already is: every oneDNN conv's output
# is), so activations stay NHWC from conv to conv; the graph's 4-d outputs are made contiguous.
# The packed weights are a snapshot: writing into the module's constant buffers afterwards does
# not change them (``trainable=True`` modules use the buffers / parameters directly).


def _const_of(cx: EmitContext, proxy: Any) -> torch.Tensor | None:
    """The tensor behind ``proxy`` if it is a constant (non-parameter) attribute of the module."""
    if not isinstance(proxy, Proxy) or proxy.node.op != "get_attr":
        return None
    t = getattr(cx.root, proxy.node.target, None)
    if not isinstance(t, torch.Tensor) or isinstance(t, torch.nn.Parameter) or t.is_mkldnn:
        return None
    return t


def _packed(cx: EmitContext, proxy: Any, key: tuple, make: Callable) -> Proxy | None:
    """A proxy of ``make(constant)``, made once per (constant, key); None if not a constant."""
    t = _const_of(cx, proxy)
    if t is None or t.dtype != torch.float32:
        return None
    k = (proxy.node.target, *key)
    name = cx.packed.get(k)
    if name is None:
        try:
            packed = make(t)
        except RuntimeError:  # a geometry this oneDNN build does not pack: the plain weight
            return None
        name = _attr_name(f"{proxy.node.target}_packed", cx.taken, "packed")
        setattr(cx.root, name, packed)
        cx.packed[k] = name
    return Proxy(cx.graph.get_attr(name), cx.tracer)


def _static_shape(t: TensorType) -> list[int] | None:
    if all(isinstance(d, (int, np.integer)) for d in t.shape):
        return [int(d) for d in t.shape]
    return None


def _channels_last(cx: EmitContext, x: Any) -> Any:
    """``x`` with NHWC strides (a copy only the first time an NCHW tensor meets a conv)."""
    if not isinstance(x, Proxy) or x.node in cx.channels_last:
        return x
    y = x.contiguous(memory_format=torch.channels_last)
    cx.channels_last.add(y.node)
    return y


def _mkldnn_conv(cx: EmitContext, x, w, bias, geo, residual, attr, scalars, algorithm, *,
                 packed_only: bool = True) -> Proxy | None:
    """oneDNN's conv2d (with ``residual`` added before ``attr`` when given) on a prepacked
    weight and channels-last activations. A weight that is not a constant: the plain weight
    (or None when ``packed_only``)."""
    ops = torch.ops.mkldnn
    pads, stride, dilation, groups = geo
    size = _static_shape(cx.in_types[0])
    if len(pads) != 2:  # conv1d: oneDNN's plain path
        pw = None
    elif size is not None:
        pw = _packed(cx, w, ("conv", *map(tuple, geo[:3]), groups, tuple(size)),
                     lambda t: ops._reorder_convolution_weight(t, pads, stride, dilation,
                                                               groups, size))
    else:  # dynamic sizes: oneDNN picks the blocking per call, NHWC weights still help
        pw = _packed(cx, w, ("channels_last",),
                     lambda t: t.contiguous(memory_format=torch.channels_last))
    if pw is None:
        if packed_only:
            return None
        pw = w
    else:
        x = _channels_last(cx, x)
        if residual is not None:
            residual = _channels_last(cx, residual)
    if residual is not None:
        y = cx.call(ops._convolution_pointwise.binary, x, residual, pw, bias, *geo, "add", None,
                    attr, scalars, algorithm)
    else:
        y = cx.call(ops._convolution_pointwise.default, x, pw, bias, *geo, attr, scalars,
                    algorithm)
    if pw is not w:
        cx.channels_last.add(y.node)
    return y


def _packed_linear_weight(cx: EmitContext, x, w) -> Any:
    """``w`` reordered for oneDNN's linear at the input's (static) row count, else as is."""
    shape = _static_shape(cx.in_types[0])
    if shape is None or len(shape) < 2:
        return w
    rows = math.prod(shape[:-1])
    pw = _packed(cx, w, ("linear", rows),
                 lambda t: torch.ops.mkldnn._reorder_linear_weight(t, rows))
    return w if pw is None else pw


# Below this many input rows a linear is a matrix-vector product: oneDNN's pointwise linear then
# costs ~25 us of fixed overhead per call against ~8 us for ATen's linear + activation (measured
# on a 1x64 -> 128 layer), so small batches take the ATen path.
_MIN_MKLDNN_LINEAR_ROWS = 16


def _few_rows(cx: EmitContext) -> bool:
    shape = _static_shape(cx.in_types[0])
    return shape is not None and math.prod(shape[:-1]) < _MIN_MKLDNN_LINEAR_ROWS


def _fused_emitter(base: str) -> Emitter:
    base_def = get_op(base)
    base_attr_names = tuple(base_def.attrs)
    conv_nd = {"conv1d": 1, "conv2d": 2}.get(base)

    def emit(cx: EmitContext, x, w, bias, residual, /, **attrs):
        base_attrs = {k: attrs[k] for k in base_attr_names if k in attrs}
        act, alpha, beta = attrs["activation"], attrs["alpha"], attrs["beta"]
        mk_attr, mk_scalars, mk_alg = MKLDNN_ACTIVATIONS[act]
        mkl = _use_mkldnn(cx)
        pre = attrs["residual"] == "pre"
        if mkl and conv_nd is not None:
            nd = conv_nd
            pads = expand_pads(attrs["pad"], nd)
            if pads[:nd] == pads[nd:]:
                geo = (list(pads[:nd]), list(expand_ints(attrs["stride"], nd, "stride")),
                       list(expand_ints(attrs["dilation"], nd, "dilation")), attrs["groups"])
                if pre:
                    unary = MKLDNN_BINARY_ACTIVATIONS.get(act)
                    y = _mkldnn_conv(cx, x, w, bias, geo, residual, unary, [], None,
                                     packed_only=False)
                    return _add_act(cx, y, residual, attrs, done_pre=True,
                                    done_act=act in MKLDNN_BINARY_ACTIVATIONS)
                y = _mkldnn_conv(cx, x, w, bias, geo, None, mk_attr, mk_scalars(alpha, beta),
                                 mk_alg, packed_only=False)
                return _add_act(cx, y, residual, attrs, done_pre=True, done_act=True)
        if mkl and base == "linear" and not _few_rows(cx):
            ops = torch.ops.mkldnn
            w = _packed_linear_weight(cx, x, w)
            if pre:
                y = cx.call(ops._linear_pointwise.binary, x, residual, w, bias, "add")
                return _add_act(cx, y, residual, attrs, done_pre=True, done_act=False)
            y = cx.call(ops._linear_pointwise.default, x, w, bias, mk_attr,
                        mk_scalars(alpha, beta), mk_alg)
            return _add_act(cx, y, residual, attrs, done_pre=True, done_act=True)
        if base == "matmul":
            y = EMITTERS[base](cx, x, w, **base_attrs)
            if bias is not None:
                y = y + bias
        else:
            y = EMITTERS[base](cx, x, w, bias, **base_attrs)
        return _add_act(cx, y, residual, attrs, done_pre=False, done_act=False)
    return emit


for _base in ("conv1d", "conv2d", "linear", "matmul"):
    EMITTERS[f"fused_{_base}"] = _fused_emitter(_base)

@emits("fused_elementwise")
def _fused_elementwise(cx: EmitContext, xs, body: Graph):
    """The body's ops, inline."""
    node = cx.node
    env = {id(v): x for v, x in zip(body.inputs, xs, strict=True)}
    emit_nodes(cx, body, env)
    cx.node = node
    return [env[id(v)] for v in body.outputs]


# -- the reference fallback -------------------------------------------------------------------


class ReferenceOp(torch.nn.Module):
    """Runs one node's NumPy reference on torch tensors (no autograd, no speed)."""

    def __init__(self, op: str, attrs: dict, in_types: list[TensorType], n_outputs: int):
        super().__init__()
        self.op, self.attrs, self.in_types, self.n_outputs = op, attrs, in_types, n_outputs

    def forward(self, *tensors: Any) -> Any:
        opdef = get_op(self.op)
        flat = list(tensors[:-1]) + list(tensors[-1]) if opdef.variadic else list(tensors)
        arrays = [to_numpy(t.detach()) for t in flat if t is not None]
        outs = [to_torch(np.array(o)) for o in opdef.evaluate(arrays, self.attrs, self.in_types)]
        return outs[0] if self.n_outputs == 1 else tuple(outs)

    def extra_repr(self) -> str:
        return self.op


def _reference_emitter(cx: EmitContext, *inputs: Any, **attrs: Any) -> Any:
    node = cx.node
    name = _attr_name(f"reference_{node.op}", cx.taken, "reference")
    cx.root.add_module(name, ReferenceOp(node.op, attrs, [v.type for v in node.inputs],
                                         len(node.outputs)))
    out = cx.tracer.create_proxy("call_module", name, inputs, {})
    n = len(node.outputs)
    return out if n == 1 else [out[i] for i in range(n)]


# -- building the module ----------------------------------------------------------------------


class TorchModule(torch.fx.GraphModule):
    """The generated module: ``forward(*inputs)`` returns a tuple of the graph's outputs."""


def fallback_ops(graph: Graph) -> list[str]:
    """The ops of ``graph`` that have no emitter (they run their NumPy reference)."""
    return sorted({n.op for n in graph.nodes if n.op != "const" and n.op not in EMITTERS})


def coverage() -> tuple[int, int, list[str]]:
    """(ops with an emitter, ops in the table, ops without one); ``const`` counts as emitted."""
    names = OPS.names()
    missing = [n for n in names if n != "const" and n not in EMITTERS]
    return len(names) - len(missing), len(names), missing


_IDENT = re.compile(r"[^A-Za-z0-9_]")


def _attr_name(name: str | None, taken: set[str], default: str) -> str:
    base = _IDENT.sub("_", name or default)
    if not base or base[0].isdigit() or base.startswith("_"):
        base = f"c_{base.lstrip('_')}"
    out, i = base, 1
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


def build_module(graph: Graph, *, trainable: bool = False, mkldnn: bool | None = None,
                 strict: bool = False) -> TorchModule:
    """Generate a ``torch.fx.GraphModule`` computing ``graph``.

    ``trainable``: float constants become ``nn.Parameter`` s and the fused ops take the
    differentiable ATen path. ``mkldnn``: use oneDNN's fused primitives for inference (default:
    when available and not ``trainable``). ``strict``: an op without an emitter is a
    ``BackendError`` instead of a call of its NumPy reference.
    """
    missing = fallback_ops(graph)
    if strict and missing:
        raise BackendError(
            f"torch backend: no emitter for {', '.join(missing)}"
            + "".join(f"\n  {m}: {UNSUPPORTED[m]}" for m in missing if m in UNSUPPORTED)
            + "\n(strict=False runs these ops' NumPy reference instead)")
    fx_graph = torch.fx.Graph()
    tracer = GraphAppendingTracer(fx_graph)
    cx = EmitContext(fx_graph, tracer, trainable, mkldnn_available() if mkldnn is None
                     else bool(mkldnn))
    env: dict[int, Any] = {}
    for i, v in enumerate(graph.inputs):
        name = _attr_name(v.name, cx.taken, f"input_{i}")
        p = Proxy(fx_graph.placeholder(name), tracer)
        env[id(v)] = p
        _note_symbols(cx, v.type, p)
    emit_nodes(cx, graph, env)
    outs = [env[id(v)] for v in graph.outputs]
    if cx.channels_last:  # NCHW results, as the eager model gives
        outs = [o.contiguous() if isinstance(o, Proxy) and v.type.rank == 4 else o
                for o, v in zip(outs, graph.outputs, strict=True)]
    fx_graph.output(tuple(o.node for o in outs))
    module = TorchModule(cx.root, fx_graph,
                         class_name=f"rtinfer_{_IDENT.sub('_', graph.name)}")
    if module.graph.eliminate_dead_code():  # e.g. sizes read for a symbol and not used
        module.recompile()
    for name in cx.packed.values():  # GraphModule made them buffers: plain attributes again
        packed = getattr(module, name)
        delattr(module, name)
        setattr(module, name, packed)
    module.rtinfer_fallback_ops = missing
    module.rtinfer_constants = cx.const_names
    module.rtinfer_mkldnn = cx.mkldnn and not trainable
    return module


def emit_nodes(cx: EmitContext, graph: Graph, env: dict[int, Any]) -> None:
    """Emit every node of ``graph``, reading and extending ``env`` (id(Value) -> Proxy)."""
    from rtinfer.ir.printer import format_node

    for node in graph.nodes:
        cx.node, cx.types = node, None
        if node.op == "const":
            env[id(node.out)] = _emit_const(cx, node)
            continue
        try:
            outs = _emit_node(cx, node, _node_args(node, env))
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"torch backend: emitting {node.op} failed: "
                               f"{type(e).__name__}: {e}\n  at: {format_node(node)}") from e
        if len(outs) != len(node.outputs):
            raise BackendError(f"the emitter of {node.op} gave {len(outs)} results for "
                               f"{len(node.outputs)}\n  at: {format_node(node)}")
        for v, o in zip(node.outputs, outs, strict=True):
            env[id(v)] = o
            _note_symbols(cx, v.type, o)


def _emit_node(cx: EmitContext, node: Node, args: list[Any]) -> list[Any]:
    """One node; an NHWC node runs its NCHW emitter between two transposes (which torch turns
    into channels-last strides rather than copies)."""
    from rtinfer.ir.ops.layouts import permute_type, to_channels_first, to_channels_last

    emitter = EMITTERS.get(node.op)
    if emitter is None:  # the reference takes every attribute, layout included
        return _as_list(_reference_emitter(cx, *args, **node.attrs))
    attrs = dict(node.attrs)
    if attrs.pop("layout", "NCHW") == "NCHW":
        return _as_list(emitter(cx, *args, **attrs))
    ins, outs = [v.type for v in node.inputs], [v.type for v in node.outputs]
    moved = [0] + [i for i, n in enumerate(node.opdef.inputs) if n == "residual?"
                   and i < len(ins)]
    for i in moved:
        args[i] = args[i].permute(to_channels_first(ins[i].rank))
        ins[i] = permute_type(ins[i], to_channels_first(ins[i].rank))
    outs[0] = permute_type(outs[0], to_channels_first(outs[0].rank))
    cx.types = (ins, outs)
    out = _as_list(emitter(cx, *args, **attrs))
    out[0] = out[0].permute(to_channels_last(outs[0].rank))
    return out


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _node_args(node: Node, env: dict[int, Any]) -> list[Any]:
    return node.opdef.positional([env[id(v)] for v in node.inputs])


def _note_symbols(cx: EmitContext, t: TensorType, proxy: Any) -> None:
    if not isinstance(proxy, Proxy):
        return
    for axis, d in enumerate(t.shape):
        if isinstance(d, sympy.Symbol) and d not in cx.sym_sources:
            cx.sym_sources[d] = (proxy, axis)


def _emit_const(cx: EmitContext, node: Node) -> Proxy:
    value = node.attrs["value"]
    if isinstance(value, ElidedTensor):
        raise BackendError(f"constant {value} has no data (it was elided from the IR text); "
                           f"load the graph with its weights")
    t = to_torch(np.array(value))
    name = _attr_name(node.out.name, cx.taken, "const")
    cx.const_names[id(node.out)] = name
    if cx.trainable and t.is_floating_point():
        cx.root.register_parameter(name, torch.nn.Parameter(t))
    else:
        cx.root.register_buffer(name, t)
    return Proxy(cx.graph.get_attr(name), cx.tracer)


__all__ = ["EMITTERS", "MKLDNN_ACTIVATIONS", "TORCH_DTYPES", "UNSUPPORTED", "EmitContext",
           "TorchModule", "build_module", "coverage", "emits", "fallback_ops",
           "mkldnn_available"]
