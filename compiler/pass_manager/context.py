"""``PassContext``: what a running pass sees (its options, statistics, the rewrite hooks);
``PassRecord``: what it did, as the instruments and the match report keep it.

It is the rewrite package's ``RewriteLog`` (every rule application and decline the Rewriter
reports) plus the pass's options and statistics, so instruments (print-IR-after-change, the
match report, bisection) observe rewrites without the rules knowing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rtinfer.pass_manager.analysis import PipelineContext
from rtinfer.rewrite.events import Decline, RewriteEvent, RewriteLog
from rtinfer.rewrite.pattern import NearMiss


@dataclass
class PassContext(RewriteLog):
    options: dict[str, Any] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)
    # shared by every pass of the run: data inputs and cached analyses
    pipeline: PipelineContext = field(default_factory=PipelineContext)

    def stat(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the statistic ``name`` (shown by ``--stats``). A nonzero count does not by
        itself mark the graph changed; mutations through the Rewriter or ``mark_changed`` do."""
        self.stats[name] += n


@dataclass
class PassRecord:
    """What one pass did: statistics, rule applications and declines, change flag, time."""

    index: int
    name: str
    label: str
    options: dict[str, Any]
    stats: dict[str, int] = field(default_factory=dict)
    applications: dict[str, int] = field(default_factory=dict)
    declines: list[Decline] = field(default_factory=list)
    changed: bool = False
    seconds: float = 0.0
    events: list[RewriteEvent] = field(default_factory=list, repr=False)
    matches: dict[str, int] = field(default_factory=dict)  # rule -> structural matches
    expects: tuple[str, ...] = ()  # rules expected to apply (the pass's and the run's)
    near_misses: dict[str, NearMiss] = field(default_factory=dict)


__all__ = ["Decline", "PassContext", "PassRecord", "RewriteEvent"]
