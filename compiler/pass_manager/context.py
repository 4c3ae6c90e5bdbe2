"""``PassContext``: what a running pass sees (its options, statistics, the rewrite hooks).

The Rewriter reports every rule application and every decline here, so instruments
(print-IR-after-change, the match report, bisection) observe rewrites without the rules knowing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RewriteEvent:
    """One rule application: ``rule`` of ``pass_name`` replaced ``before`` (IR text of the
    matched root) with ``after`` (IR text of the new nodes)."""

    pass_name: str
    rule: str
    before: str
    after: str
    index: int  # 0-based count of applications in this pass


@dataclass
class Decline:
    """A rule matched structurally but its action refused, with the reason."""

    pass_name: str
    rule: str
    reason: str
    node: str  # IR text of the matched root


@dataclass
class PassContext:
    pass_name: str = "<none>"
    options: dict[str, Any] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)
    # Called after every rule application (print-IR-after-change, bisection, logs).
    listeners: list[Callable[[RewriteEvent], None]] = field(default_factory=list)
    # Rule applications still allowed in this pass (None: unlimited). Bisection sets it; the
    # Rewriter stops applying rules, without error, once it reaches 0.
    budget: int | None = None
    applications: Counter = field(default_factory=Counter)  # rule name -> times applied
    matches: Counter = field(default_factory=Counter)  # rule name -> structural matches
    declines: list[Decline] = field(default_factory=list)
    # Every application, in order (the match report and bisection read the IR texts).
    events: list[RewriteEvent] = field(default_factory=list)
    changed: bool = False
    # Rules expected to apply (the pass's ``expects``, plus the run's): for these the driver
    # keeps the closest near miss when the pattern fails, for the match report.
    expects: set[str] = field(default_factory=set)
    near_misses: dict[str, Any] = field(default_factory=dict)  # rule -> best rewrite.NearMiss

    def stat(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the statistic ``name`` (shown by ``--stats``). A nonzero count does not by
        itself mark the graph changed; mutations through the Rewriter or ``mark_changed`` do."""
        self.stats[name] += n

    def mark_changed(self) -> None:
        """For passes that mutate the graph without the Rewriter (print-IR-after-change also
        compares the printed IR, so forgetting this only costs a print)."""
        self.changed = True

    def allow_rewrite(self) -> bool:
        return self.budget is None or self.budget > 0

    def record_rewrite(self, event: RewriteEvent) -> None:
        if self.budget is not None:
            self.budget -= 1
        self.applications[event.rule] += 1
        self.events.append(event)
        self.changed = True
        for fn in self.listeners:
            fn(event)

    def record_decline(self, decline: Decline) -> None:
        self.declines.append(decline)

    def record_near_miss(self, rule: str, miss: Any) -> None:
        """Keep ``miss`` (a ``rewrite.NearMiss``) if it got deeper than the best so far."""
        best = self.near_misses.get(rule)
        if best is None or miss.depth > best.depth:
            self.near_misses[rule] = miss
