"""``backend="auto"``: build each candidate backend, time it briefly, keep the fastest.

The candidates (``AUTO_CANDIDATES``, in the order they are measured) are the backends installed
here that serve the target and do not decline the graph. The first is the reference: it is
built first, its errors are the user's, and it is the choice when nothing can be measured. Each
other candidate is built, and skipped if it falls back to another backend for some op or fails;
the rest are timed on the same inputs (``time_calls``) and the lowest median wins.
``select_backend`` returns the record ``CompileInfo.auto`` shows (and the compile cache keeps,
so that a warm compile builds the remembered choice without measuring again).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rtinfer.backends import dispatch
from rtinfer.ir.graph import Graph

# each candidate's warm calls are timed until it has AUTO_MAX_CALLS of them, has run for
# AUTO_BUDGET_S, or is clearly slower than the best so far (its median over AUTO_SLOWER times
# the best's after three calls, or one call over AUTO_HOPELESS times the best)
AUTO_BUDGET_S = 0.25
AUTO_MAX_CALLS = 25
AUTO_SLOWER = 1.5
AUTO_HOPELESS = 10.0


@dataclass(frozen=True)
class AutoCandidate:
    """A backend ``backend="auto"`` may pick. ``available()``: it is installed (cheap: no
    import). ``declines(graph)``: why building it for ``graph`` is not worth it (ops it would
    hand to another backend, kernels known to be far slower), or None."""

    name: str
    targets: tuple[str, ...]
    available: Callable[[], bool]
    declines: Callable[[Graph], str | None] = lambda graph: None
    differentiable: bool = False  # serves trainable=True


def _installed(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


def _tvm_declines(graph: Graph) -> str | None:
    # imported when asked: the TVM backend module imports TVM's Python package
    from rtinfer.backends.tvm_backend import declines

    return declines(graph)


def _native_available() -> bool:
    """oneDNN and a C++ compiler are here (the extension builds on first use)."""
    from rtinfer.kernels.build import NativeUnavailable, compiler, onednn_prefix

    try:
        compiler()
        onednn_prefix()
    except NativeUnavailable:
        return False
    return True


AUTO_CANDIDATES: list[AutoCandidate] = [
    AutoCandidate("torch", ("cpu",), lambda: True, differentiable=True),
    AutoCandidate("tvm", ("cpu",), _installed("tvm"), _tvm_declines),
    AutoCandidate("native", ("cpu",), _native_available),
]


def auto_candidates(target: Any, trainable: bool = False) -> list[AutoCandidate]:
    """The candidates of ``backend="auto"`` installed here that serve ``target``."""
    if not isinstance(target, str):
        return []
    return [c for c in AUTO_CANDIDATES if target in c.targets and (c.differentiable or not
                                                                     trainable) and c.available()]


def select_backend(graph: Graph, candidates: list[AutoCandidate],
                   remembered: dict[str, Any] | None,
                   measure_inputs: Callable[[Any], list[torch.Tensor] | None],
                   options: dict[str, Any]) -> tuple[Any, str, dict[str, Any], float]:
    """(the module, its backend, the record for ``CompileInfo.auto``, the seconds spent
    measuring). ``options`` go to ``dispatch.build``. A ``remembered`` choice (a cache hit) is
    built without measuring; with one candidate left after the declines, nothing is measured.
    ``measure_inputs(module)``: the inputs to time on, given the reference's module (None when
    there are none); called only when there is something to measure."""
    skipped: dict[str, str] = {}
    viable = []
    for c in candidates:
        why = c.declines(graph)
        if why is None:
            viable.append(c.name)
        else:
            skipped[c.name] = why
    viable = viable or [candidates[0].name]
    if remembered and remembered.get("choice") in viable:
        choice = remembered["choice"]
        return (dispatch.build(choice, graph, **options), choice,
                {**remembered, "remembered": True}, 0.0)
    record: dict[str, Any] = {"choice": viable[0], "ms": {}, "skipped": skipped}
    if len(viable) == 1:
        return dispatch.build(viable[0], graph, **options), viable[0], record, 0.0
    first = dispatch.build(viable[0], graph, **options)
    inputs = measure_inputs(first)
    if inputs is None:
        record["note"] = "not measured: symbolic input dims and no example inputs"
        return first, viable[0], record, 0.0
    medians: dict[str, float] = {}
    modules = {viable[0]: first}
    measuring = 0.0
    for name in viable:
        try:
            module = modules[name] if name in modules else dispatch.build(name, graph, **options)
            if name != viable[0] and module.rtinfer_fallback_ops:  # a lowering declined
                skipped[name] = f"falls back for {', '.join(module.rtinfer_fallback_ops)}"
                continue
            t = time.perf_counter()
            times = time_calls(module, inputs, min(medians.values(), default=None))
            measuring += time.perf_counter() - t
        except Exception as e:  # a candidate that fails, however it fails, is not chosen
            skipped[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        medians[name] = float(np.median(times))
        modules[name] = module
    if not medians:
        record["note"] = "every candidate failed on the example inputs"
        return first, viable[0], record, measuring
    choice = min(medians, key=medians.__getitem__)
    record.update(choice=choice, ms={k: v * 1e3 for k, v in medians.items()})
    return modules[choice], choice, record, measuring


def time_calls(module: Any, inputs: list[torch.Tensor], best: float | None) -> list[float]:
    """Seconds per warm call of ``module`` on ``inputs`` (see ``AUTO_BUDGET_S``); ``best``: the
    best median so far, which a clearly slower candidate stops at."""
    times: list[float] = []
    start = time.perf_counter()
    with torch.no_grad():
        module(*inputs)  # warm-up: lazy initialization, caches
        warm = time.perf_counter() - start
        if best is not None and warm > max(AUTO_BUDGET_S, AUTO_HOPELESS * best):
            return [warm]
        # at least three timed calls (a slow warm-up must not leave none), then the budget
        while len(times) < 3 or (len(times) < AUTO_MAX_CALLS
                                 and time.perf_counter() - start < AUTO_BUDGET_S):
            t = time.perf_counter()
            module(*inputs)
            times.append(time.perf_counter() - t)
            if best is not None and (times[-1] > AUTO_HOPELESS * best or (
                    len(times) >= 3 and float(np.median(times)) > AUTO_SLOWER * best)):
                break
    return times


def generated_inputs(graph: Graph) -> list[torch.Tensor] | None:
    """Seeded inputs of the graph's input types (static dims only), else None."""
    if not all(v.type.is_static for v in graph.inputs):
        return None
    gen = torch.Generator().manual_seed(0)
    out = []
    for v in graph.inputs:
        dtype, shape = v.type.dtype.torch, tuple(int(n) for n in v.type.shape)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(dtype))
        else:  # zeros index every table; a bool mask of ones keeps every position
            out.append(torch.ones(shape, dtype=dtype) if dtype == torch.bool
                       else torch.zeros(shape, dtype=dtype))
    return out


__all__ = ["AUTO_BUDGET_S", "AUTO_CANDIDATES", "AUTO_HOPELESS", "AUTO_MAX_CALLS", "AUTO_SLOWER",
           "AutoCandidate", "auto_candidates", "generated_inputs", "select_backend",
           "time_calls"]
