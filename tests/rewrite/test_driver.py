"""The greedy driver: fixpoints, revisiting, non-convergence, the rewrite budget, match counts."""

from __future__ import annotations

import pytest

from rtinfer.errors import PassError
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager.context import PassContext
from rtinfer.rewrite import P, RuleSet

from .helpers import ir, same_numerics

x, y = P.var("x"), P.var("y")

CANON = RuleSet("canon", [
    # x * 1 -> x
    (x * 1.0, lambda x: x),
    # x + 0 -> x
    (x + 0.0, lambda x: x),
    # -(-x) -> x
    (P.op("neg", -x), lambda x: x),
])

CHAIN = """
func @main(%a: f32[4], %b: f32[4]) -> f32[4] {
  %one = const f32[] dense<1.0>
  %zero = const f32[] dense<0.0>
  %m1 = mul(%a, %one)
  %n1 = neg(%m1)
  %p1 = add(%zero, %n1)
  %n2 = neg(%p1)
  %m2 = mul(%one, %n2)
  %n3 = neg(%m2)
  %n4 = neg(%n3)
  %p2 = add(%n4, %zero)
  %m3 = mul(%p2, %one)
  %r = sub(%m3, %b)
  return %r
}"""


def test_chains_collapse_to_a_fixpoint():
    g = ir(CHAIN)
    before = g.clone()
    ctx = PassContext(pass_name="canon")
    n = CANON.apply(g, ctx)
    verify(g)
    assert [node.op for node in g.nodes] == ["sub"]  # the constants died with their users
    assert g.nodes[0].inputs == g.inputs
    assert ctx.applications == {"mul(x, 1.0)": 3, "add(x, 0.0)": 2, "neg(neg(x))": 2}
    assert n == 7 and ctx.matches == ctx.applications
    same_numerics(before, g)
    assert CANON.apply(g) == 0  # converged: a second run changes nothing


def test_changes_are_revisited():
    # a - b -> a + (-b) creates neg nodes that the neg(neg(x)) rule then removes.
    g = ir("""
    func @main(%a: f32[4], %b: f32[4]) -> f32[4] {
      %n = neg(%b)
      %s = sub(%a, %n)
      %r = relu(%s)
      return %r
    }""")
    before = g.clone()
    rules = RuleSet("r", [
        # x - y -> x + (-y)
        (x - y, lambda rw, x, y: rw.op("add", x, rw.op("neg", y))),
        # -(-x) -> x
        (P.op("neg", -x), lambda x: x),
    ])
    assert rules.apply(g) == 2
    verify(g)
    assert [n.op for n in g.nodes] == ["add", "relu"]
    assert g.nodes[0].inputs == g.inputs
    same_numerics(before, g)


def test_non_convergence_raises_naming_the_rule():
    g = ir("""
    func @main(%a: f32[4], %b: f32[4]) -> f32[4] {
      %s = add(%a, %b)
      return %s
    }""")

    def flip(rw, x, y):
        return rw.op("add", y, x)

    with pytest.raises(PassError, match=r"did not converge.*flip"):
        RuleSet("loop", [(x + y, flip)], max_applications=50).apply(g)
    verify(g)  # each step left a valid graph
    with pytest.raises(PassError, match="flip"):
        RuleSet("loop", [(x + y, flip)]).apply(g)  # the default bound is about the graph size


def test_budget_stops_rewriting_without_error():
    g = ir(CHAIN)
    ctx = PassContext(pass_name="canon", budget=3)
    assert CANON.apply(g, ctx) == 3
    assert ctx.budget == 0 and not ctx.allow_rewrite()
    verify(g)
    assert sum(ctx.applications.values()) == 3
    assert CANON.apply(g, ctx) == 0  # an exhausted budget stays exhausted
    ctx.budget = None
    assert CANON.apply(g, ctx) == 4


def test_budget_zero_changes_nothing():
    g = ir(CHAIN)
    text = str(g)
    assert CANON.apply(g, PassContext(budget=0)) == 0
    assert str(g) == text


def test_match_counts_include_declined_matches():
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4]) {
      %r = relu(%a)
      %s = relu(%r)
      %t = exp(%r)
      return %s, %t
    }""")

    def idempotent(rw, x, inner):
        if len(inner.out.users) > 1:
            return rw.decline("inner relu has other users")
        return inner.out

    ctx = PassContext(pass_name="p")
    rules = RuleSet("p", [(P.op("relu", P.op("relu", x, name="inner")), idempotent)])
    assert rules.apply(g, ctx) == 0
    assert ctx.matches == {"idempotent": 1}
    assert [d.reason for d in ctx.declines] == ["inner relu has other users"]


def test_rules_apply_in_table_order_at_a_node():
    g = ir("""
    func @main(%a: f32[4]) -> f32[4] {
      %one = const f32[] dense<1.0>
      %m = mul(%a, %one)
      return %m
    }""")

    def first(rw, x):
        return rw.op("relu", x)

    def second(rw, x):
        return rw.op("exp", x)

    ctx = PassContext()
    RuleSet("r", [(x * 1.0, first), (x * 1.0, second)]).apply(g, ctx)
    assert ctx.applications == {"first": 1} and ctx.matches == {"first": 1}
    assert [n.op for n in g.nodes] == ["relu"]
