"""The native backend computes what the reference interpreter computes, on random well-typed
graphs from the op table (views: transposes, reshapes, concats; elementwise bodies; symbolic
dims), before and after O3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from strategies import graph_inputs, graphs

from rtinfer.ir import interpret
from rtinfer.pass_manager import run_pipeline

build = pytest.importorskip("rtinfer.kernels.build")


@pytest.fixture(scope="module", autouse=True)
def native_ext():
    try:
        return build.load()
    except build.NativeUnavailable as e:
        pytest.skip(f"native backend unavailable here: {e}")


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
