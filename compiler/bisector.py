"""``bisect``: which pass, and which single rule application in it, changed a model's outputs.

    result = rtinfer.bisect(graph, "O3", rtol=1e-4, atol=1e-5, seed=0)
    print(result)          # the pass, the application index, the rewrite's IR before and after

    rtinfer bisect model.ir --pipeline O3

1. The pipeline runs pass by pass on a copy of the graph; after each pass the reference
   interpreter runs on seeded random inputs and the outputs are compared with the unoptimized
   graph's. The first pass whose outputs leave ``atol + rtol * |want|`` is the culprit.
2. That pass is re-run from the graph it received with a rewrite budget (``PassContext.budget``:
   the driver stops after that many rule applications). A binary search over the budget finds
   the smallest budget whose result diverges: application number ``budget`` (1-based) is the
   first wrong one, and its ``RewriteEvent`` holds the IR of the matched nodes before and of
   the new nodes after.

Passes that mutate without the Rewriter ignore the budget; if the pass diverges even with a
budget of 0, the report says the divergence is not due to a single rule application.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rtinfer.errors import PassError, RtinferError
from rtinfer.pass_manager.context import PassContext, RewriteEvent
from rtinfer.pass_manager.instruments import compare_outputs
from rtinfer.pass_manager.pipeline import PassInvocation, check_requirements, parse_pipeline

if TYPE_CHECKING:
    from rtinfer.ir.graph import Graph
    from rtinfer.pass_manager.runner import Pipeline


@dataclass
class BisectResult:
    """What ``bisect`` found. ``pass_label`` is None when no pass changed the outputs."""

    pipeline: str
    passes_run: list[str]
    pass_label: str | None = None
    pass_index: int | None = None  # 0-based, in the expanded pipeline
    error: float = 0.0
    detail: str = ""
    application: int | None = None  # 0-based index of the first wrong application in the pass
    event: RewriteEvent | None = None
    budget_runs: int = 0  # re-runs of the pass during the budget search
    tolerance: dict[str, Any] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.pass_label is not None

    def text(self) -> str:
        tol = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in self.tolerance.items())
        head = f"bisect: pipeline {self.pipeline!r} ({len(self.passes_run)} passes; {tol})"
        if not self.diverged:
            return (f"{head}\nno pass changes the outputs beyond tolerance: all "
                    f"{len(self.passes_run)} passes agree with the unoptimized graph\n")
        n = len(self.passes_run)
        lines = [head, f"first divergent pass: '{self.pass_label}' (pass {self.pass_index + 1} "
                       f"of {n}): {self.detail}"]
        if self.event is None:
            lines.append(f"the pass diverges with a rewrite budget of 0 ({self.budget_runs} "
                         f"budget runs): not a single rule application (it changes the graph "
                         f"outside the Rewriter)")
        else:
            e = self.event
            lines += [f"first divergent rule application: #{self.application + 1} of the pass "
                      f"(index {self.application}), rule '{e.rule}' ({self.budget_runs} budget "
                      f"runs)",
                      "--- before:", e.before, "--- after:", e.after or "(nothing: erased)"]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.text()


def _outputs(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray] | str:
    """The graph's outputs, or why the interpreter could not compute them."""
    from rtinfer.ir.interpreter import interpret_values

    try:
        values = interpret_values(graph, inputs)
    except RtinferError as e:
        return f"the graph cannot be interpreted: {e}"
    return [np.asarray(values[v]) for v in graph.outputs]


def _run_pass(inv: PassInvocation, graph: Graph, budget: int | None) -> PassContext:
    ctx = PassContext(pass_name=inv.name, options=dict(inv.options), budget=budget)
    try:
        inv.pass_.fn(graph, ctx)
    except RtinferError as e:
        raise PassError(f"pass '{inv.label}' failed: {e}") from e
    return ctx


def bisect(graph: Graph, pipeline: Pipeline, *, rtol: float = 1e-4, atol: float = 1e-5,
           seed: int = 0, dims: dict[str, int] | None = None, check_requires: bool = True,
           log: Callable[[str], None] | None = None) -> BisectResult:
    """Find the first pass of ``pipeline``, then the first rule application in it, after which
    ``graph``'s outputs diverge from the unoptimized graph's. ``graph`` is not modified.
    ``log`` receives one line per pass checked."""
    from rtinfer.ir.interpreter import random_inputs
    from rtinfer.pass_manager.pipeline import format_pipeline

    invocations = parse_pipeline(pipeline)
    if check_requires:
        check_requirements(invocations)
    text = pipeline if isinstance(pipeline, str) else format_pipeline(invocations)
    result = BisectResult(text, [inv.label for inv in invocations],
                          tolerance={"rtol": rtol, "atol": atol, "seed": seed}
                          | ({"dims": dims} if dims else {}))
    inputs = list(random_inputs(graph, seed=seed, dims=dims))
    want = _outputs(graph, inputs)
    if isinstance(want, str):
        raise RtinferError(f"bisect: the input graph itself: {want}")

    def divergence(g: Graph) -> tuple[float, str] | None:
        got = _outputs(g, inputs)
        if isinstance(got, str):
            return float("inf"), got
        bad = compare_outputs(got, want, rtol, atol)
        if bad is None:
            return None
        k, err, detail = bad
        which = "the outputs" if k < 0 else f"output {k}"
        return err, f"{which}: max abs error {err:.3g} ({detail})"

    current = graph.clone()
    for index, inv in enumerate(invocations):
        before = current.clone()
        ctx = _run_pass(inv, current, None)
        bad = divergence(current)
        if log is not None:
            log(f"pass {index + 1}/{len(invocations)} {inv.label}: "
                f"{'DIVERGES' if bad else 'ok'} ({len(ctx.events)} rule applications)")
        if bad is None:
            continue
        result.pass_label, result.pass_index = inv.label, index
        result.error, result.detail = bad
        _search_budget(result, inv, before, len(ctx.events), divergence)
        return result
    return result


def _search_budget(result: BisectResult, inv: PassInvocation, before: Graph, total: int,
                   divergence: Callable[[Graph], tuple[float, str] | None]) -> None:
    """The smallest budget in [1, total] whose run diverges (binary search; a budget of
    ``total`` reproduces the full run)."""
    runs: dict[int, tuple[bool, list[RewriteEvent]]] = {}

    def diverges(budget: int) -> bool:
        g = before.clone()
        ctx = _run_pass(inv, g, budget)
        runs[budget] = (divergence(g) is not None, ctx.events)
        return runs[budget][0]

    if total == 0 or diverges(0):
        result.budget_runs = len(runs)
        return
    lo, hi = 0, total  # lo: known good, hi: known bad (the full run)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if diverges(mid):
            hi = mid
        else:
            lo = mid
    if hi not in runs:
        diverges(hi)
    events = runs[hi][1]
    result.budget_runs = len(runs)
    result.application = hi - 1
    result.event = events[hi - 1] if len(events) >= hi else (events[-1] if events else None)
