"""Rewriting: the pattern DSL (``P``, ``ops``, ``P.trace``), the ``Rewriter`` through which every
mutation goes, rule sets applied greedily to a fixpoint (``RuleSet``), and what they report
(``RewriteEvent``, ``Decline``) to a ``RewriteLog``. See docs/rewrite.md."""

from rtinfer.rewrite.driver import Action, ActionResult, Rule, RuleSet
from rtinfer.rewrite.events import Decline, RewriteEvent, RewriteLog, Text, resolve
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
    "Action", "ActionResult", "AnyValue", "Const", "ConstValue", "Decline", "Match", "NearMiss",
    "OpBuilder", "OpPattern", "P", "Pattern", "RewriteEvent", "RewriteLog", "Rewriter", "Rule",
    "RuleSet", "Text", "Var", "explain_mismatch", "match", "match_node", "ops", "resolve", "trace",
]
