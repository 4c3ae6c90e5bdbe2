"""What a rewrite reports: rule applications (``RewriteEvent``), refusals (``Decline``), and
the log that receives them (``RewriteLog``).

The ``Rewriter`` and the rule driver write to a ``RewriteLog``; the pass manager's
``PassContext`` is one (it adds a pass's options and statistics), which is how the instruments
(print-IR-after-change, the match report, bisection) observe rewrites without the rules knowing,
and without the rewrite package knowing the pass manager.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from rtinfer.rewrite.pattern import NearMiss


@dataclass
class RewriteEvent:
    """One rule application: ``rule`` of ``pass_name`` replaced ``before`` (IR text of the
    matched root) with ``after`` (IR text of the new nodes)."""

    pass_name: str
    rule: str
    before: str
    after: str
    index: int  # 0-based count of applications in this pass


class Decline:
    """A rule matched structurally but its action refused, with the reason. The reason is kept
    as a format string and its arguments and formatted only when read (a report asks for it):
    most declines are never read, and formatting IR types eagerly costs compile time (as
    Inductor's ``FailedMatch``)."""

    __slots__ = ("pass_name", "rule", "node", "_reason", "_args")

    def __init__(self, pass_name: str, rule: str, reason: str, node: str, args: tuple = ()):
        self.pass_name, self.rule, self.node = pass_name, rule, node
        self._reason, self._args = reason, args

    @property
    def reason(self) -> str:
        if self._args:
            self._reason, self._args = self._reason.format(*self._args), ()
        return self._reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decline) and (self.pass_name, self.rule, self.reason,
                                                self.node) == (other.pass_name, other.rule,
                                                               other.reason, other.node)

    def __repr__(self) -> str:
        return (f"Decline(pass_name={self.pass_name!r}, rule={self.rule!r}, "
                f"reason={self.reason!r}, node={self.node!r})")


@dataclass
class RewriteLog:
    """Where the Rewriter and the rule driver report: applications, declines, near misses, and
    the rewrite budget bisection sets."""

    pass_name: str = "<none>"
    # Called after every rule application (print-IR-after-change, bisection, logs).
    listeners: list[Callable[[RewriteEvent], None]] = field(default_factory=list)
    # Rule applications still allowed (None: unlimited). Bisection sets it; the Rewriter stops
    # applying rules, without error, once it reaches 0.
    budget: int | None = None
    applications: Counter = field(default_factory=Counter)  # rule name -> times applied
    matches: Counter = field(default_factory=Counter)  # rule name -> structural matches
    declines: list[Decline] = field(default_factory=list)
    # Every application, in order (the match report and bisection read the IR texts).
    events: list[RewriteEvent] = field(default_factory=list)
    changed: bool = False
    # Rules expected to apply: for these the driver keeps the closest near miss when the
    # pattern fails, for the match report.
    expects: set[str] = field(default_factory=set)
    near_misses: dict[str, NearMiss] = field(default_factory=dict)  # rule -> the deepest

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

    def record_near_miss(self, rule: str, miss: NearMiss) -> None:
        """Keep ``miss`` if it got deeper than the best so far."""
        best = self.near_misses.get(rule)
        if best is None or miss.depth > best.depth:
            self.near_misses[rule] = miss


__all__ = ["Decline", "RewriteEvent", "RewriteLog"]
