"""merge-parallel-linears: layers with constant weights that read one input become one wider
layer and a split."""

import io

from rtinfer.ir import parse
from rtinfer.pass_manager import run_pipeline
from rtinfer.testing import check_ir, check_rewrite

PIPELINE = "merge-parallel-linears,dce"


def test_merges_qkv_linears():
    # k has no bias: it joins with zeros
    check_rewrite(PIPELINE, before="""
        func @main(%x: f32[B,S,2]) -> (f32[B,S,2], f32[B,S,1], f32[B,S,2]) {
          %wq = const f32[2,2] dense<[1.0, 2.0, 3.0, 4.0]>
          %bq = const f32[2] dense<[0.5, -0.5]>
          %wk = const f32[1,2] dense<[5.0, 6.0]>
          %wv = const f32[2,2] dense<[7.0, 8.0, 9.0, 10.0]>
          %bv = const f32[2] dense<[1.0, 2.0]>
          %q = linear(%x, %wq, %bq)
          %k = linear(%x, %wk)
          %v = linear(%x, %wv, %bv)
          return %q, %k, %v
        }""", expected="""
        func @main(%x: f32[B,S,2]) -> (f32[B,S,2], f32[B,S,1], f32[B,S,2]) {
          %w = const f32[5,2] dense<[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]>
          %b = const f32[5] dense<[0.5, -0.5, 0.0, 1.0, 2.0]>
          %qkv = linear(%x, %w, %b)
          %q, %k, %v = split(%qkv) {axis=-1, sizes=[2, 1, 2]}
          return %q, %k, %v
        }""", numerics={"atol": 1e-5, "dims": {"B": 2, "S": 3}})


def test_merges_onnx_matmuls_with_identical_epilogues():
    # torch.onnx's projections after fuse-epilogue: x @ w [K, N] + b; joined on the last axis
    check_rewrite(PIPELINE, before="""
        func @main(%x: f32[1,3,2]) -> (f32[1,3,2], f32[1,3,1]) {
          %w1 = const f32[2,2] dense<[1.0, 2.0, 3.0, 4.0]>
          %b1 = const f32[2] dense<[0.5, -0.5]>
          %w2 = const f32[2,1] dense<[5.0, 6.0]>
          %b2 = const f32[1] dense<[1.0]>
          %a = fused_matmul(%x, %w1, %b1) {activation="gelu"}
          %c = fused_matmul(%x, %w2, %b2) {activation="gelu"}
          return %a, %c
        }""", expected="""
        func @main(%x: f32[1,3,2]) -> (f32[1,3,2], f32[1,3,1]) {
          %w = const f32[2,3] dense<[1.0, 2.0, 5.0, 3.0, 4.0, 6.0]>
          %b = const f32[3] dense<[0.5, -0.5, 1.0]>
          %ac = fused_matmul(%x, %w, %b) {activation="gelu", alpha=0.0, beta=0.0,
                                          residual="none"}
          %a, %c = split(%ac) {axis=-1, sizes=[2, 1]}
          return %a, %c
        }""", numerics={"atol": 1e-5})


def _run(ir: str, pipeline: str = PIPELINE):
    result = run_pipeline(parse(ir), pipeline, verify_each=True, stats=True, out=io.StringIO())
    return result, [d.reason for d in result.declines]


TWO = """
func @main(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,6], f32[4,6]) {
  %w1 = const f32[6,8] random(seed=0)
  %w2 = const f32[6,8] random(seed=1)
  %a = linear(%x, %w1)
  %c = linear({second}, %w2)
  return %a, %c
}"""


def test_stats_and_min_count():
    result, _ = _run(TWO.replace("{second}", "%x"))
    assert result.stat("merge-parallel-linears", "groups") == 1
    assert result.stat("merge-parallel-linears", "merged") == 2
    result, _ = _run(TWO.replace("{second}", "%x"), "merge-parallel-linears{min-count=3},dce")
    assert result.graph.op_counts()["linear"] == 2


def test_keeps_linears_of_different_inputs():
    check_ir(PIPELINE, before=TWO.replace("{second}", "%y"),
             checks=["CHECK: linear(%x", "CHECK: linear(%y", "CHECK-NOT: split("])


def test_keeps_linears_whose_weight_is_not_constant():
    result, reasons = _run("""
        func @main(%x: f32[4,8], %w2: f32[6,8]) -> (f32[4,6], f32[4,6]) {
          %w1 = const f32[6,8] random(seed=0)
          %a = linear(%x, %w1)
          %c = linear(%x, %w2)
          return %a, %c
        }""")
    assert "split" not in result.graph.op_counts()
    assert reasons == ["1 mergeable layer(s) read x (min-count 2): linear weight f32[6,8] is not "
                       "a 2-d constant with data"]


def test_keeps_layers_with_different_epilogues_or_a_residual():
    result, reasons = _run("""
        func @main(%x: f32[4,8], %r: f32[4,6]) -> (f32[4,6], f32[4,6], f32[4,6]) {
          %w1 = const f32[6,8] random(seed=0)
          %w2 = const f32[6,8] random(seed=1)
          %w3 = const f32[6,8] random(seed=2)
          %b = const f32[6] random(seed=3)
          %a = fused_linear(%x, %w1, %b) {activation="relu"}
          %c = fused_linear(%x, %w2, %b) {activation="gelu"}
          %d = fused_linear(%x, %w3, %b, %r) {activation="relu", residual="pre"}
          return %a, %c, %d
        }""")
    assert "split" not in result.graph.op_counts()
    assert any("differs" in r for r in reasons) and any("adds a residual" in r for r in reasons)
