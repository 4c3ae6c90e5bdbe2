"""MetaSchedule measurement over Ray (``compile(backend="tvm", tune=N, workers=...)``): the Ray
builder and runner build and time candidates as the local ones do; with a fixed seed, tuning on
Ray measures exactly the candidates local tuning measures and writes the same records.

The fast tests run the worker-side tasks in this process and drive the builder and runner
through an in-process stand-in for Ray (ordering, failures, timeouts); the slow ones start a
local Ray (``ray.init(num_cpus=2)``) and stop it."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")
pytest.importorskip("psutil")
pytest.importorskip("xgboost")

import tvm  # noqa: E402
from tvm import te  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

import rtinfer  # noqa: E402
from rtinfer.backends import tvm_ray, tvm_tune  # noqa: E402
from rtinfer.errors import BackendError  # noqa: E402
from rtinfer.workers import _CURRENT, RayWorkers, Workers  # noqa: E402

N = 1024


def _candidate() -> tuple[tvm.IRModule, Any, list[Any]]:
    """A hand-made candidate: ``C = A + B`` over f32[1024], its target and argument infos."""
    a, b = te.placeholder((N,), name="A"), te.placeholder((N,), name="B")
    c = te.compute((N,), lambda i: a[i] + b[i], name="C")
    func = te.create_prim_func([a, b, c])
    target = tvm_tune.tuning_target(tvm.target.Target("llvm"))
    return tvm.IRModule({"main": func}), target, ms.arg_info.ArgInfo.from_prim_func(func)


def _computes_a_plus_b(artifact_path: str) -> None:
    rt_mod = tvm.runtime.load_module(artifact_path)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(N, dtype=np.float32), rng.standard_normal(N, dtype=np.float32)
    dev = tvm.runtime.cpu()
    out = tvm.runtime.tensor(np.zeros(N, np.float32), dev)
    rt_mod["main"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), out)
    np.testing.assert_array_equal(out.numpy(), a + b)


def _seconds(result: Any) -> list[float]:
    return [float(getattr(s, "value", s)) for s in result.run_secs]


# -- worker-side tasks, in this process -------------------------------------------------------


def test_build_and_measure_tasks_build_and_time_a_candidate(tmp_path):
    mod, target, args = _candidate()
    artifact = tvm_ray.build_task(tvm_tune._build_function(), mod, target, None)
    path = tmp_path / tvm_ray.ARTIFACT_NAME
    path.write_bytes(artifact)
    assert tarfile.is_tarfile(path)  # LocalBuilder's format: any runner can load it
    _computes_a_plus_b(str(path))
    config = ms.runner.EvaluatorConfig._normalized(None)
    costs = tvm_ray.measure_task(artifact, "cpu", tuple(a.as_json() for a in args), config, 1)
    assert len(costs) == config.repeat and all(0 < c < 1 for c in costs)


# -- builder and runner, on an in-process stand-in for Ray ------------------------------------


class _Ref:
    def __init__(self, fn: Any = None, args: tuple = (), value: Any = None,
                 stuck: bool = False) -> None:
        self.fn, self.args, self.value, self.stuck = fn, args, value, stuck
        self.cancelled = False

    def run(self) -> Any:
        args = [a.value if isinstance(a, _Ref) else a for a in self.args]  # as Ray resolves refs
        return self.fn(*args)


class _InProcessRay:
    """Ray's API as the builder and runner use it, running each task when it is waited on;
    a task of a function in ``stuck`` never finishes."""

    class exceptions:  # noqa: N801 - mirrors ``ray.exceptions``
        class RayError(Exception):
            pass

        class RayTaskError(RayError):
            def __init__(self, cause: BaseException) -> None:
                super().__init__(str(cause))
                self.cause = cause

        class GetTimeoutError(RayError, TimeoutError):
            pass

    def __init__(self, cpus: int = 2, stuck: tuple = ()) -> None:
        self.cpus, self.stuck = cpus, stuck
        self.options: dict[str, dict[str, Any]] = {}

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": float(self.cpus)}

    def put(self, value: Any) -> _Ref:
        return _Ref(value=value)

    def remote(self, fn: Any) -> Any:
        ray = self

        class Task:
            def options(self, **options: Any) -> Task:
                ray.options[fn.__name__] = options
                return self

            def remote(self, *args: Any) -> _Ref:
                return _Ref(fn, args, stuck=fn in ray.stuck)

        return Task()

    def wait(self, refs: list[_Ref], num_returns: int = 1, timeout: float | None = None):
        ready = [r for r in refs if not r.stuck][:num_returns]
        return ready, [r for r in refs if r not in ready]

    def get(self, ref: _Ref, timeout: float | None = None) -> Any:
        if ref.stuck:
            raise self.exceptions.GetTimeoutError("timed out")
        try:
            return ref.run()
        except Exception as e:
            raise self.exceptions.RayTaskError(e) from None

    def cancel(self, ref: _Ref, force: bool = False) -> None:
        ref.cancelled = True


def _failing_build(mod: Any, target: Any, params: Any) -> Any:
    raise BackendError("no LLVM for this candidate")


def test_ray_builder_keeps_candidate_order_and_reports_failures():
    mod, target, _ = _candidate()
    good = ms.builder.BuilderInput(mod, target)
    ray = _InProcessRay()
    ok = tvm_ray.RayBuilder(ray, tvm_tune._build_function(), 5.0).build([good, good])
    assert all(r.error_msg is None for r in ok) and ok[0].artifact_path != ok[1].artifact_path
    for r in ok:  # a directory each: MetaSchedule's RemoveBuildArtifact removes it
        _computes_a_plus_b(r.artifact_path)
        ms.utils.remove_build_dir(r.artifact_path)
        assert not Path(r.artifact_path).parent.exists()
    assert ray.options["build_task"]["num_cpus"] == 1
    failed = tvm_ray.RayBuilder(ray, _failing_build, 5.0).build([good])
    assert failed[0].artifact_path is None
    assert "BackendError: no LLVM for this candidate" in failed[0].error_msg


def test_a_stuck_build_times_out_and_is_cancelled(monkeypatch):
    mod, target, _ = _candidate()
    ray = _InProcessRay(stuck=(tvm_ray.build_task,))
    cancelled: list[_Ref] = []
    monkeypatch.setattr(ray, "cancel", lambda ref, force=False: cancelled.append(ref))
    results = tvm_ray.RayBuilder(ray, tvm_tune._build_function(), 0.5).build(
        [ms.builder.BuilderInput(mod, target)])
    assert results[0].artifact_path is None
    assert results[0].error_msg == "RayBuilder: Timeout, no build finished in 0.5 s"
    assert len(cancelled) == 1


def test_ray_runner_measures_with_the_targets_threads(tmp_path):
    mod, target, args = _candidate()
    path = tmp_path / tvm_ray.ARTIFACT_NAME
    path.write_bytes(tvm_ray.build_task(tvm_tune._build_function(), mod, target, None))
    ray = _InProcessRay(cpus=1)
    _, runner = tvm_ray.ray_builder_and_runner(ray, target, tvm_tune._build_function(), 5, 5)
    futures = runner.run([ms.runner.RunnerInput(str(path), "cpu", args)])
    assert futures[0].done()
    result = futures[0].result()
    assert result.error_msg is None and all(s > 0 for s in _seconds(result))
    # the kernel's threads (num-cores), on no more CPUs than the cluster has
    threads = int(target.attrs["num-cores"])
    assert ray.options["measure_task"] == tvm_ray.measure_options(threads, min(threads, 1))


def test_ray_runner_reports_a_bad_artifact_and_a_timeout(tmp_path):
    _, target, args = _candidate()
    bad = tmp_path / tvm_ray.ARTIFACT_NAME
    bad.write_bytes(b"not a library")
    runner = tvm_ray.RayRunner(_InProcessRay(), 2, 2, 5.0)
    result = runner.run([ms.runner.RunnerInput(str(bad), "cpu", args)])[0].result()
    assert result.run_secs is None
    assert result.error_msg.startswith("RayRunner: An exception occurred\n")
    stuck = tvm_ray.RayRunner(_InProcessRay(stuck=(tvm_ray.measure_task,)), 2, 2, 5.0)
    future = stuck.run([ms.runner.RunnerInput(str(bad), "cpu", args)])[0]
    assert not future.done()
    assert future.result().error_msg == "RayRunner: Timeout, killed after 5.0 seconds\n"


class _Local:
    """Stands for LocalBuilder / LocalRunner, whose process pools take seconds to start."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class LocalBuilder(_Local):
    pass


class LocalRunner(_Local):
    pass


def test_the_compiles_workers_choose_the_builder_and_runner(monkeypatch):
    monkeypatch.setattr(ms.builder, "LocalBuilder", LocalBuilder)
    monkeypatch.setattr(ms.runner, "LocalRunner", LocalRunner)
    _, target, _ = _candidate()
    builder, runner = tvm_tune._builder_and_runner(target, lambda msg: None)  # no Ray here
    assert isinstance(builder, LocalBuilder) and isinstance(runner, LocalRunner)
    assert builder.kwargs["max_workers"] == int(target.attrs["num-cores"])
    on_ray = RayWorkers.__new__(RayWorkers)  # a RayWorkers on the stand-in, no cluster
    on_ray.ray = _InProcessRay(cpus=8)
    token = _CURRENT.set(on_ray)
    try:
        lines: list[str] = []
        builder, runner = tvm_tune._builder_and_runner(target, lines.append)
    finally:
        _CURRENT.reset(token)
    assert (type(builder).__name__, type(runner).__name__) == ("RayBuilder", "RayRunner")
    assert lines == ["rtinfer tune: candidates built and measured on Ray workers"]
    token = _CURRENT.set(Workers())  # workers="local": local, whatever Ray does
    try:
        assert isinstance(tvm_tune._builder_and_runner(target, print)[0], LocalBuilder)
    finally:
        _CURRENT.reset(token)


def test_a_seed_leaves_the_callers_numpy_generator_alone():
    np.random.seed(123)
    want = np.random.random(3)
    np.random.seed(123)
    with tvm_tune._seeded_numpy(0):
        inside = np.random.random(3)
    np.testing.assert_array_equal(inside, np.random.RandomState(0).random_sample(3))
    np.random.seed(123)
    np.testing.assert_array_equal(np.random.random(3), want)


# -- on a local Ray -----------------------------------------------------------------------------


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_builder_and_runner_on_a_local_ray(local_ray):
    mod, target, args = _candidate()
    builder, runner = tvm_ray.ray_builder_and_runner(local_ray, target,
                                                     tvm_tune._build_function(), 60, 60)
    built = builder.build([ms.builder.BuilderInput(mod, target)])[0]
    assert built.error_msg is None
    _computes_a_plus_b(built.artifact_path)
    try:
        result = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])[0]
        result = result.result()
    finally:
        ms.utils.remove_build_dir(built.artifact_path)
    assert result.error_msg is None and all(0 < s < 1 for s in _seconds(result))

    # the measuring worker runs the target's thread count
    @local_ray.remote
    def tvm_threads() -> int:
        return tvm.runtime.num_threads()

    threads = int(target.attrs["num-cores"])
    probe = tvm_threads.options(**tvm_ray.measure_options(threads, min(threads, 2)))
    assert local_ray.get(probe.remote()) == threads


TRIALS = 4


def _tune(model: torch.nn.Module, x: torch.Tensor, cache: Path, workers: str | None):
    cm = rtinfer.compile(model, example_inputs=x, backend="tvm", tune=TRIALS, cache=cache,
                         workers=workers)
    db = cm.module.tuning.db_dir
    records = [json.loads(line) for line in
               (db / "database_tuning_record.json").read_text().splitlines()]
    return cm, records, (db / "database_workload.json").read_text()


@pytest.mark.slow
def test_tuning_on_ray_measures_what_local_tuning_measures(local_ray, tmp_path, monkeypatch):
    monkeypatch.setattr(tvm_tune, "SEED", 0)
    monkeypatch.setattr(tvm_tune, "SEARCH", {"population_size": 64, "genetic_num_iters": 1})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    local, local_records, local_workloads = _tune(model, x, tmp_path / "local", "local")
    on_ray_calls: dict[str, int] = {"build": 0, "run": 0}

    def counting(method: str, original: Any) -> Any:
        def counted(self, inputs):
            on_ray_calls[method] += len(inputs)
            return original(self, inputs)
        return counted

    for cls, method in ((tvm_ray._builder_class()._cls, "build"),
                        (tvm_ray._runner_classes()[0]._cls, "run")):
        monkeypatch.setattr(cls, method, counting(method, getattr(cls, method)))
    on_ray, ray_records, ray_workloads = _tune(model, x, tmp_path / "ray", None)

    assert on_ray_calls == {"build": TRIALS, "run": TRIALS}  # every candidate, on Ray
    lr, rr = local.module.tuning, on_ray.module.tuning
    assert (rr.trials, rr.trials_run, rr.tasks, rr.tasks_reused) == \
        (lr.trials, lr.trials_run, lr.tasks, lr.tasks_reused) == (TRIALS, TRIALS, 1, 0)
    # the same workloads, and a record per candidate: the same trace (the schedule measured),
    # target and arguments, in the same order; only the seconds measured differ
    assert ray_workloads == local_workloads
    assert len(ray_records) == len(local_records) == TRIALS

    def without_seconds(record: list) -> list:
        workload, (trace, seconds, target, args) = record
        assert len(seconds) == 1 and 0 < seconds[0] < 1
        return [workload, trace, target, args]

    assert [without_seconds(r) for r in ray_records] == \
        [without_seconds(r) for r in local_records]
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(on_ray(x), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(on_ray(x), local(x), rtol=1e-5, atol=1e-5)
