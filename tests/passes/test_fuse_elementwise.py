"""fuse-elementwise: trait-driven fusion of elementwise/broadcast ops into fused_elementwise."""

from __future__ import annotations

import io

import numpy as np

from rtinfer.ir import interpret, parse, random_inputs, structural_equal, verify
from rtinfer.ir.printer import print_graph
from rtinfer.pass_manager import run_pipeline
from rtinfer.testing import check_ir, check_rewrite

CHAIN = """
func @main(%x: f32[B,4], %b: f32[4]) -> f32[B,4] {
  %c = const f32[] dense<2.0>
  %m = mul(%x, %c)
  %a = add(%m, %b)
  %r = relu(%a)
  return %r
}"""


def test_fuses_a_chain_into_one_node():
    check_rewrite(
        "fuse-elementwise",
        before=CHAIN,
        expected="""
        func @main(%x: f32[B,4], %b: f32[4]) -> f32[B,4] {
          %c = const f32[] dense<2.0>
          %r = fused_elementwise(%x, %c, %b) {body=func @fused(%0: f32[B,4], %1: f32[],
                                                               %2: f32[4]) -> f32[B,4] {
              %3 = mul(%0, %1)
              %4 = add(%3, %2)
              %5 = relu(%4)
              return %5
            }}
          return %r
        }""",
        numerics={"atol": 1e-6, "dims": {"B": 3}},
    )


def test_intermediate_used_outside_becomes_a_second_result():
    graph = check_rewrite(
        "fuse-elementwise",
        before="""
        func @main(%x: f32[2,4]) -> (f32[2,4], f32[2,4]) {
          %e = exp(%x)
          %n = neg(%e)
          %t = tanh(%n)
          return %t, %e
        }""",
        expected="""
        func @main(%x: f32[2,4]) -> (f32[2,4], f32[2,4]) {
          %t, %e = fused_elementwise(%x) {body=func @fused(%0: f32[2,4]) -> (f32[2,4], f32[2,4]) {
              %1 = exp(%0)
              %2 = neg(%1)
              %3 = tanh(%2)
              return %3, %1
            }}
          return %t, %e
        }""",
        numerics={"atol": 1e-6},
    )
    assert [n.op for n in graph.nodes] == ["fused_elementwise"]  # exp is computed once


def test_does_not_fuse_across_heavy_or_reduce_ops():
    text = check_ir(
        "fuse-elementwise",
        before="""
        func @main(%x: f32[2,4]) -> f32[2,1] {
          %w = const f32[4,4] random(seed=0)
          %s = sigmoid(%x)
          %l = linear(%s, %w)
          %r = relu(%l)
          %m = reduce_sum(%r) {axes=[1], keepdims=true}
          %e = exp(%m)
          return %e
        }""",
        checks=["CHECK: sigmoid(", "CHECK: linear(", "CHECK: relu(", "CHECK: reduce_sum(",
                "CHECK: exp(", "CHECK-NOT: fused_elementwise"])
    assert "fused_elementwise" not in text


def test_diamond_through_a_heavy_op_would_be_a_cycle():
    result = run_pipeline(parse("""
        func @main(%x: f32[2,4]) -> f32[2,4] {
          %w = const f32[4,4] random(seed=0)
          %a = exp(%x)
          %l = linear(%a, %w)
          %s = add(%a, %l)
          return %s
        }"""), "fuse-elementwise", verify_each=True, out=io.StringIO())
    assert result.graph.op_counts().get("fused_elementwise", 0) == 0
    assert result.declines
    assert all("cycle" in d.reason and "linear" in d.reason for d in result.declines)


def test_max_size_bounds_the_body():
    chain = "\n".join(f"  %v{i + 1} = tanh(%v{i})" for i in range(6))
    graph = parse(f"func @main(%v0: f32[3]) -> f32[3] {{\n{chain}\n  return %v6\n}}")
    result = run_pipeline(graph.clone(), "fuse-elementwise{max-size=4}", verify_each=True,
                          check_numerics=True, out=io.StringIO())
    sizes = sorted(len(n.attrs["body"].nodes) for n in result.graph.nodes
                   if n.op == "fused_elementwise")
    assert sizes == [2, 4]
    assert result.stat("fuse-elementwise", "groups") == 2
    assert result.stat("fuse-elementwise", "fused-ops") == 6
    assert any("max-size=4" in d.reason for d in result.declines)


def test_body_round_trips_and_survives_cse_and_dce():
    graph = run_pipeline(parse(CHAIN), "fuse-elementwise", out=io.StringIO()).graph
    text = print_graph(graph, full_constants=True)
    again = parse(text)
    verify(again)
    assert structural_equal(again, graph)
    # two identical fused nodes merge, and dead ones go
    dup = parse(text.replace("return %r", "%r2 = fused_elementwise(%x, %c, %b) {body="
                             + text.split("{body=", 1)[1].split("} : f32[B,4]\n", 1)[0]
                             + "}\n  %s = add(%r, %r2)\n  return %s")
                .replace("-> f32[B,4] {\n  %c", "-> f32[B,4] {\n  %c", 1))
    verify(dup)
    out = run_pipeline(dup, "cse,dce", verify_each=True, out=io.StringIO())
    assert out.stat("cse", "merged") == 1
    assert out.graph.op_counts()["fused_elementwise"] == 1


def test_numerics_and_interpreter_on_fused_graph():
    graph = parse(CHAIN)
    fused = run_pipeline(graph.clone(), "fuse-elementwise", out=io.StringIO()).graph
    inputs = random_inputs(graph, seed=3, dims={"B": 5})
    np.testing.assert_allclose(interpret(fused, *inputs), interpret(graph, *inputs), rtol=1e-6)
