"""fuse-epilogue: bias, activation and residual adds fuse into conv/linear/matmul, step by step,
in the order the math allows; reused intermediates and adds that are neither per channel nor of
the output's type stay."""

from __future__ import annotations

import io
import textwrap

import pytest

from rtinfer.ir.parser import parse
from rtinfer.pass_manager import run_pipeline
from rtinfer.testing import check_rewrite


def _declines(ir: str) -> list[str]:
    result = run_pipeline(parse(textwrap.dedent(ir)), "fuse-epilogue", out=io.StringIO())
    return [d.reason for d in result.declines]


def test_conv_bias_add_and_relu6_fuse():
    check_rewrite("fuse-epilogue,dce", """
        func @main(%x: f32[1,3,6,6]) -> f32[1,2,6,6] {
          %w = const f32[2,3,3,3] random(seed=1)
          %c = const f32[1,2,1,1] dense<[0.5, -1.0]>
          %y = conv2d(%x, %w) {pad=[1]}
          %s = add(%c, %y)
          %z = clip(%s) {min=0.0, max=6.0}
          return %z
        }""", """
        func @main(%x: f32[1,3,6,6]) -> f32[1,2,6,6] {
          %w = const f32[2,3,3,3] random(seed=1)
          %b = const f32[2] dense<[0.5, -1.0]>
          %z = fused_conv2d(%x, %w, %b) {pad=[1], activation="clip", alpha=0.0, beta=6.0}
          return %z
        }""", numerics={})


def test_bias_add_alone_stays_a_plain_conv():
    check_rewrite("fuse-epilogue,dce", """
        func @main(%x: f32[1,3,6]) -> f32[1,2,4] {
          %w = const f32[2,3,3] random(seed=1)
          %b = const f32[2] dense<[1.0, 2.0]>
          %c = const f32[2,1] dense<[0.5, -1.0]>
          %y = conv1d(%x, %w, %b)
          %z = add(%y, %c)
          return %z
        }""", """
        func @main(%x: f32[1,3,6]) -> f32[1,2,4] {
          %w = const f32[2,3,3] random(seed=1)
          %b = const f32[2] dense<[1.5, 1.0]>
          %z = conv1d(%x, %w, %b)
          return %z
        }""", numerics={})


def test_resnet_residual_before_relu():
    check_rewrite("fuse-epilogue,dce", """
        func @main(%x: f32[1,4,5,5]) -> f32[1,4,5,5] {
          %w = const f32[4,4,3,3] random(seed=1)
          %b = const f32[4] random(seed=2)
          %y = conv2d(%x, %w, %b) {pad=[1]}
          %s = add(%x, %y)
          %z = relu(%s)
          return %z
        }""", """
        func @main(%x: f32[1,4,5,5]) -> f32[1,4,5,5] {
          %w = const f32[4,4,3,3] random(seed=1)
          %b = const f32[4] random(seed=2)
          %z = fused_conv2d(%x, %w, %b, %x) {pad=[1], activation="relu", residual="pre"}
          return %z
        }""", numerics={})


def test_residual_after_the_activation_gets_a_zero_bias():
    check_rewrite("fuse-epilogue,dce", """
        func @main(%x: f32[3,8], %r: f32[3,4]) -> f32[3,4] {
          %w = const f32[4,8] random(seed=1)
          %y = linear(%x, %w)
          %a = gelu(%y) {approximate="tanh"}
          %z = add(%a, %r)
          return %z
        }""", """
        func @main(%x: f32[3,8], %r: f32[3,4]) -> f32[3,4] {
          %w = const f32[4,8] random(seed=1)
          %b = const f32[4] dense<0.0>
          %z = fused_linear(%x, %w, %b, %r) {activation="gelu_tanh", residual="post"}
          return %z
        }""", numerics={})


@pytest.mark.parametrize("act, attrs, fused", [
    ("silu", "", 'activation="silu"'),
    ("leaky_relu", " {alpha=0.1}", 'activation="leaky_relu", alpha=0.1'),
    ("gelu", "", 'activation="gelu"'),
    ("sigmoid", "", 'activation="sigmoid"'),
    ("hardswish", "", 'activation="hardswish"'),
    ("tanh", "", 'activation="tanh"'),
])
def test_matmul_bias_and_activation(act, attrs, fused):
    check_rewrite("fuse-epilogue,dce", f"""
        func @main(%x: f32[2,5,8]) -> f32[2,5,3] {{
          %w = const f32[8,3] random(seed=1)
          %c = const f32[3] dense<[0.5, -1.0, 2.0]>
          %y = matmul(%x, %w)
          %s = add(%y, %c)
          %z = {act}(%s){attrs}
          return %z
        }}""", f"""
        func @main(%x: f32[2,5,8]) -> f32[2,5,3] {{
          %w = const f32[8,3] random(seed=1)
          %c = const f32[3] dense<[0.5, -1.0, 2.0]>
          %z = fused_matmul(%x, %w, %c) {{{fused}}}
          return %z
        }}""", numerics={})


def test_keeps_activation_when_conv_output_is_reused():
    ir = """
        func @main(%x: f32[1,3,6,6]) -> (f32[1,2,4,4], f32[1,2,4,4]) {
          %w = const f32[2,3,3,3] random(seed=1)
          %y = conv2d(%x, %w)
          %z = relu(%y)
          return %z, %y
        }"""
    check_rewrite("fuse-epilogue", ir, ir)
    assert _declines(ir) == ["conv2d output has other users (they need it without the "
                             "epilogue)"]


def test_keeps_add_that_is_neither_bias_nor_residual():
    ir = """
        func @main(%x: f32[1,3,6,6]) -> f32[1,2,4,4] {
          %w = const f32[2,3,3,3] random(seed=1)
          %c = const f32[1,1,4,4] random(seed=2)
          %y = conv2d(%x, %w)
          %z = add(%y, %c)
          return %z
        }"""
    check_rewrite("fuse-epilogue", ir, ir)
    assert _declines(ir) == ["the add of f32[1,1,4,4] to f32[1,2,4,4] is neither a per-channel "
                             "constant nor a residual of the output's type"]


def test_second_activation_and_bias_after_activation_stay():
    check_rewrite("fuse-epilogue,dce", """
        func @main(%x: f32[3,8]) -> f32[3,4] {
          %w = const f32[4,8] random(seed=1)
          %c = const f32[4] dense<1.0>
          %y = linear(%x, %w)
          %a = relu(%y)
          %t = tanh(%a)
          %z = add(%t, %c)
          return %z
        }""", """
        func @main(%x: f32[3,8]) -> f32[3,4] {
          %w = const f32[4,8] random(seed=1)
          %c = const f32[4] dense<1.0>
          %a = fused_linear(%x, %w) {activation="relu"}
          %t = tanh(%a)
          %z = add(%t, %c)
          return %z
        }""", numerics={})
