"""fuse-gelu: the erf and tanh spellings exporters emit become one gelu op."""

from rtinfer.testing import check_ir, check_rewrite

PIPELINE = "canonicalize,fuse-gelu,dce"

# torch.onnx (TorchScript) spelling: x * (erf(x / sqrt(2)) + 1) * 0.5
ERF_ONNX = """
func @main(%x: f32[2,8]) -> f32[2,8] {
  %sqrt2 = const f32[] dense<1.4142135>
  %one = const f32[] dense<1.0>
  %half = const f32[] dense<{half}>
  %d = div(%x, %sqrt2)
  %e = erf(%d)
  %a = add(%e, %one)
  %m = mul(%x, %a)
  %y = mul(%m, %half)
  return %y
}"""


def test_fuses_erf_gelu_as_torch_onnx_writes_it():
    check_rewrite(PIPELINE, before=ERF_ONNX.replace("{half}", "0.5"), expected="""
        func @main(%x: f32[2,8]) -> f32[2,8] {
          %y = gelu(%x) {approximate="none"}
          return %y
        }""", numerics={"atol": 1e-6})


def test_keeps_erf_form_with_a_wrong_constant():
    check_ir(PIPELINE, before=ERF_ONNX.replace("{half}", "0.6"),
             checks=["CHECK: erf(", "CHECK-NOT: gelu("])


# Hugging Face NewGELU (GPT-2) as torch.export writes it: (x * 0.5) * (1 + tanh(...))
TANH_TORCH = """
func @main(%x: f32[2,8]) -> f32[2,8] {
  %half = const f32[] dense<0.5>
  %three = const f32[] dense<{power}>
  %c = const f32[] dense<0.044715>
  %k = const f32[] dense<0.7978845608>
  %one = const f32[] dense<1.0>
  %m = mul(%x, %half)
  %p = pow(%x, %three)
  %q = mul(%p, %c)
  %s = add(%x, %q)
  %t = mul(%s, %k)
  %h = tanh(%t)
  %a = add(%one, %h)
  %y = mul(%m, %a)
  return %y
}"""


def test_fuses_tanh_gelu():
    check_rewrite(PIPELINE, before=TANH_TORCH.replace("{power}", "3.0"), expected="""
        func @main(%x: f32[2,8]) -> f32[2,8] {
          %y = gelu(%x) {approximate="tanh"}
          return %y
        }""", numerics={"atol": 1e-6})


def test_keeps_tanh_form_with_the_wrong_power():
    check_ir(PIPELINE, before=TANH_TORCH.replace("{power}", "2.0"),
             checks=["CHECK: tanh(", "CHECK-NOT: gelu("])


def test_fuses_gelu_whose_input_is_also_used_elsewhere():
    # x * 0.5 * (1 + erf(x * 0.7071...)) + x: x stays for the add
    check_rewrite(PIPELINE, before="""
        func @main(%x: f32[4]) -> f32[4] {
          %r = const f32[] dense<0.70710677>
          %half = const f32[] dense<0.5>
          %one = const f32[] dense<1.0>
          %m = mul(%half, %x)
          %d = mul(%x, %r)
          %e = erf(%d)
          %a = add(%e, %one)
          %g = mul(%m, %a)
          %y = add(%g, %x)
          return %y
        }""", expected="""
        func @main(%x: f32[4]) -> f32[4] {
          %g = gelu(%x) {approximate="none"}
          %y = add(%g, %x)
          return %y
        }""", numerics={"atol": 1e-6})
