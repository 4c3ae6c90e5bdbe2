"""fuse-layernorm: LayerNorm and RMSNorm spelled out with means become one op."""

from rtinfer.testing import check_ir, check_rewrite

PIPELINE = "canonicalize,fuse-layernorm,dce"

# torch.onnx at opset < 17: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add
LAYER_NORM = """
func @main(%x: f32[2,3,4]) -> f32[2,3,4] {
  %two = const f32[] dense<2.0>
  %eps = const f32[] dense<1e-05>
  %gamma = const f32[4] dense<[0.5, 1.0, 1.5, 2.0]>
  %beta = const f32[4] dense<[0.1, 0.2, 0.3, 0.4]>
  %m = reduce_mean(%x) {axes=[{axis}], keepdims=true}
  %d = sub(%x, %m)
  %p = pow(%d, %two)
  %v = reduce_mean(%p) {axes=[{axis}], keepdims=true}
  %e = add(%v, %eps)
  %s = sqrt(%e)
  %n = div(%d, %s)
  %g = mul(%n, %gamma)
  %y = add(%g, %beta)
  return %y
}"""


def test_fuses_layer_norm_as_torch_onnx_writes_it():  # eps: the f32 constant, exactly
    check_rewrite(PIPELINE, before=LAYER_NORM.replace("{axis}", "-1"), expected="""
        func @main(%x: f32[2,3,4]) -> f32[2,3,4] {
          %gamma = const f32[4] dense<[0.5, 1.0, 1.5, 2.0]>
          %beta = const f32[4] dense<[0.1, 0.2, 0.3, 0.4]>
          %y = layer_norm(%x, %gamma, %beta) {axis=2, eps=9.999999747378752e-06}
          return %y
        }""", numerics={"atol": 1e-5})


def test_keeps_mean_over_a_leading_axis():
    # normalizing over axis 1 of [2, 3, 4] is not layer_norm (which takes the trailing axes)
    check_ir(PIPELINE, before=LAYER_NORM.replace("{axis}", "1"),
             checks=["CHECK: reduce_mean(", "CHECK-NOT: layer_norm("])


# Llama / T5 RMSNorm as torch.export writes it: weight * (x * rsqrt(mean(x^2) + eps))
RMS_NORM = """
func @main(%x: f32[2,3,4]) -> f32[2,3,4] {
  %two = const f32[] dense<2.0>
  %eps = const f32[] dense<1e-06>
  %w = const f32[{wshape}] dense<[0.5, 1.0, 1.5, 2.0]>
  %p = pow(%x, %two)
  %v = reduce_mean(%p) {axes=[2], keepdims=true}
  %e = add(%v, %eps)
  %r = rsqrt(%e)
  %n = mul(%x, %r)
  %y = mul(%w, %n)
  return %y
}"""


def test_fuses_rms_norm():
    check_rewrite(PIPELINE, before=RMS_NORM.replace("{wshape}", "4"), expected="""
        func @main(%x: f32[2,3,4]) -> f32[2,3,4] {
          %w = const f32[4] dense<[0.5, 1.0, 1.5, 2.0]>
          %y = rms_norm(%x, %w) {axis=2, eps=9.999999974752427e-07}
          return %y
        }""", numerics={"atol": 1e-5})


def test_keeps_a_scale_that_varies_along_a_normalized_out_axis():
    # a [4, 1] weight runs along axis 1 of the [2, 4, 4] input, which is not normalized: the
    # norm fuses, its scale stays a mul
    check_ir(PIPELINE, before=RMS_NORM.replace("{wshape}", "4,1").replace("f32[2,3,4]",
                                                                          "f32[2,4,4]"),
             checks=["CHECK: rms_norm(%x) {{.*}}", "CHECK: mul("])
