"""Pass instruments: observers with hooks around each pass (MLIR's PassInstrumentation).

Each debugging option of ``run_pipeline`` is one small class here; the runner calls the hooks
of the active instruments in order. Printing comes first, so the IR a broken pass left behind is
shown before the verifier rejects it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import numpy as np

from rtinfer.errors import NumericsError, PassError, RtinferError, VerifyError
from rtinfer.pass_manager.context import PassContext, PassRecord

if TYPE_CHECKING:
    from rtinfer.ir.graph import Graph
    from rtinfer.pass_manager.pipeline import PassInvocation


class PipelineRun:
    """The state instruments see: the graph being transformed, the pipeline, the records so far,
    and ``write`` (to the output stream, also kept as the report text)."""

    def __init__(self, graph: Graph, invocations: list[PassInvocation], out: TextIO,
                 full_constants: bool = False):
        self.graph = graph
        self.invocations = invocations
        self.records: list[PassRecord] = []
        self.full_constants = full_constants
        self._out = out
        self._report: list[str] = []

    def write(self, text: str) -> None:
        if not text.endswith("\n"):
            text += "\n"
        self._report.append(text)
        self._out.write(text)

    @property
    def report(self) -> str:
        return "".join(self._report)

    def ir_text(self, graph: Graph | None = None) -> str:
        from rtinfer.ir.printer import print_graph

        try:
            return print_graph(graph or self.graph, full_constants=self.full_constants)
        except Exception as e:  # a pass may leave a graph the printer cannot walk
            return f"<the graph could not be printed: {type(e).__name__}: {e}>"


class Instrument:
    """Base class: override the hooks you need."""

    def before_pipeline(self, run: PipelineRun) -> None:
        pass

    def before_pass(self, run: PipelineRun, inv: PassInvocation, ctx: PassContext) -> None:
        pass

    def after_pass(self, run: PipelineRun, inv: PassInvocation, ctx: PassContext,
                   record: PassRecord) -> None:
        pass

    def after_pipeline(self, run: PipelineRun) -> None:
        pass


def _banner(text: str) -> str:
    return f"// ----- {text} ----- //"


@dataclass
class PrintIR(Instrument):
    """Print the IR before and/or after each pass, or only after passes that changed it."""

    before: bool = False
    after: bool = False
    after_change: bool = False

    def before_pass(self, run, inv, ctx):
        if self.before:
            n = len(run.records) + 1
            run.write(f"{_banner(f'IR before {inv.label} ({n}/{len(run.invocations)})')}\n"
                      f"{run.ir_text()}")

    def after_pass(self, run, inv, ctx, record):
        if self.after or (self.after_change and record.changed):
            n = record.index + 1
            note = "" if record.changed else ", unchanged"
            run.write(f"{_banner(f'IR after {inv.label} ({n}/{len(run.invocations)}{note})')}\n"
                      f"{run.ir_text()}")


class Verify(Instrument):
    """Verify the input graph, then the graph after each pass; blame the pass that broke it."""

    def before_pipeline(self, run):
        from rtinfer.ir.verifier import verify

        try:
            verify(run.graph)
        except VerifyError as e:
            raise VerifyError(f"the input graph is invalid (before any pass ran): {e}") from e

    def after_pass(self, run, inv, ctx, record):
        from rtinfer.ir.verifier import verify

        try:
            verify(run.graph)
        except VerifyError as e:
            raise PassError(f"pass '{inv.label}' left an invalid graph: {e}") from e


def compare_outputs(got: list[np.ndarray], want: list[np.ndarray], rtol: float,
                    atol: float) -> tuple[int, float, str] | None:
    """The first output (index, max abs error, detail) beyond ``atol + rtol * |want|``, or None.
    NaN positions must match; infinities must match exactly."""
    if len(got) != len(want):
        return -1, float("inf"), f"{len(got)} outputs instead of {len(want)}"
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            return k, float("inf"), f"shape {g.shape} instead of {w.shape}"
        a, b = g.astype(np.float64), w.astype(np.float64)
        na, nb = np.isnan(a), np.isnan(b)
        if (na != nb).any():
            n = int((na != nb).sum())
            return k, float("nan"), f"NaN at {n} position(s) where the other output has none"
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a - b)
            same = (a == b) | na
            diff[same] = 0.0
            bad = (diff > atol + rtol * np.abs(b)) | (~same & (np.isinf(a) | np.isinf(b)))
        if bad.any():
            err = float(diff.max())
            return k, err, f"{int(bad.sum())} of {bad.size} elements beyond tolerance"
    return None


@dataclass
class CheckNumerics(Instrument):
    """Run the reference interpreter on seeded random inputs before the pipeline and after
    every pass; the first pass whose outputs leave tolerance (against the previous pass or the
    original graph) raises ``NumericsError`` naming it."""

    rtol: float = 1e-4
    atol: float = 1e-5
    seed: int = 0
    dims: dict[str, int] | None = None
    inputs: list[np.ndarray] = field(default_factory=list)
    original: list[np.ndarray] = field(default_factory=list)
    previous: list[np.ndarray] = field(default_factory=list)
    previous_label: str = "the input graph"

    @staticmethod
    def from_option(option: bool | dict) -> CheckNumerics:
        if option is True:
            return CheckNumerics()
        unknown = set(option) - {"rtol", "atol", "seed", "dims"}
        if unknown:
            raise TypeError(f"check_numerics: unknown keys {sorted(unknown)} "
                            f"(valid: rtol, atol, seed, dims)")
        return CheckNumerics(**option)

    def _run(self, graph: Graph) -> list[np.ndarray]:
        from rtinfer.ir.interpreter import interpret_values

        values = interpret_values(graph, self.inputs)
        return [np.asarray(values[v]) for v in graph.outputs]

    def before_pipeline(self, run):
        from rtinfer.ir.interpreter import random_inputs

        self.inputs = list(random_inputs(run.graph, seed=self.seed, dims=self.dims))
        self.original = self.previous = self._run(run.graph)

    def after_pass(self, run, inv, ctx, record):
        if not record.changed:
            return
        try:
            outs = self._run(run.graph)
        except RtinferError as e:
            raise PassError(f"check-numerics: the graph after pass '{inv.label}' cannot be "
                            f"interpreted: {e}") from e
        tol = f"rtol={self.rtol:g}, atol={self.atol:g}, seed={self.seed}"
        for against, want in ((f"the output after {self.previous_label}", self.previous),
                              ("the original graph's output", self.original)):
            bad = compare_outputs(outs, want, self.rtol, self.atol)
            if bad is not None:
                k, err, detail = bad
                which = "the outputs" if k < 0 else f"output {k}"
                raise NumericsError(
                    f"check-numerics: pass '{inv.label}' changed {which}: max abs error "
                    f"{err:.3g} against {against} ({detail}; {tol})", inv.name)
        self.previous, self.previous_label = outs, f"pass '{inv.label}'"


class Timing(Instrument):
    """A table of per-pass wall times, printed after the pipeline."""

    def after_pipeline(self, run):
        total = sum(r.seconds for r in run.records)
        lines = ["===- pass timing report -===",
                 f"  total: {total * 1e3:.3f} ms over {len(run.records)} pass(es)",
                 f"  {'wall (ms)':>10}  {'share':>6}  pass"]
        for r in run.records:
            share = r.seconds / total * 100 if total > 0 else 0.0
            lines.append(f"  {r.seconds * 1e3:>10.3f}  {share:>5.1f}%  {r.label}")
        run.write("\n".join(lines))


class Statistics(Instrument):
    """Per pass: its statistics, how often each rule applied and why rules declined (the match
    report), printed after the pipeline."""

    def after_pipeline(self, run):
        lines = ["===- pass statistics -==="]
        for r in run.records:
            lines.append(f"{r.label}{'' if r.changed else '  (no change)'}")
            for k, v in sorted(r.stats.items()):
                lines.append(f"  {k}: {v}")
            if r.applications:
                lines.append("  rule applications:")
                for rule, n in sorted(r.applications.items(), key=lambda kv: (-kv[1], kv[0])):
                    lines.append(f"    {rule}: {n}")
            if r.declines:
                lines.append("  declines:")
                for d in r.declines:
                    lines.append(f"    {d.rule}: {d.reason}  [at {d.node}]")
            if not (r.stats or r.applications or r.declines):
                lines.append("  (no statistics)")
        from rtinfer.pass_manager.report import MatchReport

        report = MatchReport.from_records(run.records)
        if report.rules:
            lines.append(report.text())
        run.write("\n".join(lines))


@dataclass
class Callback(Instrument):
    """Wrap plain functions as an instrument (quick experiments, tests)."""

    after: Callable[[PipelineRun, PassInvocation, PassContext, PassRecord], None] | None = None
    before: Callable[[PipelineRun, PassInvocation, PassContext], None] | None = None

    def before_pass(self, run, inv, ctx):
        if self.before is not None:
            self.before(run, inv, ctx)

    def after_pass(self, run, inv, ctx, record):
        if self.after is not None:
            self.after(run, inv, ctx, record)
