"""MetaSchedule tuning for the TVM backend: ``rtinfer.compile(model, backend="tvm", tune=N)``.

    db_dir = database_dir(rtinfer.paths.tuning_root(), target)
    report = tune_module(mod, target, trials=N, db_dir=db_dir)   # mod: lowered and fused
    executable = build_tuned(mod, target, db_dir)

Every PrimFunc that ``main`` calls is a tuning task (MetaSchedule's ``extract_tasks``; a kernel
called k times weighs k): for rtinfer, one per fused node and one per other node. A task the
database already has a record for is reused, not tuned again; the others share the budget of N
measured trials under MetaSchedule's gradient task scheduler, which first gives each task one
round of ``trials_per_round(N, tasks)`` trials, then spends the rest on the tasks whose
weighted latency falls fastest. Kernels no record covers keep their untuned schedule.

The database is MetaSchedule's JSON database (``database_workload.json``,
``database_tuning_record.json``, its logs in ``logs/``), one directory per target under the
rtinfer cache, ``<cache>/tvm-tune/<target>/``, so a second compile of the same model (or of
another model with the same kernels) reuses the records. A task with a record is never tuned
again, whatever N: to tune with a larger budget, remove the directory. Tuning needs ``psutil``
and ``xgboost`` (MetaSchedule's cost model).

Two costs of MetaSchedule that do not depend on the budget are cut: ``TuneContext`` and
``default_build`` import ``tvm.s_tir.tensor_intrin``, which parses every target's tensor
intrinsics (~30 s of CPU, in the builder's fresh processes every round); here only the host
architecture's are imported, and the builder builds without them.

Candidates are built and measured in local processes, or on Ray when the compile's workers are
Ray (``compile(workers=...)``, ``rtinfer.workers``; ``tvm_ray``): the search, its seed
(``SEED``) and the database stay here either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtinfer.backends import tvm_ray
from rtinfer.errors import BackendError
from rtinfer.workers import RayWorkers
from rtinfer.workers import current as current_workers

MAX_TRIALS_PER_ROUND = 64  # MetaSchedule's default round
BUILD_TIMEOUT_S = 120.0  # one candidate's compile (a shared, loaded machine is slow)
RUN_TIMEOUT_S = 60.0
# MetaSchedule's evolutionary search: each round samples and evolves a population scored by the
# cost model, then measures the round's best few. The population is 32 per trial of the round,
# 64 to 512 (MetaSchedule's default, made for rounds of 64 trials): a round of 4 trials then
# costs a seconds-long search, not a 20-second one. SEARCH overrides (EvolutionarySearch's
# arguments).
POPULATION_PER_TRIAL, POPULATION_MIN, POPULATION_MAX = 32, 64, 512
SEARCH: dict[str, Any] = {}
# The search's seed; None: MetaSchedule's random one, and a search on every physical core. A
# seed makes the search run on one thread (MetaSchedule's parallel sampling hands its per-thread
# generators out in whatever order threads come), so a budget that gives each task one round
# measures the same candidates every time, locally or on Ray; later rounds follow the measured
# timings, which differ between runs by nature.
SEED: int | None = None


@dataclass
class TuneReport:
    """What tuning did for one build."""

    trials: int  # the budget asked for
    trials_run: int  # candidates measured by this build (0: everything reused)
    tasks: int  # tuning tasks (distinct kernels)
    tasks_reused: int  # tasks the database already had records for
    db_dir: Path | None  # None: a temporary database, gone (compile(cache=False))
    seconds: float

    @property
    def reused(self) -> bool:
        return self.trials_run == 0 and self.tasks_reused == self.tasks

    def summary(self) -> str:
        tuned = self.tasks - self.tasks_reused
        what = (f"all {self.tasks} tasks reused from the database, no new trials"
                if self.reused else
                f"{self.trials_run} of {self.trials} trials over {tuned} tasks"
                + (f" ({self.tasks_reused} more reused)" if self.tasks_reused else "")
                + f" in {self.seconds:.1f} s")
        where = self.db_dir if self.db_dir is not None else "temporary (cache=False)"
        return f"tuned (MetaSchedule): {what}; database {where}"


def check_tune(tune: Any, backend: str) -> int:
    """``tune`` validated for ``compile(..., backend=backend, tune=tune)``."""
    if isinstance(tune, bool) or not isinstance(tune, int) or tune < 0:
        raise BackendError(f"tune must be a number of trials >= 0 (0: no tuning), got {tune!r}")
    if tune and backend != "tvm":
        raise BackendError(f"tune={tune} tunes TVM kernels with MetaSchedule: it needs "
                           f"backend='tvm', not {backend!r}")
    return tune


def _require_tuning_deps() -> None:
    missing = [m for m in ("psutil", "xgboost") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendError(f"tune=N needs {' and '.join(missing)} (MetaSchedule's CPU count and "
                           f"cost model): pip install {' '.join(missing)}")


# -- targets and databases --------------------------------------------------------------------


def tuning_target(target: Any) -> Any:
    """``target`` with ``num-cores`` set (MetaSchedule needs it): the threads the kernels will
    run on, ``$TVM_NUM_THREADS`` or the CPUs this process may use."""
    import tvm

    if target.attrs.get("num-cores") is not None:
        return target
    env = os.environ.get("TVM_NUM_THREADS", "")
    cores = int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))
    return tvm.target.Target({**dict(target.export()), "num-cores": cores})


def database_dir(root: Path, target: Any) -> Path:
    """The database directory of ``target`` under the tuning root ``root``
    (``rtinfer.paths.tuning_root``)."""
    spec = str(target)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
    name = "-".join(str(p) for p in (target.kind.name, target.attrs.get("mcpu"),
                                     target.attrs.get("num-cores")) if p)
    return root / f"{name}-{digest}"


def _open_database(db_dir: Path, target: Any) -> Any:
    from tvm.s_tir import meta_schedule as ms

    db_dir.mkdir(parents=True, exist_ok=True)
    (db_dir / "target.json").write_text(json.dumps({"target": str(target)}) + "\n")
    return ms.database.JSONDatabase(work_dir=str(db_dir), module_equality="structural")


# -- tuning -----------------------------------------------------------------------------------


def trials_per_round(trials: int, tasks: int) -> int:
    """Trials of a task's round: the budget split evenly, so that every task gets a round."""
    return max(1, min(MAX_TRIALS_PER_ROUND, trials // max(tasks, 1)))


def population_size(per_round: int) -> int:
    """The evolutionary search's population for rounds of ``per_round`` trials."""
    return max(POPULATION_MIN, min(POPULATION_MAX, POPULATION_PER_TRIAL * per_round))


def extract_tasks(mod: Any, target: Any) -> list[Any]:
    """The tuning tasks of a lowered, fused Relax module (its PrimFuncs called by ``main``)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.relax_integration.extract_tasks(mod, target)


def tune_module(mod: Any, target: Any, trials: int, db_dir: Path,
                log: Callable[[str], None] | None = None) -> TuneReport:
    """Tune ``mod`` 's tasks that ``db_dir`` 's database has no record for, with ``trials``
    measured trials in all; ``target`` must have ``num-cores`` (``tuning_target``)."""
    _require_tuning_deps()
    from tvm.s_tir import meta_schedule as ms

    log = log or _stderr
    t0 = time.perf_counter()
    db = _open_database(db_dir, target)
    tasks = extract_tasks(mod, target)
    todo = [t for t in tasks
            if db.query_tuning_record(t.dispatched[0], target, t.task_name) is None]
    report = TuneReport(trials, 0, len(tasks), len(tasks) - len(todo), db_dir, 0.0)
    if not todo or trials <= 0:
        report.seconds = time.perf_counter() - t0
        return report
    per_round = trials_per_round(trials, len(todo))
    search = {"population_size": population_size(per_round), **SEARCH}
    log(f"rtinfer tune: {len(todo)} of {len(tasks)} tasks to tune ({report.tasks_reused} "
        f"reused), {trials} trials, {per_round} per round (search population "
        f"{search['population_size']}); database {db_dir}")
    _quiet_console_logging()
    with _only_host_tensor_intrinsics(target):
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            todo, work_dir=str(db_dir), seed=SEED,
            num_threads="physical" if SEED is None else 1,
            strategy=ms.search_strategy.EvolutionarySearch(**search))
    builder, runner = _builder_and_runner(target, log)
    progress = _progress_callback(trials, log)
    with _seeded_numpy(SEED):
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(db_dir),
            max_trials_global=trials, num_trials_per_iter=per_round,
            builder=builder, runner=runner, database=db, cost_model="xgb",
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                               progress],
            task_scheduler="gradient")
    report.trials_run = progress.measured
    report.seconds = time.perf_counter() - t0
    log(f"rtinfer tune: {report.trials_run} trials in {report.seconds:.1f} s")
    return report


def _builder_and_runner(target: Any, log: Callable[[str], None]) -> tuple[Any, Any]:
    """Where candidates are built and measured: on Ray when the compile's workers are Ray
    (``rtinfer.workers``, ``tvm_ray``), else in local processes."""
    from tvm.s_tir import meta_schedule as ms

    workers = current_workers()
    if isinstance(workers, RayWorkers):
        log("rtinfer tune: candidates built and measured on Ray workers")
        return tvm_ray.ray_builder_and_runner(workers.ray, target, _build_function(),
                                              BUILD_TIMEOUT_S, RUN_TIMEOUT_S)
    cores = int(target.attrs["num-cores"])
    return (ms.builder.LocalBuilder(max_workers=cores, timeout_sec=BUILD_TIMEOUT_S,
                                    f_build=_build_function()),
            ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S))


@contextlib.contextmanager
def _seeded_numpy(seed: int | None) -> Iterator[None]:
    """NumPy's global generator seeded for the tuning (the XGBoost cost model scores the first
    round's candidates with it before it has data), the caller's state restored after."""
    if seed is None:
        yield
        return
    import numpy as np

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def build_tuned(mod: Any, target: Any, db_dir: Path) -> Any:
    """Build a lowered, fused Relax module with the database's best schedules applied (kernels
    without a record keep their untuned schedule)."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    db = ms.database.JSONDatabase(work_dir=str(db_dir), module_equality="structural")
    with target, db:
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    return relax.build(mod, target)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_quieted = False


def _quiet_console_logging() -> None:
    """MetaSchedule prints its task table to stdout after every round, at the level of the
    ``tvm.s_tir.meta_schedule`` logger (which its logging setup then resets to DEBUG); unless
    the user set that level, only warnings reach the console (everything still goes to the
    database's ``logs/``)."""
    global _quieted
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    if logger.level == logging.NOTSET or _quieted:
        logger.setLevel(logging.WARNING)
        _quieted = True


@contextlib.contextmanager
def _only_host_tensor_intrinsics(target: Any) -> Iterator[None]:
    """``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, which parses every target's
    tensor intrinsics (CUDA's alone take ~20 s of CPU). For an x86 or Arm target only that
    architecture's are imported: the package stands as a bare module with the real path, so
    its submodules import as usual."""
    name = "tvm.s_tir.tensor_intrin"
    triple = str(target.attrs.get("mtriple", "") or "")
    import platform

    arch = triple.split("-")[0] if triple else platform.machine()
    sub = "x86" if arch in ("x86_64", "i686", "i386") else \
        "arm_cpu" if arch.startswith(("aarch64", "arm")) else None
    if name in sys.modules or sub is None:
        yield
        return
    spec = importlib.util.find_spec(name)
    stub = types.ModuleType(name)
    stub.__path__ = list(spec.submodule_search_locations or [])
    stub.__package__ = name
    sys.modules[name] = stub
    try:
        __import__(f"{name}.{sub}")
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]


def _build_function() -> Callable[..., Any]:
    """MetaSchedule's ``default_build`` without its import of every target's tensor
    intrinsics (~30 s in each builder process, and the builder starts fresh processes every
    round). A nested function, so that the builder processes receive it by value and need not
    import rtinfer."""
    def build(mod: Any, target: Any, _params: Any) -> Any:
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod),
                         target=target)
    return build


def _progress_callback(trials: int, log: Callable[[str], None]) -> Any:
    """A measure callback logging one line per round: trials so far, the task, its best."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self) -> None:
            self.measured = 0
            self.best: dict[int, float] = {}

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            self.measured += len(measure_candidates)
            failed = sum(1 for b, r in zip(builder_results, runner_results, strict=False)
                         if b.error_msg or r.error_msg)
            for r in runner_results:
                if r.run_secs:
                    sec = sum(float(getattr(s, "value", s)) for s in r.run_secs) / len(r.run_secs)
                    self.best[task_id] = min(self.best.get(task_id, sec), sec)
            tasks = task_scheduler.tasks_
            best = self.best.get(task_id)
            log(f"rtinfer tune [{min(self.measured, trials):>{len(str(trials))}}/{trials}] "
                f"task {task_id + 1}/{len(tasks)} {tasks[task_id].ctx.task_name}: "
                f"{len(measure_candidates)} measured"
                + (f", {failed} failed" if failed else "")
                + (f", best {best * 1e3:.3f} ms" if best is not None else ""))

    return Progress()


__all__ = ["TuneReport", "build_tuned", "check_tune", "database_dir", "extract_tasks",
           "population_size", "trials_per_round", "tune_module", "tuning_target"]
