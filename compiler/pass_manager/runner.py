"""Running pipelines: ``run_pipeline`` (in place, with instruments) and ``optimize`` (on a copy)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from rtinfer.errors import PassError, RtinferError
from rtinfer.ir.printer import print_graph
from rtinfer.pass_manager.analysis import PipelineContext
from rtinfer.pass_manager.context import Decline, PassContext
from rtinfer.pass_manager.instruments import (
    CheckNumerics,
    Instrument,
    PassRecord,
    PipelineRun,
    PrintIR,
    Statistics,
    Timing,
    Verify,
)
from rtinfer.pass_manager.pipeline import PassInvocation, check_requirements, parse_pipeline
from rtinfer.pass_manager.report import MatchReport

if TYPE_CHECKING:
    from rtinfer.ir.graph import Graph

Pipeline = str | Sequence[str | PassInvocation]


@dataclass
class PipelineResult:
    """The transformed graph, one record per pass run, and the text the instruments printed."""

    graph: Graph
    passes: list[PassRecord]
    report: str = ""

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.passes)

    @property
    def stats(self) -> list[tuple[str, dict[str, int]]]:
        return [(r.label, r.stats) for r in self.passes]

    @property
    def timings(self) -> list[tuple[str, float]]:
        return [(r.label, r.seconds) for r in self.passes]

    @property
    def applications(self) -> dict[str, int]:
        """Rule name -> times applied, over the whole pipeline."""
        out: dict[str, int] = {}
        for r in self.passes:
            for k, v in r.applications.items():
                out[k] = out.get(k, 0) + v
        return out

    @property
    def declines(self) -> list[Decline]:
        return [d for r in self.passes for d in r.declines]

    def match_report(self) -> MatchReport:
        """Per rule: structural matches, applications and declines; for the expected rules
        that never applied, why (the first decline, or the closest near miss). ``str()`` of
        it is the text ``--stats`` prints."""
        return MatchReport.from_records(self.passes)

    def stat(self, pass_name: str, key: str) -> int:
        """The statistic ``key`` summed over every run of ``pass_name``."""
        return sum(r.stats.get(key, 0) for r in self.passes if r.name == pass_name)


def _fingerprint(graph: Graph) -> tuple[str, tuple[int, ...]] | None:
    """Printed IR plus the identity of every constant array (arrays are immutable, so new data
    means a new array even where the printer elides it)."""
    try:
        text = print_graph(graph)
    except Exception:
        return None
    return text, tuple(id(n.attrs.get("value")) for n in graph.nodes if n.op == "const")


def build_instruments(*, verify_each: bool = False, print_ir_before: bool = False,
                      print_ir_after: bool = False, print_ir_after_change: bool = False,
                      timing: bool = False, stats: bool = False,
                      check_numerics: bool | dict = False) -> list[Instrument]:
    out: list[Instrument] = []
    if print_ir_before or print_ir_after or print_ir_after_change:
        out.append(PrintIR(print_ir_before, print_ir_after, print_ir_after_change))
    if verify_each:
        out.append(Verify())
    if check_numerics:
        out.append(CheckNumerics.from_option(check_numerics))
    if timing:
        out.append(Timing())
    if stats:
        out.append(Statistics())
    return out


def run_pipeline(graph: Graph, pipeline: Pipeline, *, verify_each: bool = False,
                 print_ir_before: bool = False, print_ir_after: bool = False,
                 print_ir_after_change: bool = False, timing: bool = False,
                 stats: bool = False, check_numerics: bool | dict[str, Any] = False,
                 check_requires: bool = True, full_constants: bool = False,
                 instruments: Sequence[Instrument] = (), expect: Sequence[str] = (),
                 out: TextIO | None = None,
                 pipeline_ctx: PipelineContext | None = None) -> PipelineResult:
    """Run ``pipeline`` on ``graph`` in place.

    ``check_numerics`` is True or ``{"rtol", "atol", "seed", "dims"}``. ``check_requires``: a pass
    whose ``requires`` did not run earlier in the pipeline is a ``PipelineError`` (nothing is
    inserted for you). Instrument output goes to ``out`` (default: stderr) and to
    ``result.report``. A pass that raises is reported as ``PassError`` naming it. ``expect``:
    rules expected to apply on this graph (``rule`` or ``pass/rule``), on top of those the
    passes declare; the match report explains the ones that did not. ``pipeline_ctx``: the
    data inputs and analyses the passes share (a fresh one by default); the analyses a pass
    does not list in its ``preserves`` are dropped once it changes the graph.
    """
    pctx = PipelineContext() if pipeline_ctx is None else pipeline_ctx
    invocations = parse_pipeline(pipeline)
    if check_requires:
        check_requirements(invocations)
    active = build_instruments(
        verify_each=verify_each, print_ir_before=print_ir_before, print_ir_after=print_ir_after,
        print_ir_after_change=print_ir_after_change, timing=timing, stats=stats,
        check_numerics=check_numerics) + list(instruments)
    run = PipelineRun(graph, invocations, sys.stderr if out is None else out, full_constants)

    for inst in active:
        inst.before_pipeline(run)
    print_before = _fingerprint(graph)
    for index, inv in enumerate(invocations):
        ctx = PassContext(pass_name=inv.name, options=dict(inv.options),
                          expects=set(inv.pass_.expects) | _expected(expect, inv.name),
                          pipeline=pctx)
        for inst in active:
            inst.before_pass(run, inv, ctx)
        start = time.perf_counter()
        try:
            inv.pass_.fn(graph, ctx)
        except RtinferError as e:
            raise PassError(f"pass '{inv.label}' failed: {e}") from e
        except Exception as e:
            raise PassError(f"pass '{inv.label}' crashed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - start
        print_after = _fingerprint(graph)
        changed = ctx.changed or print_after is None or print_after != print_before
        print_before = print_after
        if changed:
            pctx.invalidate(inv.pass_.preserves)
        record = PassRecord(index, inv.name, inv.label, dict(inv.options), dict(ctx.stats),
                            dict(ctx.applications), list(ctx.declines), changed, seconds,
                            list(ctx.events), dict(ctx.matches),
                            tuple(sorted(ctx.expects)), dict(ctx.near_misses))
        run.records.append(record)
        for inst in active:
            inst.after_pass(run, inv, ctx, record)
    for inst in active:
        inst.after_pipeline(run)
    return PipelineResult(graph, run.records, run.report)


def _expected(expect: Sequence[str], pass_name: str) -> set[str]:
    """The rules of ``expect`` (``rule`` or ``pass/rule``) that concern ``pass_name``."""
    out = set()
    for e in expect:
        owner, sep, rule = e.rpartition("/")
        if not sep or owner == pass_name:
            out.add(rule)
    return out


def optimize(graph: Graph, pipeline: Pipeline, **instrument_options: Any) -> Graph:
    """Run ``pipeline`` on a copy of ``graph`` and return the copy; ``graph`` is untouched.
    Takes ``run_pipeline``'s keyword options."""
    return run_pipeline(graph.clone(), pipeline, **instrument_options).graph
