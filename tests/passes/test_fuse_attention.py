"""fuse-attention: softmax(q @ k^T * scale + mask) @ v spelled out becomes one SDPA op."""

import numpy as np

from rtinfer.testing import check_ir, check_rewrite

PIPELINE = "canonicalize,fuse-attention,dce"

# Hugging Face eager attention: (q @ k^T) / sqrt(d) + mask, softmax, @ v  (d = 4)
EAGER = """
func @main(%q: f32[1,2,3,4], %k: f32[1,2,5,4], %v: f32[1,2,5,4], %mask: f32[1,1,3,5])
    -> f32[1,2,3,4] {
  %d = const f32[] dense<2.0>
  %kt = transpose(%k) {perm=[0, 1, 3, 2]}
  %s = matmul(%q, %kt)
  %sd = div(%s, %d)
  %a = add(%sd, %mask)
  %p = softmax(%a) {axis={axis}}
  %o = matmul(%p, %v)
  return %o
}"""


def test_fuses_eager_attention():
    check_rewrite(PIPELINE, before=EAGER.replace("{axis}", "-1"), expected="""
        func @main(%q: f32[1,2,3,4], %k: f32[1,2,5,4], %v: f32[1,2,5,4], %mask: f32[1,1,3,5])
            -> f32[1,2,3,4] {
          %o = scaled_dot_product_attention(%q, %k, %v, %mask) {scale=0.5, causal=false}
          return %o
        }""", numerics={"atol": 1e-5})


def test_keeps_softmax_over_the_query_axis():
    check_ir(PIPELINE, before=EAGER.replace("{axis}", "2"),
             checks=["CHECK: softmax(", "CHECK-NOT: scaled_dot_product_attention("])


# torch.onnx's SDPA: both sides scaled by sqrt(scale), k^T straight from the head split
# ([B, S, H, E] -> [B, H, E, S]), a NaN guard after the softmax; scale = fl32(1/sqrt(2))^2
ONNX_SDPA = """
func @main(%q: f32[1,2,3,4], %k4: f32[1,5,2,4], %v: f32[1,2,5,4], %mask: f32[1,1,3,5])
    -> f32[1,2,3,4] {
  %r = const f32[] dense<0.70710677>
  %zero = const f32[1] dense<[0.0]>
  %kt = transpose(%k4) {perm=[0, 2, 3, 1]}
  %qs = mul(%q, %r)
  %ks = mul(%kt, %r)
  %s = matmul(%qs, %ks)
  %a = add(%s, %mask)
  %p = softmax(%a) {axis=-1}
  %nan = not_equal(%p, %p)
  %g = where(%nan, %zero, %p)
  %o = matmul(%g, %v)
  return %o{extra}
}"""


def test_fuses_torch_onnx_sdpa():
    check_rewrite(PIPELINE, before=ONNX_SDPA.replace("{extra}", ""), expected="""
        func @main(%q: f32[1,2,3,4], %k4: f32[1,5,2,4], %v: f32[1,2,5,4], %mask: f32[1,1,3,5])
            -> f32[1,2,3,4] {
          %k = transpose(%k4) {perm=[0, 2, 1, 3]}
          %o = scaled_dot_product_attention(%q, %k, %v, %mask) {scale=0.4999999828857291,
                                                                causal=false}
          return %o
        }""", numerics={"atol": 1e-5})


def test_keeps_attention_whose_probabilities_are_returned():
    before = ONNX_SDPA.replace("-> f32[1,2,3,4] {", "-> (f32[1,2,3,4], f32[1,2,3,5]) {")
    check_ir(PIPELINE, before=before.replace("{extra}", ", %g"),
             checks=["CHECK: softmax(", "CHECK-NOT: scaled_dot_product_attention("])


def test_fully_masked_rows_give_zeros_as_in_torch():
    import torch

    from rtinfer.ir import interpret, parse

    g = parse("""
        func @main(%q: f32[1,1,2,4], %k: f32[1,1,3,4], %v: f32[1,1,3,4], %m: bool[1,1,2,3])
            -> f32[1,1,2,4] {
          %o = scaled_dot_product_attention(%q, %k, %v, %m)
          return %o
        }""")
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s, dtype=np.float32) for s in ([1, 1, 2, 4], [1, 1, 3, 4],
                                                                   [1, 1, 3, 4]))
    m = np.array([[[[True, False, True], [False, False, False]]]])
    want = torch.nn.functional.scaled_dot_product_attention(
        *map(torch.from_numpy, (q, k, v, m))).numpy()
    got = interpret(g, q, k, v, m)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.any(got[0, 0, 1])
