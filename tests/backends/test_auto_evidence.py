"""backend="auto" decides on evidence: the candidates race interleaved, a clearly faster one
wins, a hopeless one leaves early, candidates within noise tie and the tie rule picks; the
record carries the evidence (quantiles, calls, verdict, date, CPU key); a record remembered on
another CPU is measured again; a cache hit's report says the choice is remembered.

The race reads the clock ``auto.now``: here a fake one that only the fake modules advance, by
the time each call is said to take, so that no test depends on wall time."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import torch

import rtinfer
from rtinfer.backends import AutoCandidate, auto, dispatch
from rtinfer.kernels.isa import cpu_key


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(auto, "now", c)
    return c


class Fake:
    """A built module whose calls take ``costs[i % len(costs)]`` seconds on the fake clock;
    ``log`` records its calls by name."""

    rtinfer_fallback_ops: list[str] = []
    rtinfer_mkldnn = False

    def __init__(self, name, clock, costs, log, fail_at=None):
        self.name, self.clock, self.costs, self.log, self.fail_at = name, clock, costs, log, fail_at
        self.calls = 0

    def __call__(self, *args):
        self.log.append(self.name)
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("broke")
        self.clock.t += self.costs[self.calls % len(self.costs)]
        self.calls += 1


def _race(clock, **costs):
    log: list[str] = []
    calls = {name: Fake(name, clock, c if isinstance(c, list) else [c], log)
             for name, c in costs.items()}
    times, out, failed = auto.race(calls)
    return times, out, failed, log


# noise that the rule must see through: each call 0-30% above its base, a different pattern
# for each candidate
JITTER = [1.0, 1.3, 1.05, 1.2, 1.1, 1.0, 1.25, 1.15, 1.02, 1.28, 1.07]


def _noisy(base, shift=0):
    return [base * JITTER[(i + shift) % len(JITTER)] for i in range(len(JITTER))]


def test_the_race_interleaves_after_one_warm_up_each(clock):
    _, _, _, log = _race(clock, torch=1e-3, tvm=1e-3)
    # warm-ups, then rounds in candidate order and reversed on alternate rounds
    assert log[:8] == ["torch", "tvm", "torch", "tvm", "tvm", "torch", "torch", "tvm"]


def test_a_clearly_faster_candidate_wins(clock):
    times, out, failed, _ = _race(clock, torch=_noisy(1e-3), native=_noisy(0.8e-3, 5))
    assert failed == {} and set(out) == {"torch"} and out["torch"].startswith(
        "slower than native in ")
    assert len(times["torch"]) < auto.AUTO_MAX_ROUNDS  # separated early, not at the cap
    choice, verdict, tie = auto.decide(times, out)
    assert (choice, tie) == ("native", False)
    assert verdict.startswith("native faster by 2") and "than torch" in verdict


def test_a_hopeless_candidate_leaves_after_a_few_rounds(clock):
    times, out, _, _ = _race(clock, torch=_noisy(10e-3), tvm=_noisy(1e-3, 3))
    assert len(times["torch"]) == auto.AUTO_HOPELESS_ROUNDS and out["torch"].startswith(
        "hopeless")
    assert len(times["tvm"]) == auto.AUTO_MIN_ROUNDS  # the race's least
    # (the warm-up took the first cost of each pattern)
    assert auto.decide(times, out)[:2] == ("tvm", "tvm faster by 91% than torch (median "
                                                  "1.100 vs 12.0 ms; torch hopeless: lower "
                                                  "quartile over 3x tvm's upper quartile after "
                                                  "3 calls)")


@pytest.mark.parametrize("base", [0.05e-3, 30e-3])
def test_equal_candidates_tie_and_the_tie_rule_picks(clock, base):
    times, out, _, _ = _race(clock, torch=_noisy(base), tvm=_noisy(base, 4),
                             native=_noisy(base, 7))
    assert out == {}
    n = len(times["torch"])
    if base < 1e-3:  # a fast model races to the round cap, a slow one to the time budget
        assert n == auto.AUTO_MAX_ROUNDS
    else:
        assert auto.AUTO_MIN_ROUNDS < n < auto.AUTO_MAX_ROUNDS
        assert clock.t < auto.AUTO_BUDGET_S + 3 * 1.3 * base * 2  # warm-ups, the last round
    choice, verdict, tie = auto.decide(times, out)
    assert (choice, tie) == ("native", True)
    assert verdict.startswith("tie within noise (torch ")
    assert verdict.endswith(f"not apart after {n} calls each), chose native for lower per-call "
                            "overhead")


def test_the_tie_rule_is_a_preference_order_not_the_lower_median():
    assert auto.AUTO_TIE_PREFERENCE[:3] == ("native", "torch", "tvm")
    # tvm's median is lower, within noise: torch is earlier in the order
    times = {"tvm": [1.0e-3, 1.15e-3] * 10, "torch": [1.2e-3, 1.0e-3] * 10,
             "other": [1.1e-3] * 20}
    assert auto.decide(times, {}) == (
        "torch", "tie within noise (tvm 1.075 ms, torch 1.100 ms, other 1.100 ms; not "
        "apart after 20 calls each), chose torch for lower per-call overhead", True)
    assert auto.decide({"b": [2.0] * 5, "a": [1.0] * 5}, {})[0] == "a"  # unlisted: by median


def test_apart_is_a_sign_test_on_the_rounds_with_a_margin():
    fast = [1.0] * 25
    assert auto.apart([1.1] * 10, fast[:10])  # slower in 10 of 10 rounds: z 3.16
    assert not auto.apart([1.1] * 9 + [0.9], fast[:10])  # 9 of 10: z 2.5
    assert auto.apart([1.1] * 21 + [0.9] * 4, fast)  # 21 of 25: z 3.4
    assert not auto.apart([1.1] * 20 + [0.9] * 5, fast)  # 20 of 25: z 3.0, not over
    assert not auto.apart([1.01] * 25, fast)  # always slower, but by 1%: within the margin
    assert not auto.apart([1.0] * 25, fast)  # equal rounds count half


def test_a_candidate_that_fails_in_the_race_is_out(clock):
    log: list[str] = []
    calls = {"torch": Fake("torch", clock, [1e-3], log),
             "tvm": Fake("tvm", clock, [0.5e-3], log, fail_at=2)}
    times, out, failed = auto.race(calls)
    assert failed == {"tvm": "failed: RuntimeError: broke"} and out == {}
    assert len(times["torch"]) == auto.AUTO_MIN_ROUNDS


# -- select_backend: the record ---------------------------------------------------------------


@pytest.fixture
def fakes(clock, monkeypatch):
    """Candidates "torch" (1 ms a call) and "native" (0.5 ms) as fake modules; ``builds``
    records each build."""
    builds: list[str] = []
    log: list[str] = []
    costs = {"torch": _noisy(1e-3), "native": _noisy(0.5e-3, 2)}

    def build(name, graph, **options):
        builds.append(name)
        return Fake(name, clock, costs[name], log)

    monkeypatch.setattr(dispatch, "build", build)
    candidates = [AutoCandidate("torch", ("cpu",), lambda: True),
                  AutoCandidate("native", ("cpu",), lambda: True)]
    graph = rtinfer.ir.parse("""
    func @f(%x: f32[1,8]) -> f32[1,8] {
      %y = relu(%x)
      return %y
    }""")

    def select(remembered=None):
        return auto.select_backend(graph, candidates, remembered, lambda module: [], {})

    return select, builds


def test_the_record_carries_the_evidence(fakes):
    select, builds = fakes
    module, backend, record, seconds = select()
    assert backend == "native" == record["choice"] and module.name == "native"
    assert builds == ["torch", "native"] and seconds >= 0
    assert record["cpu"] == auto.machine_key() and record["tie"] is False
    assert record["skipped"] == {} and record["cpu"].startswith(cpu_key() + "/torch-")
    assert datetime.fromisoformat(record["measured"]).tzinfo is not None
    assert record["verdict"].startswith("native faster by 5")
    stats = record["stats"]
    assert set(stats) == {"torch", "native"} == set(record["ms"])
    for name, st in stats.items():
        assert st["p10"] <= st["p25"] <= st["median"] <= st["p75"] <= st["p90"]
        assert st["median"] == record["ms"][name] and st["calls"] >= auto.AUTO_MIN_ROUNDS
    assert stats["torch"]["out"].startswith("slower than native in ")
    assert "out" not in stats["native"]
    assert 0.5 <= stats["native"]["median"] <= 0.5 * 1.3 <= 1.0 <= stats["torch"]["median"]
    assert json.loads(json.dumps(record)) == record  # the compile cache stores it


def test_a_record_remembered_on_this_cpu_is_not_measured_again(fakes, monkeypatch):
    select, builds = fakes
    _, _, record, _ = select()
    monkeypatch.setattr(auto, "race", lambda calls: pytest.fail("measured again"))
    module, backend, again, seconds = select(json.loads(json.dumps(record)))
    assert builds[2:] == ["native"] and backend == "native" and seconds == 0.0
    assert again == {**record, "remembered": True}


@pytest.mark.parametrize("cpu", ["elsewhere-avx2", None])
def test_a_record_remembered_on_another_cpu_is_measured_again(fakes, cpu):
    select, builds = fakes
    remembered = {"choice": "torch", "skipped": {}, "ms": {"torch": 0.1, "native": 9.0},
                  "measured": "2020-01-01T00:00:00+00:00"}
    if cpu is not None:
        remembered["cpu"] = cpu
    _, backend, record, _ = select(remembered)
    assert builds == ["torch", "native"] and backend == "native"
    assert record["cpu"] == auto.machine_key() and not record.get("remembered")
    assert record["measured"] > "2020-01-02"
    assert record["note"] == ("measured again: the remembered choice was measured on "
                              + (cpu or "an unrecorded CPU"))


def test_a_record_measured_where_torch_ran_another_isa_is_measured_again(fakes, monkeypatch):
    """Same rtinfer level, but torch's ATen ran another instruction level then (only rtinfer
    was capped, or CPUID showed more): the verdict does not carry over."""
    select, builds = fakes
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    _, _, record, _ = select()
    assert record["cpu"] == f"{cpu_key()}/torch-avx512"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(auto, "race", lambda calls: pytest.fail("measured"), raising=True)
    with pytest.raises(pytest.fail.Exception, match="measured"):
        select(json.loads(json.dumps(record)))


# -- the report ---------------------------------------------------------------------------------


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


def test_the_report_shows_the_evidence_and_on_a_cache_hit_says_remembered(clock, monkeypatch,
                                                                           tmp_path):
    """Two candidates, both built by the torch backend; the fake clock never moves, so every
    round is even: a tie, which the preference order gives to torch."""
    real_build = dispatch.build
    monkeypatch.setattr(dispatch, "build", lambda name, graph, **o: real_build("torch", graph,
                                                                               **o))
    monkeypatch.setattr(auto, "AUTO_CANDIDATES", [
        AutoCandidate("tvm", ("cpu",), lambda: True),
        AutoCandidate("torch", ("cpu",), lambda: True, differentiable=True)])
    torch.manual_seed(0)
    m, x = MLP().eval(), torch.randn(1, 8)
    cold = rtinfer.compile(m, example_inputs=x, backend="auto", cache=tmp_path)
    auto_ = cold.info.auto
    assert cold.info.cache == "miss" and cold.info.backend == "torch" and auto_["tie"]
    report = cold.report()
    assert ("\n  auto: torch; tie within noise (tvm 0.000 ms, torch 0.000 ms; not apart after "
            f"{auto.AUTO_MAX_ROUNDS} calls each), chose torch for lower per-call overhead\n"
            in report)
    assert (f"\n    measured {auto_['measured'][:10]} {auto_['measured'][11:16]} UTC on "
            f"{auto.machine_key()}:\n      tvm 0.000 ms (quartiles 0.000-0.000, "
            f"{auto.AUTO_MAX_ROUNDS} calls)\n      torch 0.000 ms" in report)
    assert "remembered" not in report

    warm = rtinfer.compile(m, example_inputs=x, backend="auto", cache=tmp_path)
    assert warm.info.cache == "hit" and warm.info.backend == "torch"
    assert warm.info.auto == {**auto_, "remembered": True}
    report = warm.report()
    assert (f"\n    remembered from {auto_['measured'][:10]} on this CPU "
            f"({auto.machine_key()}), not measured again; measured then:\n      tvm 0.000 ms"
            in report)
    assert "    measured 20" not in report  # old timings are not presented as new
    torch.testing.assert_close(warm(x), m(x))
