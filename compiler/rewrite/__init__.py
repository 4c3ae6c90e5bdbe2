"""Rewriting: the pattern DSL (``P``, ``ops``, ``P.trace``), the ``Rewriter`` through which every
mutation goes, and rule sets applied greedily to a fixpoint (``RuleSet``). See docs/rewrite.md."""

from rtinfer.rewrite.driver import Action, ActionResult, Rule, RuleSet
from rtinfer.rewrite.pattern import (
    AnyValue,
    Const,
    ConstValue,
    Match,
    NearMiss,
    OpBuilder,
    OpPattern,
    P,
    Pattern,
    Var,
    explain_mismatch,
    match,
    match_node,
    ops,
    trace,
)
from rtinfer.rewrite.rewriter import Rewriter

__all__ = [
    "Action", "ActionResult", "AnyValue", "Const", "ConstValue", "Match", "NearMiss", "OpBuilder",
    "OpPattern", "P", "Pattern", "Rewriter", "Rule", "RuleSet", "Var", "explain_mismatch", "match",
    "match_node", "ops", "trace",
]
