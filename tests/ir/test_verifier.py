"""The verifier: each broken invariant is reported with the offending node."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from rtinfer.errors import VerifyError
from rtinfer.ir import DType, Graph, Node, TensorType, parse, print_graph, verify
from rtinfer.ir.verifier import find_problems

F2 = TensorType(DType.f32, (2,))


def ir(text: str) -> Graph:
    return parse(textwrap.dedent(text).strip() + "\n")


def chain() -> Graph:
    return ir("""
        func @main(%x: f32[2]) -> f32[2] {
          %a = relu(%x)
          %b = sigmoid(%a)
          %c = add(%a, %b)
          return %c
        }""")


def test_well_formed_graphs_pass():
    verify(chain())
    g = ir("""
        func @main(%x: f32[16,16]) -> f32[16,16] {
          %w = const f32[16,16] elided<0123456789ab>
          %y = add(%x, %w)
          return %y
        }""")
    verify(g)  # an elided constant is fine for the verifier


def test_wrong_declared_type_reports_expected_and_found():
    g = ir("""
        func @main(%x: f32[2]) -> f32[2,2] {
          %y = add(%x, %x) : f32[2,2]
          return %y
        }""")
    with pytest.raises(VerifyError) as info:
        verify(g)
    msg = str(info.value)
    assert "result 0 of add (%y) has type f32[2,2] but the op table infers f32[2]" in msg
    assert info.value.node == "%y = add(%x, %x) : f32[2,2]"


def test_wrong_dtype_and_quantization_are_type_errors():
    g = ir("""
        func @main(%x: f32[2]) -> f16[2] {
          %y = relu(%x) : f16[2]
          return %y
        }""")
    with pytest.raises(VerifyError, match="expected f32\\[2\\], found f16\\[2\\]"):
        verify(g)
    g = ir("""
        func @main(%x: i8[2] q(scale=0.5, zp=0)) -> i8[2] {
          %y = identity(%x) : i8[2]
          return %y
        }""")
    with pytest.raises(VerifyError, match="has type i8\\[2\\] but the op table infers i8\\[2\\] "
                                          "q\\(scale=0.5, zp=0\\)"):
        verify(g)


def test_use_before_definition():
    g = chain()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    with pytest.raises(VerifyError) as info:
        verify(g)
    assert "input 0 of sigmoid (%a) is used before its definition" in str(info.value)
    assert info.value.node == "%b = sigmoid(%a) : f32[2]"


def test_dangling_use_after_a_bad_removal():
    g = chain()
    b = g.nodes[1]
    g.nodes.remove(b)  # bypasses Graph.remove_node: %a keeps a use by the removed node
    b.graph = None
    with pytest.raises(VerifyError) as info:
        verify(g)
    msg = str(info.value)
    assert "%a has a dangling use by sigmoid" in msg
    assert "input 1 of add (%?b) is not defined in @main" in msg  # the add still reads %b


def test_use_list_out_of_sync():
    g = chain()
    a = g.nodes[0].out
    a.uses.pop()
    with pytest.raises(VerifyError, match="the use list of %a does not record input 0 of add"):
        verify(g)


def test_bad_and_missing_attributes():
    g = ir("""
        func @main(%x: f32[2]) -> f32[2] {
          %y = leaky_relu(%x) {alpha=0.1}
          return %y
        }""")
    g.nodes[0].attrs["alpha"] = "big"
    with pytest.raises(VerifyError, match="attribute alpha: expected a float, got 'big'") as info:
        verify(g)
    assert info.value.node.startswith("%y = leaky_relu(%x)")
    del g.nodes[0].attrs["alpha"]
    with pytest.raises(VerifyError, match="attribute alpha is missing"):
        verify(g)
    g.nodes[0].attrs["alpha"] = 1  # an int where the schema's canonical form is a float
    with pytest.raises(VerifyError, match="alpha is not in canonical form"):
        verify(g)


def test_unknown_op_and_arity():
    g = Graph()
    x = g.add_input(F2, "x")
    g.insert(Node("frobnicate", [x], {}, [F2]))
    g.insert(Node("add", [x], {}, [F2]))
    g.set_outputs([g.nodes[1].out])
    with pytest.raises(VerifyError) as info:
        verify(g)
    msg = str(info.value)
    assert "2 problems in @main; first: unknown op 'frobnicate'" in msg
    assert "add takes 2 inputs (a, b), got 1" in msg
    assert info.value.node == "%0 = frobnicate(%x) : f32[2]"


def test_output_not_defined_in_the_graph():
    g = chain()
    other = Graph()
    g.set_outputs([other.add_input(F2, "stranger")])
    with pytest.raises(VerifyError, match="graph output 0 \\(%\\?stranger\\) is not defined"):
        verify(g)


def test_value_from_another_graph():
    g = chain()
    other = Graph()
    s = other.add_input(F2, "s")
    g.create_node("relu", [s])
    with pytest.raises(VerifyError, match="input 0 of relu \\(%\\?s\\) is not defined in @main"):
        verify(g)


def test_value_produced_twice_and_node_listed_twice():
    g = chain()
    g.nodes.append(g.nodes[0])
    with pytest.raises(VerifyError, match="node relu appears twice"):
        verify(g)


def test_node_owned_by_another_graph():
    g = chain()
    g.nodes[2].graph = Graph("other")
    with pytest.raises(VerifyError, match="its .graph is another graph"):
        verify(g)


def test_many_problems_are_summarized():
    g = Graph()
    x = g.add_input(F2, "x")
    for _ in range(8):
        g.insert(Node("relu", [x], {}, [TensorType(DType.f32, (3,))]))
    g.set_outputs([g.nodes[0].out])
    with pytest.raises(VerifyError) as info:
        verify(g)
    msg = str(info.value)
    assert msg.startswith("8 problems in @main; first: result 0 of relu")
    assert msg.count("also:") == 4 and "... and 3 more" in msg
    assert len(find_problems(g)) == 8


def test_nested_graph_attributes_are_verified():
    from rtinfer.ir.ops import OPS, Attr, op

    if "test_ir_body" not in OPS:
        op("test_ir_body", ["x"], lambda ins, a: ins[0], lambda x, body: x.copy(),
           attrs={"body": Attr("graph")}, doc="test only: carries a nested graph")
    body = ir("""
        func @body(%a: f32[2]) -> f32[3] {
          %d = relu(%a) : f32[3]
          return %d
        }""")
    g = Graph()
    x = g.add_input(F2, "x")
    g.set_outputs([g.add_op("test_ir_body", x, body=body)])
    with pytest.raises(VerifyError) as info:
        verify(g)
    assert "test_ir_body attribute body: result 0 of relu (%d) has type f32[3]" in str(info.value)
    assert info.value.node == "%d = relu(%a) : f32[3]"


def test_verifier_does_not_mind_dead_code_or_shared_values():
    g = ir("""
        func @main(%x: f32[2]) -> (f32[2], f32[2]) {
          %a = relu(%x)
          %dead = exp(%a)
          %c = const f32[2] dense<[1.0, 2.0]>
          return %a, %a
        }""")
    verify(g)
    assert "%dead = exp(%a) : f32[2]" in print_graph(g)
    assert np.array_equal(g.nodes[2].attrs["value"], [1.0, 2.0])
