"""Patterns written by example: ``P.trace`` over the ``ops`` builders."""

from __future__ import annotations

import pytest

from rtinfer.ir.graph import Node
from rtinfer.ir.printer import print_graph
from rtinfer.rewrite import ConstValue, OpPattern, P, RuleSet, match, ops

from .helpers import ir, same_numerics


def gelu_erf(x):
    # gelu(x) = 0.5 * x * (1 + erf(x / sqrt(2)))
    return 0.5 * x * (1.0 + ops.erf(x * 0.7071067811865476))


GELU = P.trace(gelu_erf, ["x"])

# The same math as an exporter writes it: constants rounded to f32 and printed with 7 digits,
# operands of the commutative ops in the other order.
GELU_EXPORTED = """
func @main(%a: f32[2,8]) -> f32[2,8] {
  %c = const f32[] dense<0.7071068>
  %m = mul(%c, %a)
  %e = erf(%m)
  %one = const f32[] dense<1.0>
  %s = add(%e, %one)
  %half = const f32[] dense<0.5>
  %h = mul(%a, %half)
  %y = mul(%s, %h)
  return %y
}"""


def root(g) -> Node:
    return g.outputs[0].producer


def test_traced_gelu_matches_a_graph_of_the_same_math():
    g = ir(GELU_EXPORTED)
    caps = match(GELU, root(g))
    assert caps == {"x": g.inputs[0]}


def test_traced_gelu_matches_the_written_operand_order():
    g = ir("""
    func @main(%a: f32[2,8]) -> f32[2,8] {
      %half = const f32[] dense<0.5>
      %h = mul(%half, %a)
      %c = const f32[] dense<0.7071067811865476>
      %m = mul(%a, %c)
      %e = erf(%m)
      %one = const f32[] dense<1.0>
      %s = add(%one, %e)
      %y = mul(%h, %s)
      return %y
    }""")
    assert match(GELU, root(g)) == {"x": g.inputs[0]}


@pytest.mark.parametrize("old, new", [
    ("erf(%m)", "tanh(%m)"),  # another function
    ("dense<0.7071068>", "dense<0.75>"),  # another constant
    ("mul(%c, %a)", "mul(%c, %b)"),  # erf reads another variable than the outer product
    ("add(%e, %one)", "sub(%e, %one)"),  # another op
])
def test_near_misses_do_not_match(old, new):
    text = GELU_EXPORTED.replace("%a: f32[2,8]", "%a: f32[2,8], %b: f32[2,8]")
    assert old in text
    g = ir(text.replace(old, new))
    assert match(GELU, root(g)) is None


def test_trace_tolerance_is_configurable():
    g = ir(GELU_EXPORTED.replace("dense<0.7071068>", "dense<0.70711>"))
    assert match(GELU, root(g)) is None  # 1e-6 relative by default
    assert match(P.trace(gelu_erf, 1, rel_tol=1e-4), root(g)) is not None


def test_trace_gives_numbers_the_tolerance_but_keeps_explicit_constants():
    exact = P.const_value(0.5)

    def fn(x):
        return exact * x * (1.0 + ops.erf(x * 0.7071067811865476))

    pattern = P.trace(fn)
    consts = [p for p in _walk(pattern) if isinstance(p, ConstValue)]
    assert {(c.value, c.rel_tol) for c in consts} == {
        (0.5, 0.0), (1.0, 1e-6), (0.7071067811865476, 1e-6)}


def _walk(p):
    yield p
    if isinstance(p, OpPattern):
        for c in p.inputs:
            yield from _walk(c)


def test_builder_keywords_become_attribute_constraints_and_arguments_can_be_patterns():
    def scaled_leaky(x, s):
        return ops.leaky_relu(x * s, alpha=0.1)

    pattern = P.trace(scaled_leaky, ["x", P.const("s")])
    assert str(pattern) == "leaky_relu(mul(x, const:s)) {alpha=0.1}"
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4], f32[4]) {
      %s = const f32[] dense<2.0>
      %m = mul(%s, %a)
      %p = leaky_relu(%m) {alpha=0.1}
      %q = leaky_relu(%m) {alpha=0.2}
      %n = mul(%a, %a)
      %r = leaky_relu(%n) {alpha=0.1}
      return %p, %q, %r
    }""")
    p, q, r = (v.producer for v in g.outputs)
    caps = match(pattern, p)
    assert caps is not None and caps["s"].const_data == 2.0
    assert match(pattern, q) is None
    assert match(pattern, r) is None  # s must be a constant


def test_trace_shares_intermediate_results():
    # d = x - sigmoid(x) is used twice; a graph that computes it twice does not match.
    def centered_square(x):
        d = x - ops.sigmoid(x)
        return d * d

    pattern = P.trace(centered_square)
    g = ir("""
    func @main(%a: f32[4]) -> (f32[4], f32[4]) {
      %m = sigmoid(%a)
      %d = sub(%a, %m)
      %sq = mul(%d, %d)
      %d2 = sub(%a, %m)
      %mixed = mul(%d, %d2)
      return %sq, %mixed
    }""")
    sq, mixed = (v.producer for v in g.outputs)
    assert match(pattern, sq) is not None
    assert match(pattern, mixed) is None


def test_trace_rejects_a_function_that_builds_no_op():
    with pytest.raises(TypeError, match="op pattern"):
        P.trace(lambda x: x)


def test_traced_gelu_rewrites_to_the_gelu_op():
    g = ir(GELU_EXPORTED)
    before = g.clone()
    rules = RuleSet("fuse-gelu", [
        # 0.5 * x * (1 + erf(x / sqrt(2))) -> gelu(x)
        (GELU, lambda rw, x: rw.op("gelu", x)),
    ])
    assert rules.apply(g) == 1
    assert [n.op for n in g.nodes] == ["gelu"]
    assert "gelu(%a)" in print_graph(g)
    same_numerics(before, g, rtol=1e-6, atol=1e-6)


def layer_norm_spelled_out(x, gamma, beta, eps):
    mean = ops.reduce_mean(x, axes=(-1,), keepdims=True)
    d = x - mean
    var = ops.reduce_mean(d * d, axes=(-1,), keepdims=True)
    return d * ops.rsqrt(var + eps) * gamma + beta


LAYER_NORM = P.trace(layer_norm_spelled_out,
                     ["x", P.const("gamma"), P.const("beta"), P.const("eps")])


def fuse_layer_norm(rw, x, gamma, beta, eps):
    if eps.const_data.size != 1:
        return rw.decline("eps is not a scalar")
    return rw.op("layer_norm", x, gamma, beta, axis=-1, eps=float(eps.const_data))


LAYER_NORM_IR = """
func @main(%a: f32[2,8]) -> f32[2,8] {
  %m = reduce_mean(%a) {axes=[-1], keepdims=true}
  %d = sub(%a, %m)
  %sq = mul(%d, %d)
  %v = reduce_mean(%sq) {axes=[-1], keepdims=true}
  %eps = const f32[] dense<1e-05>
  %ve = add(%eps, %v)
  %r = rsqrt(%ve)
  %n = mul(%r, %d)
  %g = const f32[8] dense<[1.0, 2.0, 0.5, 1.0, 1.5, 1.0, 0.25, 1.0]>
  %ng = mul(%n, %g)
  %b = const f32[8] dense<[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]>
  %y = add(%b, %ng)
  return %y
}"""


def test_traced_layer_norm_fuses_with_attributes_checked():
    g = ir(LAYER_NORM_IR)
    before = g.clone()
    assert RuleSet("fuse-layer-norm", [(LAYER_NORM, fuse_layer_norm)]).apply(g) == 1
    assert [n.op for n in g.nodes] == ["const", "const", "layer_norm"]
    assert g.nodes[-1].attrs["eps"] == pytest.approx(1e-5)
    same_numerics(before, g, rtol=1e-5, atol=1e-5)

    other_axis = ir(LAYER_NORM_IR.replace("{axes=[-1], keepdims=true}\n  %d",
                                          "{axes=[0], keepdims=true}\n  %d"))
    assert match(LAYER_NORM, root(other_axis)) is None
