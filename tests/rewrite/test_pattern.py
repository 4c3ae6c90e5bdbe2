"""Pattern matching: operand order, shared variables, splat constants, attributes, captures."""

from __future__ import annotations

import numpy as np
import pytest

from rtinfer.errors import IRError
from rtinfer.ir.graph import Graph, Node
from rtinfer.ir.printer import print_graph
from rtinfer.ir.types import DType, TensorType
from rtinfer.rewrite import P, RuleSet, match

from .helpers import ir

x, y = P.var("x"), P.var("y")


def node(g: Graph, name: str) -> Node:
    """The node defining the value called ``name``."""
    for n in g.nodes:
        if any(v.name == name for v in n.outputs):
            return n
    raise KeyError(name)


MUL_BOTH_ORDERS = """
func @main(%a: f32[4]) -> (f32[4], f32[4]) {
  %one = const f32[] dense<1.0>
  %p = mul(%a, %one)
  %q = mul(%one, %a)
  return %p, %q
}"""


def test_commutative_op_matches_both_operand_orders():
    g = ir(MUL_BOTH_ORDERS)
    for root in ("p", "q"):
        caps = match(x * 1.0, node(g, root))
        assert caps is not None and caps["x"] is g.inputs[0]
    caps = match(1.0 * x, node(g, "p"))  # the pattern's own operand order does not matter
    assert caps is not None and caps["x"] is g.inputs[0]


def test_non_commutative_op_keeps_operand_order():
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4]) {
      %z = const f32[] dense<0.0>
      %p = sub(%a, %z)
      %q = sub(%z, %a)
      return %p, %q
    }""")
    assert match(x - 0.0, node(g, "p")) is not None
    assert match(x - 0.0, node(g, "q")) is None


def test_repeated_variable_binds_one_value():
    g = ir("""
    func @main(%a: f32[4], %b: f32[4]) -> (f32[4], f32[4]) {
      %same = sub(%a, %a)
      %diff = sub(%a, %b)
      return %same, %diff
    }""")
    caps = match(x - x, node(g, "same"))
    assert caps == {"x": g.inputs[0]}
    assert match(x - x, node(g, "diff")) is None
    assert match(x - y, node(g, "same")) is not None  # distinct names may bind one value


def test_repeated_variable_across_commuted_operands():
    # x * (x + 1): the matcher has to backtrack over the inner add's operand order.
    g = ir("""
    func @main(%a: f32[4], %b: f32[4]) -> (f32[4], f32[4]) {
      %one = const f32[] dense<1.0>
      %s = add(%one, %a)
      %good = mul(%s, %a)
      %t = add(%one, %b)
      %bad = mul(%t, %a)
      return %good, %bad
    }""")
    pattern = x * (x + 1.0)
    assert match(pattern, node(g, "good")) == {"x": g.inputs[0]}
    assert match(pattern, node(g, "bad")) is None


@pytest.mark.parametrize("data, dtype, value, matches", [
    ([1.0, 1.0, 1.0], np.float32, 1.0, True),
    ([1.0, 2.0, 1.0], np.float32, 1.0, False),
    (1.0, np.float32, 1.0, True),  # 0-d
    ([[0.1, 0.1]], np.float32, 0.1, True),  # equal once rounded to the constant's dtype
    ([0.1, 0.1], np.float16, 0.1, True),
    ([1, 1], np.int32, 1.0, True),
    ([1, 1], np.int32, 1.5, False),
    ([0.5], np.float32, 0.50001, False),  # exact unless a tolerance is asked for
])
def test_const_value_matches_splats(data, dtype, value, matches):
    g = Graph()
    c = g.add_const(np.array(data, dtype=dtype))
    root = g.create_node("identity", [c])
    assert (match(P.op("identity", P.const_value(value)), root) is not None) == matches


def test_const_value_tolerance():
    g = Graph()
    c = g.add_const(np.array([0.70711], dtype=np.float32))  # an exporter's rounding of 1/sqrt(2)
    root = g.create_node("identity", [c])
    assert match(P.op("identity", P.const_value(0.7071067811865476)), root) is None
    assert match(P.op("identity", P.const_value(0.7071067811865476, rel_tol=1e-4)), root) == {}


def test_const_and_var_patterns():
    g = ir("""
    func @main(%a: f32[4]) -> f32[4] {
      %w = const f32[4] dense<[1.0, 2.0, 3.0, 4.0]>
      %y = mul(%a, %w)
      return %y
    }""")
    root = node(g, "y")
    caps = match(P.op("mul", x, P.const("w")), root)
    assert caps is not None
    assert caps["x"] is g.inputs[0]
    np.testing.assert_array_equal(caps["w"].const_data, [1, 2, 3, 4])
    assert match(P.op("mul", P.const("w"), P.const("v")), root) is None  # %a is not a constant
    w, v = P.consts("w", "v")
    assert (w.name, v.name) == ("w", "v")
    assert match(P.op("mul", P.any(), P.any()), root) == {}
    assert match(P.op("mul", x, P.const(where=lambda a: a.sum() > 100)), root) is None


def test_attribute_constraints_values_and_predicates():
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4]) {
      %p = leaky_relu(%a) {alpha=0.1}
      %q = leaky_relu(%a) {alpha=0.2}
      return %p, %q
    }""")
    p, q = node(g, "p"), node(g, "q")
    exact = P.op("leaky_relu", x, attrs={"alpha": 0.1})
    assert match(exact, p) is not None and match(exact, q) is None
    small = P.op("leaky_relu", x, attrs={"alpha": lambda a: a < 0.15})
    assert match(small, p) is not None and match(small, q) is None


def test_capture_nodes_by_name_and_op_sets():
    g = ir("""
    func @main(%a: f32[4]) -> f32[4] {
      %r = relu(%a)
      %s = neg(%r)
      return %s
    }""")
    pattern = P.op({"neg", "abs"}, P.op("relu", x, name="inner"), name="outer")
    caps = match(pattern, node(g, "s"))
    assert caps is not None
    assert caps["inner"] is node(g, "r") and caps["outer"] is node(g, "s")
    assert caps["x"] is g.inputs[0]
    assert match(P.op({"exp", "abs"}, P.any()), node(g, "s")) is None


def test_one_use_and_trailing_ellipsis():
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4]) {
      %r = relu(%a)
      %s = neg(%r)
      %t = add(%r, %a)
      return %s, %t
    }""")
    assert match(P.op("neg", P.op("relu", x)), node(g, "s")) is not None
    assert match(P.op("neg", P.op("relu", x, one_use=True)), node(g, "s")) is None
    assert match(P.op("add", P.op("relu", x), ...), node(g, "t")) is not None
    assert match(P.op("add", ...), node(g, "t")) is not None
    assert match(P.op("add", x), node(g, "t")) is None  # arity is exact without '...'


def test_shared_subpattern_binds_one_node():
    # (a+1)*(a+1) written with one subpattern object: both operands must be the same node.
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4]) {
      %one = const f32[] dense<1.0>
      %s = add(%a, %one)
      %t = add(%a, %one)
      %same = mul(%s, %s)
      %twin = mul(%s, %t)
      return %same, %twin
    }""")
    s = x + 1.0
    assert match(s * s, node(g, "same")) is not None
    assert match(s * s, node(g, "twin")) is None
    assert match((x + 1.0) * (x + 1.0), node(g, "twin")) is not None


def test_multi_output_index():
    g = Graph()
    a = g.add_input(TensorType(DType.f32, (4,)))
    halves = g.create_node("split", [a], {"axis": 0, "sizes": [2, 2]})
    root = g.create_node("add", [halves.outputs[0], halves.outputs[1]])
    first = P.op("split", x, index=0, name="halves")
    second = P.op("split", x, index=1, name="halves")
    assert match(P.op("add", first, second), root) is not None
    assert match(P.op("add", first, first), root) is None


def test_match_does_not_mutate():
    g = ir(MUL_BOTH_ORDERS)
    text = print_graph(g, provenance=True)
    uses = [list(v.uses) for v in g.values()]
    for n in list(g.nodes):
        match(x * 1.0, n) if n.op != "const" else None
        match(P.op("mul", P.op("mul", x, y), y), n)
    assert print_graph(g, provenance=True) == text
    assert [list(v.uses) for v in g.values()] == uses


def test_patterns_print_readably():
    pattern = P.op("leaky_relu", -(x + 1.0) * y, attrs={"alpha": 0.1}, name="r")
    assert str(pattern) == "leaky_relu(mul(neg(add(x, 1.0)), y)) {alpha=0.1}@r"


def test_rule_sets_reject_unknown_ops_and_attributes():
    with pytest.raises(IRError, match="unknown op 'reluu'"):
        RuleSet("bad", [(P.op("reluu", x), lambda x: x)])
    with pytest.raises(IRError, match="no attribute"):
        RuleSet("bad", [(P.op("relu", x, attrs={"alpha": 1.0}), lambda x: x)])
    with pytest.raises(TypeError, match="not captured"):
        RuleSet("bad", [(P.op("relu", x), lambda y: y)])
