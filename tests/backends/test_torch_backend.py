"""The torch backend: every op of the op table, generated module against the reference
interpreter; oneDNN fused ops against ATen; gradients; symbolic batch sizes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtinfer.backends.torch_backend import (
    EMITTERS,
    MKLDNN_ACTIVATIONS,
    build_module,
    coverage,
    fallback_ops,
    mkldnn_available,
)
from rtinfer.errors import BackendError
from rtinfer.ir import Graph, TensorType, interpret, parse
from rtinfer.ir.ops import OPS, get_op
from rtinfer.ir.ops.layouts import to_channels_last


def _load_op_cases():
    """tests/ir/test_ops.py's per-op cases (loaded by path: tests/ is not a package root)."""
    path = Path(__file__).resolve().parents[1] / "ir" / "test_ops.py"
    spec = importlib.util.spec_from_file_location("rtinfer_test_ops_cases", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


OPS_TESTS = _load_op_cases()
rand, ints, bools, pos = OPS_TESTS.rand, OPS_TESTS.ints, OPS_TESTS.bools, OPS_TESTS.pos


class Extra:
    """A case for an op test_ops.py has none for: checked against the interpreter only."""

    def __init__(self, op: str, inputs: list[np.ndarray], attrs: dict, id: str = ""):
        self.op, self.inputs, self.attrs, self.id = op, inputs, attrs, id or op
        self.types, self.tol = None, 1e-5


EXTRA = [
    *[Extra(n, [rand(3, 4, lo=-0.9, hi=0.9)], {}) for n in ("asin", "acos", "atan", "atanh",
                                                            "tan", "sinh", "cosh", "asinh")],
    Extra("acosh", [pos(3, 4) + 1], {}),
    *[Extra(n, [ints(3, 4, lo=-9, hi=9, dtype=np.int32), ints(4, lo=-9, hi=9, dtype=np.int32)],
            {}) for n in ("bitwise_and", "bitwise_or", "bitwise_xor")],
    Extra("bitwise_not", [ints(3, 4, dtype=np.int16)], {}),
    Extra("shift_left", [ints(3, 4, lo=0, hi=9, dtype=np.int32), ints(4, lo=0, hi=5,
                                                                       dtype=np.int32)], {}),
    Extra("shift_right", [ints(3, 4, lo=-50, hi=50, dtype=np.int32),
                          ints(4, lo=0, hi=5, dtype=np.int32)], {}),
    Extra("conv3d", [rand(1, 2, 5, 6, 4), rand(3, 2, 3, 3, 2), rand(3)],
          {"pad": [1, 0, 1, 1, 0, 0], "stride": [2, 1, 1]}),
    Extra("conv_transpose3d", [rand(1, 2, 3, 4, 3), rand(2, 3, 2, 2, 2)], {"stride": [2]}),
    Extra("max_pool3d", [rand(1, 2, 5, 6, 4)], {"kernel": [2], "ceil_mode": True}),
    Extra("avg_pool3d", [rand(1, 2, 5, 6, 4)], {"kernel": [3], "stride": [2], "pad": [1]}),
    Extra("max_pool2d", [rand(1, 2, 7, 6)], {"kernel": [2], "stride": [2], "pad": [0, 1, 1, 0],
                                             "ceil_mode": True}, id="max_pool2d-asym-ceil"),
    Extra("avg_pool2d", [rand(1, 2, 7, 6)], {"kernel": [3], "stride": [2], "pad": [0, 1, 2, 0],
                                             "ceil_mode": True, "count_include_pad": True},
          id="avg_pool2d-asym-ceil-include"),
    Extra("avg_pool1d", [rand(1, 2, 9)], {"kernel": [2], "pad": [1, 0], "stride": [2],
                                          "count_include_pad": False}, id="avg_pool1d-asym"),
    Extra("max_pool2d", [ints(1, 2, 6, 6, lo=-100, hi=100, dtype=np.int8)], {"kernel": [2]},
          id="max_pool2d-int8"),
    Extra("cumprod", [rand(3, 4, lo=0.5, hi=1.5)], {"axis": 1}),
    Extra("einsum", [rand(2, 3, 4), rand(2, 4, 5)], {"equation": "bij,bjk->bik"}),
    Extra("einsum", [rand(3, 4), rand(4)], {"equation": "ij,j"}, id="einsum-implicit"),
    Extra("gather_nd", [rand(2, 3, 4), ints(2, 5, 2, lo=0, hi=2)], {}),
    Extra("gather_nd", [rand(2, 3, 4), ints(2, 5, 1, lo=0, hi=3)], {"batch_dims": 1},
          id="gather_nd-batch"),
    Extra("hardmax", [rand(3, 5)], {"axis": 1}),
    Extra("topk", [np.array([[3, 1, 3, 2, 1], [0, 5, 5, 5, 1]], np.float32)], {"k": 3}),
    Extra("topk", [rand(4, 6)], {"k": 2, "axis": 0, "largest": False}, id="topk-smallest"),
    Extra("scatter_elements", [rand(3, 4), np.array([[0, 1], [2, 3], [-1, 0]]), rand(3, 2)],
          {"axis": 1}),
    Extra("scatter_elements", [rand(3, 4), np.array([[0, 0], [2, 3], [1, 1]]), rand(3, 2)],
          {"axis": 1, "reduction": "add"}, id="scatter_elements-add"),
    Extra("scatter_nd", [rand(4, 3), np.array([[1], [3]]), rand(2, 3)], {}),
    Extra("scatter_nd", [rand(4, 3), np.array([[1, 0], [1, 0], [2, 2]]), rand(3)],
          {"reduction": "mul"}, id="scatter_nd-mul"),
    Extra("resize", [rand(1, 2, 4, 5)], {"scales": [1.0, 1.0, 2.0, 1.5], "mode": "linear"}),
    Extra("resize", [rand(1, 1, 4, 4)], {"sizes": [1, 1, 3, 6], "mode": "cubic",
                                         "coordinate_transformation_mode": "align_corners"},
          id="resize-cubic"),
    Extra("resize", [ints(1, 1, 4, 4, lo=0, hi=200, dtype=np.uint8)],
          {"scales": [1.0, 1.0, 2.0, 2.0], "mode": "nearest",
           "coordinate_transformation_mode": "asymmetric"}, id="resize-u8"),
    Extra("resize", [rand(1, 1, 6, 6)],
          {"scales": [1.0, 1.0, 0.5, 0.5], "mode": "linear",
           "coordinate_transformation_mode": "tf_crop_and_resize",
           "roi": [0, 0, 0.2, 0.1, 1, 1, 1.1, 0.9], "extrapolation_value": 3.0},
          id="resize-crop-extrapolate"),
]
ALL_CASES = list(OPS_TESTS.CASES) + EXTRA


def _case_id(c) -> str:
    return getattr(c, "id", "") or c.op


def single_op_graph(op: str, types: list[TensorType], attrs: dict) -> Graph:
    g = Graph(op)
    ins = [g.add_input(t, f"x{i}") for i, t in enumerate(types)]
    node = g.create_node(op, ins, attrs)
    g.set_outputs(node.outputs)
    return g


def to_torch_input(a: np.ndarray) -> torch.Tensor:
    if a.dtype.name == "bfloat16":  # ml_dtypes' bf16, which torch.from_numpy does not know
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def run_module(module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        outs = module(*[to_torch_input(a) for a in arrays])
    return [o.numpy() for o in outs]


def check_against_interpreter(g: Graph, arrays: list[np.ndarray], tol: float = 1e-5,
                              **build) -> None:
    want = interpret(g, *arrays)
    want = list(want) if isinstance(want, tuple) else [want]
    # strict: every op has an emitter (an aten_call's is the ATen op, which strict refuses)
    strict = all(n.op != "aten_call" for n in g.nodes)
    got = run_module(build_module(g, strict=strict, **build), arrays)
    assert len(got) == len(want)
    for o, w in zip(got, want, strict=True):
        assert o.dtype == w.dtype and o.shape == w.shape, (o.dtype, o.shape, w.dtype, w.shape)
        if o.dtype.kind in "biu":
            np.testing.assert_array_equal(o, w)
        else:
            np.testing.assert_allclose(o.astype(np.float64), w.astype(np.float64),
                                       rtol=max(tol, 1e-5), atol=max(tol, 1e-5))


@pytest.mark.parametrize("case", ALL_CASES, ids=[_case_id(c) for c in ALL_CASES])
def test_op_matches_interpreter(case):
    attrs = get_op(case.op).complete_attrs(case.attrs)
    types = case.types or [TensorType.of(a) for a in case.inputs]
    check_against_interpreter(single_op_graph(case.op, types, attrs), case.inputs, case.tol)


def test_every_op_has_an_emitter_and_a_case():
    n_emitted, n_ops, missing = coverage()
    assert missing == [], f"ops without an emitter: {missing}"
    assert n_emitted == n_ops == len(OPS)
    assert {c.op for c in ALL_CASES} | {"const"} == set(OPS.names())


FUSED = [c for c in OPS_TESTS.CASES if c.op in ("fused_conv1d", "fused_conv2d", "fused_linear")]


@pytest.mark.parametrize("case", FUSED, ids=[_case_id(c) for c in FUSED])
def test_fused_ops_aten_path(case):
    """The differentiable path (no oneDNN), also used with trainable=True."""
    attrs = get_op(case.op).complete_attrs(case.attrs)
    g = single_op_graph(case.op, [TensorType.of(a) for a in case.inputs], attrs)
    check_against_interpreter(g, case.inputs, case.tol, mkldnn=False)
    check_against_interpreter(g, case.inputs, case.tol, trainable=True)


# (the quantized ops' cases declare quantized input types, which this test's NHWC copies of
# the arrays would not carry)
NHWC = [c for c in OPS_TESTS.CASES if "layout" in get_op(c.op).attrs and c.inputs[0].ndim == 4
        and "layout" not in c.attrs and c.types is None]


@pytest.mark.parametrize("case", NHWC, ids=[_case_id(c) for c in NHWC])
def test_channels_last_layout(case):
    """layout=NHWC runs the NCHW emitter between transposes (input 0, the residual, output 0)."""
    opdef = get_op(case.op)
    attrs = opdef.complete_attrs({**case.attrs, "layout": "NHWC"})
    arrays = list(case.inputs)
    moved = [0] + [i for i, n in enumerate(opdef.inputs) if n == "residual?" and i < len(arrays)]
    for i in moved:
        arrays[i] = np.ascontiguousarray(arrays[i].transpose(to_channels_last(4)))
    g = single_op_graph(case.op, [TensorType.of(a) for a in arrays], attrs)
    check_against_interpreter(g, arrays, case.tol)


# -- oneDNN's fused primitives ----------------------------------------------------------------


@pytest.mark.skipif(not mkldnn_available(), reason="no oneDNN fused ops in this torch build")
@pytest.mark.parametrize("activation", list(MKLDNN_ACTIVATIONS))
@pytest.mark.parametrize("residual", ["none", "pre", "post"])
@pytest.mark.parametrize("op", ["fused_conv2d", "fused_linear"])
def test_mkldnn_fused_ops_match_aten(op, activation, residual):
    alpha, beta = {"leaky_relu": (0.1, 0.0), "clip": (0.0, 6.0)}.get(activation, (0.0, 0.0))
    rng = np.random.default_rng(1)
    if op == "fused_conv2d":
        arrays = [rng.standard_normal(s).astype(np.float32) for s in
                  [(2, 4, 7, 7), (6, 4, 3, 3), (6,), (2, 6, 7, 7)]]
        base = {"pad": [1]}
    else:
        arrays = [rng.standard_normal(s).astype(np.float32) for s in
                  [(4, 5, 8), (6, 8), (6,), (4, 5, 6)]]  # >= 16 rows: oneDNN
        base = {}
    if residual == "none":
        arrays = arrays[:3]
    attrs = get_op(op).complete_attrs({**base, "activation": activation, "alpha": alpha,
                                       "beta": beta, "residual": residual})
    g = single_op_graph(op, [TensorType.of(a) for a in arrays], attrs)
    module = build_module(g)
    assert module.rtinfer_mkldnn
    assert "mkldnn" in module.code
    fused = run_module(module, arrays)[0]
    aten = run_module(build_module(g, mkldnn=False), arrays)[0]
    # oneDNN's eltwise kernels for the transcendental activations round differently
    # from ATen's by a few ulps; relu, leaky_relu, clip, gelu(erf) and none are exact
    np.testing.assert_allclose(fused, aten, rtol=1e-5, atol=1e-5)


def test_trainable_module_never_uses_mkldnn():
    case = FUSED[0]
    attrs = get_op(case.op).complete_attrs(case.attrs)
    g = single_op_graph(case.op, [TensorType.of(a) for a in case.inputs], attrs)
    module = build_module(g, trainable=True)
    assert "mkldnn" not in module.code and not module.rtinfer_mkldnn


# -- constants, gradients, symbolic dims -------------------------------------------------------

MLP = """
func @mlp(%x: f32[B,16]) -> f32[B,4] {
  %w1 = const f32[32,16] random(seed=0)
  %b1 = const f32[32] random(seed=1)
  %w2 = const f32[4,32] random(seed=2)
  %h = fused_linear(%x, %w1, %b1) {activation="gelu"}
  %y = linear(%h, %w2)
  return %y
}
"""

CNN = """
func @cnn(%x: f32[N,3,10,10]) -> f32[N,5] {
  %w = const f32[8,3,3,3] random(seed=0)
  %b = const f32[8] random(seed=1)
  %w2 = const f32[8,8,3,3] random(seed=2)
  %b2 = const f32[8] random(seed=3)
  %fc = const f32[5,8] random(seed=4)
  %c = fused_conv2d(%x, %w, %b) {pad=[1], activation="relu"}
  %d = fused_conv2d(%c, %w2, %b2, %c) {pad=[1], activation="relu", residual="pre"}
  %p = global_avg_pool2d(%d)
  %f = flatten(%p)
  %y = linear(%f, %fc)
  return %y
}
"""


def test_constants_are_buffers_or_parameters():
    g = parse(MLP)
    inference = build_module(g)
    assert len(list(inference.parameters())) == 0
    assert {n for n, _ in inference.named_buffers()} == {"w1", "b1", "w2"}
    trainable = build_module(g, trainable=True)
    assert {n for n, _ in trainable.named_parameters()} == {"w1", "b1", "w2"}


@pytest.mark.parametrize("text", [MLP, CNN], ids=["mlp", "cnn"])
def test_gradients_match_eager_autograd(text):
    """Gradients of the generated module (trainable=True) equal torch autograd through the
    same computation written eagerly."""
    g = parse(text)
    module = build_module(g, trainable=True)
    params = dict(module.named_parameters())
    x0 = torch.randn((3, 16) if "mlp" in g.name else (3, 3, 10, 10), generator=torch.Generator()
                     .manual_seed(0))
    x = x0.clone().requires_grad_()
    (module(x)[0] ** 2).sum().backward()

    ref = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    xr = x0.clone().requires_grad_()
    if "mlp" in g.name:
        y = F.linear(F.gelu(F.linear(xr, ref["w1"], ref["b1"])), ref["w2"])
    else:
        c = F.relu(F.conv2d(xr, ref["w"], ref["b"], padding=1))
        d = F.relu(F.conv2d(c, ref["w2"], ref["b2"], padding=1) + c)
        y = F.linear(d.mean((2, 3)), ref["fc"])
    (y ** 2).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
    for k, p in params.items():
        assert p.grad is not None, k
        torch.testing.assert_close(p.grad, ref[k].grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("text", [MLP, CNN], ids=["mlp", "cnn"])
def test_symbolic_batch_at_two_sizes(text):
    g = parse(text)
    module = build_module(g)
    for n in (1, 5):
        shape = (n,) + tuple(d for d in g.inputs[0].type.shape[1:])
        x = np.random.default_rng(n).standard_normal(shape).astype(np.float32)
        got = run_module(module, [x])[0]
        np.testing.assert_allclose(got, interpret(g, x), rtol=1e-4, atol=1e-4)


def test_symbolic_reshape_and_split_read_runtime_sizes():
    g = parse("""
    func @attn(%x: f32[B,S,8]) -> (f32[B,S,2,4], f32[B*S,3], f32[B*S,5]) {
      %r = reshape(%x) {shape=[B, S, 2, 4]}
      %f = reshape(%x) {shape=[B*S, 8]}
      %a, %b = split(%f) {axis=1, sizes=[3, -1]}
      return %r, %a, %b
    }""")
    module = build_module(g)
    for b, s in [(1, 3), (2, 7)]:
        x = np.random.default_rng(b).standard_normal((b, s, 8)).astype(np.float32)
        for got, want in zip(run_module(module, [x]), interpret(g, x), strict=True):
            np.testing.assert_array_equal(got, want)


def test_op_without_emitter_runs_its_reference(monkeypatch):
    g = parse(MLP)
    monkeypatch.delitem(EMITTERS, "linear")
    assert fallback_ops(g) == ["linear"]
    with pytest.raises(BackendError, match="no emitter for linear"):
        build_module(g, strict=True)
    module = build_module(g)
    assert module.rtinfer_fallback_ops == ["linear"]
    x = np.ones((2, 16), np.float32)
    np.testing.assert_allclose(run_module(module, [x])[0], interpret(g, x), rtol=1e-5)


# -- prepacked oneDNN weights, channels-last activations ---------------------------------------

# static sizes (so conv weights are reordered for the input size); odd sizes, strides, dilation,
# groups, depthwise, plain and fused convs, a residual before and after the activation, pooling,
# a 4-d output and a linear head
PACKED_CNN = """
func @packed_cnn(%x: f32[2,3,17,13]) -> (f32[2,12,5,7], f32[2,7]) {
  %w1 = const f32[12,3,5,3] random(seed=0)
  %b1 = const f32[12] random(seed=1)
  %w2 = const f32[12,1,3,3] random(seed=2)
  %b2 = const f32[12] random(seed=3)
  %w3 = const f32[12,4,3,3] random(seed=4)
  %w4 = const f32[12,12,1,1] random(seed=5)
  %b4 = const f32[12] random(seed=6)
  %w5 = const f32[12,6,3,3] random(seed=7)
  %b5 = const f32[12] random(seed=8)
  %fc = const f32[7,12] random(seed=9)
  %fcb = const f32[7] random(seed=10)
  %a = fused_conv2d(%x, %w1, %b1) {stride=[2, 1], pad=[2, 1], activation="relu"}
  %b = fused_conv2d(%a, %w2, %b2) {pad=[1], groups=12, activation="clip", alpha=0.0, beta=6.0}
  %c = conv2d(%b, %w3) {pad=[2], dilation=[2], groups=3}
  %d = fused_conv2d(%c, %w4, %b4, %a) {activation="relu", residual="pre"}
  %e = max_pool2d(%d) {kernel=[3], stride=[2], pad=[1]}
  %f = fused_conv2d(%e, %w5, %b5, %e) {pad=[1], groups=2, activation="silu", residual="post"}
  %g = conv2d(%f, %w4, %b4) {stride=[2, 2], pad=[1]}
  %p = global_avg_pool2d(%g)
  %q = flatten(%p)
  %y = fused_linear(%q, %fc, %fcb) {activation="tanh"}
  return %f, %y
}
"""

PACKED_MLP = """
func @packed_mlp(%x: f32[4,5,13]) -> f32[4,5,6] {
  %w1 = const f32[33,13] random(seed=0)
  %b1 = const f32[33] random(seed=1)
  %w2 = const f32[6,33] random(seed=2)
  %b2 = const f32[6] random(seed=3)
  %r = const f32[4,5,6] random(seed=4)
  %h = fused_linear(%x, %w1, %b1) {activation="gelu"}
  %y = fused_linear(%h, %w2, %b2, %r) {residual="pre"}
  return %y
}
"""


def _pack_input(g: Graph) -> np.ndarray:
    shape = tuple(int(d) for d in g.inputs[0].type.shape)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@pytest.mark.skipif(not mkldnn_available(), reason="no oneDNN fused ops in this torch build")
@pytest.mark.parametrize("text", [PACKED_CNN, PACKED_MLP], ids=["cnn", "mlp"])
def test_prepacked_weights_match_interpreter(text):
    g = parse(text)
    x = _pack_input(g)
    module = build_module(g, strict=True)
    packed = [n.target for n in module.graph.nodes if n.op == "get_attr"
              and getattr(module, n.target).is_mkldnn]
    assert packed, module.code
    if "cnn" in g.name:  # every conv, plain ones included, on a packed weight
        assert "torch.conv2d" not in module.code
        # w4 serves two geometries (a 1x1 conv and a strided 3x3 one): two packings; the
        # 2-row linear head is a matrix-vector product and stays on ATen (no packing)
        assert len(packed) == 6 and "fc_packed" not in packed
        assert "channels_last" in module.code
    # the constants stay plain buffers; the packed copies are no part of the state
    assert not any(t.is_mkldnn for t in module.state_dict().values())
    with torch.no_grad():
        outs = module(torch.from_numpy(x))
    want = interpret(g, x)
    want = list(want) if isinstance(want, tuple) else [want]
    for o, w in zip(outs, want, strict=True):
        assert o.is_contiguous()  # NCHW out, as eager gives
        np.testing.assert_allclose(o.numpy(), w, rtol=1e-5, atol=1e-5)
    # the same graph on ATen (no oneDNN) agrees to fp32 rounding
    aten = run_module(build_module(g, mkldnn=False), [x])
    for o, a in zip(outs, aten, strict=True):
        np.testing.assert_allclose(o.numpy(), a, rtol=1e-5, atol=1e-5)


def test_prepacked_cnn_channels_last_input():
    """An input already in channels-last memory gives the same results."""
    g = parse(PACKED_CNN)
    x = torch.from_numpy(_pack_input(g))
    module = build_module(g)
    with torch.no_grad():
        a = module(x)
        b = module(x.contiguous(memory_format=torch.channels_last))
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text", [PACKED_CNN, PACKED_MLP], ids=["cnn", "mlp"])
def test_trainable_static_model_has_gradients_and_no_packing(text):
    g = parse(text)
    module = build_module(g, trainable=True)
    assert "mkldnn" not in module.code and "channels_last" not in module.code
    x = torch.from_numpy(_pack_input(g)).requires_grad_()
    outs = module(x)
    sum((o ** 2).sum() for o in outs).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = {name: p.grad for name, p in module.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    assert grads["w1"].abs().sum() > 0  # flows back through every layer
    with torch.no_grad():
        want = interpret(g, x.detach().numpy())
        want = list(want) if isinstance(want, tuple) else [want]
        for o, w in zip(outs, want, strict=True):
            np.testing.assert_allclose(o.detach().numpy(), w, rtol=1e-4, atol=1e-4)
