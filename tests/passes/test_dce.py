"""dce: dead nodes go, whole dead chains in one run; graph outputs and inputs stay."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings

from rtinfer import optimize
from rtinfer.ir.interpreter import interpret_values
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager import get_pass
from rtinfer.testing import check_ir, check_rewrite
from tests.strategies import graph_inputs, graphs


def test_removes_a_dead_chain():
    check_rewrite("dce", """
        func @main(%x: f32[4], %y: f32[4]) -> f32[4] {
          %a = add(%x, %y)
          %d1 = mul(%a, %a)
          %d2 = relu(%d1)
          %d3 = sub(%d2, %x)
          %r = relu(%a)
          return %r
        }""", """
        func @main(%x: f32[4], %y: f32[4]) -> f32[4] {
          %a = add(%x, %y)
          %r = relu(%a)
          return %r
        }""", numerics={})


def test_keeps_graph_outputs_even_when_nothing_else_uses_them():
    ir = """
        func @main(%x: f32[4], %y: f32[4]) -> (f32[4], f32[4]) {
          %a = add(%x, %y)
          %b = mul(%a, %x)
          return %a, %b
        }"""
    check_rewrite("dce", ir, ir)


def test_removes_unused_constants_but_keeps_unused_inputs():
    check_rewrite("dce", """
        func @main(%x: f32[3], %unused: f32[3]) -> f32[3] {
          %c = const f32[3] dense<[1.0, 2.0, 3.0]>
          %k = const f32[3] dense<[4.0, 5.0, 6.0]>
          %a = add(%x, %c)
          return %a
        }""", """
        func @main(%x: f32[3], %unused: f32[3]) -> f32[3] {
          %c = const f32[3] dense<[1.0, 2.0, 3.0]>
          %a = add(%x, %c)
          return %a
        }""", numerics={})


def test_keeps_a_node_used_only_by_a_live_node():
    check_ir("dce", """
        func @main(%x: f32[4]) -> f32[4] {
          %a = relu(%x)
          %b = mul(%a, %a)
          %dead = add(%a, %b)
          return %b
        }""", ["CHECK: relu(%x)", "CHECK: mul(", "CHECK-NOT: add("])


def test_counts_removed_nodes():
    from rtinfer.ir.parser import parse

    g = parse("""
        func @main(%x: f32[4]) -> f32[4] {
          %a = relu(%x)
          %d = relu(%a)
          %e = relu(%d)
          return %a
        }""")
    ctx = get_pass("dce")(g)
    assert ctx.stats["removed"] == 2 and ctx.changed
    assert get_pass("dce")(g).stats["removed"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_preserves_outputs_of_random_graphs(g):
    inputs = graph_inputs(g, seed=0)
    before = interpret_values(g, inputs)
    want = [before[v] for v in g.outputs]
    out = optimize(g, "dce", verify_each=True)
    verify(out)
    after = interpret_values(out, inputs)
    for a, b in zip([after[v] for v in out.outputs], want, strict=True):
        np.testing.assert_array_equal(a, b)
    # nothing left without a use
    assert all(out.has_uses(v) for n in out.nodes for v in n.outputs)
