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

# IR text taken now and formatted when first read: a str, or a callable that makes it (the
# Rewriter's ``lazy_text``). Most events and declines are never read; formatting them eagerly
# would cost compile time for nothing (Inductor's ``FailedMatch``, MLIR's notifyMatchFailure).
Text = str | Callable[[], str]


def resolve(text: Text) -> str:
    return text if isinstance(text, str) else text()


class RewriteEvent:
    """One rule application: ``rule`` of ``pass_name`` replaced ``before`` (IR text of the
    matched nodes) with ``after`` (IR text of the new nodes); both texts are formatted when
    first read."""

    __slots__ = ("pass_name", "rule", "index", "_before", "_after")

    def __init__(self, pass_name: str, rule: str, before: Text, after: Text, index: int):
        self.pass_name, self.rule = pass_name, rule
        self.index = index  # 0-based count of applications in this pass
        self._before, self._after = before, after

    @property
    def before(self) -> str:
        self._before = resolve(self._before)
        return self._before

    @property
    def after(self) -> str:
        self._after = resolve(self._after)
        return self._after

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RewriteEvent) and (
            (self.pass_name, self.rule, self.before, self.after, self.index)
            == (other.pass_name, other.rule, other.before, other.after, other.index))

    def __repr__(self) -> str:
        return (f"RewriteEvent(pass_name={self.pass_name!r}, rule={self.rule!r}, "
                f"before={self.before!r}, after={self.after!r}, index={self.index})")


class Decline:
    """A rule matched structurally but its action refused, with the reason. The reason is kept
    as a format string and its arguments (or a callable), and the matched node's text as a
    ``Text``; both are formatted only when read (a report asks for them)."""

    __slots__ = ("pass_name", "rule", "_reason", "_args", "_node")

    def __init__(self, pass_name: str, rule: str, reason: Text, node: Text,
                 args: tuple = ()):
        self.pass_name, self.rule = pass_name, rule
        self._reason, self._args, self._node = reason, args, node

    @property
    def reason(self) -> str:
        if self._args:
            self._reason, self._args = resolve(self._reason).format(*self._args), ()
        self._reason = resolve(self._reason)
        return self._reason

    @property
    def node(self) -> str:
        self._node = resolve(self._node)
        return self._node

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


__all__ = ["Decline", "RewriteEvent", "RewriteLog", "Text", "resolve"]
