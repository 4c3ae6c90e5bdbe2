"""The native backend computes what the reference interpreter computes, on random well-typed
graphs from the op table (views: transposes, reshapes, concats; elementwise bodies; symbolic
dims), and on random convolution chains, before and after O3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtinfer.errors import IRError
from rtinfer.ir import Graph, TensorType, interpret
from rtinfer.ir.ops.common import expand_pads
from rtinfer.ir.types import DType
from rtinfer.pass_manager import run_pipeline
from tests.strategies import graph_inputs, graphs

build = pytest.importorskip("rtinfer.kernels.build")


pytestmark = pytest.mark.usefixtures("native")


def _check(g) -> None:
    from rtinfer.backends.native_backend import build_native_module

    inputs = graph_inputs(g, seed=0)
    want = interpret(g, *inputs)
    want = list(want) if isinstance(want, tuple) else [want]
    got = build_native_module(g)(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.numpy(), np.asarray(b), rtol=1e-4, atol=1e-5)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(graph=graphs())
def test_native_matches_the_interpreter_on_random_graphs(graph):
    _check(graph)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(graph=graphs())
def test_native_matches_the_interpreter_after_o3(graph):
    _check(run_pipeline(graph.clone(), "O3").graph)


@st.composite
def conv_nets(draw):
    """Random chains of convolutions over an NCHW image: any channel counts, kernels, strides,
    dilations, groups (plain, grouped, depthwise), pads in each form the IR allows (one value,
    one per axis, begins then ends), with ReLU/ReLU6 and residual adds between, and sometimes a
    max pool. O3 folds biases, fuses activations and residuals into the convs."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    c, h, w = draw(st.integers(1, 6)), draw(st.integers(3, 14)), draw(st.integers(3, 14))
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (1, c, h, w)), "x")
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["plain", "grouped", "depthwise", "pool"]))
        k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        stride = draw(st.sampled_from([(1,), (2,), (1, 2)]))
        dil = draw(st.sampled_from([(1,), (2, 1)]))
        form = draw(st.sampled_from(["one", "per-axis", "begin-end"]))
        pad = {"one": (draw(st.integers(0, 2)),),
               "per-axis": (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
               "begin-end": tuple(draw(st.integers(0, 2)) for _ in range(4))}[form]
        if kind == "pool":
            pad = tuple(min(p, kk // 2) for p, kk in zip(expand_pads(pad, 2), k * 2,
                                                         strict=True))
            op, attrs, args = "max_pool2d", {"kernel": k, "stride": stride, "pad": pad}, ()
        else:
            groups = {"plain": 1, "grouped": math.gcd(c, 2), "depthwise": c}[kind]
            o = c if kind == "depthwise" else groups * draw(st.integers(1, 4))
            wt = g.add_const(rng.standard_normal((o, c // groups, *k)).astype(np.float32))
            args = (wt,) + ((g.add_const(rng.standard_normal(o).astype(np.float32)),)
                            if draw(st.booleans()) else ())
            op, attrs = "conv2d", {"stride": stride, "pad": pad, "dilation": dil,
                                   "groups": groups}
        try:
            y = g.add_op(op, x, *args, **attrs)
        except IRError:  # the window does not fit the image
            continue
        act = draw(st.sampled_from(["none", "relu", "relu6"]))
        if act == "relu":
            y = g.add_op("relu", y)
        elif act == "relu6":
            y = g.add_op("clip", y, min=0.0, max=6.0)
        if y.type.shape == x.type.shape and draw(st.booleans()):
            y = g.add_op("add", y, x)
        x, c = y, y.type.shape[1]
    g.set_outputs([x])
    return g


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(graph=conv_nets(), o3=st.booleans())
def test_native_convolutions_match_the_interpreter(graph, o3):
    _check(run_pipeline(graph.clone(), "O3").graph if o3 else graph)
