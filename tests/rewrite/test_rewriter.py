"""The Rewriter: insertion, provenance, counts, dead-node cleanup, outputs, declines, events."""

from __future__ import annotations

import numpy as np
import pytest

from rtinfer.errors import PassError
from rtinfer.ir.graph import Provenance
from rtinfer.ir.printer import print_graph
from rtinfer.ir.types import DType
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager.context import PassContext
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet

from .helpers import ir, same_numerics

x, y = P.var("x"), P.var("y")


def test_new_nodes_go_before_the_root_with_derived_provenance():
    g = ir("""
    func @main(%a: f32[4], %b: f32[4]) -> f32[4] {
      %s = sub(%a, %b)
      %r = relu(%s)
      return %r
    }""")
    g.nodes[0].provenance = Provenance("torch:block.sub")

    # a - b -> a + (-b)
    def expand_sub(rw, x, y):
        return rw.op("add", x, rw.op("neg", y))

    ctx = PassContext(pass_name="canon")
    before = g.clone()
    assert RuleSet("rules", [(x - y, expand_sub)]).apply(g, ctx) == 1
    verify(g)
    assert [n.op for n in g.nodes] == ["neg", "add", "relu"]
    for n in g.nodes[:2]:
        assert n.provenance == Provenance("torch:block.sub", "canon/expand_sub")
    assert g.nodes[2].provenance == Provenance()
    assert ctx.applications == {"expand_sub": 1}
    assert ctx.matches == {"expand_sub": 1}
    same_numerics(before, g)


def test_ruleset_name_is_the_pass_name_without_a_context():
    g = ir("""
    func @main(%a: f32[4]) -> f32[4] {
      %r = relu(%a)
      %s = relu(%r)
      return %s
    }""")

    def twice(rw, x):
        return rw.op("relu", x)

    RuleSet("idem", [(P.op("relu", P.op("relu", x)), twice)]).apply(g)
    assert [n.provenance.created_by for n in g.nodes] == ["idem/twice"]


def test_dead_matched_nodes_are_erased_and_shared_ones_kept():
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4]) {
      %one = const f32[] dense<1.0>
      %r = relu(%a)
      %m = mul(%r, %one)
      %n = neg(%m)
      %k = neg(%n)
      %o = exp(%r)
      return %k, %o
    }""")
    before = g.clone()
    # neg(neg(relu(x) * 1)) -> relu(x): the relu is still used by exp, the rest dies.
    rule = (P.op("neg", P.op("neg", P.op("relu", x, name="r") * 1.0)), lambda r: r.out)
    assert RuleSet("r", [rule]).apply(g) == 1
    verify(g)
    assert [n.op for n in g.nodes] == ["relu", "exp"]
    assert g.outputs[0] is g.nodes[0].out
    same_numerics(before, g)


def test_graph_outputs_and_inputs():
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4]) {
      %z = const f32[] dense<0.0>
      %s = add(%a, %z)
      %t = relu(%s)
      return %s, %t
    }""")
    assert RuleSet("r", [(x + 0.0, lambda x: x)]).apply(g) == 1
    verify(g)
    assert g.outputs[0] is g.inputs[0]  # a graph output may become a graph input
    assert g.nodes[-1].inputs == [g.inputs[0]]
    assert [n.op for n in g.nodes] == ["relu"]


def test_declines_are_recorded_with_the_reason():
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4]) {
      %r = relu(%a)
      %n = neg(%r)
      return %n, %r
    }""")
    text = print_graph(g)

    def fold(rw, x, r):
        if len(r.out.users) > 1 or g.is_output(r.out):
            return rw.decline("relu output is also used elsewhere")
        return rw.op("neg", x)

    ctx = PassContext(pass_name="p")
    assert RuleSet("r", [(P.op("neg", P.op("relu", x, name="r")), fold)]).apply(g, ctx) == 0
    assert print_graph(g) == text
    [d] = ctx.declines
    assert (d.pass_name, d.rule, d.reason) == ("p", "fold", "relu output is also used elsewhere")
    assert d.node.startswith("%n = neg(%r)")
    assert ctx.matches == {"fold": 1} and not ctx.applications and not ctx.changed


def test_nodes_made_by_a_declining_action_are_removed():
    g = ir("""
    func @main(%a: f32[4]) -> f32[4] {
      %r = relu(%a)
      return %r
    }""")

    def fickle(rw, x):
        rw.op("exp", rw.op("neg", x))
        return rw.decline("changed its mind")

    ctx = PassContext()
    assert RuleSet("r", [(P.op("relu", x), fickle)]).apply(g, ctx) == 0
    assert [n.op for n in g.nodes] == ["relu"]
    assert len(ctx.declines) == 1


def test_replacement_of_another_type_is_declined():
    # x * 1 -> x is wrong when the ones broadcast x to a larger shape.
    g = ir("""
    func @main(%a: f32[4]) -> f32[2,4] {
      %ones = const f32[2,4] dense<[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]>
      %m = mul(%a, %ones)
      return %m
    }""")
    ctx = PassContext()
    assert RuleSet("r", [(x * 1.0, lambda x: x)]).apply(g, ctx) == 0
    assert [n.op for n in g.nodes] == ["const", "mul"]
    assert "f32[4]" in ctx.declines[0].reason and "f32[2,4]" in ctx.declines[0].reason


def test_events_carry_before_and_after_text_and_reach_listeners():
    g = ir("""
    func @main(%a: f32[4], %b: f32[4]) -> f32[4] {
      %s = sub(%a, %b)
      return %s
    }""")
    events = []
    ctx = PassContext(pass_name="canon", listeners=[events.append])

    def expand_sub(rw, x, y):
        return rw.op("add", x, rw.op("neg", y))

    RuleSet("r", [(x - y, expand_sub)]).apply(g, ctx)
    [e] = events
    assert (e.pass_name, e.rule, e.index) == ("canon", "expand_sub", 0)
    assert e.before == "%s = sub(%a, %b) : f32[4]"
    lines = e.after.splitlines()
    assert [line.split(" = ")[1].split("(")[0] for line in lines] == ["neg", "add"]


def test_multi_output_roots_take_a_list():
    g = ir("""
    func @main(%a: f32[4]) -> (f32[2], f32[2]) {
      %n = neg(%a)
      %lo, %hi = split(%n) {axis=0, sizes=[2, 2]}
      %e = exp(%hi)
      return %lo, %e
    }""")
    before = g.clone()

    # split(-x) -> [-s for s in split(x)]
    def neg_after_split(rw, x, s):
        return [rw.op("neg", v) for v in rw.node("split", x, **s.attrs).outputs]

    rule = P.op("split", P.op("neg", x), name="s")
    assert RuleSet("r", [(rule, neg_after_split)]).apply(g) == 1
    verify(g)
    assert [n.op for n in g.nodes] == ["split", "neg", "neg", "exp"]
    assert g.nodes[0].inputs == g.inputs
    same_numerics(before, g)

    with pytest.raises(PassError, match="returned 1 value"):
        RuleSet("r", [(rule, lambda x: x)]).apply(before.clone())


def test_actions_may_return_a_node():
    g = ir("""
    func @main(%a: f32[4]) -> (f32[2], f32[2]) {
      %n = neg(%a)
      %m = neg(%n)
      %lo, %hi = split(%m) {axis=0, sizes=[2, 2]}
      return %lo, %hi
    }""")

    # split(-(-x)) -> split(x)
    def pull_through(rw, x, s):
        return rw.node("split", x, **s.attrs)

    rule = P.op("split", P.op("neg", P.op("neg", x)), name="s")
    assert RuleSet("r", [(rule, pull_through)]).apply(g) == 1
    verify(g)
    assert [n.op for n in g.nodes] == ["split"]
    assert g.nodes[0].inputs == g.inputs
    assert g.outputs == g.nodes[0].outputs


def test_bad_action_results_fail_loudly():
    g = ir("""
    func @main(%a: f32[4]) -> f32[4] {
      %r = relu(%a)
      return %r
    }""")
    with pytest.raises(PassError, match="returned 3"):
        RuleSet("r", [(P.op("relu", x), lambda x: 3)]).apply(g)


def test_rewriter_on_its_own():
    g = ir("""
    func @main(%a: f32[4]) -> f32[4] {
      %r = relu(%a)
      return %r
    }""")
    ctx = PassContext(pass_name="manual")
    rw = Rewriter(g, ctx)
    two = rw.const(2.0, dtype=DType.f32)
    doubled = rw.op("mul", g.outputs[0], two)  # appended at the end: there is no root
    rw.replace(g.outputs[0], doubled)  # also redirects the new mul's own input...
    rw.set_input(doubled.producer, 0, g.nodes[0].out)  # ...so point it back
    verify(g)
    assert rw.changes == 4
    assert two.const_data.dtype == np.float32
    assert doubled.producer.provenance.created_by == "manual"
    with pytest.raises(PassError, match="change its type"):
        rw.replace(g.outputs[0], rw.const(np.zeros((2, 4), np.float32)))


def test_rules_are_named_by_their_action_or_pattern():
    def collapse(x):
        return x

    rules = RuleSet("r", [
        (P.op("neg", P.op("neg", x)), collapse),
        (x * 1.0, lambda x: x),
        Rule("explicit", x + 0.0, lambda x: x),
    ])
    assert [r.name for r in rules.rules] == ["collapse", "mul(x, 1.0)", "explicit"]
