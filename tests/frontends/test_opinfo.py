"""PyTorch's OpInfo database through ``rtinfer.compile`` (``opinfo_harness``): a fixed sample of
ops in the default run, every float32 sample in the slow job."""

from __future__ import annotations

import pytest

pytest.importorskip("expecttest")  # torch's test internals (the OpInfo database) import it

from .opinfo_harness import cases, run_case, summarize  # noqa: E402

# ops with converters, ops that only an aten_call can run (kthvalue, ldexp, special functions),
# several outputs, and in-place-style scatters
SAMPLE = ("abs", "add", "kthvalue", "ldexp", "special.i0e", "special.erfcx", "sort",
          "slice_scatter", "select_scatter", "nn.functional.softplus", "logcumsumexp")


def test_opinfo_sample_compiles_and_matches_eager():
    results = [run_case(c) for c in cases(samples=1, names=set(SAMPLE))]
    assert len(results) >= len(SAMPLE)
    bad = [r for r in results if r.kind != "pass"]
    assert not bad, "\n".join(f"{r.kind} {r.case}: {r.detail}" for r in bad)


def test_random_ops_are_not_compared():
    results = [run_case(c) for c in cases(samples=1, names={"bernoulli"})]
    assert results and {r.kind for r in results} == {"random"}


@pytest.mark.slow
def test_opinfo_float32_samples_reach_90_percent():
    results = [run_case(c) for c in cases(samples=2)]
    s = summarize(results)
    wrong = [f"{r.case}: {r.detail}" for r in results if r.kind in ("wrong", "crash")]
    assert not wrong, "\n".join(wrong)  # never a silent wrong answer nor a raw exception
    assert s["pass_rate"] >= 0.90, s


def test_ops_returning_uninitialized_memory_are_not_compared():
    # torch.empty_like & co. return whatever the allocator holds: any output is correct
    results = [run_case(c) for c in cases(samples=1, names={"empty_like", "new_empty"})]
    assert results and {r.kind for r in results} == {"unspecified"}
    assert summarize(results)["counted"] == 0
