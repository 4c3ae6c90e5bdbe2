"""MetaSchedule's builder and runner on Ray: ``compile(backend="tvm", tune=N, workers=...)``.

    # when the compile's workers (rtinfer.workers) are Ray: tvm_tune.tune_module
    builder, runner = ray_builder_and_runner(ray, target, f_build, build_timeout_s, run_timeout_s)
    ms.tune.tune_tasks(..., builder=builder, runner=runner)

``RayBuilder`` builds each candidate of a round as a Ray task holding one CPU (an LLVM compile is
single-threaded), so a round's builds spread over the cluster; the task exports the module as
MetaSchedule's ``LocalBuilder`` does (a tar of object files) and returns its bytes, which land in
a temporary directory here: the artifact path MetaSchedule hands to the runner and later removes
(``RemoveBuildArtifact``). ``RayRunner`` ships those bytes to a Ray task that measures them with
``LocalRunner``'s own protocol (load, random-filled arguments, ``time_evaluator`` with the same
``EvaluatorConfig``). A measurement holds as many CPUs as the kernels run threads on (the
target's ``num-cores``, at most the cluster's) and runs exactly that many TVM threads, so two
measurements never share cores and a kernel is timed as it will run.

What stays the same as local tuning: the search, its seed and the cost model run in this
process (with a fixed seed, ``tvm_tune.SEED``, the first round measures the local run's
candidates), the measurement protocol, and the database, which MetaSchedule writes here from the
results. Timings differ from run to run by nature, local or not. Every node that builds
or measures needs rtinfer and TVM installed and the CPU the target names.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ARTIFACT_NAME = "tvm_tmp_mod.tar"  # LocalBuilder's name (``tar`` output format)


def ray_builder_and_runner(ray: Any, target: Any, f_build: Callable[..., Any],
                           build_timeout_s: float, run_timeout_s: float) -> tuple[Any, Any]:
    """A ``RayBuilder`` and a ``RayRunner`` on the initialised ``ray`` for ``target`` (which
    has ``num-cores``: ``tvm_tune.tuning_target``)."""
    threads = int(target.attrs["num-cores"])
    cluster_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return (RayBuilder(ray, f_build, build_timeout_s),
            RayRunner(ray, threads, min(threads, cluster_cpus), run_timeout_s))


# -- the tasks (module-level: Ray ships them by reference, workers import rtinfer) ------------


def build_task(f_build: Callable[..., Any], mod: Any, target: Any,
               params: bytes | None) -> bytes:
    """Build one candidate and return its exported library's bytes."""
    from tvm.runtime import load_param_dict
    from tvm.support.tar import tar

    rt_mod = f_build(mod, target, load_param_dict(params) if params is not None else None)
    with tempfile.TemporaryDirectory(prefix="rtinfer-ms-build-") as d:
        path = os.path.join(d, ARTIFACT_NAME)
        rt_mod.export_library(path, fcompile=tar)
        return Path(path).read_bytes()


def measure_task(artifact: bytes, device_type: str, args_info: tuple[Any, ...],
                 evaluator_config: Any, alloc_repeat: int) -> list[float]:
    """Time one built candidate as ``LocalRunner`` does; the seconds of each repeat."""
    import tvm
    from tvm.s_tir.meta_schedule.runner import local_runner

    with tempfile.TemporaryDirectory(prefix="rtinfer-ms-run-") as d:
        path = os.path.join(d, ARTIFACT_NAME)
        Path(path).write_bytes(artifact)
        rt_mod = tvm.runtime.load_module(path)
        device = tvm.runtime.device(device_type, 0)
        args = local_runner.default_alloc_argument(device, args_info, alloc_repeat)
        return local_runner.default_run_evaluator(rt_mod, device, evaluator_config, args)


def measure_options(threads: int, cpus: int) -> dict[str, Any]:
    """The Ray options of a measurement task: ``cpus`` CPUs held, ``threads`` TVM threads."""
    # TVM sizes its thread pool from TVM_NUM_THREADS when a process first runs a kernel; Ray
    # keeps the workers of this environment apart from its other workers
    return {"num_cpus": cpus, "max_retries": 0,
            "runtime_env": {"env_vars": {"TVM_NUM_THREADS": str(threads)}}}


def _failure(ray: Any, e: BaseException) -> str:
    """What went wrong in a task, in a line or a traceback: MetaSchedule logs it per candidate."""
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = getattr(e, "cause", None)
        return f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(e)
    return f"the Ray task was lost: {type(e).__name__}: {e}"


# -- MetaSchedule's builder and runner --------------------------------------------------------


@functools.cache
def _builder_class() -> type:
    # built on first use: the classes derive from TVM's, and importing this module needs no TVM
    from tvm.ir.utils import derived_object
    from tvm.runtime import save_param_dict
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    @derived_object
    class RayBuilder(PyBuilder):
        """Builds a round's candidates as Ray tasks of one CPU each."""

        def __init__(self, ray: Any, f_build: Callable[..., Any], timeout_s: float) -> None:
            super().__init__()
            self.ray = ray
            self.f_build = f_build
            self.timeout_s = timeout_s
            self.task = ray.remote(build_task).options(num_cpus=1, max_retries=0)

        def build(self, build_inputs: list[Any]) -> list[Any]:
            ray = self.ray
            f_build = ray.put(self.f_build)  # once per round, not once per candidate
            pending: dict[Any, int] = {}  # task -> its candidate's index
            for i, b in enumerate(build_inputs):
                params = None if b.params is None else bytes(save_param_dict(b.params))
                pending[self.task.remote(f_build, b.mod, b.target, params)] = i
            results: list[Any] = [None] * len(build_inputs)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.timeout_s)
                if not ready:
                    # nothing finished for a whole timeout: the builds left are stuck (or
                    # queued behind stuck ones): give them up, as LocalBuilder kills its own
                    for ref, i in pending.items():
                        ray.cancel(ref, force=True)
                        results[i] = BuilderResult(None, f"RayBuilder: Timeout, no build "
                                                         f"finished in {self.timeout_s} s")
                    break
                for ref in ready:
                    results[pending.pop(ref)] = self._result(ref)
            return results

        def _result(self, ref: Any) -> Any:
            try:
                artifact = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:
                return BuilderResult(None, "RayBuilder: An exception occurred\n"
                                           + _failure(self.ray, e))
            # a directory per artifact: MetaSchedule removes the artifact's directory
            path = os.path.join(tempfile.mkdtemp(prefix="rtinfer-ms-"), ARTIFACT_NAME)
            Path(path).write_bytes(artifact)
            return BuilderResult(path, None)

    return RayBuilder


@functools.cache
def _runner_classes() -> tuple[type, type]:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import (
        EvaluatorConfig,
        PyRunner,
        PyRunnerFuture,
        RunnerResult,
    )

    @derived_object
    class RayRunnerFuture(PyRunnerFuture):
        """One measurement in flight on Ray."""

        def __init__(self, ray: Any, ref: Any, timeout_s: float) -> None:
            super().__init__()
            self.ray = ray
            self.ref = ref
            self.timeout_s = timeout_s
            self.outcome: Any = None

        def done(self) -> bool:
            ready, _ = self.ray.wait([self.ref], timeout=0)
            return bool(ready)

        def result(self) -> Any:
            if self.outcome is None:
                self.outcome = self._fetch()
            return self.outcome

        def _fetch(self) -> Any:
            ray = self.ray
            try:
                return RunnerResult(ray.get(self.ref, timeout=self.timeout_s), None)
            except ray.exceptions.GetTimeoutError:
                ray.cancel(self.ref, force=True)
                return RunnerResult(None, f"RayRunner: Timeout, killed after {self.timeout_s} "
                                          f"seconds\n")
            except ray.exceptions.RayError as e:
                return RunnerResult(None, "RayRunner: An exception occurred\n"
                                          + _failure(ray, e))

    @derived_object
    class RayRunner(PyRunner):
        """Measures built candidates as Ray tasks holding ``cpus`` CPUs, ``threads`` TVM
        threads each, with ``LocalRunner``'s default evaluator settings."""

        def __init__(self, ray: Any, threads: int, cpus: int, timeout_s: float) -> None:
            super().__init__()
            self.ray = ray
            self.threads = threads
            self.cpus = cpus
            self.timeout_s = timeout_s
            self.evaluator_config = EvaluatorConfig._normalized(None)  # LocalRunner's default
            self.task = ray.remote(measure_task).options(**measure_options(threads, cpus))

        def run(self, runner_inputs: list[Any]) -> list[Any]:
            futures = []
            for r in runner_inputs:
                artifact = Path(str(r.artifact_path)).read_bytes()
                args_info = tuple(a.as_json() for a in r.args_info)
                ref = self.task.remote(artifact, str(r.device_type), args_info,
                                       self.evaluator_config, 1)
                # MetaSchedule takes the results in order: each waits its timeout from when
                # the one before it came back, as LocalRunner's one-at-a-time pool does
                futures.append(RayRunnerFuture(self.ray, ref, self.timeout_s))
            return futures

    return RayRunner, RayRunnerFuture


def RayBuilder(ray: Any, f_build: Callable[..., Any], timeout_s: float) -> Any:  # noqa: N802
    """MetaSchedule builder on Ray (see the module docstring)."""
    return _builder_class()(ray, f_build, timeout_s)


def RayRunner(ray: Any, threads: int, cpus: int, timeout_s: float) -> Any:  # noqa: N802
    """MetaSchedule runner on Ray (see the module docstring)."""
    return _runner_classes()[0](ray, threads, cpus, timeout_s)


__all__ = ["ARTIFACT_NAME", "RayBuilder", "RayRunner", "build_task", "measure_options",
           "measure_task", "ray_builder_and_runner"]
