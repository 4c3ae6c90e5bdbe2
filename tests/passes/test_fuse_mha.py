"""fuse-mha: the head split/merge around scaled_dot_product_attention folds into
multi_head_attention."""

import io

from rtinfer.ir import parse
from rtinfer.pass_manager import run_pipeline
from rtinfer.testing import check_ir, check_rewrite

PIPELINE = "fuse-mha,dce"

# Hugging Face BERT self-attention after fuse-attention: [B, S, H*D] -> [B, H, S, D] for q, k,
# v, the core, and [B, H, S, D] -> [B, S, H*D]  (H = 2, D = 4)
BERT = """
func @main(%q: f32[B,S,8], %k: f32[B,S,8], %v: f32[B,S,8], %mask: f32[B,1,1,S])
    -> f32[B,S,8] {
  %q4 = reshape(%q) {shape=[B, S, 2, 4]}
  %qh = transpose(%q4) {perm=[0, 2, 1, 3]}
  %k4 = reshape(%k) {shape=[B, S, 2, 4]}
  %kh = transpose(%k4) {perm=[0, 2, 1, 3]}
  %v4 = reshape(%v) {shape=[B, S, 2, 4]}
  %vh = transpose(%v4) {perm=[0, 2, 1, 3]}
  %o = scaled_dot_product_attention(%qh, %kh, %vh, %mask) {scale=0.5}
  %ot = transpose(%o) {perm=[0, 2, 1, 3]}
  %y = reshape(%ot) {shape=[B, S, 8]}
  return %y
}"""


def test_fuses_bert_head_split_and_merge():
    check_rewrite(PIPELINE, before=BERT, expected="""
        func @main(%q: f32[B,S,8], %k: f32[B,S,8], %v: f32[B,S,8], %mask: f32[B,1,1,S])
            -> f32[B,S,8] {
          %y = multi_head_attention(%q, %k, %v, %mask) {num_heads=2, scale=0.5, causal=false}
          return %y
        }""", numerics={"atol": 1e-5, "dims": {"B": 2, "S": 5}})


# torch.onnx (opset 17) with static shapes, no mask, causal; the merge is a -1 reshape
ONNX_CAUSAL = """
func @main(%q: f32[1,6,12], %k: f32[1,6,12], %v: f32[1,6,12]) -> f32[1,6,12] {
  %q4 = reshape(%q) {shape=[1, 6, -1, 4]}
  %k4 = reshape(%k) {shape=[1, 6, -1, 4]}
  %v4 = reshape(%v) {shape=[1, 6, -1, 4]}
  %qh = transpose(%q4) {perm=[0, 2, 1, 3]}
  %vh = transpose(%v4) {perm=[0, 2, 1, 3]}
  %kh = transpose(%k4) {perm=[0, 2, 1, 3]}
  %o = scaled_dot_product_attention(%qh, %kh, %vh) {causal=true}
  %ot = transpose(%o) {perm=[0, 2, 1, 3]}
  %y = reshape(%ot) {shape=[1, 6, -1]}
  return %y
}"""


def test_fuses_static_causal_attention():
    check_rewrite(PIPELINE, before=ONNX_CAUSAL, expected="""
        func @main(%q: f32[1,6,12], %k: f32[1,6,12], %v: f32[1,6,12]) -> f32[1,6,12] {
          %y = multi_head_attention(%q, %k, %v) {num_heads=3, scale=0.0, causal=true}
          return %y
        }""", numerics={"atol": 1e-5})


def test_keeps_a_merge_to_another_shape_as_a_reshape():
    # GPT-2: the merge goes straight to [B*S, H*D] for its Conv1D
    before = ONNX_CAUSAL.replace("-> f32[1,6,12] {", "-> f32[6,12] {") \
                        .replace("%y = reshape(%ot) {shape=[1, 6, -1]}",
                                 "%y = reshape(%ot) {shape=[6, 12]}")
    check_rewrite(PIPELINE, before=before, expected="""
        func @main(%q: f32[1,6,12], %k: f32[1,6,12], %v: f32[1,6,12]) -> f32[6,12] {
          %o = multi_head_attention(%q, %k, %v) {num_heads=3, scale=0.0, causal=true}
          %y = reshape(%o) {shape=[6, 12]}
          return %y
        }""", numerics={"atol": 1e-5})


def _declines(ir: str) -> list[str]:
    result = run_pipeline(parse(ir), PIPELINE, verify_each=True, out=io.StringIO())
    assert "multi_head_attention" not in result.graph.op_counts()
    return [d.reason for d in result.declines]


def test_keeps_channels_laid_out_head_minor():
    # [B, S, D*H] (channel d * H + h): split as [B, S, D, H] and moved to [B, H, S, D]
    before = BERT.replace("{shape=[B, S, 2, 4]}", "{shape=[B, S, 4, 2]}")
    for t in "qkv":
        before = before.replace(f"transpose(%{t}4) {{perm=[0, 2, 1, 3]}}",
                                f"transpose(%{t}4) {{perm=[0, 3, 1, 2]}}")
    reasons = _declines(before)
    assert len(reasons) == 1 and "is not the [.., S, H, D] -> [.., H, S, D] head split" \
        in reasons[0], reasons


def test_keeps_a_merge_that_is_not_the_inverse_of_the_split():
    # [B, H, S, D] -> [B, S, D, H] -> [B, S, D*H]
    before = BERT.replace("%ot = transpose(%o) {perm=[0, 2, 1, 3]}",
                          "%ot = transpose(%o) {perm=[0, 2, 3, 1]}")
    reasons = _declines(before)
    assert len(reasons) == 1 and "head merge" in reasons[0], reasons


def test_keeps_attention_whose_per_head_output_is_returned():
    before = BERT.replace("-> f32[B,S,8] {", "-> (f32[B,S,8], f32[B,2,S,4]) {") \
                 .replace("return %y", "return %y, %o")
    assert _declines(before) == ["the per-head attention output is used elsewhere too"]


def test_keeps_heads_that_are_not_a_reshape_of_the_last_axis():
    # a rotary embedding (here: a plain mul) between the head split and the core
    check_ir(PIPELINE, before=BERT.replace(
        "%qh = transpose(%q4) {perm=[0, 2, 1, 3]}",
        "%qr = transpose(%q4) {perm=[0, 2, 1, 3]}\n  %qh = mul(%qr, %qr)"),
        checks=["CHECK: scaled_dot_product_attention(", "CHECK-NOT: multi_head_attention("])
