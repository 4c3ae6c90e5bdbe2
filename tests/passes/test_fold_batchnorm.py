"""fold-batchnorm: batch_norm folds into the conv/linear before it (any groups for conv, grouped
conv_transpose2d too) or, without padding, the one after it; reused outputs, elided or dynamic
weights and mismatched channel axes stay."""

from __future__ import annotations

import io
import textwrap

from rtinfer.ir.parser import parse
from rtinfer.pass_manager import run_pipeline
from rtinfer.testing import check_ir, check_rewrite

BN_PARAMS = """
  %m = const f32[{c}] random(seed=11)
  %v = const f32[{c}] random(seed=12, low=0.5, high=2.0)
  %g = const f32[{c}] random(seed=13)
  %be = const f32[{c}] random(seed=14)"""


def _run(ir: str):
    """Fold with the verifier and the interpreter checking every pass; return (ops, declines)."""
    result = run_pipeline(parse(textwrap.dedent(ir)), "fold-batchnorm,dce", verify_each=True,
                          check_numerics={"rtol": 1e-4, "atol": 1e-5}, check_requires=False,
                          out=io.StringIO())
    ops = [n.op for n in result.graph.nodes if n.op != "const"]
    return ops, [d.reason for d in result.declines]


def test_folds_conv_bn_exactly():
    # s = gamma / sqrt(var + eps) = [1, 0.5]; b' = (b - mean) * s + beta
    check_rewrite("fold-batchnorm,dce", """
        func @main(%x: f32[1,2,4,4]) -> f32[1,2,4,4] {
          %w = const f32[2,2,1,1] dense<[1.0, 2.0, 3.0, 4.0]>
          %b = const f32[2] dense<[1.0, -1.0]>
          %m = const f32[2] dense<[1.0, 0.0]>
          %v = const f32[2] dense<[4.0, 16.0]>
          %g = const f32[2] dense<[2.0, 2.0]>
          %be = const f32[2] dense<[0.5, 1.0]>
          %y = conv2d(%x, %w, %b)
          %z = batch_norm(%y, %m, %v, %g, %be) {eps=0.0}
          return %z
        }""", """
        func @main(%x: f32[1,2,4,4]) -> f32[1,2,4,4] {
          %w = const f32[2,2,1,1] dense<[1.0, 2.0, 1.5, 2.0]>
          %b = const f32[2] dense<[0.5, 0.5]>
          %z = conv2d(%x, %w, %b)
          return %z
        }""", numerics={})


def test_keeps_bn_when_conv_output_is_reused():
    ir = """
        func @main(%x: f32[1,4,6,6]) -> (f32[1,4,6,6], f32[1,4,6,6]) {
          %w = const f32[4,4,3,3] random(seed=1)""" + BN_PARAMS.format(c=4) + """
          %y = conv2d(%x, %w) {pad=[1]}
          %z = batch_norm(%y, %m, %v, %g, %be)
          return %z, %y
        }"""
    assert _run(ir) == (["conv2d", "batch_norm"], ["conv2d output is also used unnormalized"])


def test_folds_grouped_conv_without_bias_or_affine():
    ops, declines = _run("""
        func @main(%x: f32[2,4,6,6]) -> f32[2,6,3,3] {
          %w = const f32[6,2,3,3] random(seed=1)
          %m = const f32[6] random(seed=2)
          %v = const f32[6] random(seed=3, low=0.5, high=2.0)
          %y = conv2d(%x, %w) {pad=[1], stride=[2], groups=2}
          %z = batch_norm(%y, %m, %v)
          return %z
        }""")
    assert ops == ["conv2d"] and declines == []


def test_keeps_bn_on_elided_weights():
    ir = """
        func @main(%x: f32[1,4,6]) -> f32[1,4,4] {
          %w = const f32[4,4,3] elided<0123456789ab>""" + BN_PARAMS.format(c=4) + """
          %y = conv1d(%x, %w)
          %z = batch_norm(%y, %m, %v, %g, %be)
          return %z
        }"""
    check_ir("fold-batchnorm", ir, ["CHECK: conv1d(", "CHECK: batch_norm("])


def test_folds_conv1d_and_grouped_conv_transpose():
    assert _run("""
        func @main(%x: f32[1,4,7]) -> f32[1,4,5] {
          %w = const f32[4,4,3] random(seed=1)
          %b = const f32[4] random(seed=2)""" + BN_PARAMS.format(c=4) + """
          %y = conv1d(%x, %w, %b)
          %z = batch_norm(%y, %m, %v, %g, %be)
          return %z
        }""") == (["conv1d"], [])
    assert _run("""
        func @main(%x: f32[1,4,5,5]) -> f32[1,6,10,10] {
          %w = const f32[4,3,2,2] random(seed=1)""" + BN_PARAMS.format(c=6) + """
          %y = conv_transpose2d(%x, %w) {stride=[2], groups=2}
          %z = batch_norm(%y, %m, %v, %g, %be)
          return %z
        }""") == (["conv_transpose2d"], [])


def test_folds_linear_on_features_only():
    assert _run("""
        func @main(%x: f32[3,5]) -> f32[3,4] {
          %w = const f32[4,5] random(seed=1)""" + BN_PARAMS.format(c=4) + """
          %y = linear(%x, %w)
          %z = batch_norm(%y, %m, %v, %g, %be)
          return %z
        }""") == (["linear"], [])
    # [N, L, C]: batch_norm's axis 1 is L, not the features
    ops, declines = _run("""
        func @main(%x: f32[2,4,5]) -> f32[2,4,4] {
          %w = const f32[4,5] random(seed=1)""" + BN_PARAMS.format(c=4) + """
          %y = linear(%x, %w)
          %z = batch_norm(%y, %m, %v, %g, %be)
          return %z
        }""")
    assert ops == ["linear", "batch_norm"]
    assert declines == ["batch_norm normalizes axis 1 of f32[2,4,4], not the linear's feature "
                        "axis"]


def test_folds_into_the_following_unpadded_conv():
    assert _run("""
        func @main(%x: f32[1,4,6,6]) -> f32[1,3,4,4] {""" + BN_PARAMS.format(c=4) + """
          %w = const f32[3,4,3,3] random(seed=1)
          %b = const f32[3] random(seed=2)
          %n = batch_norm(%x, %m, %v, %g, %be)
          %y = conv2d(%n, %w, %b)
          return %y
        }""") == (["conv2d"], [])


def test_keeps_bn_before_a_padded_conv():
    ops, declines = _run("""
        func @main(%x: f32[1,4,6,6]) -> f32[1,3,6,6] {""" + BN_PARAMS.format(c=4) + """
          %w = const f32[3,4,3,3] random(seed=1)
          %n = batch_norm(%x, %m, %v, %g, %be)
          %y = conv2d(%n, %w) {pad=[1]}
          return %y
        }""")
    assert ops == ["batch_norm", "conv2d"]
    assert declines == ["the conv pads or is grouped: padding batch_norm's output with zeros is "
                        "not padding x with zeros"]
