"""The op table: every op's shape inference and reference implementation against torch eager.

Each ``Case`` runs one op on seeded random inputs: the inferred types must match the reference
output's dtype and shape, the reference must match torch, and the op's channel groups must name
real port axes of one size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose

from rtinfer.errors import IRError
from rtinfer.ir import DType, Graph, QuantParams, TensorType, sym
from rtinfer.ir.ops import OPS, get_op
from rtinfer.ir.ops.quant import dynamic_row_fake_quant
from rtinfer.ir.types import dims_equal

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
RNG = np.random.default_rng(0)
INT64_MAX = 2**63 - 1
B, S, H, W = sym("B"), sym("S"), sym("H"), sym("W")


def rand(*shape, lo=-2.0, hi=2.0, dtype=np.float32) -> np.ndarray:
    return RNG.uniform(lo, hi, shape).astype(dtype)


def pos(*shape) -> np.ndarray:
    return rand(*shape, lo=0.1, hi=3.0)


def ints(*shape, lo=-5, hi=5, dtype=np.int64) -> np.ndarray:
    return RNG.integers(lo, hi, shape).astype(dtype)


def bools(*shape) -> np.ndarray:
    return RNG.random(shape) < 0.5


def f32(*shape) -> TensorType:
    return TensorType(DType.f32, shape)


@dataclass
class Case:
    op: str
    inputs: list[np.ndarray]
    attrs: dict
    torch_fn: Callable  # torch tensors -> tensor / array, or a list of them
    tol: float = 1e-5
    types: list[TensorType] | None = None  # declared input types (default: the arrays')
    id: str = ""
    extra: dict = field(default_factory=dict)


def T(a: np.ndarray) -> torch.Tensor:
    if np.asarray(a).dtype == ml_dtypes.bfloat16:  # numpy's bf16 is ml_dtypes', unknown to torch
        return torch.from_numpy(np.asarray(a, np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))  # a copy: add_const marks its array read-only


def check_channels(opdef, in_types, out_types, attrs) -> None:
    groups = opdef.channel_groups(in_types, attrs)
    if groups is None:
        return
    seen = set()
    for g in groups:
        dims = []
        for port, i, ax in g:
            t = (in_types if port == "in" else out_types)[i]
            assert 0 <= ax < t.rank, f"{opdef.name}: {port} {i} has no axis {ax}"
            assert (port, i, ax) not in seen, f"{opdef.name}: {(port, i, ax)} in two groups"
            seen.add((port, i, ax))
            dims.append(t.shape[ax])
        assert all(dims_equal(d, dims[0]) for d in dims), f"{opdef.name}: group {g} {dims}"


def run_case(c: Case) -> None:
    opdef = get_op(c.op)
    attrs = opdef.complete_attrs(c.attrs)
    types = c.types or [TensorType.of(a) for a in c.inputs]
    out_types = opdef.infer_types(types, attrs)
    outs = opdef.evaluate(c.inputs, attrs, in_types=types)
    assert len(outs) == len(out_types)
    for t, o in zip(out_types, outs, strict=True):
        assert t.dtype == DType.from_numpy(o.dtype), f"inferred {t}, ref gave {o.dtype}"
        assert t.shape == o.shape, f"inferred {t}, ref gave {o.shape}"
    expected = c.torch_fn(*[T(a) for a in c.inputs])
    if not isinstance(expected, (list, tuple)):
        expected = [expected]
    for o, e in zip(outs, expected, strict=True):
        e = e.numpy() if isinstance(e, torch.Tensor) else np.asarray(e)
        assert o.shape == e.shape
        if o.dtype.kind in "biu":
            np.testing.assert_array_equal(o, e)
        else:
            assert_allclose(o.astype(np.float64), e.astype(np.float64), rtol=c.tol, atol=c.tol)
    check_channels(opdef, types, out_types, attrs)


# -- cases ------------------------------------------------------------------------------------

UNARY_FLOAT = [
    ("relu", {}, F.relu),
    ("leaky_relu", {"alpha": 0.2}, lambda x: F.leaky_relu(x, 0.2)),
    ("elu", {"alpha": 0.5}, lambda x: F.elu(x, 0.5)),
    ("selu", {}, F.selu),
    ("gelu", {}, F.gelu),
    ("gelu", {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    ("silu", {}, F.silu),
    ("sigmoid", {}, torch.sigmoid),
    ("tanh", {}, torch.tanh),
    ("hardsigmoid", {}, F.hardsigmoid),
    ("hardswish", {}, F.hardswish),
    ("mish", {}, F.mish),
    ("softplus", {}, F.softplus),
    ("softplus", {"beta": 2.0, "threshold": 1.0}, lambda x: F.softplus(x, 2.0, 1.0)),
    ("clip", {"min": 0.0, "max": 6.0}, F.relu6),
    ("clip", {"min": -0.5}, lambda x: torch.clamp(x, min=-0.5)),
    ("exp", {}, torch.exp),
    ("sin", {}, torch.sin),
    ("cos", {}, torch.cos),
    ("erf", {}, torch.erf),
    ("floor", {}, torch.floor),
    ("ceil", {}, torch.ceil),
]
POSITIVE = [("log", torch.log), ("sqrt", torch.sqrt), ("rsqrt", torch.rsqrt),
            ("reciprocal", torch.reciprocal)]

CASES: list[Case] = []
CASES += [Case(n, [rand(3, 5, 7, lo=-6, hi=6)], a, fn) for n, a, fn in UNARY_FLOAT]
CASES += [Case(n, [pos(4, 6)], {}, fn) for n, fn in POSITIVE]
CASES += [
    Case("round", [np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.4, 2.6], np.float32)], {}, torch.round),
    Case("abs", [rand(4, 5)], {}, torch.abs),
    Case("abs", [ints(4, 5, dtype=np.int32)], {}, torch.abs),
    Case("neg", [ints(6)], {}, torch.neg),
    Case("sign", [np.array([-2.0, 0.0, 3.0], np.float32)], {}, torch.sign),
    Case("sign", [ints(7, dtype=np.int8)], {}, torch.sign),
    Case("identity", [rand(2, 3)], {}, lambda x: x),
    Case("logical_not", [bools(3, 4)], {}, torch.logical_not),
    Case("cast", [rand(3, 4, lo=-9, hi=9)], {"dtype": "i32"}, lambda x: x.to(torch.int32)),
    Case("cast", [ints(3, 4)], {"dtype": DType.f32}, lambda x: x.float()),
    Case("cast", [np.array([0.0, 1.5, -2.0], np.float32)], {"dtype": "bool"},
         lambda x: x.bool()),
]

# binary broadcasting: [2,1,4] with [3,1]
BINARY = [
    ("add", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("div", torch.div),
    ("maximum", torch.maximum), ("minimum", torch.minimum), ("mod", torch.remainder),
]
CASES += [Case(n, [rand(2, 1, 4), rand(3, 1, lo=0.5, hi=2)], {}, fn, id=f"{n}-bcast")
          for n, fn in BINARY]
CASES += [
    Case("pow", [pos(2, 3, 4), rand(4)], {}, torch.pow),
    Case("div", [ints(5, 6, lo=-20, hi=20, dtype=np.int32), ints(6, lo=1, hi=7, dtype=np.int32)
                 * np.array([1, -1, 1, -1, 1, -1], np.int32)], {},
         lambda a, b: torch.div(a, b, rounding_mode="trunc"), id="div-int-trunc"),
    Case("mod", [ints(5, 6, lo=-20, hi=20), ints(6, lo=1, hi=7) * np.array([1, -1] * 3)],
         {}, torch.remainder, id="mod-int"),
    Case("add", [ints(2, 3, dtype=np.int32), ints(3, dtype=np.int32)], {}, torch.add),
    Case("mul", [rand(5), rand(1, 1)], {}, torch.mul),
]
for n, fn in [("equal", torch.eq), ("not_equal", torch.ne), ("less", torch.lt),
              ("less_equal", torch.le), ("greater", torch.gt), ("greater_equal", torch.ge)]:
    CASES.append(Case(n, [ints(2, 1, 4, lo=0, hi=3), ints(3, 1, lo=0, hi=3)], {}, fn))
CASES += [
    Case("equal", [rand(3, 4), rand(4)], {}, torch.eq, id="equal-float"),
    Case("logical_and", [bools(2, 1, 4), bools(3, 1)], {}, torch.logical_and),
    Case("logical_or", [bools(4), bools(3, 4)], {}, torch.logical_or),
    Case("where", [bools(2, 1, 4), rand(3, 4), rand(1)], {}, torch.where),
]

# linear algebra
CASES += [
    Case("matmul", [rand(2, 3, 4), rand(4, 5)], {}, torch.matmul),
    Case("matmul", [rand(4), rand(4, 5)], {}, torch.matmul, id="matmul-1d-a"),
    Case("matmul", [rand(2, 3, 4), rand(4)], {}, torch.matmul, id="matmul-1d-b"),
    Case("matmul", [rand(4), rand(4)], {}, torch.matmul, id="matmul-dot"),
    Case("matmul", [rand(2, 1, 3, 4), rand(5, 4, 6)], {}, torch.matmul, id="matmul-bcast"),
    Case("matmul", [ints(3, 4), ints(4, 2)], {}, torch.matmul, id="matmul-int"),
    Case("bmm", [rand(2, 3, 4), rand(2, 4, 5)], {}, torch.bmm),
    Case("linear", [rand(2, 3, 4), rand(5, 4), rand(5)], {}, F.linear),
    Case("linear", [rand(7, 4), rand(5, 4)], {}, F.linear, id="linear-nobias"),
]


def _pad_nchw(x, pads, value=0.0):
    """F.pad for ONNX-layout pads over the spatial axes."""
    nd = len(pads) // 2
    return F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[nd + i])],
                 value=value)


# convolution
CASES += [
    Case("conv2d", [rand(2, 3, 9, 9), rand(8, 3, 3, 3), rand(8)], {"pad": [1, 1, 1, 1]},
         lambda x, w, b: F.conv2d(x, w, b, padding=1), tol=1e-4),
    Case("conv2d", [rand(1, 4, 10, 9), rand(6, 2, 3, 2), rand(6)],
         {"stride": [2, 1], "pad": [1, 0, 1, 0], "groups": 2},
         lambda x, w, b: F.conv2d(x, w, b, (2, 1), (1, 0), groups=2), tol=1e-4,
         id="conv2d-grouped-strided"),
    Case("conv2d", [rand(1, 6, 8, 8), rand(6, 1, 3, 3)], {"pad": [1], "groups": 6},
         lambda x, w: F.conv2d(x, w, padding=1, groups=6), tol=1e-4, id="conv2d-depthwise"),
    Case("conv2d", [rand(1, 2, 11, 11), rand(3, 2, 3, 3)], {"dilation": [2, 3], "pad": [2]},
         lambda x, w: F.conv2d(x, w, padding=2, dilation=(2, 3)), tol=1e-4,
         id="conv2d-dilated"),
    Case("conv2d", [rand(1, 2, 7, 8), rand(3, 2, 3, 3)], {"pad": [0, 1, 2, 1], "stride": [2]},
         lambda x, w: F.conv2d(_pad_nchw(x, [0, 1, 2, 1]), w, stride=2), tol=1e-4,
         id="conv2d-asymmetric-pad"),
    Case("conv2d", [rand(1, 5, 4, 4), rand(7, 5, 1, 1)], {},
         lambda x, w: F.conv2d(x, w), tol=1e-4, id="conv2d-1x1"),
    Case("conv1d", [rand(2, 4, 11), rand(6, 2, 3), rand(6)],
         {"stride": [2], "pad": [1, 1], "dilation": [2], "groups": 2},
         lambda x, w, b: F.conv1d(x, w, b, 2, 1, 2, 2), tol=1e-4),
    Case("conv_transpose2d", [rand(1, 4, 5, 6), rand(4, 3, 3, 3), rand(3)],
         {"stride": [2], "pad": [1], "output_padding": [1]},
         lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1), tol=1e-4),
    Case("conv_transpose2d", [rand(1, 4, 5, 5), rand(4, 2, 3, 2)],
         {"stride": [2, 1], "groups": 2, "dilation": [1, 2]},
         lambda x, w: F.conv_transpose2d(x, w, None, (2, 1), 0, 0, 2, (1, 2)), tol=1e-4,
         id="conv_transpose2d-grouped"),
    Case("conv_transpose2d", [rand(1, 2, 4, 4), rand(2, 3, 3, 3)], {"pad": [0, 1, 2, 0]},
         lambda x, w: F.conv_transpose2d(x, w)[:, :, 0:4, 1:6], tol=1e-4,
         id="conv_transpose2d-asymmetric-pad"),
    Case("conv_transpose1d", [rand(2, 3, 7), rand(3, 4, 3), rand(4)],
         {"stride": [3], "pad": [1]},
         lambda x, w, b: F.conv_transpose1d(x, w, b, 3, 1), tol=1e-4),
]

# pooling and resizing
CASES += [
    Case("max_pool2d", [rand(2, 3, 9, 9)], {"kernel": [3], "stride": [2], "pad": [1]},
         lambda x: F.max_pool2d(x, 3, 2, 1)),
    Case("max_pool2d", [rand(1, 2, 8, 7)], {"kernel": [3, 2], "stride": [2], "ceil_mode": True},
         lambda x: F.max_pool2d(x, (3, 2), 2, ceil_mode=True), id="max_pool2d-ceil"),
    Case("max_pool2d", [rand(1, 2, 10, 10)], {"kernel": [2], "dilation": [2], "pad": [1],
                                              "stride": [1]},
         lambda x: F.max_pool2d(x, 2, 1, 1, dilation=2), id="max_pool2d-dilated"),
    Case("max_pool2d", [rand(1, 2, 6, 6)], {"kernel": [2]},
         lambda x: F.max_pool2d(x, 2), id="max_pool2d-default-stride"),
    Case("max_pool2d", [rand(1, 2, 7, 6)], {"kernel": [3], "stride": [2], "pad": [0, 1, 1, 0]},
         lambda x: F.max_pool2d(_pad_nchw(x, [0, 1, 1, 0], -math.inf), 3, 2),
         id="max_pool2d-asymmetric-pad"),
    Case("max_pool1d", [rand(2, 3, 10)], {"kernel": [3], "stride": [2], "ceil_mode": True,
                                          "pad": [1]},
         lambda x: F.max_pool1d(x, 3, 2, 1, ceil_mode=True)),
    Case("avg_pool2d", [rand(2, 3, 9, 8)], {"kernel": [3], "stride": [2], "pad": [1]},
         lambda x: F.avg_pool2d(x, 3, 2, 1)),
    Case("avg_pool2d", [rand(1, 2, 9, 8)], {"kernel": [3], "stride": [2], "pad": [1],
                                            "count_include_pad": False},
         lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), id="avg_pool2d-exclude"),
    Case("avg_pool2d", [rand(1, 2, 8, 8)], {"kernel": [3], "stride": [2], "pad": [1],
                                            "ceil_mode": True},
         lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), id="avg_pool2d-ceil"),
    Case("avg_pool2d", [rand(1, 2, 8, 8)], {"kernel": [3], "stride": [2], "pad": [1],
                                            "ceil_mode": True, "count_include_pad": False},
         lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
         id="avg_pool2d-ceil-exclude"),
    Case("avg_pool2d", [rand(1, 2, 7, 6)], {"kernel": [2, 3], "stride": [1], "pad": [1, 0, 0, 2]},
         lambda x: F.avg_pool2d(_pad_nchw(x, [1, 0, 0, 2]), (2, 3), 1),
         id="avg_pool2d-asymmetric-pad"),
    Case("avg_pool1d", [rand(2, 3, 11)], {"kernel": [4], "stride": [3], "pad": [2]},
         lambda x: F.avg_pool1d(x, 4, 3, 2)),
    Case("adaptive_avg_pool2d", [rand(2, 3, 7, 5)], {"output_size": [3, 2]},
         lambda x: F.adaptive_avg_pool2d(x, (3, 2))),
    Case("global_avg_pool2d", [rand(2, 3, 7, 5)], {},
         lambda x: F.adaptive_avg_pool2d(x, 1)),
    Case("interpolate", [rand(1, 2, 4, 5)], {"scale": [2.0]},
         lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest")),
    Case("interpolate", [rand(1, 2, 4, 6)], {"scale": [1.5, 0.5]},
         lambda x: F.interpolate(x, scale_factor=(1.5, 0.5), mode="nearest"),
         id="interpolate-nearest-fractional"),
    Case("interpolate", [rand(1, 2, 4, 5)], {"size": [7, 3], "mode": "linear"},
         lambda x: F.interpolate(x, size=(7, 3), mode="bilinear")),
    Case("interpolate", [rand(1, 2, 4, 5)], {"size": [8, 9], "mode": "linear",
                                             "align_corners": True},
         lambda x: F.interpolate(x, size=(8, 9), mode="bilinear", align_corners=True),
         id="interpolate-align-corners"),
    Case("interpolate", [rand(2, 3, 6)], {"scale": [2.0], "mode": "linear"},
         lambda x: F.interpolate(x, scale_factor=2.0, mode="linear"), id="interpolate-1d"),
]

# normalization and softmax
CASES += [
    Case("batch_norm", [rand(2, 3, 4, 5), rand(3), pos(3), rand(3), rand(3)], {"eps": 1e-3},
         lambda x, m, v, g, b: F.batch_norm(x, m, v, g, b, False, eps=1e-3)),
    Case("batch_norm", [rand(4, 3), rand(3), pos(3)], {},
         lambda x, m, v: F.batch_norm(x, m, v, training=False), id="batch_norm-2d-noaffine"),
    Case("layer_norm", [rand(2, 5, 8), rand(8), rand(8)], {},
         lambda x, g, b: F.layer_norm(x, (8,), g, b)),
    Case("layer_norm", [rand(2, 5, 8), rand(5, 8)], {"axis": -2, "eps": 1e-3},
         lambda x, g: F.layer_norm(x, (5, 8), g, eps=1e-3), id="layer_norm-2axes"),
    Case("layer_norm", [rand(3, 6)], {}, lambda x: F.layer_norm(x, (6,)), id="layer_norm-plain"),
    Case("rms_norm", [rand(2, 5, 8), rand(8)], {},
         lambda x, g: F.rms_norm(x, (8,), g, 1e-6)),
    Case("rms_norm", [rand(2, 5, 8)], {"axis": 1, "eps": 1e-5},
         lambda x: F.rms_norm(x, (5, 8), eps=1e-5), id="rms_norm-2axes"),
    Case("group_norm", [rand(2, 6, 4, 3), rand(6), rand(6)], {"groups": 3},
         lambda x, g, b: F.group_norm(x, 3, g, b), tol=1e-4),
    Case("instance_norm", [rand(2, 3, 5, 4), rand(3), rand(3)], {},
         lambda x, g, b: F.instance_norm(x, weight=g, bias=b), tol=1e-4),
    Case("softmax", [rand(2, 3, 5, lo=-9, hi=9)], {}, lambda x: torch.softmax(x, -1)),
    Case("softmax", [rand(2, 3, 5)], {"axis": 1}, lambda x: torch.softmax(x, 1),
         id="softmax-axis1"),
    Case("log_softmax", [rand(4, 7)], {"axis": -1}, lambda x: torch.log_softmax(x, -1)),
]

# reductions
CASES += [
    Case("reduce_sum", [rand(2, 3, 4)], {"axes": [1], "keepdims": True},
         lambda x: x.sum(1, keepdim=True)),
    Case("reduce_sum", [rand(2, 3, 4)], {}, lambda x: x.sum(), id="reduce_sum-all"),
    Case("reduce_sum", [ints(3, 4, dtype=np.int32)], {"axes": [0]},
         lambda x: x.sum(0).to(torch.int32), id="reduce_sum-int"),
    Case("reduce_mean", [rand(2, 3, 4, 5)], {"axes": [-1, -2]},
         lambda x: x.mean((-1, -2)), id="reduce_mean-negative-axes"),
    Case("reduce_max", [rand(2, 3, 4)], {"axes": [0, 2], "keepdims": True},
         lambda x: x.amax((0, 2), keepdim=True)),
    Case("reduce_min", [ints(3, 4)], {"axes": [1]}, lambda x: x.amin(1)),
    Case("reduce_prod", [rand(3, 4, lo=0.5, hi=1.5)], {"axes": [-1]}, lambda x: x.prod(-1)),
    Case("argmax", [rand(3, 4, 5)], {"axis": 1, "keepdims": True},
         lambda x: x.argmax(1, keepdim=True)),
    Case("argmin", [rand(3, 4)], {"axis": -1}, lambda x: x.argmin(-1)),
    Case("cumsum", [rand(3, 4, 5)], {"axis": -2}, lambda x: x.cumsum(-2)),
    Case("cumsum", [ints(6, dtype=np.int32)], {"axis": 0}, lambda x: x.cumsum(0).int(),
         id="cumsum-int"),
]

# shape and data movement
CASES += [
    Case("reshape", [rand(2, 3, 4)], {"shape": [6, -1]}, lambda x: x.reshape(6, -1)),
    Case("reshape", [rand(2, 3, 4)], {"shape": [4, 1, 6]}, lambda x: x.reshape(4, 1, 6),
         id="reshape-static"),
    Case("flatten", [rand(2, 3, 4, 5)], {}, lambda x: torch.flatten(x, 1)),
    Case("flatten", [rand(2, 3, 4, 5)], {"axis": 1, "end_axis": 2},
         lambda x: torch.flatten(x, 1, 2), id="flatten-middle"),
    Case("transpose", [rand(2, 3, 4)], {"perm": [1, 2, 0]}, lambda x: x.permute(1, 2, 0)),
    Case("transpose", [rand(2, 3, 4)], {}, lambda x: x.permute(2, 1, 0), id="transpose-reverse"),
    Case("squeeze", [rand(1, 3, 1, 4)], {"axes": [-2]}, lambda x: x.squeeze(-2)),
    Case("squeeze", [rand(1, 3, 1, 4)], {}, lambda x: x.squeeze(), id="squeeze-all"),
    Case("unsqueeze", [rand(3, 4)], {"axes": [0, -1]},
         lambda x: x.unsqueeze(0).unsqueeze(-1)),
    Case("expand", [rand(2, 1, 4)], {"shape": [3, 2, 5, -1]}, lambda x: x.expand(3, 2, 5, -1)),
    Case("concat", [rand(2, 3), rand(2, 1), rand(2, 4)], {"axis": -1},
         lambda *xs: torch.cat(xs, -1)),
    Case("concat", [rand(1, 3), rand(2, 3)], {"axis": 0}, lambda *xs: torch.cat(xs, 0),
         id="concat-axis0"),
    Case("split", [rand(2, 6, 3)], {"axis": 1, "sizes": [1, 3, 2]},
         lambda x: torch.split(x, [1, 3, 2], 1)),
    Case("split", [rand(7, 2)], {"axis": 0, "sizes": [2, -1]},
         lambda x: torch.split(x, [2, 5], 0), id="split-rest"),
    Case("slice", [rand(4, 7, 3)], {"starts": [1, -6], "ends": [-1, INT64_MAX], "axes": [0, 1],
                                    "steps": [1, 2]},
         lambda x: x[1:-1, -6::2]),
    Case("slice", [rand(5, 6)], {"starts": [-1], "ends": [-INT64_MAX], "axes": [1],
                                 "steps": [-1]},
         lambda x: x.numpy()[:, ::-1], id="slice-reverse"),
    Case("slice", [rand(5, 6)], {"starts": [4, 10], "ends": [0, 2], "axes": [0, 1],
                                 "steps": [-2, -1]},
         lambda x: x.numpy()[4:0:-2, 10:2:-1], id="slice-negative-step-clamped"),
    Case("slice", [rand(5, 6)], {"starts": [-100, 3], "ends": [100, 3]},
         lambda x: x[:, 3:3], id="slice-clamp-empty"),
    Case("gather", [rand(5, 4, 3), ints(2, 3, lo=-4, hi=4)], {"axis": 1},
         lambda x, i: x[:, i]),
    Case("gather", [rand(5, 4), np.array(2)], {}, lambda x, i: x[2], id="gather-scalar-index"),
    Case("gather_elements", [rand(3, 4), ints(3, 5, lo=0, hi=4)], {"axis": 1},
         lambda x, i: torch.gather(x, 1, i)),
    Case("embedding", [rand(10, 4), ints(2, 3, lo=0, hi=10)], {},
         lambda w, i: F.embedding(i, w)),
    Case("pad", [rand(2, 3, 4)], {"pads": [0, 1, 2, 0, 2, 1], "value": 1.5},
         lambda x: F.pad(x, [2, 1, 1, 2], value=1.5)),
    Case("pad", [rand(1, 2, 4, 5)], {"pads": [0, 0, 1, 2, 0, 0, 3, 1], "mode": "reflect"},
         lambda x: F.pad(x, [2, 1, 1, 3], mode="reflect"), id="pad-reflect"),
    Case("pad", [rand(1, 2, 4, 5)], {"pads": [0, 0, 1, 2, 0, 0, 3, 1], "mode": "edge"},
         lambda x: F.pad(x, [2, 1, 1, 3], mode="replicate"), id="pad-edge"),
    Case("pad", [ints(2, 3, dtype=np.int32)], {"pads": [1, 0, 0, 1], "value": 7.0},
         lambda x: F.pad(x, [0, 1, 1, 0], value=7), id="pad-int"),
    Case("tile", [rand(2, 3)], {"repeats": [2, 3]}, lambda x: x.repeat(2, 3)),
    Case("shape", [rand(2, 3, 4)], {}, lambda x: torch.tensor(x.shape)),
]

# attention


def _sdpa_manual(q, k, v, mask=None, scale=None, causal=False):
    s = q @ k.transpose(-1, -2) * (scale or 1 / math.sqrt(q.shape[-1]))
    keep = torch.ones(s.shape[-2:], dtype=torch.bool)
    if causal:
        keep = torch.tril(keep)
    s = s.masked_fill(~keep, -math.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s, -1) @ v


SDPA = F.scaled_dot_product_attention
CASES += [
    Case("scaled_dot_product_attention", [rand(2, 3, 5, 8), rand(2, 3, 7, 8), rand(2, 3, 7, 6)],
         {}, SDPA),
    Case("scaled_dot_product_attention",
         [rand(2, 3, 5, 8), rand(2, 3, 7, 8), rand(2, 3, 7, 8), rand(5, 7)], {"scale": 0.5},
         lambda q, k, v, m: SDPA(q, k, v, m, scale=0.5), id="sdpa-float-mask"),
    Case("scaled_dot_product_attention",
         [rand(2, 3, 5, 8), rand(2, 3, 5, 8), rand(2, 3, 5, 8),
          np.tril(np.ones((5, 5), bool))[None, None] | bools(2, 1, 5, 5)], {},
         lambda q, k, v, m: SDPA(q, k, v, m), id="sdpa-bool-mask"),
    Case("scaled_dot_product_attention", [rand(1, 2, 6, 4), rand(1, 2, 6, 4), rand(1, 2, 6, 4)],
         {"causal": True}, lambda q, k, v: SDPA(q, k, v, is_causal=True), id="sdpa-causal"),
    Case("scaled_dot_product_attention",
         [rand(2, 4, 8), rand(2, 6, 8), rand(2, 6, 3), np.ones((2, 1, 6), bool)],
         {"causal": True},
         lambda q, k, v, m: _sdpa_manual(q, k, v, m, causal=True), id="sdpa-causal-and-mask"),
    Case("scaled_dot_product_attention", [rand(2, 4, 5, 8), rand(2, 1, 7, 8), rand(1, 7, 8)],
         {}, _sdpa_manual, id="sdpa-broadcast-batch"),
]


def _mha(heads: int, **kw) -> Callable:
    """torch's multi-head attention core: split [B, S, H*D] into heads, SDPA, merge."""
    def fn(q, k, v, mask=None):
        split = [t.unflatten(-1, (heads, -1)).transpose(-3, -2) for t in (q, k, v)]
        return SDPA(*split, mask, **kw).transpose(-3, -2).flatten(-2)
    return fn


CASES += [
    Case("multi_head_attention", [rand(2, 5, 24), rand(2, 7, 24), rand(2, 7, 12)],
         {"num_heads": 4}, _mha(4)),
    Case("multi_head_attention",
         [rand(2, 6, 16), rand(2, 6, 16), rand(2, 6, 16), rand(2, 1, 6, 6)],
         {"num_heads": 2, "scale": 0.5}, _mha(2, scale=0.5), id="mha-float-mask"),
    Case("multi_head_attention",
         [rand(1, 6, 8), rand(1, 6, 8), rand(1, 6, 8),
          np.tril(np.ones((6, 6), bool))[None, None] | bools(1, 2, 6, 6)],
         {"num_heads": 2}, _mha(2), id="mha-bool-mask-per-head"),
    Case("multi_head_attention", [rand(1, 6, 12), rand(1, 6, 12), rand(1, 6, 12)],
         {"num_heads": 3, "causal": True}, _mha(3, is_causal=True), id="mha-causal"),
]

# quantization
_QX = np.concatenate([rand(3, 4, 5, lo=-3, hi=3).ravel(), [0.25, 0.75, -0.25, 40, -40]])
_QX = _QX.astype(np.float32)
CASES += [
    Case("quantize", [_QX], {"scale": [0.5], "zero_point": [4]},
         lambda x: torch.quantize_per_tensor(x, 0.5, 4, torch.qint8).int_repr()),
    # ONNX order: round(x / scale) then add the zero point (torch's fbgemm rounds after adding,
    # which differs at exact ties when the zero point is odd)
    Case("quantize", [np.array([0.25, 0.75, -0.25], np.float32)], {"scale": [0.5],
                                                                  "zero_point": [3]},
         lambda x: torch.tensor([3, 5, 3], dtype=torch.int8), id="quantize-ties-onnx-order"),
    Case("quantize", [_QX], {"scale": [0.03], "zero_point": [128], "dtype": "u8"},
         lambda x: torch.quantize_per_tensor(x, 0.03, 128, torch.quint8).int_repr(),
         id="quantize-u8-saturate"),
    Case("quantize", [_QX], {"scale": [1e-3], "dtype": "i32"},
         lambda x: torch.quantize_per_tensor(x, 1e-3, 0, torch.qint32).int_repr(),
         id="quantize-i32"),
    Case("quantize", [rand(2, 3, 4, lo=-3, hi=3)],
         {"scale": [0.02, 0.05, 0.1], "zero_point": [0, -3, 5], "axis": [-2]},
         lambda x: torch.quantize_per_channel(
             x, torch.tensor([0.02, 0.05, 0.1], dtype=torch.float64), torch.tensor([0, -3, 5]),
             1, torch.qint8).int_repr(),
         id="quantize-per-channel"),
    Case("quantize", [np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32)], {"scale": [1.0]},
         lambda x: torch.tensor([0, 2, 2, 0, -2, -2], dtype=torch.int8), id="quantize-half-even"),
    Case("dequantize", [ints(3, 4, lo=-128, hi=128, dtype=np.int8)], {},
         lambda q: torch._make_per_tensor_quantized_tensor(q, 0.1, -4).dequantize(),
         types=[TensorType(DType.i8, (3, 4), QuantParams(np.float32(0.1), np.int64(-4)))]),
    Case("dequantize", [ints(3, 2, lo=0, hi=256, dtype=np.uint8)], {},
         lambda q: torch._make_per_channel_quantized_tensor(
             q, torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([128, 100]),
             1).dequantize(),
         types=[TensorType(DType.u8, (3, 2), QuantParams([0.5, 0.25], [128, 100], axis=1))],
         id="dequantize-per-channel"),
]

# quantized heavy ops (lower-int8): the fp32 op of the dequantized inputs, then quantize
_QW = ints(6, 4, 3, 3, lo=-127, hi=128, dtype=np.int8)
_QW_T = TensorType(DType.i8, (6, 4, 3, 3), QuantParams(np.linspace(0.01, 0.03, 6), [0] * 6, 0))
_QA = ints(1, 4, 5, 5, lo=0, hi=256, dtype=np.uint8)
_QA_T = TensorType(DType.u8, (1, 4, 5, 5), QuantParams(np.float32(0.02), np.int64(100)))
_QA2_T = TensorType(DType.u8, (5, 5), _QA_T.quant)
_QW_LIN = ints(6, 5, lo=-127, hi=128, dtype=np.int8)


def _deq(q, t: TensorType) -> torch.Tensor:
    qp, shape = t.quant, [1] * t.rank
    if qp.axis is not None:
        shape[qp.axis] = -1
    s = torch.tensor(np.asarray(qp.scale, np.float32)).reshape(shape)
    return (q.long() - torch.tensor(qp.zero_point).reshape(shape)).float() * s


def _requant(y, scale, zp, lo, hi, dtype):
    return (torch.round(y / torch.tensor(scale, dtype=torch.float32)) + zp).clamp(lo, hi).to(dtype)


CASES += [
    Case("qconv2d", [_QA, _QW, rand(6)], {"pad": [1], "activation": "relu",
                                          "out_dtype": "u8", "out_scale": 0.05,
                                          "out_zero_point": 3},
         lambda a, w, b: _requant(F.relu(F.conv2d(_deq(a, _QA_T), _deq(w, _QW_T), b,
                                                  padding=1)), 0.05, 3, 0, 255, torch.uint8),
         types=[_QA_T, _QW_T, f32(6)], id="qconv2d-relu-u8"),
    Case("qconv2d", [_QA, _QW], {}, lambda a, w: F.conv2d(_deq(a, _QA_T), _deq(w, _QW_T)),
         types=[_QA_T, _QW_T], tol=1e-4, id="qconv2d-f32-out"),
    Case("qlinear", [_QA[0, 0], _QW_LIN], {"out_dtype": "i8", "out_scale": 0.02},
         lambda a, w: _requant(F.linear(_deq(a, _QA2_T), w.float() * 0.015), 0.02, 0, -128, 127,
                               torch.int8),
         types=[_QA2_T, TensorType(DType.i8, (6, 5), QuantParams(np.float32(0.015),
                                                                  np.int64(0)))],
         id="qlinear-i8"),
    Case("qlinear_dynamic", [rand(3, 5), _QW_LIN, rand(6)], {"activation": "relu"},
         lambda x, w, b: F.relu(F.linear(torch.from_numpy(dynamic_row_fake_quant(x.numpy())),
                                         w.float() * 0.015, b)),
         types=[f32(3, 5), TensorType(DType.i8, (6, 5), QuantParams(np.float32(0.015),
                                                                    np.int64(0))), f32(6)],
         tol=1e-5, id="qlinear_dynamic-relu"),
    Case("qmatmul", [_QA[0, 0], _QA[0, 1]], {},
         lambda a, b: _deq(a, _QA2_T) @ _deq(b, _QA2_T), types=[_QA2_T] * 2, tol=1e-4,
         id="qmatmul-activations"),
]

# bf16 layers (docs/bf16.md): x rounded to bf16, the bf16 weight, f32 accumulation and output;
# the torch backend's ATen bf16 kernels also round the layer's output to bf16 (2**-9 relative)
_W16 = rand(6, 4, 3, 3).astype(ml_dtypes.bfloat16)
_WL16 = rand(5, 6).astype(ml_dtypes.bfloat16)


def _b16(x):
    return x.to(torch.bfloat16).float()


CASES += [
    Case("bf16_conv2d", [rand(1, 4, 6, 6), _W16, rand(6), rand(1, 6, 6, 6)],
         {"pad": [1], "activation": "relu", "residual": "pre"},
         lambda x, w, b, r: F.relu(F.conv2d(_b16(x), w.float(), b, padding=1) + r), tol=3e-2,
         id="bf16_conv2d-residual-relu"),
    Case("bf16_linear", [rand(3, 6), _WL16, rand(5)], {"activation": "gelu"},
         lambda x, w, b: F.gelu(F.linear(_b16(x), w.float(), b)), tol=3e-2, id="bf16_linear"),
    Case("bf16_matmul", [rand(2, 3, 6), _WL16.T.copy()], {},
         lambda a, b: _b16(a) @ b.float(), tol=3e-2, id="bf16_matmul"),
]


# fused heavy ops (fuse-epilogue): op + bias, then act(y + r), act(y) + r or act(y)
CASES += [
    Case("fused_conv2d", [rand(2, 3, 6, 6), rand(4, 3, 3, 3), rand(4), rand(2, 4, 6, 6)],
         {"pad": [1], "activation": "relu", "residual": "pre"},
         lambda x, w, b, r: F.relu(F.conv2d(x, w, b, padding=1) + r), id="fused_conv2d-resnet"),
    Case("fused_conv2d", [rand(2, 4, 6, 6), rand(4, 1, 3, 3), rand(4)],
         {"groups": 4, "stride": [2], "activation": "clip", "alpha": 0.0, "beta": 6.0},
         lambda x, w, b: F.relu6(F.conv2d(x, w, b, stride=2, groups=4)),
         id="fused_conv2d-depthwise-relu6"),
    Case("fused_conv2d", [rand(1, 3, 5, 5), rand(2, 3, 1, 1), rand(2), rand(1, 2, 5, 5)],
         {"activation": "gelu_tanh", "residual": "post"},
         lambda x, w, b, r: F.gelu(F.conv2d(x, w, b), approximate="tanh") + r,
         id="fused_conv2d-post-residual"),
    Case("fused_conv1d", [rand(2, 3, 9), rand(5, 3, 3), rand(5)],
         {"activation": "leaky_relu", "alpha": 0.1},
         lambda x, w, b: F.leaky_relu(F.conv1d(x, w, b), 0.1)),
    Case("fused_linear", [rand(2, 3, 8), rand(6, 8), rand(6)], {"activation": "gelu"},
         lambda x, w, b: F.gelu(F.linear(x, w, b))),
    Case("fused_linear", [rand(4, 8), rand(6, 8), rand(6), rand(4, 6)],
         {"activation": "silu", "residual": "pre"},
         lambda x, w, b, r: F.silu(F.linear(x, w, b) + r), id="fused_linear-residual"),
    Case("fused_matmul", [rand(2, 5, 8), rand(8, 3), rand(3)], {"activation": "hardswish"},
         lambda a, b, c: F.hardswish(a @ b + c)),
    Case("fused_matmul", [rand(2, 5, 8), rand(2, 8, 3)], {"activation": "sigmoid"},
         lambda a, b: torch.sigmoid(a @ b), id="fused_matmul-no-bias"),
    Case("fused_matmul", [rand(5, 8), rand(8, 3), rand(3), rand(5, 3)],
         {"activation": "tanh", "residual": "post"},
         lambda a, b, c, r: torch.tanh(a @ b + c) + r, id="fused_matmul-post-residual"),
]


def _body(text: str) -> Graph:
    from rtinfer.ir.parser import parse

    return parse(text)


# fuse-elementwise: a subgraph as one node (two results: an intermediate used outside stays one)
CASES += [
    Case("fused_elementwise", [rand(2, 3, 4), rand(3, 1)],
         {"body": _body("""
             func @body(%a: f32[2,3,4], %b: f32[3,1]) -> (f32[2,3,4], f32[2,3,4]) {
               %c = const f32[] dense<0.5>
               %m = mul(%a, %b)
               %s = add(%m, %c)
               %r = relu(%s)
               return %r, %m
             }""")},
         lambda a, b: [F.relu(a * b + 0.5), a * b]),
]

# layout="NHWC": x and the result channels last, weights and per-channel parameters unchanged
_NHWC = (0, 2, 3, 1)
CASES += [
    Case("conv2d", [rand(2, 6, 6, 3), rand(4, 3, 3, 3), rand(4)],
         {"pad": [1], "stride": [2], "layout": "NHWC"},
         lambda x, w, b: F.conv2d(x.permute(0, 3, 1, 2), w, b, stride=2, padding=1)
         .permute(*_NHWC), id="conv2d-nhwc"),
    Case("fused_conv2d", [rand(2, 6, 6, 3), rand(4, 3, 3, 3), rand(4), rand(2, 6, 6, 4)],
         {"pad": [1], "activation": "relu", "residual": "pre", "layout": "NHWC"},
         lambda x, w, b, r: F.relu(F.conv2d(x.permute(0, 3, 1, 2), w, b, padding=1)
                                   .permute(*_NHWC) + r), id="fused_conv2d-nhwc"),
    Case("max_pool2d", [rand(2, 6, 6, 3)], {"kernel": [2], "layout": "NHWC"},
         lambda x: F.max_pool2d(x.permute(0, 3, 1, 2), 2).permute(*_NHWC), id="max_pool2d-nhwc"),
    Case("avg_pool2d", [rand(2, 6, 6, 3)], {"kernel": [3], "stride": [1], "layout": "NHWC"},
         lambda x: F.avg_pool2d(x.permute(0, 3, 1, 2), 3, 1).permute(*_NHWC),
         id="avg_pool2d-nhwc"),
    Case("global_avg_pool2d", [rand(2, 5, 4, 3)], {"layout": "NHWC"},
         lambda x: x.mean(dim=(1, 2), keepdim=True), id="global_avg_pool2d-nhwc"),
    Case("adaptive_avg_pool2d", [rand(2, 6, 6, 3)], {"output_size": [2, 3], "layout": "NHWC"},
         lambda x: F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), (2, 3)).permute(*_NHWC),
         id="adaptive_avg_pool2d-nhwc"),
    Case("batch_norm", [rand(2, 4, 4, 3), rand(3), pos(3), rand(3), rand(3)],
         {"eps": 1e-3, "layout": "NHWC"},
         lambda x, m, v, g, b: F.batch_norm(x.permute(0, 3, 1, 2), m, v, g, b, eps=1e-3)
         .permute(*_NHWC), id="batch_norm-nhwc"),
]


def _onnx_resize(x: torch.Tensor, sizes, scales=None, roi=None, **attrs) -> np.ndarray:
    """ONNX's own reference Resize (onnx.reference), the oracle where torch has no equivalent."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    feeds = {"x": x.numpy(), "roi": np.asarray(roi or [], np.float32),
             "scales": np.asarray(scales or [], np.float32)}
    if sizes is not None:
        feeds["sizes"] = np.asarray(sizes, np.int64)
    node = helper.make_node("Resize", list(feeds), ["y"], **attrs)
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
        for k, v in feeds.items()], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(model).run(None, feeds)[0]


# trigonometry, bitwise ops, indexing, scatter, einsum, resize, 3-d windows (ONNX coverage)
CASES += [Case(n, [rand(3, 5, lo=-0.9, hi=0.9)], {}, fn) for n, fn in [
    ("tan", torch.tan), ("asin", torch.asin), ("acos", torch.acos), ("atan", torch.atan),
    ("sinh", torch.sinh), ("cosh", torch.cosh), ("asinh", torch.asinh),
    ("atanh", torch.atanh)]]
U8 = np.uint8
CASES += [
    Case("acosh", [rand(3, 5, lo=1.0, hi=4.0)], {}, torch.acosh),
    Case("bitwise_not", [ints(3, 5, lo=-100, hi=100, dtype=np.int32)], {}, torch.bitwise_not),
    Case("bitwise_and", [ints(3, 5, lo=0, hi=255, dtype=U8), ints(5, lo=0, hi=255, dtype=U8)],
         {}, torch.bitwise_and),
    Case("bitwise_or", [ints(3, 5, lo=-99, hi=99), ints(5, lo=-99, hi=99)], {},
         torch.bitwise_or),
    Case("bitwise_xor", [ints(3, 5, lo=0, hi=255, dtype=U8), ints(3, 5, lo=0, hi=255, dtype=U8)],
         {}, torch.bitwise_xor),
    Case("shift_left", [ints(3, 5, lo=0, hi=255, dtype=U8), ints(5, lo=0, hi=8, dtype=U8)], {},
         torch.bitwise_left_shift),
    Case("shift_right", [ints(3, 5, lo=0, hi=255, dtype=U8), ints(5, lo=0, hi=8, dtype=U8)], {},
         torch.bitwise_right_shift),
    Case("cumprod", [rand(3, 5, lo=0.5, hi=1.5)], {"axis": 1}, lambda x: torch.cumprod(x, 1)),
    Case("topk", [rand(4, 7)], {"k": 3}, lambda x: list(torch.topk(x, 3))),
    # an ATen op the table lacks, run through torch (two outputs)
    Case("aten_call", [rand(4, 7)], {"target": "aten.kthvalue.default",
                                     "args": '[[{"in": 0}, 2], {}]', "in_types": ["f32[4,7]"],
                                     "out_types": ["f32[4]", "i64[4]"]},
         lambda x: list(torch.kthvalue(x, 2))),
    Case("topk", [rand(6, 3)], {"k": 2, "axis": 0, "largest": False},
         lambda x: list(torch.topk(x, 2, dim=0, largest=False)), id="topk-smallest"),
    Case("hardmax", [rand(3, 6)], {"axis": 1},
         lambda x: F.one_hot(x.argmax(1), 6).to(x.dtype)),
    Case("scatter_elements", [rand(4, 5), np.array([[1, 0, 3], [2, 2, 0]]), rand(2, 3)],
         {"axis": 0}, lambda x, i, u: x.scatter(0, i, u)),
    Case("scatter_elements", [rand(4, 5), np.array([[1, 1], [4, 0]]), rand(2, 2)],
         {"axis": 1, "reduction": "add"},
         lambda x, i, u: x.scatter_add(1, i, u), id="scatter_elements-add"),
    Case("scatter_nd", [rand(4, 3), np.array([[2], [0]]), rand(2, 3)], {},
         lambda x, i, u: x.index_put((i[:, 0],), u)),
    Case("scatter_nd", [rand(4, 3), np.array([[1, 2], [1, 2], [3, 0]]), rand(3)],
         {"reduction": "add"}, lambda x, i, u: x.index_put((i[:, 0], i[:, 1]), u, accumulate=True),
         id="scatter_nd-add"),
    Case("gather_nd", [rand(4, 3, 2), np.array([[1, 2], [3, 0]])], {},
         lambda x, i: x[i[:, 0], i[:, 1]]),
    Case("gather_nd", [rand(2, 3, 4), np.array([[1], [2]])], {"batch_dims": 1},
         lambda x, i: x[torch.arange(2), i[:, 0]], id="gather_nd-batch"),
    Case("einsum", [rand(2, 3, 4), rand(2, 4, 5)], {"equation": "bij,bjk->bik"},
         lambda a, b: torch.einsum("bij,bjk->bik", a, b)),
    Case("einsum", [rand(3, 3)], {"equation": "ii"}, lambda a: torch.einsum("ii", a),
         id="einsum-trace"),
    Case("einsum", [rand(2, 3, 4), rand(4)], {"equation": "...j,j"},
         lambda a, b: torch.einsum("...j,j", a, b), id="einsum-ellipsis"),
    Case("resize", [rand(1, 2, 3, 4)], {"scales": [1.0, 1.0, 2.0, 2.0],
                                        "coordinate_transformation_mode": "asymmetric",
                                        "nearest_mode": "floor"},
         lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest")),
    Case("resize", [rand(1, 2, 4, 5)], {"sizes": [1, 2, 7, 3], "mode": "linear",
                                        "coordinate_transformation_mode": "pytorch_half_pixel"},
         lambda x: F.interpolate(x, size=(7, 3), mode="bilinear"), id="resize-linear-sizes"),
    Case("resize", [rand(1, 2, 4, 5)], {"sizes": [1, 2, 8, 9], "mode": "linear",
                                        "coordinate_transformation_mode": "align_corners"},
         lambda x: F.interpolate(x, size=(8, 9), mode="bilinear", align_corners=True),
         id="resize-align-corners"),
    Case("resize", [rand(1, 2, 5, 6)], {"scales": [1.0, 1.0, 2.0, 2.0], "mode": "cubic"},
         lambda x: F.interpolate(x, scale_factor=2.0, mode="bicubic"), id="resize-cubic"),
    Case("resize", [rand(1, 2, 8, 8)], {"sizes": [1, 2, 3, 5], "mode": "linear",
                                        "antialias": True},
         lambda x: _onnx_resize(x, [1, 2, 3, 5], mode="linear", antialias=1),
         id="resize-antialias"),  # torch's antialias kernel is PIL's, not ONNX's
    Case("resize", [rand(1, 1, 4, 5)], {"sizes": [1, 1, 3, 3], "mode": "linear",
                                        "coordinate_transformation_mode": "tf_crop_and_resize",
                                        "roi": [0, 0, 0.2, 0.1, 1, 1, 0.9, 0.7],
                                        "extrapolation_value": 10.0},
         lambda x: _onnx_resize(x, [1, 1, 3, 3], None, [0, 0, 0.2, 0.1, 1, 1, 0.9, 0.7],
                                mode="linear", extrapolation_value=10.0,
                                coordinate_transformation_mode="tf_crop_and_resize"),
         id="resize-tf-crop"),
    Case("conv3d", [rand(2, 3, 5, 6, 4), rand(4, 3, 3, 2, 3), rand(4)],
         {"stride": [1, 2, 1], "pad": [1, 0, 1]},
         lambda x, w, b: F.conv3d(x, w, b, (1, 2, 1), (1, 0, 1))),
    Case("conv_transpose3d", [rand(1, 4, 3, 4, 3), rand(4, 2, 2, 3, 2), rand(2)],
         {"stride": [2]}, lambda x, w, b: F.conv_transpose3d(x, w, b, 2)),
    Case("max_pool3d", [rand(2, 3, 5, 6, 7)], {"kernel": [2, 3, 2], "stride": [2],
                                               "pad": [1, 1, 0, 1, 1, 0]},
         lambda x: F.max_pool3d(x, (2, 3, 2), 2, (1, 1, 0))),
    Case("avg_pool3d", [rand(2, 3, 5, 6, 7)], {"kernel": [3], "stride": [2], "pad": [1],
                                               "count_include_pad": False},
         lambda x: F.avg_pool3d(x, 3, 2, 1, count_include_pad=False)),
]


def _case_id(c: Case) -> str:
    return c.id or c.op


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_op_matches_torch(case: Case):
    run_case(case)


def test_every_op_has_a_case_and_a_doc():
    # the table's own ops (other tests may declare throwaway ops of their own)
    table = [o for o in OPS if o.infer.__module__.startswith("rtinfer.ir.ops.")]
    covered = {c.op for c in CASES} | {"const"}
    assert sorted({o.name for o in table} - covered) == []
    assert len(table) >= 80
    for opdef in table:
        assert opdef.doc.strip(), f"{opdef.name} has no doc"
        assert opdef.traits or opdef.name == "const", f"{opdef.name} has no traits"


def test_elementwise_channels_skip_broadcast_dims():
    groups = get_op("add").channel_groups([f32(2, 1, 4), f32(3, 1)], {})
    assert groups == [frozenset({("out", 0, 0), ("in", 0, 0)}),
                      frozenset({("out", 0, 1), ("in", 1, 0)}),
                      frozenset({("out", 0, 2), ("in", 0, 2)})]


def test_conv_channel_groups():
    conv = get_op("conv2d")
    x, w, b = f32(1, 3, 8, 8), f32(8, 3, 3, 3), f32(8)
    groups = conv.channel_groups([x, w, b], conv.complete_attrs({}))
    assert frozenset({("in", 0, 1), ("in", 1, 1)}) in groups
    assert frozenset({("in", 1, 0), ("in", 2, 0), ("out", 0, 1)}) in groups
    dw = conv.channel_groups([f32(1, 6, 8, 8), f32(6, 1, 3, 3)],
                             conv.complete_attrs({"groups": 6}))
    assert frozenset({("in", 0, 1), ("in", 1, 0), ("out", 0, 1)}) in dw
    lin = get_op("linear").channel_groups([f32(2, 4), f32(5, 4), f32(5)], {})
    assert frozenset({("in", 0, 1), ("in", 1, 1)}) in lin
    assert frozenset({("in", 1, 0), ("in", 2, 0), ("out", 0, 1)}) in lin


def test_flatten_channels_follow_unit_spatial_dims():
    # [N, C, 1, 1] -> [N, C]: channel axis 1 survives the flatten (the CNN head pattern)
    fl = get_op("flatten")
    assert frozenset({("in", 0, 1), ("out", 0, 1)}) in fl.channel_groups(
        [f32(2, 8, 1, 1)], fl.complete_attrs({}))
    assert fl.channel_groups([f32(2, 8, 3, 3)], fl.complete_attrs({})) == [
        frozenset({("in", 0, 0), ("out", 0, 0)})]


# -- symbolic shapes --------------------------------------------------------------------------

SYMBOLIC = [
    ("reshape", [f32(B, S, 384)], {"shape": [B * S, 384]}, [f32(B * S, 384)]),
    ("reshape", [f32(B, S, 384)], {"shape": [-1, 384]}, [f32(B * S, 384)]),
    ("reshape", [f32(B, S, 384)], {"shape": [B, S, 12, -1]}, [f32(B, S, 12, 32)]),
    ("reshape", [f32(B * S, 384)], {"shape": [B, -1, 384]}, [f32(B, S, 384)]),
    ("flatten", [f32(B, 3, 4)], {}, [f32(B, 12)]),
    ("flatten", [f32(B, S, 4)], {"axis": 0}, [f32(4 * B * S)]),
    ("matmul", [f32(B, S, 64), f32(64, 32)], {}, [f32(B, S, 32)]),
    ("matmul", [f32(B, 12, S, 64), f32(B, 12, 64, S)], {}, [f32(B, 12, S, S)]),
    ("linear", [f32(B, S, 64), f32(32, 64)], {}, [f32(B, S, 32)]),
    ("conv2d", [f32(B, 3, H, W), f32(8, 3, 3, 3)], {"pad": [1]}, [f32(B, 8, H, W)]),
    ("conv2d", [f32(B, 3, H, W), f32(8, 3, 3, 3)], {"stride": [2], "pad": [1]},
     [f32(B, 8, sympy.floor((H - 1) / 2) + 1, sympy.floor((W - 1) / 2) + 1)]),
    ("max_pool2d", [f32(B, 16, H, W)], {"kernel": [2]},
     [f32(B, 16, sympy.floor(H / 2), sympy.floor(W / 2))]),
    ("global_avg_pool2d", [f32(B, 16, H, W)], {}, [f32(B, 16, 1, 1)]),
    ("interpolate", [f32(B, 3, H, W)], {"scale": [2.0]}, [f32(B, 3, 2 * H, 2 * W)]),
    ("resize", [f32(B, 3, H, W)], {"scales": [1.0, 1.0, 2.0, 0.5]},
     [f32(B, 3, 2 * H, sympy.floor(W / 2))]),
    ("einsum", [f32(B, S, 8), f32(8, 4)], {"equation": "bsk,kn->bsn"}, [f32(B, S, 4)]),
    ("gather_nd", [f32(B, 5, 8), TensorType(DType.i64, (B, 3, 1))], {"batch_dims": 1},
     [f32(B, 3, 8)]),
    ("reduce_mean", [f32(B, S, 64)], {"axes": [-1], "keepdims": True}, [f32(B, S, 1)]),
    ("reduce_sum", [f32(B, S, 64)], {"axes": [0, 1]}, [f32(64)]),
    ("argmax", [f32(B, S, 10)], {"axis": -1}, [TensorType(DType.i64, (B, S))]),
    ("transpose", [f32(B, S, 12, 64)], {"perm": [0, 2, 1, 3]}, [f32(B, 12, S, 64)]),
    ("concat", [f32(B, S, 4), f32(B, S, 6)], {"axis": -1}, [f32(B, S, 10)]),
    ("concat", [f32(B, S, 4), f32(B, 1, 4)], {"axis": 1}, [f32(B, S + 1, 4)]),
    ("split", [f32(S, 4)], {"axis": 0, "sizes": [2, -1]}, [f32(2, 4), f32(S - 2, 4)]),
    ("slice", [f32(B, S, 8)], {"starts": [0], "ends": [1], "axes": [1]}, [f32(B, 1, 8)]),
    ("slice", [f32(B, S, 8)], {"starts": [1], "ends": [INT64_MAX], "axes": [1]},
     [f32(B, S - 1, 8)]),
    ("slice", [f32(B, S, 8)], {"starts": [0], "ends": [-1], "axes": [-2]}, [f32(B, S - 1, 8)]),
    ("slice", [f32(B, S, 8)], {"starts": [1], "ends": [-1], "axes": [1]}, [f32(B, S - 2, 8)]),
    ("slice", [f32(B, S, 8)], {"starts": [0], "ends": [5], "axes": [1]}, [f32(B, 5, 8)]),
    ("slice", [f32(S)], {"starts": [-1], "ends": [-INT64_MAX], "steps": [-2]},
     [f32(sympy.ceiling(S / 2))]),
    ("expand", [f32(1, S, 1)], {"shape": [B, -1, 4]}, [f32(B, S, 4)]),
    ("unsqueeze", [f32(B, S)], {"axes": [1]}, [f32(B, 1, S)]),
    ("squeeze", [f32(B, 1, S)], {}, [f32(B, S)]),
    ("softmax", [f32(B, 12, S, S)], {}, [f32(B, 12, S, S)]),
    ("layer_norm", [f32(B, S, 64), f32(64), f32(64)], {}, [f32(B, S, 64)]),
    ("scaled_dot_product_attention", [f32(B, 12, S, 64)] * 3, {}, [f32(B, 12, S, 64)]),
    ("multi_head_attention", [f32(B, S, 384)] * 3, {"num_heads": 12}, [f32(B, S, 384)]),
    ("multi_head_attention", [f32(B, S, 12 * H)] * 3 + [TensorType(DType.bool, (B, 1, 1, S))],
     {"num_heads": 12}, [f32(B, S, 12 * H)]),
    ("embedding", [f32(1000, 64), TensorType(DType.i64, (B, S))], {}, [f32(B, S, 64)]),
    ("gather", [f32(B, S, 64), TensorType(DType.i64, ())], {"axis": 1}, [f32(B, 64)]),
    ("pad", [f32(B, 3, H, W)], {"pads": [0, 0, 1, 1, 0, 0, 1, 1]}, [f32(B, 3, H + 2, W + 2)]),
    ("tile", [f32(B, 2)], {"repeats": [1, 3]}, [f32(B, 6)]),
    ("shape", [f32(B, 3)], {}, [TensorType(DType.i64, (2,))]),
    ("add", [f32(B, 1, 8), f32(S, 1)], {}, [f32(B, S, 8)]),
    ("conv_transpose2d", [f32(B, 4, H, W), f32(4, 2, 2, 2)], {"stride": [2]},
     [f32(B, 2, 2 * H, 2 * W)]),
]


@pytest.mark.parametrize("op,ins,attrs,expected", SYMBOLIC,
                         ids=[f"{s[0]}-{i}" for i, s in enumerate(SYMBOLIC)])
def test_symbolic_shape_inference(op, ins, attrs, expected):
    opdef = get_op(op)
    out = opdef.infer_types(ins, opdef.complete_attrs(attrs))
    assert out == expected
    check_channels(opdef, ins, out, opdef.complete_attrs(attrs))


def test_symbolic_shape_attrs_bind_from_input_types():
    # shape=[B, S, 12, 32] evaluates once the input types bind B and S to the array's sizes
    reshape = get_op("reshape")
    attrs = reshape.complete_attrs({"shape": [B, S, 12, 32]})
    x = rand(2, 5, 384)
    (y,) = reshape.evaluate([x], attrs, in_types=[f32(B, S, 384)])
    assert y.shape == (2, 5, 12, 32)
    (y,) = reshape.evaluate([x], reshape.complete_attrs({"shape": [B * S, -1]}),
                            in_types=[f32(B, S, 384)])
    assert y.shape == (10, 384)
    with pytest.raises(IRError, match="unknown dims"):
        reshape.evaluate([x], attrs)
    # from [B*S, 384] only bindings the caller knows (dims=) can split B*S
    (y,) = reshape.evaluate([x.reshape(10, 384)], attrs, in_types=[f32(B * S, 384)],
                            dims={B: 2, "S": 5})
    assert y.shape == (2, 5, 12, 32)


# -- errors -----------------------------------------------------------------------------------

I8 = TensorType(DType.i8, (2, 3), QuantParams(np.float32(0.1), np.int64(0)))
ERRORS = [
    ("conv2d", [f32(1, 3, 8, 8), f32(8, 4, 3, 3)], {}, "x has 3 channels but weight"),
    ("conv2d", [f32(1, 4, 8, 8), f32(5, 2, 3, 3)], {"groups": 2}, "do not split into 2 groups"),
    ("conv2d", [f32(3, 8, 8), f32(8, 3, 3, 3)], {}, "x .* must have rank 4"),
    ("conv2d", [f32(1, 3, 8, 8), f32(8, 3, 3, 3), f32(4)], {}, "bias must be"),
    ("conv2d", [f32(1, 3, 2, 2), f32(8, 3, 3, 3)], {}, "does not fit"),
    ("conv2d", [f32(1, 3, 8, 8), f32(8, 3, 3, 3)], {"stride": [1, 1, 1]}, "stride needs"),
    ("conv_transpose2d", [f32(1, 3, 8, 8), f32(4, 2, 3, 3)], {}, "x has 3 channels"),
    ("conv_transpose2d", [f32(1, 4, 8, 8), f32(4, 2, 3, 3)], {"output_padding": [1]},
     "output_padding"),
    ("matmul", [f32(2, 3), f32(4, 5)], {}, r"contracted dims differ"),
    ("matmul", [f32(2, 3), f32()], {}, "rank >= 1"),
    ("matmul", [f32(2, 2, 3), f32(3, 3, 4)], {}, "do not broadcast"),
    ("bmm", [f32(2, 3), f32(2, 3, 4)], {}, "must have rank 3"),
    ("linear", [f32(2, 4), f32(5, 3)], {}, "4 features but weight"),
    ("softmax", [f32(2, 3)], {"axis": 2}, "axis 2 out of range for rank 2"),
    ("reduce_sum", [f32(2, 3)], {"axes": [-3]}, "axis -3 out of range"),
    ("reduce_sum", [f32(2, 3)], {"axes": [1, -1]}, "repeated axis"),
    ("argmax", [f32(2, 3)], {"axis": 5}, "axis 5 out of range"),
    ("transpose", [f32(2, 3, 4)], {"perm": [0, 0, 1]}, "not a permutation"),
    ("concat", [f32(2, 3), f32(3, 3)], {"axis": 1}, "differ off the concat axis"),
    ("concat", [f32(2, 3), f32(2, 3, 1)], {"axis": 0}, "share one rank"),
    ("reshape", [f32(2, 3)], {"shape": [4, 2]}, "cannot reshape"),
    ("reshape", [f32(B, 6)], {"shape": [-1, 4]}, "not a multiple"),
    ("reshape", [f32(2, 6)], {"shape": [-1, -1]}, "at most one -1"),
    ("squeeze", [f32(1, 3)], {"axes": [1]}, "cannot squeeze axis 1"),
    ("expand", [f32(2, 3)], {"shape": [4, 3, 3]}, "neither 1 nor"),
    ("split", [f32(5, 2)], {"axis": 0, "sizes": [2, 2]}, "add up to 4"),
    ("slice", [f32(4)], {"starts": [0], "ends": [2], "steps": [0]}, "non-zero"),
    ("gather", [f32(4, 3), f32(2)], {}, "indices must be i32 or i64"),
    ("gather_elements", [f32(4, 3), TensorType(DType.i64, (2,))], {}, "rank of x"),
    ("pad", [f32(2, 3)], {"pads": [1, 1]}, "pads must be 4"),
    ("pad", [f32(2, 3)], {"pads": [0, 3, 0, 0], "mode": "reflect"}, "reflect pad"),
    ("tile", [f32(2, 3)], {"repeats": [2]}, "repeats must be 2"),
    ("add", [f32(2, 3), f32(4)], {}, "do not broadcast"),
    ("add", [f32(2, 3), TensorType(DType.i32, (2, 3))], {}, "share one dtype"),
    ("add", [I8, I8], {}, "quantized; dequantize first"),
    ("relu", [TensorType(DType.i32, (2,))], {}, "must be a float tensor"),
    ("neg", [TensorType(DType.bool, (2,))], {}, "must be numeric"),
    ("logical_and", [f32(2), f32(2)], {}, "must be bool"),
    ("where", [f32(2), f32(2), f32(2)], {}, "cond must be bool"),
    ("batch_norm", [f32(2, 3, 4), f32(4), f32(3)], {}, r"mean must be \[3\]"),
    ("layer_norm", [f32(2, 3, 4), f32(3)], {}, "normalized shape"),
    ("group_norm", [f32(2, 6, 4)], {"groups": 4}, "6 channels do not split into 4"),
    ("max_pool2d", [f32(1, 1, 2, 2)], {"kernel": [3]}, "does not fit"),
    ("avg_pool2d", [f32(1, 2, 8)], {"kernel": [2]}, "must have rank 4"),
    ("interpolate", [f32(1, 2, 4, 4)], {"size": [8], "scale": [2.0]}, "exactly one"),
    ("interpolate", [f32(1, 2, 4, 4)], {"size": [8], "align_corners": True}, "linear"),
    ("scaled_dot_product_attention", [f32(2, 5, 8), f32(2, 7, 4), f32(2, 7, 4)], {},
     "head dim"),
    ("scaled_dot_product_attention", [f32(2, 5, 8), f32(2, 7, 8), f32(2, 7, 4), f32(5, 6)],
     {}, "mask .* does not broadcast"),
    ("multi_head_attention", [f32(2, 5, 10)] * 3, {"num_heads": 4}, "does not split into 4"),
    ("multi_head_attention", [f32(2, 5, S)] * 3, {"num_heads": 4}, "does not split into 4"),
    ("quantize", [f32(2, 3)], {"scale": [0.1, 0.2]}, "takes one scale"),
    ("quantize", [f32(2, 3)], {"scale": [0.1], "zero_point": [300]}, "do not fit i8"),
    ("quantize", [f32(2, 3)], {"scale": [0.1, 0.2], "axis": [1]}, "2 scales for 3 channels"),
    ("dequantize", [TensorType(DType.i8, (2, 3))], {}, "no quantization parameters"),
    ("embedding", [f32(10), TensorType(DType.i64, (2,))], {}, "weight must be"),
]


@pytest.mark.parametrize("op,ins,attrs,match", ERRORS,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_input_raises(op, ins, attrs, match):
    opdef = get_op(op)
    with pytest.raises(IRError, match=match) as info:
        opdef.infer_types(ins, opdef.complete_attrs(attrs))
    assert str(info.value).startswith(f"{op}:")  # the message names the op


def test_bad_attribute_choice_and_arity():
    with pytest.raises(IRError, match="not one of"):
        get_op("gelu").complete_attrs({"approximate": "fast"})
    with pytest.raises(IRError, match="takes 2 to 3 inputs"):
        get_op("linear").infer_types([f32(2, 3)], {})
    with pytest.raises(IRError, match="needs the input types"):
        get_op("dequantize").evaluate([np.zeros(2, np.int8)], {})


# -- dtypes -----------------------------------------------------------------------------------

HALF_OPS = ["relu", "gelu", "sigmoid", "exp", "softplus", "silu", "tanh"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_keeps_dtype(dtype):
    x32 = rand(4, 5)
    x = x32.astype(DType.parse("f16" if dtype == "float16" else "bf16").np)
    for name in HALF_OPS:
        opdef = get_op(name)
        attrs = opdef.complete_attrs({})
        (t,) = opdef.infer_types([TensorType.of(x)], attrs)
        (y,) = opdef.evaluate([x], attrs)
        (y32,) = opdef.evaluate([x.astype(np.float32)], attrs)
        assert y.dtype == x.dtype == t.dtype.np
        assert_allclose(y.astype(np.float32), y32, rtol=2e-2, atol=2e-2)
    for name, extra in [("matmul", [x.T.copy()]), ("softmax", []), ("layer_norm", []),
                        ("reduce_mean", [])]:
        opdef = get_op(name)
        attrs = opdef.complete_attrs({})
        (t,) = opdef.infer_types([TensorType.of(a) for a in [x, *extra]], attrs)
        (y,) = opdef.evaluate([x, *extra], attrs)
        assert y.dtype == t.dtype.np and y.shape == t.shape


def test_elementwise_ops_keep_0d_shapes():
    for opdef in OPS:
        if not (opdef.has("elementwise") and opdef.infer.__module__.endswith("elementwise")):
            continue
        value = np.array(True) if opdef.name.startswith("logical") else np.array(0.5, np.float32)
        if opdef.name.startswith(("bitwise", "shift")):
            value = np.array(3, np.int32)
        arrays = [value] * opdef.n_required
        if opdef.name == "where":
            arrays[0] = np.array(True)
        attrs = opdef.complete_attrs({"dtype": "f32"} if opdef.name == "cast" else {})
        (t,) = opdef.infer_types([TensorType.of(a) for a in arrays], attrs)
        (y,) = opdef.evaluate(arrays, attrs)
        assert t.shape == y.shape == () and t.dtype.np == y.dtype, opdef.name


def test_f64_stays_f64():
    x = rand(3, 4, dtype=np.float64)
    for name in ["gelu", "softmax", "layer_norm", "rsqrt", "hardswish"]:
        opdef = get_op(name)
        (y,) = opdef.evaluate([np.abs(x) + 0.1], opdef.complete_attrs({}))
        assert y.dtype == np.float64


# -- graphs -----------------------------------------------------------------------------------


def _run_graph(g: Graph, feeds: list[np.ndarray]) -> list[np.ndarray]:
    env = {id(v): a for v, a in zip(g.inputs, feeds, strict=True)}
    for n in g.nodes:
        ins = [env[id(v)] for v in n.inputs]
        outs = n.opdef.evaluate(ins, n.attrs, in_types=[v.type for v in n.inputs])
        for v, a in zip(n.outputs, outs, strict=True):
            env[id(v)] = a
    return [env[id(v)] for v in g.outputs]


def test_small_cnn_graph_matches_torch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, groups=8, padding=1),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    p = {k: v.detach().numpy() for k, v in net.state_dict().items()}

    g = Graph()
    x = g.add_input(f32(B, 3, 16, 16), "x")
    y = g.add_op("conv2d", x, g.add_const(p["0.weight"]), g.add_const(p["0.bias"]), pad=[1])
    y = g.add_op("batch_norm", y, *(g.add_const(p[f"1.{k}"]) for k in
                                    ("running_mean", "running_var", "weight", "bias")))
    y = g.add_op("relu", y)
    y = g.add_op("max_pool2d", y, kernel=[2])
    y = g.add_op("conv2d", y, g.add_const(p["4.weight"]), g.add_const(p["4.bias"]), pad=[1],
                 groups=8)
    y = g.add_op("adaptive_avg_pool2d", y, output_size=[1])
    y = g.add_op("flatten", y)
    y = g.add_op("linear", y, g.add_const(p["7.weight"]), g.add_const(p["7.bias"]))
    g.set_outputs([y])
    assert y.type == f32(B, 5)

    xs = rand(2, 3, 16, 16)
    (out,) = _run_graph(g, [xs])
    with torch.no_grad():
        assert_allclose(out, net(T(xs)).numpy(), rtol=1e-4, atol=1e-4)


def test_attention_block_graph_with_symbolic_dims():
    g = Graph()
    x = g.add_input(f32(B, S, 32), "x")
    w = rand(96, 32)
    qkv = g.add_op("linear", x, g.add_const(w))
    q, k, v = g.create_node("split", [qkv], {"axis": -1, "sizes": [32, 32, 32]}).outputs
    heads = [g.add_op("transpose", g.add_op("reshape", t, shape=[B, S, 4, 8]), perm=[0, 2, 1, 3])
             for t in (q, k, v)]
    o = g.add_op("scaled_dot_product_attention", *heads, causal=True)
    o = g.add_op("reshape", g.add_op("transpose", o, perm=[0, 2, 1, 3]), shape=[B, S, -1])
    g.set_outputs([o])
    assert o.type == f32(B, S, 32)

    xs = rand(2, 5, 32)
    (out,) = _run_graph(g, [xs])
    qt, kt, vt = (t.reshape(2, 5, 4, 8).transpose(1, 2)
                  for t in F.linear(T(xs), T(w)).split(32, -1))
    ref = SDPA(qt, kt, vt, is_causal=True).transpose(1, 2).reshape(2, 5, 32)
    assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_quantized_types_flow_through_injective_ops():
    # per-channel int8 along C survives max_pool, flatten and transpose, and dequantize reads
    # the moved axis from the type
    g = Graph()
    x = g.add_input(f32(1, 4, 6, 6), "x")
    scales = [0.02, 0.03, 0.05, 0.01]
    q = g.add_op("quantize", x, scale=scales, zero_point=[0, 1, -2, 3], axis=[1])
    assert q.type.quant == QuantParams(scales, [0, 1, -2, 3], axis=1)
    y = g.add_op("max_pool2d", q, kernel=[2])
    y = g.add_op("flatten", y, axis=2)
    y = g.add_op("transpose", y, perm=[0, 2, 1])
    assert y.type.dtype is DType.i8 and y.type.quant.axis == 2
    d = g.add_op("dequantize", y)
    assert d.type == f32(1, 9, 4)
    g.set_outputs([d])

    xs = rand(1, 4, 6, 6, lo=-1, hi=1)
    (out,) = _run_graph(g, [xs])
    qt = torch.quantize_per_channel(T(xs), torch.tensor(scales, dtype=torch.float64),
                                    torch.tensor([0, 1, -2, 3]), 1, torch.qint8)
    ref = F.max_pool2d(qt.dequantize(), 2).flatten(2).transpose(1, 2)
    assert_allclose(out, ref.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(IRError, match="per channel"):
        g.add_op("reshape", q, shape=[2, 72])
