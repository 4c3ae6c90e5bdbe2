"""The reference interpreter: results, input checking and catching op-table disagreements."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from rtinfer.errors import InterpretError
from rtinfer.ir import (
    DType,
    Graph,
    TensorType,
    interpret,
    interpret_values,
    parse,
    print_graph,
    random_inputs,
)
from rtinfer.ir.ops import OPS, op


def ir(text: str) -> Graph:
    return parse(textwrap.dedent(text).strip() + "\n")


GRAPH = """
    func @main(%x: f32[B,3], %y: f32[3]) -> (f32[B,3], f32[B,3]) {
      %w = const f32[3] dense<[1.0, -2.0, 0.5]>
      %a = mul(%x, %w)
      %b = add(%a, %y)
      %c = relu(%b)
      return %c, %a
    }"""


def test_computes_with_the_op_references():
    g = ir(GRAPH)
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 3
    y = np.array([0.5, 0.25, -1.0], dtype=np.float32)
    c, a = interpret(g, x, y)
    w = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(a, x * w)
    np.testing.assert_array_equal(c, np.maximum(x * w + y, 0))
    values = interpret_values(g, [x, y])
    assert len(values) == len(g.inputs) + len(g.nodes)
    np.testing.assert_array_equal(values[g.nodes[2].out], x * w + y)


def test_single_output_is_returned_bare_and_torch_tensors_are_accepted():
    g = ir("""
        func @main(%x: f32[2]) -> f32[2] {
          %y = relu(%x)
          return %y
        }""")
    out = interpret(g, torch.tensor([-1.0, 2.0]))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [0.0, 2.0])


def test_input_count_dtype_and_shape_are_checked():
    g = ir(GRAPH)
    y = np.zeros(3, np.float32)
    with pytest.raises(InterpretError, match="@main takes 2 inputs, got 1"):
        interpret(g, y)
    with pytest.raises(InterpretError, match="input %x: expected f32\\[B,3\\], got float64 "
                                             "array of shape \\[2,3\\]"):
        interpret(g, np.zeros((2, 3)), y)
    with pytest.raises(InterpretError, match="input %x: expected f32\\[B,3\\], got shape "
                                             "\\[2,4\\]"):
        interpret(g, np.zeros((2, 4), np.float32), y)
    with pytest.raises(InterpretError, match="input %y: expected f32\\[3\\], got float32 array "
                                             "of shape \\[1,3\\]"):
        interpret(g, np.zeros((2, 3), np.float32), np.zeros((1, 3), np.float32))


def test_symbolic_dims_bind_consistently_across_inputs():
    g = ir("""
        func @main(%x: f32[B,S], %y: f32[B,1], %z: f32[B*S]) -> f32[B,S] {
          %a = add(%x, %y)
          return %a
        }""")
    ok = [np.zeros((2, 3), np.float32), np.zeros((2, 1), np.float32), np.zeros(6, np.float32)]
    interpret(g, *ok)
    with pytest.raises(InterpretError, match="input %y: expected f32\\[B,1\\], got shape "
                                             "\\[3,1\\] \\(B is 2 elsewhere but 3 here\\)"):
        interpret(g, ok[0], np.zeros((3, 1), np.float32), ok[2])
    with pytest.raises(InterpretError,
                       match="input %z: expected f32\\[B\\*S\\], got shape \\[5\\]"):
        interpret(g, ok[0], ok[1], np.zeros(5, np.float32))


def test_expression_dims_can_bind_their_symbol():
    g = ir("""
        func @main(%x: f32[2*B]) -> f32[2*B] {
          %a = relu(%x)
          return %a
        }""")
    assert interpret(g, np.ones(6, np.float32)).shape == (6,)
    with pytest.raises(InterpretError, match="no positive integer B"):
        interpret(g, np.ones(5, np.float32))


def test_random_inputs_follow_the_input_types():
    g = ir("""
        func @main(%x: f32[B,S], %i: i64[B], %m: bool[4], %h: f16[B*S]) -> f32[B,S] {
          return %x
        }""")
    x, i, m, h = random_inputs(g, seed=3, dims={"S": 5})
    assert x.shape == (2, 5) and x.dtype == np.float32
    assert i.shape == (2,) and i.dtype == np.int64 and set(np.unique(i)) <= {0, 1}
    assert m.dtype == np.bool_ and h.shape == (10,) and h.dtype == np.float16
    again = random_inputs(g, seed=3, dims={"S": 5})
    assert all(np.array_equal(a, b) for a, b in zip([x, i, m, h], again, strict=True))
    interpret(g, x, i, m, h)


def test_elided_constant_cannot_be_evaluated():
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (32,)), "x")
    g.set_outputs([g.add_op("add", x, g.add_const(np.ones(32, np.float32)))])
    elided = parse(print_graph(g))
    with pytest.raises(InterpretError, match="full_constants=True"):
        interpret(elided, np.ones(32, np.float32))
    full = parse(print_graph(g, full_constants=True))
    np.testing.assert_array_equal(interpret(full, np.ones(32, np.float32)), np.full(32, 2.0))


def test_a_reference_that_disagrees_with_inference_is_caught_at_its_node():
    if "test_ir_bad_ref" not in OPS:
        op("test_ir_bad_ref", ["x"], lambda ins, a: ins[0], lambda x: x[:-1].astype(np.float64),
           doc="test only: a reference that returns the wrong shape and dtype")
        op("test_ir_raises", ["x"], lambda ins, a: ins[0],
           lambda x: (_ for _ in ()).throw(ValueError("boom")), doc="test only: raises")
    g = ir("""
        func @main(%x: f32[3]) -> f32[3] {
          %y = test_ir_bad_ref(%x)
          return %y
        }""")
    with pytest.raises(InterpretError) as info:
        interpret(g, np.ones(3, np.float32))
    msg = str(info.value)
    assert "the reference of test_ir_bad_ref disagrees with the node's type" in msg
    assert "float64 array of shape [2], declared f32[3] (dtype)" in msg
    assert "at: %y = test_ir_bad_ref(%x) : f32[3]" in msg
    g = ir(print_graph(g).replace("bad_ref", "raises"))
    with pytest.raises(InterpretError, match="reference of test_ir_raises failed: ValueError: "
                                             "boom"):
        interpret(g, np.ones(3, np.float32))
