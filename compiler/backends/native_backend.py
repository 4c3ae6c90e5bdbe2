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

After lowering, intermediates get arena offsets (``native.memory``): each buffer lives from the
step writing it to the last step reading it (a view extends its base), and buffers are placed
largest first at the lowest offset that overlaps no buffer alive at the same time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from rtinfer.backends import native  # noqa: F401  (fills LOWERINGS)
from rtinfer.backends.native.lowerer import LOWERINGS, UNSUPPORTED, Lowerer, lowers
from rtinfer.backends.native.plan import View
from rtinfer.ir.graph import Graph
from rtinfer.ir.ops import OPS
from rtinfer.kernels import build


@dataclass
class NativeStats:
    fallbacks: dict[str, int] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)
    arena_bytes: int = 0
    steps: int = 0


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
        if all(v.type.is_static for v in graph.inputs):
            shapes = tuple(tuple(int(d) for d in v.type.shape) for v in graph.inputs)
            self._plan((shapes, torch.get_num_threads()))

    def _plan(self, key: tuple) -> Any:
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        with self._lock:
            plan = self._plans.get(key)
            if plan is None:
                shapes, threads = key
                lw = Lowerer(self.graph, shapes, self.strict, threads, self.ext)
                lw.lower()
                plan = lw.build(self.ext)
                self.stats = NativeStats(dict(lw.fallbacks), dict(lw.kernels), plan.arena_bytes,
                                         plan.num_steps)
                self.rtinfer_fallback_ops = sorted(lw.fallbacks)
                self._plans[key] = plan
        return plan

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        threads = torch.get_num_threads()
        key = (tuple(t.shape for t in tensors), threads)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(((tuple(tuple(s) for s in key[0])), threads))
            self._plans[key] = plan
        if not all(t.is_contiguous() for t in tensors):
            tensors = tuple(t.contiguous() for t in tensors)
        return plan.run(tensors, threads)

    def profile(self, *tensors: torch.Tensor, iters: int = 10) -> list[tuple[str, float]]:
        """Seconds per step (mean over ``iters`` runs)."""
        threads = torch.get_num_threads()
        plan = self._plan((tuple(tuple(t.shape) for t in tensors), threads))
        secs = plan.profile([t.contiguous() for t in tensors], threads, iters)
        return list(zip(plan.step_names, secs, strict=True))


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
