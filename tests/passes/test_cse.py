"""cse: duplicates merge (commutative operands in either order, constants by bytes); nodes that
differ in any attribute, input or type do not."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings

from rtinfer import optimize
from rtinfer.ir.interpreter import interpret_values
from rtinfer.ir.parser import parse
from rtinfer.pass_manager import get_pass
from rtinfer.testing import check_ir, check_rewrite
from tests.strategies import graph_inputs, graphs


def test_merges_identical_nodes_and_their_users():
    # The two relus become identical once the adds merge: one topological sweep gets both.
    check_rewrite("cse", """
        func @main(%x: f32[4], %y: f32[4]) -> f32[4] {
          %a = add(%x, %y)
          %b = add(%x, %y)
          %ra = relu(%a)
          %rb = relu(%b)
          %m = mul(%ra, %rb)
          return %m
        }""", """
        func @main(%x: f32[4], %y: f32[4]) -> f32[4] {
          %a = add(%x, %y)
          %ra = relu(%a)
          %m = mul(%ra, %ra)
          return %m
        }""", numerics={})


def test_commutative_operands_in_either_order_merge():
    check_rewrite("cse", """
        func @main(%x: f32[4], %y: f32[4]) -> f32[4] {
          %a = mul(%x, %y)
          %b = mul(%y, %x)
          %s = add(%a, %b)
          return %s
        }""", """
        func @main(%x: f32[4], %y: f32[4]) -> f32[4] {
          %a = mul(%x, %y)
          %s = add(%a, %a)
          return %s
        }""", numerics={})


def test_non_commutative_operands_in_other_order_stay():
    ir = """
        func @main(%x: f32[4], %y: f32[4]) -> f32[4] {
          %a = sub(%x, %y)
          %b = sub(%y, %x)
          %s = add(%a, %b)
          return %s
        }"""
    check_rewrite("cse", ir, ir)


def test_equal_constants_merge():
    check_rewrite("cse", """
        func @main(%x: f32[3]) -> f32[3] {
          %c1 = const f32[3] dense<[1.0, 2.0, 3.0]>
          %c2 = const f32[3] dense<[1.0, 2.0, 3.0]>
          %a = add(%x, %c1)
          %b = mul(%a, %c2)
          return %b
        }""", """
        func @main(%x: f32[3]) -> f32[3] {
          %c = const f32[3] dense<[1.0, 2.0, 3.0]>
          %a = add(%x, %c)
          %b = mul(%a, %c)
          return %b
        }""", numerics={})


def test_constants_differing_in_bytes_dtype_or_shape_stay():
    ir = """
        func @main(%x: f32[3]) -> f32[3] {
          %c1 = const f32[3] dense<[1.0, 2.0, 3.0]>
          %c2 = const f32[3] dense<[1.0, 2.0, 4.0]>
          %c3 = const f32[3] dense<[0.0, 0.0, 0.0]>
          %c4 = const f32[3] dense<[-0.0, 0.0, 0.0]>
          %c5 = const f32[1,3] dense<[1.0, 2.0, 3.0]>
          %c6 = const f64[3] dense<[1.0, 2.0, 3.0]>
          %a = add(%x, %c1)
          %b = mul(%a, %c2)
          %c = add(%b, %c3)
          %d = add(%c, %c4)
          return %d
        }"""
    g = check_rewrite("cse", ir, ir)
    assert len(g.constants()) == 6


def test_nodes_with_equal_attributes_merge():
    check_rewrite("cse", """
        func @main(%x: f32[4]) -> f32[4] {
          %a = leaky_relu(%x) {alpha=0.2}
          %b = leaky_relu(%x) {alpha=0.2}
          %s = add(%a, %b)
          return %s
        }""", """
        func @main(%x: f32[4]) -> f32[4] {
          %a = leaky_relu(%x) {alpha=0.2}
          %s = add(%a, %a)
          return %s
        }""", numerics={})


def test_nodes_with_different_attributes_stay():
    # Negative zero is a different attribute value from zero (bit-exact float comparison).
    ir = """
        func @main(%x: f32[4]) -> f32[4] {
          %a = leaky_relu(%x) {alpha=0.2}
          %b = leaky_relu(%x) {alpha=0.3}
          %c = clip(%x) {min=0.0, max=6.0}
          %d = clip(%x) {min=-0.0, max=6.0}
          %e = cast(%x) {dtype=f16}
          %f = cast(%x) {dtype=i32}
          %ab = add(%a, %b)
          %cd = add(%c, %d)
          %s = add(%ab, %cd)
          return %s
        }"""
    g = check_rewrite("cse", ir, ir)
    assert g.op_counts()["leaky_relu"] == 2 and g.op_counts()["cast"] == 2


def test_nodes_with_different_inputs_stay():
    check_ir("cse", """
        func @main(%x: f32[4], %y: f32[4]) -> f32[4] {
          %a = relu(%x)
          %b = relu(%y)
          %s = add(%a, %b)
          return %s
        }""", ["CHECK: relu(%x)", "CHECK: relu(%y)", "CHECK: add("])


def test_merged_duplicate_graph_outputs_point_at_the_kept_node():
    g = check_rewrite("cse", """
        func @main(%x: f32[4]) -> (f32[4], f32[4]) {
          %a = relu(%x)
          %b = relu(%x)
          return %a, %b
        }""", """
        func @main(%x: f32[4]) -> (f32[4], f32[4]) {
          %a = relu(%x)
          return %a, %a
        }""", numerics={})
    assert g.outputs[0] is g.outputs[1]


def test_counts_merges():
    g = parse("""
        func @main(%x: f32[4]) -> f32[4] {
          %a = relu(%x)
          %b = relu(%x)
          %c = relu(%x)
          %s = add(%a, %b)
          %t = add(%s, %c)
          return %t
        }""")
    assert get_pass("cse")(g).stats["merged"] == 2
    assert get_pass("cse")(g).stats["merged"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_preserves_outputs_of_random_graphs(g):
    inputs = graph_inputs(g, seed=0)
    before = interpret_values(g, inputs)
    want = [before[v] for v in g.outputs]
    out = optimize(g, "cse,dce", verify_each=True)
    after = interpret_values(out, inputs)
    got = [after[v] for v in out.outputs]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # converged: a second run finds nothing to merge
    assert get_pass("cse")(out).stats["merged"] == 0
    assert len(out.nodes) <= len(g.nodes)


def test_elided_constants_merge_by_digest():
    check_rewrite("cse", """
        func @main(%x: f32[32]) -> f32[32] {
          %c1 = const f32[32] elided<0123456789ab>
          %c2 = const f32[32] elided<0123456789ab>
          %c3 = const f32[32] elided<ba9876543210>
          %a = add(%x, %c1)
          %b = mul(%a, %c2)
          %c = mul(%b, %c3)
          return %c
        }""", """
        func @main(%x: f32[32]) -> f32[32] {
          %c1 = const f32[32] elided<0123456789ab>
          %c3 = const f32[32] elided<ba9876543210>
          %a = add(%x, %c1)
          %b = mul(%a, %c1)
          %c = mul(%b, %c3)
          return %c
        }""")


def test_respects_the_rewrite_budget():
    from rtinfer.pass_manager import PassContext

    g = parse("""
        func @main(%x: f32[4]) -> f32[4] {
          %a = relu(%x)
          %b = relu(%x)
          %c = relu(%x)
          %s = add(%a, %b)
          %t = add(%s, %c)
          return %t
        }""")
    ctx = get_pass("cse")(g, PassContext("cse", budget=1))
    assert ctx.stats["merged"] == 1 and g.op_counts()["relu"] == 2
