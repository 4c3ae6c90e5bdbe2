"""Compile-time work fanned out over Ray workers: ``rtinfer.compile(..., workers=...)``.

    rtinfer.compile(model, precision="int8", calibration=data, workers="ray://head:10001")
    ray.init(address="auto"); rtinfer.compile(model, ...)     # a Ray already initialised

``workers``: ``None`` (the default) uses Ray where ``ray.init`` was already called in this
process, else runs locally; ``"local"`` always runs locally; ``"ray://host:port"`` (or any
address ``ray.init`` takes) connects to that cluster for the compile and disconnects after.

What fans out: the int8 per-layer sensitivity loop (``rtinfer.int8``: one task per layer, the
QDQ graph with that layer int8 run on the sensitivity batches). Each task runs with the torch
thread count of the process that compiles, so a task computes what the local loop computes,
bit for bit: the results are identical either way. The shared inputs (reference outputs,
batches) go to the object store once; at most ``2 x`` the cluster's task slots are in flight,
so the graphs being measured stay few however many layers there are. And TVM MetaSchedule's
builds and measurements (``compile(backend="tvm", tune=N)``): ``rtinfer.backends.tvm_ray``'s
builder and runner, chosen when ``current()`` is Ray; the search and the database stay in the
compiling process. Workers import rtinfer: every node of the cluster needs it installed.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rtinfer.errors import RtinferError

LOCAL = "local"


class WorkersError(RtinferError):
    """``workers=`` names no usable engine, or a task failed on a worker."""


class Workers:
    """Runs ``fn(*shared, item)`` for each item, results in the items' order."""

    kind = LOCAL

    def map(self, fn: Callable[..., Any], items: Iterable[Any],
            shared: tuple[Any, ...] = ()) -> Iterator[Any]:
        for item in items:
            yield fn(*shared, item)


class RayWorkers(Workers):
    """``Workers`` on an initialised Ray: one task per item, each with the caller's torch
    thread count (as many CPUs reserved, up to the cluster's)."""

    kind = "ray"

    def __init__(self) -> None:
        import ray
        import torch

        self.ray = ray
        self.threads = torch.get_num_threads()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.cpus_per_task = min(self.threads, cpus)
        self.window = 2 * max(1, cpus // self.cpus_per_task)

    def map(self, fn: Callable[..., Any], items: Iterable[Any],
            shared: tuple[Any, ...] = ()) -> Iterator[Any]:
        ray = self.ray
        task = ray.remote(_run_task).options(num_cpus=self.cpus_per_task)
        refs = [ray.put(x) for x in shared]  # once, not once per task
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(task.remote(self.threads, fn, len(refs), *refs, item))
            if len(pending) >= self.window:
                yield self._get(pending.popleft(), fn)
        while pending:
            yield self._get(pending.popleft(), fn)

    def _get(self, ref: Any, fn: Callable[..., Any]) -> Any:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
            if isinstance(cause, RtinferError):
                raise cause from None
            raise WorkersError(f"a Ray task of {fn.__qualname__} failed: "
                               f"{type(cause).__name__ if cause else 'error'}: "
                               f"{cause if cause else e}") from None
        except self.ray.exceptions.RayError as e:  # a worker or node died
            raise WorkersError(f"a Ray task of {fn.__qualname__} was lost: {e}") from None


def _run_task(threads: int, fn: Callable[..., Any], n_shared: int, *args: Any) -> Any:
    import torch

    # the compiling process's count: reductions split as they are there, results identical
    torch.set_num_threads(threads)
    return fn(*args[:n_shared], args[n_shared])


_CURRENT: contextvars.ContextVar[Workers | None] = contextvars.ContextVar(
    "rtinfer_workers", default=None)


def current() -> Workers:
    """The workers of the compile in progress (``rtinfer.compile(workers=...)``); outside a
    compile, Ray where it is initialised in this process, else local."""
    chosen = _CURRENT.get()
    if chosen is not None:
        return chosen
    return RayWorkers() if _ray_initialized() else Workers()


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")  # not imported: certainly not initialised
    return ray is not None and ray.is_initialized()


def _open(workers: str | None) -> tuple[Workers, Callable[[], None]]:
    """The workers ``workers`` names and what to do when the compile ends."""
    if workers is None:
        return current(), lambda: None
    if not isinstance(workers, str) or not workers:
        raise WorkersError(f"workers={workers!r}: expected None, {LOCAL!r} or a Ray address "
                           f"such as 'ray://host:10001'")
    if workers == LOCAL:
        return Workers(), lambda: None
    try:
        import ray
    except ImportError as e:
        raise WorkersError(f"workers={workers!r} needs Ray ({e}); pip install 'ray'") from None
    if ray.is_initialized():  # the cluster this process already uses
        return RayWorkers(), lambda: None
    try:
        ray.init(address=workers, logging_level="warning")
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds for a bad or down address
        raise WorkersError(f"workers={workers!r}: cannot connect to Ray there: "
                           f"{type(e).__name__}: {e}") from None
    return RayWorkers(), ray.shutdown


def accepts_workers(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a keyword argument ``workers`` (see the module docstring), in effect for
    everything ``fn`` runs (``current()``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, workers: str | None = None, **kwargs: Any) -> Any:
        chosen, close = _open(workers)
        token = _CURRENT.set(chosen)
        try:
            return fn(*args, **kwargs)
        finally:
            _CURRENT.reset(token)
            close()

    sig = inspect.signature(fn)
    param = inspect.Parameter("workers", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation="str | None")
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), param])
    return wrapper


__all__ = ["LOCAL", "RayWorkers", "Workers", "WorkersError", "accepts_workers", "current"]
