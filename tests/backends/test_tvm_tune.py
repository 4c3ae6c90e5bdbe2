"""``rtinfer.compile(backend="tvm", tune=N)``: MetaSchedule tunes the kernels, the build applies
the records, a second compile reuses them, bad ``tune`` values are errors. One small conv model
tuned once (8 trials, a small search population) serves every test."""

from __future__ import annotations

import json
import time

import pytest
import torch

pytest.importorskip("tvm")
pytest.importorskip("psutil")
pytest.importorskip("xgboost")

import rtinfer  # noqa: E402
from rtinfer.backends import tvm_tune  # noqa: E402
from rtinfer.errors import BackendError  # noqa: E402

TRIALS = 8


def _model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    return model, torch.randn(1, 3, 16, 16)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    model, x = _model()
    with pytest.MonkeyPatch.context() as mp:
        # a smaller search than MetaSchedule's default (512, 4): the round costs seconds
        mp.setattr(tvm_tune, "SEARCH", {"population_size": 64, "genetic_num_iters": 1})
        cm = rtinfer.compile(model, example_inputs=x, backend="tvm", tune=TRIALS, cache=cache)
    return cache, model, x, cm


def test_tuned_output_matches_eager(tuned):
    _, model, x, cm = tuned
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(cm(x), want, rtol=1e-4, atol=1e-4)


def test_tuning_report_and_database_records(tuned):
    cache, _, _, cm = tuned
    report = cm.module.tuning
    assert (report.trials, report.trials_run, report.tasks, report.tasks_reused) == \
        (TRIALS, TRIALS, 1, 0)
    assert report.db_dir.parent == cache / "tvm-tune"
    records = [json.loads(line) for line in
               (report.db_dir / "database_tuning_record.json").read_text().splitlines()]
    assert len(records) == TRIALS
    workloads = (report.db_dir / "database_workload.json").read_text().splitlines()
    assert len(workloads) == report.tasks
    text = cm.report()
    assert f"tuned (MetaSchedule): {TRIALS} of {TRIALS} trials over 1 tasks" in text
    assert str(report.db_dir) in text


def test_second_compile_reuses_the_records(tuned, monkeypatch):
    from tvm.s_tir import meta_schedule as ms

    cache, model, x, first = tuned

    def no_tuning(**kwargs):
        raise AssertionError("tuned again although the database has every task")

    monkeypatch.setattr(ms.tune, "tune_tasks", no_tuning)
    t0 = time.perf_counter()
    cm = rtinfer.compile(model, example_inputs=x, backend="tvm", tune=TRIALS, cache=cache)
    seconds = time.perf_counter() - t0
    report = cm.module.tuning
    assert report.reused and report.trials_run == 0 and report.tasks_reused == 1
    assert report.db_dir == first.module.tuning.db_dir
    assert "all 1 tasks reused from the database" in cm.report()
    torch.testing.assert_close(cm(x), first(x), rtol=1e-4, atol=1e-4)
    assert seconds < first.info.timings["total"]


def test_tune_is_in_the_compile_cache_key(tuned):
    cache, model, x, first = tuned
    untuned = rtinfer.compile(model, example_inputs=x, backend="tvm", cache=cache)
    assert untuned.module.tuning is None
    assert untuned.info.cache_key != first.info.cache_key


@pytest.mark.parametrize("tune", [-1, 2.5, True, "8"])
def test_bad_tune_values(tune):
    model, x = _model()
    with pytest.raises(BackendError, match="tune must be a number of trials >= 0"):
        rtinfer.compile(model, example_inputs=x, backend="tvm", tune=tune, cache=False)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_tune_needs_the_tvm_backend(backend):
    model, x = _model()
    with pytest.raises(BackendError, match="needs backend='tvm'"):
        rtinfer.compile(model, example_inputs=x, backend=backend, tune=8, cache=False)


def test_tune_needs_static_shapes():
    model, _ = _model()
    x = torch.randn(2, 3, 16, 16)  # a batch of 2: torch.export specializes a dynamic dim of 1
    with pytest.raises(BackendError, match="static input shapes"):
        rtinfer.compile(model, example_inputs=x, backend="tvm", tune=8, cache=False,
                        dynamic_dims={"input": {0: "B"}})
