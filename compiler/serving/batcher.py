"""``Batcher``: dynamic batching in front of a compiled model.

    with rtinfer.serving.Batcher(compiled, max_batch_size=16, max_wait_ms=2.0) as batcher:
        y = batcher(x)                 # one example, without the batch axis; thread-safe
        y = await batcher.submit(x)    # the same from asyncio

Callers' requests wait in one bounded queue; a worker thread takes the oldest request and those
of the same shapes behind it, up to ``max_batch_size`` or until the oldest has waited
``max_wait_ms``, stacks them along the batch axis, pads the stack to the next bucket size, runs
the model once and hands each caller its own rows (copies: padding rows and other requests'
rows never reach a caller).

Buckets are the powers of two up to ``max_batch_size`` (and ``max_batch_size`` itself): a
model compiled with a symbolic batch dim (``dynamic_dims={"x": {0: "B"}}``) runs each of them,
and the constructor runs each once, so that the native backend builds its plan for every bucket
shape before the first request (no request pays a compile). A model compiled for one static
batch size has that size as its only bucket. Padding rows cost as much as real ones, so a batch
is padded up only while padding is at most ``pad_limit`` (a quarter) of its bucket: 7 requests
run as 8 rows, 10 run as 8 now and 2 right after, not as 16.

A front end that knows a request is on its way (an HTTP server reading and decoding a body)
announces it with ``with batcher.expecting(): ... batcher.submit(...)``. Once a front end
announces, the worker waits for a batch to fill only while announced requests are still to be
queued: a lone request runs at once instead of waiting ``max_wait_ms`` for company that is not
coming, and under load the requests that queue while the model runs form the next batch.

The worker thread runs the model with the torch thread count of the thread that made the
batcher: OpenMP keeps the count per thread, and a new thread would start from the process
default (every core), oversubscribing cores shared with other replicas.

A request is checked when it is submitted (``Signature``): a bad one gets ``InvalidRequest``
and never joins a batch. Where a batched call fails anyway, each request of that batch is run
alone, so only the request that fails gets the error.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import contextvars
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from rtinfer.errors import RtinferError
from rtinfer.ir.types import DType
from rtinfer.serving.errors import (
    BatcherClosed,
    InvalidRequest,
    Overloaded,
    RequestTimeout,
    ServingError,
)
from rtinfer.serving.signature import Request, Signature

# the latencies the p50/p99 are computed over: the most recent ones, so that the numbers follow
# the current load and the memory stays bounded
LATENCY_WINDOW = 10_000


def bucket_sizes(max_batch_size: int, static_batch: int | None = None) -> list[int]:
    """The batch sizes the model is run with: 1, 2, 4, ... up to ``max_batch_size`` (which is
    included when it is not a power of two), or the one static batch size."""
    if static_batch is not None:
        return [static_batch]
    sizes = []
    n = 1
    while n < max_batch_size:
        sizes.append(n)
        n *= 2
    return [*sizes, max_batch_size]


def check_options(max_batch_size: int, max_wait_ms: float, max_queue_size: int,
                  timeout_ms: float | None, pad_limit: float) -> None:
    """A ``ServingError`` naming the first batcher option out of range."""
    if type(max_batch_size) is not int or max_batch_size < 1:
        raise ServingError(f"max_batch_size={max_batch_size!r}: expected an integer >= 1")
    for label, v in (("max_wait_ms", max_wait_ms), ("timeout_ms", timeout_ms)):
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)
                              or not v >= 0):
            raise ServingError(f"{label}={v!r}: expected a number of milliseconds >= 0")
    if not isinstance(pad_limit, int | float) or isinstance(pad_limit, bool) \
            or not 0 <= pad_limit <= 1:
        raise ServingError(f"pad_limit={pad_limit!r}: expected a fraction from 0 to 1")
    if type(max_queue_size) is not int or max_queue_size < 1:
        raise ServingError(f"max_queue_size={max_queue_size!r}: expected an integer >= 1")


@dataclass
class _Announcement:
    """One request announced by ``Batcher.expecting``, until its ``submit`` queues it."""

    batcher: Batcher
    queued: bool = False


# the announcement of the request this thread or asyncio task is about to submit
_ANNOUNCED: contextvars.ContextVar[_Announcement | None] = contextvars.ContextVar(
    "rtinfer_batcher_announced", default=None)


@dataclass
class _Pending:
    request: Request
    future: Future
    enqueued: float
    deadline: float | None


@dataclass
class _Stats:
    completed: int = 0
    failed: int = 0
    invalid: int = 0
    overloaded: int = 0
    timed_out: int = 0
    batches: int = 0
    rows: collections.Counter = field(default_factory=collections.Counter)
    buckets: collections.Counter = field(default_factory=collections.Counter)
    latencies: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))


class Batcher:
    """Batches concurrent single-example requests into calls of ``compiled``.

    ``compiled``: a ``CompiledModel`` (``rtinfer.compile`` or ``rtinfer.load``) whose inputs and
    outputs have the batch axis first. ``max_batch_size``: the most requests one call runs.
    ``max_wait_ms``: how long the oldest queued request waits for others to join it.
    ``max_queue_size``: requests waiting beyond it are refused with ``Overloaded``.
    ``timeout_ms``: the default per-request timeout (``None``: wait as long as it takes).
    ``nan_policy``: ``"allow"`` or ``"reject"`` (a float input holding NaN or infinity is an
    ``InvalidRequest``). ``pad_limit``: the largest fraction of a call's bucket that may be
    padding (above it, the requests that fill a smaller bucket run now and the rest next).
    ``warmup``: run every bucket size once now (a native model: the smallest, and the
    others' plans built); ``"background"``: the smallest now and the other sizes' plans on a
    background thread (``planned()`` waits for them), so that a server is ready sooner.
    """

    def __init__(self, compiled: Any, max_batch_size: int = 16, max_wait_ms: float = 2.0, *,
                 max_queue_size: int = 1024, timeout_ms: float | None = None,
                 nan_policy: str = "allow", pad_limit: float = 0.25,
                 warmup: bool | str = True):
        check_options(max_batch_size, max_wait_ms, max_queue_size, timeout_ms, pad_limit)
        graph = getattr(compiled, "ir", None)
        if graph is None or not callable(compiled):
            raise ServingError(f"Batcher needs a compiled model (rtinfer.compile or "
                               f"rtinfer.load), got {type(compiled).__name__}")
        self.model = compiled
        self.signature = Signature(graph, list(compiled.input_names), nan_policy)
        static = self.signature.static_batch
        if static is not None and static < max_batch_size:
            # the usual compile (one example, static shapes) cannot batch: say so once, here
            first = self.signature.names[0] if self.signature.names else "x"
            warnings.warn(f"rtinfer.serving.Batcher: the model was compiled for a static batch "
                          f"of {static}, so requests run {static} at a time, not up to "
                          f"{max_batch_size}; compile it with dynamic_dims={{{first!r}: "
                          f"{{0: 'B'}}}} (every input's batch axis) to batch them",
                          stacklevel=2)
        self.buckets = bucket_sizes(max_batch_size, static)
        self.max_batch_size = min(max_batch_size, static) if static else max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.pad_limit = float(pad_limit)
        self.max_queue_size = max_queue_size
        self.timeout_ms = timeout_ms
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stats = _Stats()
        self._running = 0  # requests in the batch being run
        self._incoming = 0  # requests announced by expecting() and not queued yet
        self._announcing = False  # a front end announces its requests (see expecting)
        self.threads = torch.get_num_threads()
        if warmup not in (True, False, "background"):
            raise ServingError(f"warmup={warmup!r}: expected True, False or 'background'")
        self._planner: threading.Thread | None = None
        if warmup:
            self._warmup(background=warmup == "background")
        self._worker = threading.Thread(target=self._loop, name="rtinfer-batcher", daemon=True)
        self._worker.start()

    # -- submitting ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce one request: the ``submit`` (or call) made inside this block, in the same
        thread or asyncio task, is it. While announced requests are being prepared the worker
        waits (up to ``max_wait_ms``) for them to join the batch; once a front end announces,
        it no longer waits when none are."""
        announcement = _Announcement(self)
        with self._cond:
            self._incoming += 1
            self._announcing = True
        token = _ANNOUNCED.set(announcement)
        try:
            yield
        finally:
            _ANNOUNCED.reset(token)
            if not announcement.queued:  # refused or never submitted: nothing more to wait for
                with self._cond:
                    self._incoming -= 1
                    self._cond.notify_all()

    def __call__(self, *inputs: Any, timeout_ms: float | None = None, **named: Any) -> Any:
        """Run one example (each input without the batch axis) in the next batch and return
        its outputs; blocks the calling thread."""
        pending = self._enqueue(inputs, named, timeout_ms)
        wait = None if pending.deadline is None else max(0.0,
                                                         pending.deadline - time.perf_counter())
        try:
            return pending.future.result(wait)
        except FutureTimeout:
            error = self._expire(pending)
        if error is None:
            return pending.future.result()  # the worker answered in the meantime
        raise error

    async def submit(self, *inputs: Any, timeout_ms: float | None = None, **named: Any) -> Any:
        """``batcher(...)`` for asyncio: the event loop goes on while the request waits."""
        pending = self._enqueue(inputs, named, timeout_ms)
        # shield: a cancelled or timed-out await must not cancel the shared future, which the
        # worker may already be running (it is expired through _expire instead)
        waiter = asyncio.wrap_future(pending.future)
        wait = None if pending.deadline is None else max(0.0,
                                                         pending.deadline - time.perf_counter())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), wait)
        except asyncio.TimeoutError:
            error = self._expire(pending)
        except asyncio.CancelledError:
            pending.future.cancel()
            raise
        if error is None:
            return await waiter
        raise error

    def _enqueue(self, inputs: tuple, named: dict[str, Any],
                 timeout_ms: float | None) -> _Pending:
        try:
            request = self.signature.check(inputs, named)
        except InvalidRequest:
            with self._cond:
                self._stats.invalid += 1
            raise
        if timeout_ms is None:
            timeout_ms = self.timeout_ms
        elif not isinstance(timeout_ms, int | float) or isinstance(timeout_ms, bool) \
                or not timeout_ms >= 0:
            raise ServingError(f"timeout_ms={timeout_ms!r}: expected a number of milliseconds "
                               f">= 0")
        now = time.perf_counter()
        pending = _Pending(request, Future(), now,
                           None if timeout_ms is None else now + timeout_ms / 1000.0)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            if len(self._queue) >= self.max_queue_size:
                self._stats.overloaded += 1
                raise Overloaded(f"overloaded: {len(self._queue)} requests are queued (the "
                                 f"limit, max_queue_size={self.max_queue_size}); retry later "
                                 f"or add replicas")
            self._queue.append(pending)
            announcement = _ANNOUNCED.get()
            if announcement is not None and announcement.batcher is self \
                    and not announcement.queued:
                announcement.queued = True
                self._incoming -= 1
            self._cond.notify()
        return pending

    def _expire(self, pending: _Pending) -> RequestTimeout | None:
        """The error for a caller whose wait ran out, or None where the worker has answered
        (its answer or error stands)."""
        if pending.future.cancel():  # still queued: the worker skips it
            return self._timeout(pending)
        if pending.future.done():
            return None
        # running: its rows are computed but nobody waits for them any more
        return self._timeout(pending)

    def _timeout(self, pending: _Pending) -> RequestTimeout:
        with self._cond:
            self._stats.timed_out += 1
        waited = (time.perf_counter() - pending.enqueued) * 1000
        return RequestTimeout(f"request timed out after {waited:.1f} ms (queue depth "
                              f"{len(self._queue)}, max_batch_size {self.max_batch_size})")

    # -- the worker ---------------------------------------------------------------------------

    def _loop(self) -> None:
        # OpenMP's thread count is per thread: this one starts from the process default
        torch.set_num_threads(self.threads)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)
            with self._cond:
                self._running = 0

    def _next_batch(self) -> list[_Pending] | None:
        """The oldest request and up to ``max_batch_size - 1`` of the same shapes behind it,
        once the batch is full or the oldest has waited ``max_wait``; None once closed and
        drained."""
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None
                first = self._queue[0]
                if first.future.cancelled():
                    self._queue.popleft()
                    continue
                due = first.enqueued + self.max_wait
                while not self._closed:
                    same = sum(p.request.key == first.request.key for p in self._queue)
                    left = due - time.perf_counter()
                    if same >= self.max_batch_size or left <= 0:
                        break
                    if self._announcing and self._incoming == 0:
                        break  # nothing is on its way: waiting would only add latency
                    self._cond.wait(left)
                same = sum(p.request.key == first.request.key for p in self._queue)
                take = self._take(min(same, self.max_batch_size))
                batch, rest = [], collections.deque()
                for p in self._queue:
                    if len(batch) < take and p.request.key == first.request.key:
                        batch.append(p)
                    else:
                        rest.append(p)
                self._queue = rest
                self._running = len(batch)
                return batch

    def _take(self, available: int) -> int:
        """How many of ``available`` requests to run now: all of them padded up to their
        bucket while padding is at most ``pad_limit`` of it, else the largest bucket they
        fill (the rest, already past their wait, run in the next call). Padding rows cost as
        much as real ones; on a compute-bound model 10 requests padded to 16 waste 37%."""
        if len(self.buckets) == 1:  # a static batch size: every call is padded to it
            return available
        up = self.buckets[bisect.bisect_left(self.buckets, available)]
        if up - available <= self.pad_limit * up:
            return available
        return self.buckets[bisect.bisect_right(self.buckets, available) - 1]

    def _run(self, batch: list[_Pending]) -> None:
        now = time.perf_counter()
        live = []
        for p in batch:
            if p.deadline is not None and now > p.deadline:
                if p.future.set_running_or_notify_cancel():
                    self._fail(p, self._timeout(p))
            elif p.future.set_running_or_notify_cancel():  # False: cancelled while queued
                live.append(p)
        if not live:
            return
        try:
            results = self._call([p.request for p in live])
        except Exception as e:  # noqa: BLE001 - isolated below
            if len(live) == 1:
                self._fail(live[0], _as_serving_error(e))
                return
            # one request may have broken the batch (an index out of range, ...): run each
            # alone so the others still get their answers
            for p in live:
                try:
                    self._answer(p, self._call([p.request])[0])
                except Exception as e1:  # noqa: BLE001 - delivered to its caller
                    self._fail(p, _as_serving_error(e1))
            return
        for p, result in zip(live, results, strict=True):
            self._answer(p, result)

    def _call(self, requests: list[Request]) -> list[Any]:
        """Run ``requests`` as one call padded to a bucket size; each request's outputs."""
        n = len(requests)
        size = self.buckets[bisect.bisect_left(self.buckets, n)]
        stacked = []
        for i in range(len(self.signature.names)):
            rows = [r.arrays[i] for r in requests]
            # padding repeats a real row: always a valid input (zeros need not be, e.g. as a
            # divisor), and the rows it produces are dropped below
            rows += [rows[0]] * (size - n)
            stacked.append(_tensor(np.stack(rows)))
        # torch tensors in: the compiled model's fast path (numpy in costs it a conversion)
        out = self.model(*stacked)
        leaves, spec = pytree.tree_flatten(out)
        for leaf in leaves:
            if isinstance(leaf, np.ndarray | torch.Tensor) and (leaf.ndim == 0
                                                                or leaf.shape[0] != size):
                raise ServingError(f"the model returned an output of shape {list(leaf.shape)} "
                                   f"for a batch of {size}: it has no batch axis to split")
        with self._cond:
            self._stats.batches += 1
            self._stats.rows[n] += 1
            self._stats.buckets[size] += 1
        results = []
        for i, r in enumerate(requests):
            mine = [_row(leaf, i, r.as_torch) for leaf in leaves]
            results.append(pytree.tree_unflatten(mine, spec))
        return results

    def _answer(self, p: _Pending, result: Any) -> None:
        with self._cond:
            self._stats.completed += 1
            self._stats.latencies.append(time.perf_counter() - p.enqueued)
        if not p.future.done():
            p.future.set_result(result)

    def _fail(self, p: _Pending, error: BaseException) -> None:
        if not isinstance(error, RequestTimeout):
            with self._cond:
                self._stats.failed += 1
        if not p.future.done():
            p.future.set_exception(error)

    def planned(self, timeout_s: float | None = None) -> bool:
        """Wait for a background warm-up's plans; True once they are built (at once when
        there is none)."""
        if self._planner is not None:
            self._planner.join(timeout_s)
            return not self._planner.is_alive()
        return True

    def _warmup(self, background: bool = False) -> None:
        """Run every bucket size once, on zeros: the native backend builds one plan per input
        shape on first use, which no request should wait for. Inputs with symbolic dims other
        than the batch have no shape to warm up with; their plans are built on first use."""
        if any(not all(isinstance(d, int) for d in t.shape[1:]) for t in self.signature.types):
            return
        zeros = tuple(np.zeros(tuple(t.shape[1:]), t.dtype.np) for t in self.signature.types)
        request = Request(zeros, tuple(z.shape for z in zeros), False)
        # a model that can build a shape's plan without running it (the native backend) runs
        # the smallest size only, which checks that it runs, and plans the others: a forward
        # pass per size would cost the replica's start seconds on a CNN (ResNet-18, 1 thread:
        # 1.1 s of the 2.2 s its warm-up took), the plan is what a first request waited for
        prepare = getattr(getattr(self.model, "module", None), "prepare", None)
        later = []
        for k, size in enumerate(self.buckets):
            try:
                if k and prepare is not None:
                    if background:
                        later.append(size)
                        continue
                    prepare(*((size, *z.shape) for z in zeros))
                else:
                    self._call([request] * size)
            except Exception as e:  # noqa: BLE001 - any failure here is the model's
                raise ServingError(f"warming up batch size {size} failed: "
                                   f"{type(e).__name__}: {e}") from e
        self._stats = _Stats()  # the warm-up calls are not traffic
        if later:
            def plan() -> None:
                for size in later:
                    try:
                        prepare(*((size, *z.shape) for z in zeros))
                    except Exception:  # noqa: BLE001 - the first call of that size says why
                        return
            # the native plan cache is locked per plan: a request of a size being planned
            # waits for that plan, as it would have built it itself
            self._planner = threading.Thread(target=plan, name="rtinfer-plans", daemon=True)
            self._planner.start()

    # -- metrics and shutdown -----------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """A snapshot: ``queue_depth``, ``in_flight``, ``incoming`` (announced, not queued),
        ``threads`` (the model's), counts of ``completed``, ``failed``,
        ``invalid``, ``overloaded`` and ``timed_out`` requests, ``batches``,
        ``batch_size_histogram`` (requests per call -> calls), ``bucket_histogram`` (padded
        size -> calls), and ``latency_ms`` (``p50``, ``p99``, ``mean`` and ``count`` over the
        last 10,000 answered requests, from submission to answer)."""
        with self._cond:
            s = self._stats
            lat = np.asarray(s.latencies, dtype=np.float64) * 1000.0
            return {
                "queue_depth": len(self._queue), "in_flight": self._running,
                "incoming": self._incoming, "threads": self.threads,
                "max_queue_size": self.max_queue_size, "buckets": list(self.buckets),
                "completed": s.completed, "failed": s.failed, "invalid": s.invalid,
                "overloaded": s.overloaded, "timed_out": s.timed_out, "batches": s.batches,
                "batch_size_histogram": dict(sorted(s.rows.items())),
                "bucket_histogram": dict(sorted(s.buckets.items())),
                "latency_ms": {
                    "p50": float(np.percentile(lat, 50)) if lat.size else None,
                    "p99": float(np.percentile(lat, 99)) if lat.size else None,
                    "mean": float(lat.mean()) if lat.size else None, "count": int(lat.size)},
            }

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop taking requests. ``drain``: answer those already queued first; otherwise they
        get ``BatcherClosed``. Waits for the worker thread (at most ``timeout_s``)."""
        with self._cond:
            self._closed = True
            dropped = [] if drain else list(self._queue)
            if not drain:
                self._queue.clear()
            self._cond.notify_all()
        for p in dropped:
            if p.future.set_running_or_notify_cancel():
                self._fail(p, BatcherClosed("the batcher was closed before this request ran"))
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout_s)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensor(a: np.ndarray) -> torch.Tensor:
    # numpy's bfloat16 (ml_dtypes) has no torch.from_numpy; by name, so that a model without
    # bf16 never imports ml_dtypes (slow to import, see rtinfer.ir.types)
    if a.dtype.name == "bfloat16" and a.dtype == DType.bf16.np:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(DType.bf16.np)
    return t.numpy()


def _row(leaf: Any, i: int, as_torch: bool) -> Any:
    """Row ``i`` of one output, as a copy (the batch's buffers are reused by the next call)."""
    if isinstance(leaf, torch.Tensor):
        row = leaf[i].clone()
        return row if as_torch else _numpy(row)
    if isinstance(leaf, np.ndarray):
        row = leaf[i].copy()
        return torch.from_numpy(row) if as_torch else row
    return leaf  # a literal output (the eager model returned a constant)


def _as_serving_error(e: Exception) -> RtinferError:
    if isinstance(e, RtinferError):
        return e
    error = ServingError(f"the model failed on this request: {type(e).__name__}: {e}")
    error.__cause__ = e
    return error

__all__ = ["LATENCY_WINDOW", "Batcher", "bucket_sizes", "check_options"]
