"""backend="auto": each candidate backend is built and timed, the fastest wins, the report shows
the measurements, the compile cache remembers the choice (a hit measures nothing), declined or
lone candidates are not measured. (The decision rule itself: test_auto_evidence.py.)"""

from __future__ import annotations

import re
import time

import pytest
import torch

import rtinfer
from rtinfer.backends import AutoCandidate, auto, dispatch


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class Slow:
    """A built module, made slower by ``delay`` seconds a call."""

    def __init__(self, module, delay: float):
        self.module, self.delay = module, delay
        self.rtinfer_fallback_ops = module.rtinfer_fallback_ops
        self.rtinfer_mkldnn = module.rtinfer_mkldnn

    def __call__(self, *args):
        time.sleep(self.delay)
        return self.module(*args)


@pytest.fixture
def fake_backends(monkeypatch):
    """Two candidates, "torch" and "tvm", both built by the torch backend; the one named in
    ``slow[0]`` sleeps 10 ms a call. Records each build and each measured candidate."""
    builds: list[str] = []
    measured: list[str] = []
    slow = ["torch"]
    real_build, real_race = dispatch.build, auto.race

    def build(name, graph, **options):
        builds.append(name)
        module = real_build("torch", graph, **options)
        return Slow(module, 0.01) if name == slow[0] else module

    def race(calls):
        measured.extend(calls)
        return real_race(calls)

    monkeypatch.setattr(dispatch, "build", build)
    monkeypatch.setattr(auto, "race", race)
    monkeypatch.setattr(auto, "AUTO_CANDIDATES", [
        AutoCandidate("torch", ("cpu",), lambda: True, differentiable=True),
        AutoCandidate("tvm", ("cpu",), lambda: True)])
    return builds, measured, slow


def _mlp():
    """Batch 1: matrix-vector products, single-threaded (no OpenMP barrier for a busy machine's
    scheduler to stall by milliseconds)."""
    torch.manual_seed(0)
    return MLP().eval(), torch.randn(1, 16)


def test_auto_picks_the_faster_backend_and_the_cache_remembers_it(fake_backends, tmp_path):
    builds, measured, slow = fake_backends
    m, x = _mlp()
    cold = rtinfer.compile(m, example_inputs=x, cache=tmp_path)
    assert builds == ["torch", "tvm"] and len(measured) == 2
    assert cold.info.backend == "tvm" and cold.info.auto["choice"] == "tvm"
    ms = cold.info.auto["ms"]
    assert set(ms) == {"torch", "tvm"} and ms["torch"] >= 10.0 > ms["tvm"]
    assert not cold.info.auto["tie"] and "hopeless" in cold.info.auto["stats"]["torch"]["out"]
    report = cold.report()
    assert "backend: tvm (auto -> tvm)" in report
    assert re.search(r"\n  auto: tvm; tvm faster by \d+% than torch \(median 0\.\d{3} vs "
                     r"\d+\.\d ms; torch hopeless: ", report)
    assert re.search(r"\n    measured \d{4}-\d\d-\d\d \d\d:\d\d UTC on \S+:\n      torch \d+\.\d "
                     r"ms \(quartiles [^\n]+\n      tvm 0\.\d{3} ms \(quartiles ", report)
    assert "measure (auto)" in report
    torch.testing.assert_close(cold(x), m(x), rtol=1e-5, atol=1e-5)
    loaded = rtinfer.load(cold.save(tmp_path / "saved"))  # runs in the torch backend, and says so
    assert loaded.info.backend == "torch" and "backend: torch (tvm -> torch)" in loaded.report()
    torch.testing.assert_close(loaded(x), cold(x))

    warm = rtinfer.compile(m, example_inputs=x, cache=tmp_path)
    assert warm.info.cache == "hit" and warm.info.backend == "tvm"
    # load() built torch; the warm compile builds the remembered tvm once and times nothing
    assert builds == ["torch", "tvm", "torch", "tvm"] and len(measured) == 2
    assert f"remembered from {cold.info.auto['measured'][:10]} on this CPU" in warm.report()
    assert torch.equal(warm(x), cold(x))

    slow[0] = "tvm"  # the other way round, without a cache: torch wins
    cm = rtinfer.compile(m, example_inputs=x, cache=False)
    assert cm.info.backend == "torch" and cm.info.auto["ms"]["tvm"] >= 10.0


def test_the_cache_key_of_auto_does_not_depend_on_the_outcome(fake_backends, tmp_path):
    _, _, slow = fake_backends
    m, x = _mlp()
    a = rtinfer.compile(m, example_inputs=x, cache=False)
    slow[0] = "tvm"
    b = rtinfer.compile(m, example_inputs=x, cache=tmp_path)
    assert (a.info.backend, b.info.backend) == ("tvm", "torch")
    slow[0] = "torch"  # would now pick tvm, but the cache remembers torch
    c = rtinfer.compile(m, example_inputs=x, cache=tmp_path)
    assert c.info.cache_key == b.info.cache_key and c.info.backend == "torch"


def test_generated_inputs_time_an_ir_graph(fake_backends):
    builds, measured, _ = fake_backends
    g = rtinfer.ir.parse("""
    func @f(%x: f32[1,8], %i: i64[1]) -> f32[1,8] {
      %y = relu(%x)
      return %y
    }""")
    cm = rtinfer.compile(g, cache=False)
    assert len(measured) == 2 and cm.info.backend == "tvm"
    symbolic = rtinfer.ir.parse("""
    func @f(%x: f32[B,8]) -> f32[B,8] {
      %y = relu(%x)
      return %y
    }""")
    cm = rtinfer.compile(symbolic, cache=False)  # no example inputs to size B: not measured
    assert len(measured) == 2 and cm.info.backend == "torch"
    assert "not measured: symbolic input dims" in cm.report()


def test_a_declined_or_lone_candidate_is_not_measured(fake_backends, monkeypatch):
    builds, measured, _ = fake_backends
    from rtinfer.backends.tvm_backend import declines

    monkeypatch.setattr(auto, "AUTO_CANDIDATES", [
        auto.AUTO_CANDIDATES[0], AutoCandidate("tvm", ("cpu",), lambda: True, declines)])
    torch.manual_seed(0)
    m, x = Conv().eval(), torch.randn(1, 3, 8, 8)
    cm = rtinfer.compile(m, example_inputs=x, cache=False)
    assert builds == ["torch"] and measured == [] and cm.info.backend == "torch"
    assert "tvm skipped: untuned TVM kernels for fused_conv2d" in cm.report()
    m, x = _mlp()
    cm = rtinfer.compile(m, example_inputs=x, trainable=True, cache=False)  # torch alone
    assert builds == ["torch", "torch"] and measured == [] and cm.info.backend == "torch"


def test_a_candidate_that_fails_is_skipped(fake_backends, monkeypatch):
    builds, _, _ = fake_backends
    build = dispatch.build

    def failing(name, graph, **options):
        if name == "tvm":
            raise RuntimeError("no luck\nsecond line")
        return build(name, graph, **options)

    monkeypatch.setattr(dispatch, "build", failing)
    m, x = _mlp()
    cm = rtinfer.compile(m, example_inputs=x, cache=False)
    assert cm.info.backend == "torch" and set(cm.info.auto["ms"]) == {"torch"}
    assert "tvm skipped: failed: RuntimeError: no luck" in cm.report()


def test_a_candidate_that_falls_back_is_skipped(fake_backends, monkeypatch):
    builds, measured, _ = fake_backends
    build = dispatch.build

    def with_fallbacks(name, graph, **options):
        module = build(name, graph, **options)
        if name == "tvm":
            module.rtinfer_fallback_ops = ["relu"]
        return module

    monkeypatch.setattr(dispatch, "build", with_fallbacks)
    m, x = _mlp()
    cm = rtinfer.compile(m, example_inputs=x, cache=False)
    assert builds == ["torch", "tvm"] and len(measured) == 1 and cm.info.backend == "torch"
    assert "tvm skipped: falls back for relu" in cm.report()


def test_auto_with_the_real_tvm_backend():
    pytest.importorskip("tvm")
    m, x = _mlp()
    cm = rtinfer.compile(m, example_inputs=x, cache=False)
    assert {"torch", "tvm"} <= set(cm.info.auto["ms"])  # and native, where it builds
    ms = cm.info.auto["ms"]  # the fastest, unless within noise of another
    assert cm.info.auto["tie"] or cm.info.backend == min(ms, key=ms.__getitem__)
    torch.testing.assert_close(cm(x), m(x), rtol=1e-4, atol=1e-5)
