"""The native backend's int8 kernels (docs/int8.md) against the reference interpreter, at each
CPU level this host runs: quantize / dequantize, int8 max pooling and the shape ops exactly;
qconv2d / qlinear / qmatmul within one unit of the requantized output (int32 accumulation
against the reference's f32 rounding of each product), nearly all codes equal; f32 outputs to
a tolerance. oneDNN's own ISA is fixed per process, so the checks of its AVX2 int8 kernels
(``vpmaddubsw``'s int16 saturation without VNNI) run in a subprocess capped to that level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from rtinfer.backends.native import quant as native_quant
from rtinfer.backends.native import time_layer
from rtinfer.backends.native_backend import NativeModule
from rtinfer.backends.torch_backend import build_module
from rtinfer.errors import BackendError, Unsupported
from rtinfer.ir.graph import Graph
from rtinfer.ir.interpreter import interpret
from rtinfer.ir.types import DType, QuantParams, TensorType
from rtinfer.ir.verifier import verify
from tests.conftest import _cpu_levels

LEVELS = _cpu_levels()


@pytest.fixture(params=LEVELS)
def level(request, monkeypatch) -> str:
    """Each CPU level this host runs: the native module built with that level's extension."""
    from rtinfer.kernels import build

    try:
        build.load(level=request.param)
    except build.NativeUnavailable as e:
        pytest.skip(f"native backend unavailable here: {e}")
    monkeypatch.setenv("RTINFER_CPU_ISA", request.param)
    return request.param


def run_native(g: Graph, *inputs: np.ndarray) -> list[np.ndarray]:
    m = NativeModule(g, strict=True)  # strict: a node without a native kernel is an error
    assert not m.stats.fallbacks
    return [o.numpy() for o in m(*(torch.from_numpy(x) for x in inputs))]


def act_params(lo: float, hi: float, dtype: DType) -> dict:
    info = np.iinfo(dtype.np)
    scale = (hi - lo) / (info.max - info.min)
    zp = int(np.clip(round(info.min - lo / scale), info.min, info.max))
    return {"scale": [scale], "zero_point": [zp], "dtype": dtype}


def out_attrs(lo: float, hi: float, dtype: DType) -> dict:
    if dtype == DType.f32:
        return {"out_dtype": DType.f32}
    p = act_params(lo, hi, dtype)
    return {"out_dtype": dtype, "out_scale": p["scale"][0], "out_zero_point": p["zero_point"][0]}


def per_channel_weight(w: np.ndarray, axis: int = 0, qmax: int | None = None,
                       per_channel: bool = True) -> tuple[np.ndarray, QuantParams]:
    """Symmetric i8 weights in the range the level's int8 kernels run exactly (127, or 63
    without VNNI: ``reduced_weight_range``)."""
    qmax = native_quant.weight_max() if qmax is None else qmax
    if not per_channel:
        s = np.float32(np.abs(w).max() / qmax)
        return (np.clip(np.rint(w / s), -qmax, qmax).astype(np.int8),
                QuantParams(s, np.int64(0)))
    red = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    scale = (np.abs(w).max(axis=red) / qmax).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, QuantParams(scale, np.zeros_like(scale, np.int64), axis % w.ndim)


def assert_requantized(got: np.ndarray, want: np.ndarray) -> None:
    """At most one unit apart, and at least 99% of the codes equal."""
    assert got.dtype == want.dtype and got.shape == want.shape
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1, f"codes differ by up to {diff.max()}"
    assert (diff == 0).mean() >= 0.99, f"only {(diff == 0).mean():.4f} of the codes equal"
    assert len(np.unique(want)) > 8  # a real spread of codes, not all saturated


def check(got: np.ndarray, want: np.ndarray) -> None:
    if want.dtype == np.float32:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    else:
        assert_requantized(got, want)


# -- quantize, dequantize, int8 pooling and shape ops: exact -----------------------------------


@pytest.mark.parametrize("dtype", [DType.u8, DType.i8])
def test_quantize_dequantize_exact_per_tensor_and_per_channel(level, dtype):
    rng = np.random.default_rng(0)
    x = rng.uniform(-4, 4, (2, 3, 5, 7)).astype(np.float32)
    s, zp = np.float32(0.02), (17 if dtype == DType.u8 else -3)
    x.flat[:40] = (np.arange(40) - 20 + 0.5) * s  # ties: half to even, as numpy's rint
    x.flat[40:44] = [1e6, -1e6, 1e30, -1e30]  # saturation
    x.flat[44:46] = np.nan  # no code: the zero point's (the code of 0.0), in every backend
    g = Graph()
    xv = g.add_input(TensorType(DType.f32, x.shape), "x")
    qt = g.add_op("quantize", xv, scale=[float(s)], zero_point=[zp], dtype=dtype)
    qc = g.add_op("quantize", xv, scale=[0.01, 0.03, 0.05], zero_point=[0, 5, -7] if
                  dtype == DType.i8 else [0, 5, 200], axis=[1], dtype=dtype)
    qw = g.add_op("quantize", xv, scale=[0.01 * (i + 1) for i in range(7)], axis=[-1],
                  dtype=dtype)
    outs = [qt, qc, qw] + [g.add_op("dequantize", q) for q in (qt, qc, qw)]
    g.set_outputs(outs)
    verify(g)
    got, want = run_native(g, x), interpret(g, x)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert got[0].min() == np.iinfo(dtype.np).min and got[0].max() == np.iinfo(dtype.np).max
    assert (got[0].flat[44:46] == zp).all() and (got[3].flat[44:46] == 0.0).all()
    torch_out = build_module(g)(torch.from_numpy(x))
    for a, b in zip(torch_out, want, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)


def test_int8_max_pool_and_shape_ops_exact(level):
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, (1, 4, 9, 9)).astype(np.float32)
    g = Graph()
    xv = g.add_input(TensorType(DType.f32, x.shape), "x")
    q = g.add_op("quantize", xv, **act_params(-3, 3, DType.u8))
    p = g.add_op("max_pool2d", q, kernel=[3, 3], stride=[2, 2], pad=[1, 1, 1, 1])
    p2 = g.add_op("max_pool2d", q, kernel=[2, 2], stride=[2, 2], ceil_mode=True)
    t = g.add_op("transpose", p, perm=[0, 2, 3, 1])
    r = g.add_op("reshape", t, shape=[1, -1])
    f = g.add_op("flatten", p2)
    g.set_outputs([p, p2, t, r, f, g.add_op("dequantize", r)])
    verify(g)
    for a, b in zip(run_native(g, x), interpret(g, x), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [DType.u8, DType.i8])
def test_an_image_is_quantized_straight_to_nhwc_with_the_reference_codes(level, dtype):
    """The NCHW image a qconv2d reads is quantized into NHWC codes in one step (no byte
    reorder after it), and the codes are the reference's exactly: through a 1x1 identity
    qconv2d with an f32 output each pixel comes back as (code - zero point) * scale, so one
    code off would show as a whole step."""
    if dtype == DType.i8 and native_quant.reduced_weight_range():
        pytest.skip("without VNNI oneDNN halves the weights of an i8-source convolution")
    rng = np.random.default_rng(4)
    c, s = 3, np.float32(0.02)
    x = rng.uniform(-2.5, 3.5, (2, c, 9, 37)).astype(np.float32)
    x.flat[:40] = (np.arange(40) - 20 + 0.5) * s  # ties: half to even
    x.flat[40:43] = [1e6, -1e6, 1e30]  # saturation
    qmax = native_quant.weight_max()
    w = np.eye(c, dtype=np.int8).reshape(c, c, 1, 1) * np.int8(qmax)
    wq = QuantParams(np.full(c, 1.0 / qmax, np.float32), np.zeros(c, np.int64), 0)
    zp = 60 if dtype == DType.u8 else -10
    g = Graph()
    xv = g.add_input(TensorType(DType.f32, x.shape), "x")
    q = g.add_op("quantize", xv, scale=[float(s)], zero_point=[zp], dtype=dtype)
    y = g.add_op("qconv2d", q, g.add_const(w, quant=wq), stride=[1, 1], pad=[0, 0, 0, 0],
                 dilation=[1, 1], groups=1, out_dtype=DType.f32)
    g.set_outputs([y])
    verify(g)
    m = NativeModule(g, strict=True)
    names = step_names(m, x)
    assert "quantize to NHWC" in names[0] and "int8 conv" in names[1], names  # no reorder
    got, want = m(torch.from_numpy(x))[0].numpy(), interpret(g, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=float(s) * 1e-3)
    info = np.iinfo(dtype.np)
    assert np.isclose(got.min(), (info.min - zp) * s, rtol=1e-5)
    assert np.isclose(got.max(), (info.max - zp) * s, rtol=1e-5)


def test_int8_max_pool_after_a_conv_reads_nhwc(level):
    """A qconv2d writes NHWC codes; the pool and the flatten after it read them as they lie."""
    rng = np.random.default_rng(2)
    w, wq = per_channel_weight(rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
    g = Graph()
    xv = g.add_input(TensorType(DType.f32, (1, 3, 8, 8)), "x")
    q = g.add_op("quantize", xv, **act_params(-2, 2, DType.u8))
    c = g.add_op("qconv2d", q, g.add_const(w, quant=wq), stride=[1, 1], pad=[1, 1, 1, 1],
                 dilation=[1, 1], groups=1, activation="relu", **out_attrs(0, 6, DType.u8))
    p = g.add_op("max_pool2d", c, kernel=[2, 2], stride=[2, 2])
    g.set_outputs([p, g.add_op("flatten", p)])
    verify(g)
    x = rng.uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32)
    got, want = run_native(g, x), interpret(g, x)
    for a, b in zip(got, want, strict=True):
        assert_requantized(a, b)


# -- qconv2d, qlinear, qmatmul ----------------------------------------------------------------

CONV_CASES = [  # residual, activation, out dtype, residual quantized, groups, per channel
    ("none", "none", DType.f32, False, 1, True),
    ("none", "relu", DType.u8, False, 1, True),
    ("none", "none", DType.i8, False, 1, False),
    ("pre", "relu", DType.u8, True, 1, True),
    ("pre", "relu", DType.i8, False, 1, True),
    ("post", "clip", DType.u8, True, 1, True),
    ("pre", "none", DType.f32, True, 1, True),
    ("post", "relu", DType.f32, False, 1, True),
    ("none", "clip", DType.u8, False, 8, True),  # depthwise
    ("none", "gelu", DType.i8, False, 2, True),
]


def conv_graph(residual, activation, out_dtype, quant_residual, groups, per_channel,
               src: DType = DType.u8, stride: int = 1, res_dtype: DType = DType.i8,
               src_range: tuple[float, float] = (-2, 3), out_range: tuple[float, float] = (-3, 8)):
    rng = np.random.default_rng(3)
    w, wq = per_channel_weight(rng.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32),
                               per_channel=per_channel)
    b = rng.standard_normal(8).astype(np.float32)
    ho = (10 + 2 - 3) // stride + 1
    g = Graph()
    xv = g.add_input(TensorType(DType.f32, (2, 8, 10, 10)), "x")
    rv = g.add_input(TensorType(DType.f32, (2, 8, ho, ho)), "r")
    ins = [g.add_op("quantize", xv, **act_params(*src_range, src)), g.add_const(w, quant=wq),
           g.add_const(b)]
    if residual != "none":
        ins.append(g.add_op("quantize", rv, **act_params(-4, 4, res_dtype)) if quant_residual
                   else rv)
    y = g.add_op("qconv2d", *ins, stride=[stride, stride], pad=[1, 1, 1, 1], dilation=[1, 1],
                 groups=groups, activation=activation, residual=residual,
                 **({"alpha": -1.0, "beta": 4.0} if activation == "clip" else {}),
                 **out_attrs(*out_range, out_dtype))
    g.set_outputs([y])
    verify(g)
    x = rng.uniform(-2.5, 3.5, (2, 8, 10, 10)).astype(np.float32)
    r = rng.uniform(-4, 4, (2, 8, ho, ho)).astype(np.float32)
    return g, (x, r)


@pytest.mark.parametrize("residual,activation,out_dtype,quant_residual,groups,per_channel",
                         CONV_CASES)
def test_qconv2d_matches_the_interpreter(level, residual, activation, out_dtype,
                                         quant_residual, groups, per_channel):
    g, inputs = conv_graph(residual, activation, out_dtype, quant_residual, groups, per_channel)
    (got,), (want,) = run_native(g, *inputs), [interpret(g, *inputs)]
    check(got, want)


@pytest.mark.parametrize("src_range,out_range,out_dtype", [
    ((0, 3), (0, 8), DType.u8),    # zero points 0 both sides: no zero-point attribute at all
    ((0, 3), (-3, 8), DType.u8),   # only the output's
    ((-2, 3), (0, 8), DType.u8),   # only the source's
    ((0, 3), (-8, 8), DType.i8),   # a symmetric i8 output (zero point 0)
    ((0, 3), (0, 8), DType.f32),
])
def test_qconv2d_zero_points_of_zero_match_the_interpreter(level, src_range, out_range,
                                                           out_dtype):
    # a zero point of 0 sets no oneDNN attribute (it then takes another kernel): the codes and
    # the padding must stay those of the reference
    for res in (("none", "relu", False), ("pre", "relu", True)):
        g, inputs = conv_graph(res[0], res[1], out_dtype, res[2], 1, True,
                               src_range=src_range, out_range=out_range)
        assert (act_params(*src_range, DType.u8)["zero_point"][0] == 0) == (src_range[0] == 0)
        check(run_native(g, *inputs)[0], interpret(g, *inputs))


def test_qconv2d_i8_source_and_stride_two(level):
    if native_quant.reduced_weight_range():
        pytest.skip("without VNNI oneDNN halves the weights of an i8-source convolution (it "
                    "then differs from the reference by more than a unit): sources are u8")
    g, inputs = conv_graph("pre", "relu", DType.u8, True, 1, True, src=DType.i8, stride=2)
    check(run_native(g, *inputs)[0], interpret(g, *inputs))


def step_names(m: NativeModule, *inputs: np.ndarray) -> list[str]:
    return [name for name, _ in m.profile(*(torch.from_numpy(x) for x in inputs), iters=1)]


# the layers torch's bundled oneDNN is offered for: u8 sources, no activation but relu, a
# residual only as a sum of codes of the output's type before the activation
TORCH_CONV_CASES = [  # residual, activation, out dtype, groups, per channel, stride
    ("none", "relu", DType.u8, 1, True, 1),
    ("none", "none", DType.i8, 1, False, 2),
    ("pre", "relu", DType.u8, 1, True, 1),
    ("pre", "none", DType.i8, 1, True, 2),
    ("none", "relu", DType.u8, 8, True, 1),  # depthwise
]


@pytest.mark.parametrize("residual,activation,out_dtype,groups,per_channel,stride",
                         TORCH_CONV_CASES)
def test_qconv2d_on_torchs_onednn_matches_the_interpreter(level, monkeypatch, residual,
                                                          activation, out_dtype, groups,
                                                          per_channel, stride):
    """$RTINFER_QCONV=aten runs every offered qconv2d on torch's bundled oneDNN (the one the
    plan keeps where it is faster): the same codes as the reference within a unit."""
    monkeypatch.setenv("RTINFER_QCONV", "aten")
    g, inputs = conv_graph(residual, activation, out_dtype, residual != "none", groups,
                           per_channel, stride=stride, res_dtype=out_dtype)
    m = NativeModule(g, strict=True)
    assert any("torch oneDNN int8 conv" in n for n in step_names(m, *inputs))
    got = m(*(torch.from_numpy(x) for x in inputs))[0].numpy()
    check(got, interpret(g, *inputs))
    # the residual input is read, not written: a second call gives the same codes
    again = m(*(torch.from_numpy(x) for x in inputs))[0].numpy()
    np.testing.assert_array_equal(got, again)


@pytest.mark.parametrize("case", [("post", "relu", DType.u8, True),  # act then add
                                  ("none", "gelu", DType.u8, False),  # no such torch post-op
                                  ("pre", "relu", DType.u8, True)])   # i8 residual, u8 out
def test_qconv2d_torch_not_offered_stays_on_rtinfers_onednn(level, monkeypatch, case):
    monkeypatch.setenv("RTINFER_QCONV", "aten")
    residual, activation, out_dtype, quant_residual = case
    g, inputs = conv_graph(residual, activation, out_dtype, quant_residual, 1, True)
    m = NativeModule(g, strict=True)
    names = step_names(m, *inputs)
    assert not any("torch oneDNN" in n for n in names), names
    check(m(*(torch.from_numpy(x) for x in inputs))[0].numpy(), interpret(g, *inputs))


def test_qconv2d_choice_forced_to_rtinfers_onednn(level, monkeypatch):
    monkeypatch.setenv("RTINFER_QCONV", "onednn")
    g, inputs = conv_graph("pre", "relu", DType.u8, True, 1, True, res_dtype=DType.u8)
    assert not any("torch oneDNN" in n for n in step_names(NativeModule(g, strict=True),
                                                           *inputs))


@pytest.mark.parametrize("dtype", [DType.u8, DType.i8])
@pytest.mark.parametrize("channels", [70, 32, 5])
def test_int8_max_pool_nhwc_exact(level, dtype, channels):
    """rtinfer's own int8 max pool on NHWC codes (a qconv2d's output): full vectors of
    channels, a partial one, padding, dilation and ceil mode, exactly the interpreter's pool of
    the same codes."""
    rng = np.random.default_rng(5)
    w, wq = per_channel_weight(rng.standard_normal((channels, 3, 1, 1)).astype(np.float32))
    g = Graph()
    xv = g.add_input(TensorType(DType.f32, (2, 3, 11, 13)), "x")
    q = g.add_op("quantize", xv, **act_params(-2, 2, DType.u8))
    c = g.add_op("qconv2d", q, g.add_const(w, quant=wq), stride=[1, 1], pad=[0, 0, 0, 0],
                 dilation=[1, 1], groups=1, **out_attrs(-3, 3, dtype))
    windows = [dict(kernel=[3, 3], stride=[2, 2], pad=[1, 1, 1, 1]),
               dict(kernel=[2, 3], stride=[2, 1], dilation=[2, 1], pad=[1, 0, 1, 0]),
               dict(kernel=[2, 2], stride=[2, 2], ceil_mode=True)]
    pools = [g.add_op("max_pool2d", c, **wdw) for wdw in windows]
    g.set_outputs([c, *pools])
    verify(g)
    x = rng.uniform(-2, 2, (2, 3, 11, 13)).astype(np.float32)
    codes, *got = run_native(g, x)
    # the reference: the same pools over the native conv's codes
    r = Graph()
    cv = r.add_input(c.type, "c")
    r.set_outputs([r.add_op("max_pool2d", cv, **wdw) for wdw in windows])
    want = interpret(r, codes)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype == dtype.np and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert len(np.unique(codes)) > 8


def test_int8_max_pool_agrees_with_onednns(level, monkeypatch):
    """$RTINFER_QPOOL=onednn builds oneDNN's int8 pooling instead (for comparisons): the
    same codes as rtinfer's own, NCHW here."""
    g = Graph()
    xv = g.add_input(TensorType(DType.f32, (1, 4, 9, 9)), "x")
    q = g.add_op("quantize", xv, **act_params(-3, 3, DType.u8))
    g.set_outputs([g.add_op("max_pool2d", q, kernel=[3, 3], stride=[2, 2], pad=[1, 1, 1, 1])])
    x = np.random.default_rng(6).uniform(-3, 3, (1, 4, 9, 9)).astype(np.float32)
    own = NativeModule(g, strict=True)
    monkeypatch.setenv("RTINFER_QPOOL", "onednn")
    onednn = NativeModule(g, strict=True)
    np.testing.assert_array_equal(own(torch.from_numpy(x))[0].numpy(),
                                  onednn(torch.from_numpy(x))[0].numpy())


@pytest.mark.parametrize("out_dtype,residual,quant_residual", [
    (DType.u8, "none", False), (DType.i8, "pre", True), (DType.f32, "post", False),
    (DType.f32, "pre", True), (DType.i8, "pre", False)])
def test_qlinear_and_qmatmul_match_the_interpreter(level, out_dtype, residual, quant_residual):
    rng = np.random.default_rng(4)
    wf = rng.standard_normal((24, 40)).astype(np.float32)
    w, wq = per_channel_weight(wf)
    bw, bq = per_channel_weight(wf.T.copy(), axis=-1)
    b = rng.standard_normal(24).astype(np.float32)
    g = Graph()
    xv = g.add_input(TensorType(DType.f32, (2, 5, 40)), "x")
    rv = g.add_input(TensorType(DType.f32, (2, 5, 24)), "r")
    xq = g.add_op("quantize", xv, **act_params(-3, 2, DType.u8))
    extra = []
    if residual != "none":
        extra = [g.add_op("quantize", rv, **act_params(-4, 4, DType.u8)) if quant_residual
                 else rv]
    attrs = dict(activation="relu", residual=residual, **out_attrs(-2, 9, out_dtype))
    y = g.add_op("qlinear", xq, g.add_const(w, quant=wq), g.add_const(b), *extra, **attrs)
    z = g.add_op("qmatmul", xq, g.add_const(bw, quant=bq), g.add_const(b), *extra, **attrs)
    g.set_outputs([y, z])
    verify(g)
    x = rng.uniform(-3, 2, (2, 5, 40)).astype(np.float32)
    r = rng.uniform(-4, 4, (2, 5, 24)).astype(np.float32)
    for got, want in zip(run_native(g, x, r), interpret(g, x, r), strict=True):
        check(got, want)


def test_activation_by_activation_qmatmul_falls_back_to_torch(level):
    g = Graph()
    a = g.add_input(TensorType(DType.f32, (4, 8)), "a")
    b = g.add_input(TensorType(DType.f32, (8, 6)), "b")
    qa = g.add_op("quantize", a, **act_params(-1, 1, DType.u8))
    qb = g.add_op("quantize", b, **act_params(-1, 1, DType.i8))
    g.set_outputs([g.add_op("qmatmul", qa, qb)])
    verify(g)
    with pytest.raises(BackendError, match="activation x activation"):
        NativeModule(g, strict=True)
    m = NativeModule(g)
    assert m.stats.fallbacks == {"qmatmul": 1}


# -- AVX2 without VNNI: vpmaddubsw saturates ----------------------------------------------------

_SATURATION = textwrap.dedent("""
    import json, numpy as np, torch
    from rtinfer.backends.native import quant
    from rtinfer.backends.native_backend import NativeModule
    from rtinfer.ir.graph import Graph
    from rtinfer.ir.interpreter import interpret
    from rtinfer.ir.types import DType, QuantParams, TensorType

    def worst(qmax, src):
        # the worst case for int16 pair sums: codes at the top of their range times weights
        # of one sign at the top of theirs
        w = np.full((16, 64, 3, 3), qmax, np.int8)
        w[1::2] = -qmax
        lin = np.full((16, 256), qmax, np.int8)
        g = Graph()
        x = g.add_input(TensorType(DType.f32, (1, 64, 8, 8)), "x")
        xq = g.add_op("quantize", x, scale=[1.0], zero_point=[0], dtype=src)
        qp = QuantParams(np.full(16, 1e-3, np.float32), np.zeros(16, np.int64), 0)
        y = g.add_op("qconv2d", xq, g.add_const(w, quant=qp), stride=[1, 1], pad=[1, 1, 1, 1],
                     dilation=[1, 1], groups=1)
        rows = g.add_op("quantize", g.add_op("reshape", x, shape=[16, 256]), scale=[1.0],
                        dtype=src)
        z = g.add_op("qlinear", rows, g.add_const(lin, quant=qp))
        g.set_outputs([y, z])
        xs = np.full((1, 64, 8, 8), 255.0 if src == DType.u8 else 127.0, np.float32)
        got = [o.numpy() for o in NativeModule(g, strict=True)(torch.from_numpy(xs))]
        want = interpret(g, xs)
        return [float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(got, want)]

    print(json.dumps({"reduced": quant.reduced_weight_range(),
                      "u8_full": worst(127, DType.u8), "u8_reduced": worst(63, DType.u8),
                      "s8_full": worst(127, DType.i8), "s8_reduced": worst(63, DType.i8)}))
""")


def _capped(lv: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python args`` with rtinfer and oneDNN capped to level ``lv``."""
    from rtinfer.kernels import build

    try:
        build.load(level=lv)  # built here once, so the subprocess only loads it
    except build.NativeUnavailable as e:
        pytest.skip(f"native backend unavailable here: {e}")
    env = {**os.environ, "RTINFER_CPU_ISA": lv}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("lv", [lv for lv in LEVELS if lv != "generic"])
def test_weight_range_without_vnni_keeps_int8_exact(lv):
    """With oneDNN capped to a level (AVX2, AVX512_CORE: no VNNI), full-range weights times
    large u8 codes come out wrong (int16 saturation) and the reduced range (|w| <= 63) is
    exact, as ``reduced_weight_range`` says; i8 sources are no way out (oneDNN's i8-source
    matmul saturates too, and its convolution halves the weights)."""
    out = _capped(lv, ["-c", _SATURATION])
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["reduced"]:
        pytest.skip(f"oneDNN at {lv} has VNNI here")
    assert max(res["u8_reduced"]) < 1e-5, res  # exact: f32 rounding only
    assert min(res["u8_full"]) > 0.1, res  # saturated: the reason for the reduced range
    assert max(res["s8_full"]) > 1e-3, res


@pytest.mark.slow
@pytest.mark.parametrize("lv", [lv for lv in LEVELS if lv != "generic"])
def test_int8_kernels_match_with_onednn_capped(lv):
    """The conv and linear checks above, in a process whose oneDNN runs that level's own int8
    kernels (in this process oneDNN keeps the best ISA the CPU has)."""
    out = _capped(lv, ["-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                       f"{lv} and (matches_the_interpreter or i8_source or nhwc)"])
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout


def test_weight_range_function_in_this_process(level):
    from rtinfer.kernels import build

    ext = build.load(level=level)
    reduced = native_quant.reduced_weight_range(level)
    assert reduced is (not ext.onednn_has_vnni())
    assert native_quant.weight_max(level) == (63 if reduced else 127)


# -- per-layer timing -------------------------------------------------------------------------


def test_time_layer_times_fp32_and_int8(level):
    rng = np.random.default_rng(5)
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (1, 16, 14, 14)), "x")
    w = g.add_const(rng.standard_normal((32, 16, 3, 3)).astype(np.float32))
    b = g.add_const(rng.standard_normal(32).astype(np.float32))
    conv = g.add_op("fused_conv2d", x, w, b, stride=[1, 1], pad=[1, 1, 1, 1], dilation=[1, 1],
                    groups=1, activation="relu")
    lin = g.add_op("linear", g.add_op("flatten", conv),
                   g.add_const(rng.standard_normal((10, 32 * 14 * 14)).astype(np.float32)))
    g.set_outputs([lin])
    before = [(n.op, dict(n.attrs)) for n in g.nodes]
    for v in (conv, lin):
        fp32_ms, int8_ms = time_layer(v.producer, level=level)
        assert fp32_ms > 0 and int8_ms > 0
        assert np.isfinite(fp32_ms) and np.isfinite(int8_ms)
    assert [(n.op, dict(n.attrs)) for n in g.nodes] == before  # the graph is left as it was


def test_time_layer_names_a_node_it_cannot_time():
    g = Graph()
    a = g.add_input(TensorType(DType.f32, (4, 8)), "a")
    b = g.add_input(TensorType(DType.f32, (8, 6)), "b")
    mm = g.add_op("matmul", a, b)
    g.set_outputs([g.add_op("relu", mm)])
    with pytest.raises(Unsupported, match="constant f32 weight") as e:
        time_layer(mm.producer)
    assert e.value.op == "matmul"
    with pytest.raises(Unsupported, match="conv2d, linear or matmul"):
        time_layer(g.nodes[-1])
