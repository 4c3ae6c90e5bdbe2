"""The native backend: rtinfer's optimized IR lowered to a static plan that rtinfer's C++
executor runs (``cpp/native``; built on first use by ``rtinfer.kernels.build``).

    plan = lower(graph, shapes)    # slots + steps, arena offsets by liveness
    outs = plan.run(inputs, torch.get_num_threads())

Lowering walks the graph once (``native.lowerer.Lowerer``). Every value gets a *view*
(``native.plan.View``): a slot (a buffer: an input, an output, a constant, or a place in the
call's arena) plus element strides and an offset, so transpose, slice, split, expand, squeeze
and reshape of a contiguous tensor cost nothing: a consumer that reads strides (attention,
copies) takes the view, any other consumer gets it materialized by one strided copy.
Convolutions read either layout and write NHWC, and activations stay NHWC from conv to conv
through pooling and elementwise ops; a consumer that needs NCHW gets one reorder (a
[N, C, 1, 1] tensor is the same bytes in both). Heavy ops (conv, linear, matmul) run in oneDNN
with their fused epilogues as post-ops and weights prepacked at compile time; the rest are
rtinfer's own kernels, fused elementwise bodies are C++ generated per model
(``rtinfer.kernels.codegen``), and a node no native kernel covers runs the torch backend's code
for that node (a "python" step; listed in the report as a fallback). ``LOWERINGS`` holds one
lowering per op, in the family modules of ``rtinfer.backends.native``; ``UNSUPPORTED`` says why
each other op has none.

Inputs must be CPU tensors (a ``BackendError`` names any other); a call whose inputs have a
zero-size dim (an empty batch) runs the torch backend's code for the whole graph, as eager
does; an index outside its axis (embedding, gather) raises ``IndexOutOfRangeError`` naming the
node, where eager raises ``IndexError``.

After lowering, intermediates get arena offsets (``native.memory``): each buffer lives from the
step writing it to the last step reading it (a view extends its base), and buffers are placed
largest first at the lowest offset that overlaps no buffer alive at the same time.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rtinfer.backends import native  # noqa: F401  (fills LOWERINGS)
from rtinfer.backends.native import finite
from rtinfer.backends.native.lowerer import LOWERINGS, UNSUPPORTED, Lowerer, lowers
from rtinfer.backends.native.plan import View
from rtinfer.backends.torch_backend import build_module
from rtinfer.errors import BackendError, IndexOutOfRangeError, RtinferError
from rtinfer.ir.flops import flops
from rtinfer.ir.graph import Graph
from rtinfer.ir.ops import OPS
from rtinfer.kernels import build


@dataclass
class NativeStats:
    fallbacks: dict[str, int] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)
    arena_bytes: int = 0
    steps: int = 0
    threads: str = ""  # the thread count the plan runs with, and why (a serial choice)


class _TorchRun:
    """The torch backend's module for the whole graph, run where a plan cannot be (inputs with
    a zero-size dim: oneDNN's primitives and the arena need non-empty tensors), with a plan's
    ``run`` signature; it gives what eager gives (an empty batch in, an empty batch out)."""

    def __init__(self, graph: Graph):
        self.module = build_module(graph, mkldnn=False)

    def run(self, tensors: Any, threads: int) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(self.module(*tensors))


class NativeModule:
    """Runs ``graph`` through the C++ executor; one plan per distinct input shape set and thread
    count (a graph with symbolic dims gets one per shape it is called with; oneDNN primitives
    are made for the thread count they run with, so a changed ``torch.set_num_threads`` gets
    a new plan)."""

    def __init__(self, graph: Graph, strict: bool = False):
        self.ext = build.load()
        self.graph = graph
        self.strict = strict
        self._plans: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.stats = NativeStats()
        self.rtinfer_mkldnn = True
        self.rtinfer_fallback_ops: list[str] = []
        # the finite fast path (native.finite): the bound on the inputs under which the plans
        # fuse relu and clip into oneDNN; calls outside it run the exact plans (built on demand)
        self.finite_bound = (finite.input_bound(graph) if finite_enabled()
                             and flops(graph) // 2 >= FINITE_MIN_MACS else None)
        self._exact: dict[tuple, Any] = {}
        if all(v.type.is_static for v in graph.inputs):
            shapes = tuple(tuple(int(d) for d in v.type.shape) for v in graph.inputs)
            self._plan((shapes, torch.get_num_threads()))

    def _lower(self, shapes: tuple, threads: int, exact: bool = False) -> tuple[Any, Lowerer]:
        """A plan for ``shapes`` at ``threads``: with the clamps fused where the finite fast
        path holds, unless ``exact``."""
        fast = self.finite_bound is not None and not exact
        old = self.ext.set_fast_clamps(fast)
        try:
            lw = Lowerer(self.graph, shapes, self.strict, threads, self.ext)
            lw.lower()
            return lw.build(self.ext), lw
        finally:
            self.ext.set_fast_clamps(old)

    def _exact_plan(self, key: tuple, run_threads: int) -> Any:
        """The plan with rtinfer's NaN-keeping clamps, for a call whose inputs are outside
        the finite bound (NaN, an infinity, a huge value); built on the first such call."""
        plan = self._exact.get(key)
        if plan is None:
            with self._lock:
                plan = self._exact.get(key)
                if plan is None:
                    plan = self._exact[key] = self._lower(key[0], run_threads, exact=True)[0]
        return plan

    def _plan(self, key: tuple) -> tuple[Any, int]:
        """The plan for (shapes, threads) and the thread count it runs with."""
        entry = self._plans.get(key)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._plans.get(key)
            if entry is None and any(0 in shape for shape in key[0]):
                entry = self._plans[key] = (_TorchRun(self.graph), key[1])
            if entry is None:
                shapes, threads = key
                plan, lw = self._lower(shapes, threads)
                entry, note = (plan, threads), f"{threads}"
                if threads > 1:
                    cpus = _pin(self.ext, threads)
                    entry, note = self._serial_or(shapes, entry)
                    if entry[1] > 1 and cpus:
                        note += f"; threads pinned to CPUs {', '.join(map(str, cpus))}"
                plan = entry[0]
                self.stats = NativeStats(dict(lw.fallbacks), _kernel_counts(lw.kernels, plan),
                                         plan.arena_bytes, plan.num_steps, note)
                self.rtinfer_fallback_ops = sorted(lw.fallbacks)
                self._plans[key] = entry
        return entry

    def _serial_or(self, shapes: tuple, parallel: tuple[Any, int]) -> tuple[tuple[Any, int], str]:
        """A small plan runs on the calling thread alone when that is not measurably slower
        (``threads.choose``): no fork/join per step, no worker to wake after idle."""
        threads = parallel[1]
        if not choice_enabled() or not _small(self.graph, shapes):
            return parallel, f"{threads}"
        serial, _ = self._lower(shapes, 1)
        inputs = _sample_inputs(self.graph, shapes)
        try:
            times = race({1: lambda: serial.run(inputs, 1),
                          threads: lambda: parallel[0].run(inputs, threads)})
        except Exception:  # noqa: BLE001  (sample inputs the model rejects: keep the default)
            return parallel, f"{threads}"
        one, many = times[1], times[threads]
        why = f"1 thread {one * 1e6:.1f} us vs {threads} threads {many * 1e6:.1f} us per call"
        if one <= SERIAL_MARGIN * many:
            return (serial, 1), (f"1 (a small plan: {why}; a parallel run saves too little "
                                 f"to pay its fork/join and its workers' wake-up after idle)")
        return parallel, f"{threads} ({why})"

    def prepare(self, *shapes: tuple[int, ...]) -> None:
        """Build the plan a call with inputs of these shapes makes (at torch's thread count)
        without running it: a server warms its batch sizes up this way, paying the oneDNN
        primitives' creation, not a forward pass per size."""
        # _plan caches under this key, which a call's (torch.Size shapes, threads) key equals
        self._plan((tuple(tuple(int(d) for d in s) for s in shapes), torch.get_num_threads()))

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        for i, t in enumerate(tensors):
            if not t.is_cpu:  # the executor reads the bytes at data_ptr() as CPU memory
                self._wrong_device(i, t)
        threads = torch.get_num_threads()
        key = (tuple(t.shape for t in tensors), threads)
        entry = self._plans.get(key)
        if entry is None:  # _plan caches it under an equal key (torch.Size is a tuple)
            entry = self._plan(((tuple(tuple(s) for s in key[0])), threads))
        if not all(t.is_contiguous() for t in tensors):
            tensors = tuple(t.contiguous() for t in tensors)
        plan, run_threads = entry
        if (self.finite_bound is not None and not isinstance(plan, _TorchRun)
                and not finite.within(tensors, self.finite_bound)):
            plan = self._exact_plan((tuple(tuple(s) for s in key[0]), threads), run_threads)
        try:
            return plan.run(tensors, run_threads)
        except RtinferError:
            raise
        except IndexError as e:  # the executor's index check (embedding, gather rows)
            raise IndexOutOfRangeError(f"native backend: {e}") from None

    def _wrong_device(self, i: int, t: torch.Tensor) -> None:
        name = self.graph.inputs[i].name if i < len(self.graph.inputs) else None
        raise BackendError(f"input {name or i!r} is on device {t.device}; the native backend "
                           f"runs on the CPU: pass CPU tensors (x.cpu())")

    def profile(self, *tensors: torch.Tensor, iters: int = 10) -> list[tuple[str, float]]:
        """Seconds per step (mean over ``iters`` runs)."""
        threads = torch.get_num_threads()
        plan, run_threads = self._plan((tuple(tuple(t.shape) for t in tensors), threads))
        secs = plan.profile([t.contiguous() for t in tensors], run_threads, iters)
        return list(zip(plan.step_names, secs, strict=True))


def _kernel_counts(lowered: dict[str, int], plan: Any) -> dict[str, int]:
    """The steps per kernel: the lowering's counts, with the steps the C++ side gave another
    implementation when it timed the candidates (its step name says which: ``conv: oneDNN conv
    (NNPACK Winograd)``, ``fc: oneDNN matmul (ATen GEMM: faster here)``) counted apart, as
    ``oneDNN conv -> NNPACK Winograd``."""
    counts = dict(lowered)
    for name in plan.step_names:
        for kernel in sorted(lowered, key=len, reverse=True):
            mark = f": {kernel} ("
            if mark in name and name.endswith(")"):
                impl = name.split(mark, 1)[1][:-1].split(":")[0]
                counts[kernel] -= 1
                key = f"{kernel} -> {impl}"
                counts[key] = counts.get(key, 0) + 1
                break
    return {k: v for k, v in counts.items() if v > 0}


# The finite fast path only for graphs of at least this many multiply-adds: its check of the
# inputs costs a pass over them (the MLP 784-512-512-10: 4 -> 7 us a call), and the clamps'
# passes it saves are worth that only on models of a millisecond or more (MobileNetV2).
FINITE_MIN_MACS = 4_000_000
# A plan whose heavy ops do fewer multiply-adds than this (a few hundred microseconds on one
# core) is raced serial against parallel when it is built.
SMALL_MACS = 16_000_000
# The serial plan is kept unless the parallel one is faster by more than this: a parallel call
# measured back to back hides what it costs after idle (its workers sleep and must be woken,
# about a millisecond on a VM, more when the waker spins on the woken thread's core).
SERIAL_MARGIN = 1.2


_pinned: dict[tuple[int, int], list[int]] = {}


def _pin(ext: Any, threads: int) -> list[int]:
    """Bind the OpenMP workers to their own CPUs (once per extension and team size), unless
    ``RTINFER_PIN_THREADS=0``; the calling thread is held on the first CPU only while a plan
    runs. A worker woken after idle then starts at once instead of waiting behind the thread
    that woke it (measured on a 2-core VM after 100 ms idle, median / p90: MobileNetV2 15.6 /
    20.0 ms unpinned, 6.3 / 6.7 pinned, 3.9 back to back; ResNet-18 p90 21.7 -> 15.4 ms).
    Returns the CPUs, empty when not pinned (fewer CPUs usable than threads)."""
    if os.environ.get("RTINFER_PIN_THREADS", "1").strip().lower() in ("0", "off", "false", "no"):
        return []
    key = (id(ext), threads)
    if key not in _pinned:
        _pinned[key] = list(ext.pin_threads(threads))
    return _pinned[key]


def finite_enabled() -> bool:
    """``RTINFER_FINITE_FAST=0`` keeps every clamp as rtinfer's NaN-keeping pass."""
    return os.environ.get("RTINFER_FINITE_FAST", "1").strip().lower() not in (
        "0", "off", "false", "no")


def choice_enabled() -> bool:
    """``RTINFER_SERIAL_SMALL=0`` keeps every plan at torch's thread count."""
    return os.environ.get("RTINFER_SERIAL_SMALL", "1").strip().lower() not in (
        "0", "off", "false", "no")


def _small(graph: Graph, shapes: tuple) -> bool:
    if not all(v.type.is_static for v in graph.inputs):
        return False  # costs need static shapes; a symbolic graph keeps the default
    if shapes != tuple(tuple(int(d) for d in v.type.shape) for v in graph.inputs):
        return False
    return flops(graph) // 2 < SMALL_MACS


def _sample_inputs(graph: Graph, shapes: tuple) -> list[torch.Tensor]:
    """Inputs to time with: random floats, zeros for integers (a valid index for any table)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for v, shape in zip(graph.inputs, shapes, strict=True):
        dtype = v.type.dtype.torch
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g).to(dtype))
        else:
            out.append(torch.zeros(shape, dtype=dtype))
    return out


def race(calls: dict[int, Any], rounds: int = 15, budget_s: float = 0.25) -> dict[int, float]:
    """Median seconds per call of each candidate, timed in interleaved rounds (order
    alternating), a few calls per round, within about ``budget_s``."""
    for fn in calls.values():
        fn()  # warm: first-touch of the arena, primitive caches
    t0 = time.perf_counter()
    for fn in calls.values():
        fn()
    per = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, min(20, int(budget_s / rounds / per)))
    samples: dict[int, list[float]] = {k: [] for k in calls}
    order = list(calls)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            for _ in range(reps):
                calls[k]()
            samples[k].append((time.perf_counter() - t) / reps)
    return {k: statistics.median(v) for k, v in samples.items()}


def build_native_module(graph: Graph, strict: bool = False) -> NativeModule:
    """The native module for ``graph`` (``NativeUnavailable`` when it cannot be built here)."""
    return NativeModule(graph, strict)


def coverage() -> tuple[int, int, list[str]]:
    """(ops with a lowering, ops in the table, ops without one); ``const`` counts as lowered."""
    names = OPS.names()
    missing = [n for n in names if n != "const" and n not in LOWERINGS]
    return len(names) - len(missing), len(names), missing


__all__ = ["LOWERINGS", "UNSUPPORTED", "Lowerer", "NativeModule", "NativeStats", "View",
           "build_native_module", "coverage", "lowers"]
