"""The compile cache: a second compile of the same model is a hit that skips the pipeline; a
changed pass option, pass version, target or model misses; a corrupted entry is a miss."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.cache import (
    cache_key,
    graph_digest,
    model_key,
    open_cache,
    pipeline_fingerprint,
    versions,
)
from rtinfer.frontends import capture
from rtinfer.pass_manager import Option, unregister_pass
from rtinfer.paths import compile_cache_dir

RUNS: list[int] = []


def counting(graph, ctx):
    RUNS.append(ctx.options["k"])


@pytest.fixture
def counted():
    """A custom pass that records each run, in a pipeline after O1."""
    RUNS.clear()
    rtinfer.register_pass("count-runs", counting, summary="count how often it runs",
                          options={"k": Option(int, 1, "recorded")})
    yield
    unregister_pass("count-runs")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    m = Net().eval()
    m.bn.running_mean.uniform_(-0.5, 0.5)
    return m, torch.randn(1, 3, 8, 8)


def test_second_compile_is_a_hit_and_skips_the_pipeline(net, counted, tmp_path):
    m, x = net
    cold = rtinfer.compile(m, example_inputs=x, pipeline="O2,count-runs", cache=tmp_path)
    assert cold.info.cache == "miss" and RUNS == [1]
    warm = rtinfer.compile(m, example_inputs=x, pipeline="O2,count-runs", cache=tmp_path)
    assert warm.info.cache == "hit" and RUNS == [1]  # the passes did not run again
    assert warm.info.cache_key == cold.info.cache_key
    assert warm.info.ops_after == cold.info.ops_after and "fused_conv2d" in warm.info.ops_after
    assert [p[0] for p in warm.info.passes] == [p[0] for p in cold.info.passes]
    torch.testing.assert_close(warm(x), m(x), rtol=1e-4, atol=1e-5)
    report = warm.report()
    assert "cache: hit" in report and "cold compile" in report and "warm compile" in report
    assert "cache: miss" in cold.report()


def test_changing_a_pass_option_or_version_misses(net, counted, tmp_path):
    m, x = net
    rtinfer.compile(m, example_inputs=x, pipeline="O1,count-runs", cache=tmp_path)
    cm = rtinfer.compile(m, example_inputs=x, pipeline="O1,count-runs{k=2}", cache=tmp_path)
    assert cm.info.cache == "miss" and RUNS == [1, 2]
    rtinfer.register_pass("count-runs", counting, summary="count how often it runs",
                          options={"k": Option(int, 1, "recorded")}, version=2, replace=True)
    cm = rtinfer.compile(m, example_inputs=x, pipeline="O1,count-runs", cache=tmp_path)
    assert cm.info.cache == "miss" and RUNS == [1, 2, 1]
    cm = rtinfer.compile(m, example_inputs=x, pipeline="O1,count-runs", cache=tmp_path)
    assert cm.info.cache == "hit" and RUNS == [1, 2, 1]


def test_the_key_covers_target_backend_pipeline_and_model(net):
    m, x = net
    g = capture(m, x)
    base = cache_key(g, "cpu", "O2", "torch")
    assert cache_key(capture(m, x), "cpu", "O2", "torch") == base  # deterministic capture
    assert cache_key(g, "cuda", "O2", "torch") != base
    assert cache_key(g, "cpu", "O2", "tvm") != base
    assert cache_key(g, "cpu", "O1", "torch") != base
    with torch.no_grad():
        m.conv.weight[0, 0, 0, 0] += 1.0  # one weight changed: another model
    assert cache_key(capture(m, x), "cpu", "O2", "torch") != base


def test_the_key_covers_the_data_the_passes_read(net, tmp_path):
    """Two calibration sets give two keys; no data ("") gives the key as it was before passes
    could read data (entries stored then still hit)."""
    g = capture(*net)
    base = cache_key(g, "cpu", "O2", "torch")
    assert cache_key(g, "cpu", "O2", "torch", data_digest="") == base
    before = {"graph": graph_digest(g), "target": "cpu", "backend": "torch",
              "pipeline": pipeline_fingerprint("O2"), "versions": versions()}
    assert base == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    a = cache_key(g, "cpu", "O2", "torch", data_digest="calibration-a")
    b = cache_key(g, "cpu", "O2", "torch", data_digest="calibration-b")
    assert len({base, a, b}) == 3
    fp = "0" * 64
    assert model_key(fp, "cpu", "O2", "torch", data_digest="") == model_key(fp, "cpu", "O2",
                                                                           "torch")
    assert len({model_key(fp, "cpu", "O2", "torch", data_digest=d) for d in ("", "a", "b")}) == 3
    store = open_cache(tmp_path, "cpu", "O2", "torch", data_digest="calibration-a")
    assert store.lookup(g) is None and store.key == a and store.state == "miss"


def test_other_input_shapes_miss(net, tmp_path):
    m, x = net
    rtinfer.compile(m, example_inputs=x, cache=tmp_path)
    cm = rtinfer.compile(m, example_inputs=torch.randn(2, 3, 8, 8), cache=tmp_path)
    assert cm.info.cache == "miss"


def test_corrupted_entry_is_a_warning_and_a_miss(net, tmp_path):
    m, x = net
    cold = rtinfer.compile(m, example_inputs=x, cache=tmp_path)
    weights = tmp_path / cold.info.cache_key / "weights.npz"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="corrupted"):
        cm = rtinfer.compile(m, example_inputs=x, cache=tmp_path)
    assert cm.info.cache == "miss"
    torch.testing.assert_close(cm(x), m(x), rtol=1e-4, atol=1e-5)
    assert rtinfer.compile(m, example_inputs=x, cache=tmp_path).info.cache == "hit"


def test_cache_off_and_default_directory(net, tmp_path, monkeypatch):
    m, x = net
    cm = rtinfer.compile(m, example_inputs=x, cache=False)
    assert cm.info.cache == "off" and "cache: off" in cm.report()
    monkeypatch.setenv("RTINFER_CACHE_DIR", str(tmp_path / "env"))
    assert compile_cache_dir(True) == tmp_path / "env"
    assert open_cache(True, "cpu", "O2", "torch").where == str(tmp_path / "env")
    monkeypatch.delenv("RTINFER_CACHE_DIR")
    assert str(compile_cache_dir(True)).endswith(".cache/rtinfer")
    assert compile_cache_dir(False) is None
    assert open_cache(False, "cpu", "O2", "torch").state == "off"


def test_verify_each_always_runs_the_pipeline(net, counted, tmp_path):
    m, x = net
    rtinfer.compile(m, example_inputs=x, pipeline="O1,count-runs", cache=tmp_path)
    cm = rtinfer.compile(m, example_inputs=x, pipeline="O1,count-runs", cache=tmp_path,
                         verify_each=True)
    assert RUNS == [1, 1] and cm.info.cache == "miss"


def test_ir_input_hits_too(tmp_path):
    from rtinfer.ir.parser import parse

    g = parse("""
    func @main(%x: f32[2,4]) -> f32[2,4] {
      %a = add(%x, %x)
      %b = add(%x, %x)
      %c = mul(%a, %b)
      return %c
    }""")
    assert rtinfer.compile(g, cache=tmp_path).info.cache == "miss"
    cm = rtinfer.compile(g, cache=tmp_path)
    assert cm.info.cache == "hit"
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(cm(x), 4 * x)
