"""fold-constants: nodes whose inputs are all constants become constants (shape arithmetic on
static shapes included); elided inputs, quantized or oversized results stay."""

from __future__ import annotations

import io

from rtinfer.ir.parser import parse
from rtinfer.pass_manager import run_pipeline
from rtinfer.testing import check_ir, check_rewrite


def _declines(pipeline: str, ir: str) -> list[str]:
    import textwrap

    result = run_pipeline(parse(textwrap.dedent(ir)), pipeline, out=io.StringIO())
    return [d.reason for d in result.declines]


def test_folds_exporter_shape_arithmetic_on_static_shapes():
    # shape -> gather -> concat -> cast: what exporters emit around a reshape
    check_rewrite("fold-constants,dce", """
        func @main(%x: f32[2,3,4]) -> (i64[2], f32[2,3,4]) {
          %s = shape(%x)
          %i = const i64[1] dense<[0]>
          %n = gather(%s, %i) {axis=0}
          %m = const i64[1] dense<[-1]>
          %t = concat(%n, %m) {axis=0}
          %y = relu(%x)
          return %t, %y
        }""", """
        func @main(%x: f32[2,3,4]) -> (i64[2], f32[2,3,4]) {
          %t = const i64[2] dense<[2, -1]>
          %y = relu(%x)
          return %t, %y
        }""", numerics={})


def test_keeps_shape_of_a_symbolic_tensor():
    ir = """
        func @main(%x: f32[B,3]) -> i64[2] {
          %s = shape(%x)
          return %s
        }"""
    check_rewrite("fold-constants", ir, ir)


def test_folds_constant_subexpressions_and_leaves_the_rest():
    check_rewrite("fold-constants,dce", """
        func @main(%x: f32[2,2]) -> f32[2,2] {
          %a = const f32[2,2] dense<[1.0, 2.0, 3.0, 4.0]>
          %b = const f32[2] dense<[0.5, -1.0]>
          %t = transpose(%a)
          %s = add(%t, %b)
          %r = reshape(%s) {shape=[4]}
          %q = reshape(%r) {shape=[2, 2]}
          %y = mul(%x, %q)
          return %y
        }""", """
        func @main(%x: f32[2,2]) -> f32[2,2] {
          %q = const f32[2,2] dense<[1.5, 2.0, 2.5, 3.0]>
          %y = mul(%x, %q)
          return %y
        }""", numerics={})


def test_folds_multi_output_ops():
    check_rewrite("fold-constants,dce", """
        func @main(%x: f32[2]) -> f32[2] {
          %a = const f32[4] dense<[1.0, 2.0, 3.0, 4.0]>
          %p, %q = split(%a) {axis=0, sizes=[2, 2]}
          %s = sub(%q, %p)
          %y = add(%x, %s)
          return %y
        }""", """
        func @main(%x: f32[2]) -> f32[2] {
          %s = const f32[2] dense<[2.0, 2.0]>
          %y = add(%x, %s)
          return %y
        }""", numerics={})


def test_max_size_keeps_large_results():
    ir = """
        func @main(%x: f32[4,4]) -> f32[4,4] {
          %c = const f32[] dense<2.0>
          %e = expand(%c) {shape=[4, 4]}
          %y = mul(%x, %e)
          return %y
        }"""
    check_ir("fold-constants{max-size=8}", ir, ["CHECK: expand(", "CHECK: mul("])
    assert _declines("fold-constants{max-size=8}", ir) == [
        "result of 16 elements exceeds max-size=8"]
    check_ir("fold-constants,dce", ir, ["CHECK: const f32[4,4]", "CHECK-NOT: expand("])


def test_keeps_nodes_on_elided_constants():
    ir = """
        func @main(%x: f32[64]) -> f32[64] {
          %c = const f32[64] elided<0123456789ab>
          %n = neg(%c)
          %y = add(%x, %n)
          return %y
        }"""
    check_ir("fold-constants", ir, ["CHECK: neg(", "CHECK: add("])
    assert _declines("fold-constants", ir) == [
        "an input constant is elided (its data was left out of the IR)"]


def test_keeps_quantize_dequantize_of_weights():
    ir = """
        func @main(%x: f32[3]) -> f32[3] {
          %w = const f32[3] dense<[0.5, 1.0, -1.5]>
          %q = quantize(%w) {scale=[0.5], zero_point=[0]}
          %d = dequantize(%q)
          %y = mul(%x, %d)
          return %y
        }"""
    check_rewrite("fold-constants", ir, ir)
