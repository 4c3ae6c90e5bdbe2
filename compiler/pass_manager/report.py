"""The match report: how often each rule matched and applied over a pipeline, and for the rules
expected to apply that never did, why not.

A rule is expected when its pass declares it (``graph_pass(..., expects=["fuse"])``) or the run
names it (``run_pipeline(..., expect=["fold-batchnorm/into-producer"])``, ``rtinfer opt
--expect``). For an expected rule that applied zero times the report gives the reason:

- it matched but its action declined: the first decline's reason;
- it never matched: the closest near miss, the deepest partial match of its pattern and what
  failed there ("op mul expected, found add at %12", an attribute that differs);
- its pattern's root op is not in the graph at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rtinfer.rewrite.pattern import NearMiss

if TYPE_CHECKING:
    from rtinfer.pass_manager.context import PassRecord


@dataclass
class RuleReport:
    """One rule of one pass run."""

    pass_label: str
    rule: str
    matches: int = 0
    applications: int = 0
    declines: list[str] = field(default_factory=list)  # reasons, in order
    expected: bool = False
    near_miss: NearMiss | None = None  # for expected rules that never matched

    @property
    def missed(self) -> bool:
        """Expected, and never applied."""
        return self.expected and self.applications == 0

    @property
    def why(self) -> str:
        """Why an expected rule did not apply (empty when it did)."""
        if not self.missed:
            return ""
        if self.declines:
            return f"matched {self.matches} time(s) but declined: {self.declines[0]}"
        if self.near_miss is not None:
            return (f"closest near miss ({self.near_miss.depth} op(s) of the pattern matched): "
                    f"{self.near_miss.reason}  [at {self.near_miss.node}]")
        if self.matches:
            return f"matched {self.matches} time(s); the action made no change"
        return "never tried: no node of the pattern's root op in the graph"


@dataclass
class MatchReport:
    rules: list[RuleReport]

    @staticmethod
    def from_records(records: list[PassRecord]) -> MatchReport:
        out = []
        for r in records:
            names = list(dict.fromkeys([*r.matches, *r.applications, *r.expects,
                                        *(d.rule for d in r.declines)]))
            for name in names:
                out.append(RuleReport(
                    r.label, name, r.matches.get(name, 0), r.applications.get(name, 0),
                    [d.reason for d in r.declines if d.rule == name], name in r.expects,
                    r.near_misses.get(name)))
        return MatchReport(out)

    @property
    def missed(self) -> list[RuleReport]:
        return [r for r in self.rules if r.missed]

    def get(self, rule: str, pass_label: str | None = None) -> RuleReport:
        for r in self.rules:
            if r.rule == rule and (pass_label is None or r.pass_label == pass_label):
                return r
        raise KeyError(f"no rule {rule!r} in the match report")

    def as_dict(self) -> list[dict[str, Any]]:
        return [{"pass": r.pass_label, "rule": r.rule, "matches": r.matches,
                 "applications": r.applications, "declines": len(r.declines),
                 "expected": r.expected, "why": r.why} for r in self.rules]

    def text(self) -> str:
        lines = ["===- match report -===",
                 f"  {'matches':>7}  {'applied':>7}  {'declined':>8}  pass/rule"]
        for r in self.rules:
            mark = "  (expected)" if r.expected else ""
            lines.append(f"  {r.matches:>7}  {r.applications:>7}  {len(r.declines):>8}  "
                         f"{r.pass_label}/{r.rule}{mark}")
        missed = self.missed
        if missed:
            lines.append("expected rules that never applied:")
            for r in missed:
                lines.append(f"  {r.pass_label}/{r.rule}: {r.why}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()
