"""canonicalize: each algebraic rule fires on its pattern and not beside it (the negative case
follows each positive one), results are exact, and every rule's application is reported."""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pytest

from rtinfer.ir.parser import parse
from rtinfer.ir.types import DType
from rtinfer.pass_manager import run_pipeline
from rtinfer.passes.cleanup.canonicalize import represents
from rtinfer.testing import check_rewrite


def _fn(body: str, inputs: str = "%x: f32[2,3]", result: str = "f32[2,3]") -> str:
    return f"func @main({inputs}) -> {result} {{\n{textwrap.dedent(body)}\n}}"


# (id, before body, expected body, inputs, result type); expected None: unchanged
CASES = [
    ("mul-one", "%c = const f32[] dense<1.0>\n%y = mul(%c, %x)\nreturn %y", "return %x"),
    ("mul-one-broadcasts-no", "%c = const f32[4,2,3] dense<1.0>\n%y = mul(%x, %c)\nreturn %y",
     None, "%x: f32[2,3]", "f32[4,2,3]"),
    ("add-zero", "%c = const f32[3] dense<0.0>\n%y = add(%x, %c)\nreturn %y", "return %x"),
    ("add-nonzero-no", "%c = const f32[3] dense<[0.0, 0.0, 1e-30]>\n%y = add(%x, %c)\nreturn %y",
     None),
    ("sub-zero", "%c = const f32[] dense<0.0>\n%y = sub(%x, %c)\nreturn %y", "return %x"),
    ("zero-minus-x-no", "%c = const f32[] dense<0.0>\n%y = sub(%c, %x)\nreturn %y", None),
    ("div-one", "%c = const f32[] dense<1.0>\n%y = div(%x, %c)\nreturn %y", "return %x"),
    ("neg-neg", "%a = neg(%x)\n%y = neg(%a)\nreturn %y", "return %x"),
    ("neg-no", "%y = neg(%x)\nreturn %y", None),
    ("identity", "%y = identity(%x)\nreturn %y", "return %x"),
    ("reshape-same", "%y = reshape(%x) {shape=[2, 3]}\nreturn %y", "return %x"),
    ("reshape-reshape", "%a = reshape(%x) {shape=[6]}\n%y = reshape(%a) {shape=[3, -1]}\n"
     "return %y", "%y = reshape(%x) {shape=[3, -1]}\nreturn %y", "%x: f32[2,3]", "f32[3,2]"),
    ("reshape-back", "%a = reshape(%x) {shape=[6]}\n%y = reshape(%a) {shape=[2, 3]}\nreturn %y",
     "return %x"),
    ("flatten", "%y = flatten(%x) {axis=1}\nreturn %y",
     "%y = reshape(%x) {shape=[B, 12]}\nreturn %y", "%x: f32[B,3,4]", "f32[B,12]"),
    ("transpose-transpose",
     "%a = transpose(%x) {perm=[1, 2, 0]}\n%y = transpose(%a) {perm=[0, 2, 1]}\nreturn %y",
     "%y = transpose(%x) {perm=[1, 0, 2]}\nreturn %y", "%x: f32[2,3,4]", "f32[3,2,4]"),
    ("transpose-inverse", "%a = transpose(%x)\n%y = transpose(%a) {perm=[1, 0]}\nreturn %y",
     "return %x"),
    ("transpose-identity", "%y = transpose(%x) {perm=[0, 1]}\nreturn %y", "return %x"),
    ("transpose-no", "%y = transpose(%x) {perm=[1, 0]}\nreturn %y", None, "%x: f32[2,3]",
     "f32[3,2]"),
    ("cast-same", "%y = cast(%x) {dtype=f32}\nreturn %y", "return %x"),
    ("cast-widen-back", "%a = cast(%x) {dtype=f64}\n%y = cast(%a) {dtype=f32}\nreturn %y",
     "return %x"),
    ("cast-widen-then-narrow",
     "%a = cast(%x) {dtype=f64}\n%y = cast(%a) {dtype=f16}\nreturn %y",
     "%y = cast(%x) {dtype=f16}\nreturn %y", "%x: f32[2,3]", "f16[2,3]"),
    ("cast-lossy-no", "%a = cast(%x) {dtype=f16}\n%y = cast(%a) {dtype=f32}\nreturn %y", None),
    ("cast-int-no", "%a = cast(%x) {dtype=i32}\n%y = cast(%a) {dtype=f32}\nreturn %y", None),
    ("slice-full", "%y = slice(%x) {starts=[0], ends=[9223372036854775807], axes=[1]}\n"
     "return %y", "return %x"),
    ("slice-reversed-no", "%y = slice(%x) {starts=[-1], ends=[-9223372036854775807], axes=[1], "
     "steps=[-1]}\nreturn %y", None),
    ("pad-zero", "%y = pad(%x) {pads=[0, 0, 0, 0]}\nreturn %y", "return %x"),
    ("pad-no", "%y = pad(%x) {pads=[0, 1, 0, 0]}\nreturn %y", None, "%x: f32[2,3]", "f32[2,4]"),
    ("squeeze-unsqueeze", "%a = unsqueeze(%x) {axes=[1]}\n%y = squeeze(%a) {axes=[-2]}\n"
     "return %y", "return %x"),
    ("squeeze-other-axis-no", "%a = unsqueeze(%x) {axes=[0]}\n%y = squeeze(%a) {axes=[2]}\n"
     "return %y", None, "%x: f32[2,1]", "f32[1,2]"),
    ("unsqueeze-squeeze", "%a = squeeze(%x) {axes=[1]}\n%y = unsqueeze(%a) {axes=[1]}\n"
     "return %y", "return %x", "%x: f32[2,1]", "f32[2,1]"),
    ("expand-same", "%y = expand(%x) {shape=[2, 3]}\nreturn %y", "return %x"),
    ("expand-no", "%y = expand(%x) {shape=[4, 2, 3]}\nreturn %y", None, "%x: f32[2,3]",
     "f32[4,2,3]"),
    ("sub-const", "%c = const f32[3] dense<[1.0, -2.0, 0.5]>\n%y = sub(%x, %c)\nreturn %y",
     "%c = const f32[3] dense<[-1.0, 2.0, -0.5]>\n%y = add(%x, %c)\nreturn %y"),
    ("sub-var-no", "%y = sub(%x, %x)\nreturn %y", None),
    ("div-power-of-two", "%c = const f32[3] dense<[2.0, -0.25, 1024.0]>\n%y = div(%x, %c)\n"
     "return %y", "%c = const f32[3] dense<[0.5, -4.0, 0.0009765625]>\n%y = mul(%x, %c)\n"
     "return %y"),
    ("div-three-no", "%c = const f32[] dense<3.0>\n%y = div(%x, %c)\nreturn %y", None),
    ("div-int-no", "%c = const i32[] dense<2>\n%y = div(%x, %c)\nreturn %y", None,
     "%x: i32[2,3]", "i32[2,3]"),
    ("constant-to-the-right", "%c = const f32[3] dense<[1.0, 2.0, 3.0]>\n%y = mul(%c, %x)\n"
     "return %y", "%c = const f32[3] dense<[1.0, 2.0, 3.0]>\n%y = mul(%x, %c)\nreturn %y"),
    ("constant-left-of-sub-no", "%c = const f32[3] dense<[1.0, 2.0, 3.0]>\n%y = sub(%c, %x)\n"
     "return %y", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rule(case):
    _, before, after, *sig = case
    before = _fn(before, *sig)
    expected = before if after is None else _fn(after, *sig)
    check_rewrite("canonicalize,dce", before, expected, numerics={"rtol": 0, "atol": 0})


def test_every_rule_is_reported():
    ir = _fn("""
        %c = const f32[] dense<1.0>
        %a = mul(%c, %x)
        %b = neg(%a)
        %y = neg(%b)
        %d = const f32[] dense<3.0>
        %z = div(%y, %d)
        return %z""")
    result = run_pipeline(parse(ir), "canonicalize", stats=True, out=io.StringIO())
    assert result.applications == {"mul-one": 1, "neg-neg": 1}
    assert result.stats[0][1]["rewritten"] == 2
    assert [d.reason for d in result.declines] == [
        "1/c is not exact (c is not a power of two): x * fl(1/c) can differ from x / c by an "
        "ulp"]


def test_lossless_casts():
    assert represents(DType.f32, DType.f16) and represents(DType.f32, DType.bf16)
    assert not represents(DType.f16, DType.bf16) and not represents(DType.bf16, DType.f16)
    assert represents(DType.f32, DType.i16) and not represents(DType.f32, DType.i32)
    assert represents(DType.f64, DType.i32) and represents(DType.f16, DType.u8)
    assert represents(DType.i16, DType.u8) and not represents(DType.i8, DType.u8)
    assert represents(DType.i8, DType.bool) and not represents(DType.bool, DType.i8)
    # the table agrees with numpy on every value of the narrow type
    for narrow in (DType.i8, DType.u8, DType.bool, DType.f16):
        if narrow is DType.f16:
            vals = np.arange(2**16, dtype=np.uint16).view(np.float16)
            vals = vals[np.isfinite(vals)]
        elif narrow is DType.bool:
            vals = np.array([False, True])
        else:
            info = np.iinfo(narrow.np)
            vals = np.arange(info.min, info.max + 1).astype(narrow.np)
        for wide in (DType.f16, DType.f32, DType.i8, DType.i16, DType.u8):
            exact = np.array_equal(vals.astype(wide.np).astype(narrow.np), vals) and (
                narrow is DType.bool or np.array_equal(
                    vals.astype(wide.np).astype(np.float64), vals.astype(np.float64)))
            assert represents(wide, narrow) == exact, (wide, narrow)


PAD_CONV = """func @main(%x: f32[1,3,8,8]) -> {out} {{
  %w = const f32[4,3,3,3] random(seed=0)
  %b = const f32[4] random(seed=1)
  %p = pad(%x) {{pads=[{pads}], mode="{mode}", value={value}}}
  %y = conv2d(%p, %w, %b) {{stride=[2, 2], pad=[1, 0, 0, 1]}}
  return %y
}}"""


def test_pad_into_conv():
    # TF "SAME" padding (bottom/right one more), on top of the conv's own pads
    before = PAD_CONV.format(out="f32[1,4,4,5]", pads="0, 0, 0, 1, 0, 0, 1, 2",
                             mode="constant", value=0.0)
    after = """func @main(%x: f32[1,3,8,8]) -> f32[1,4,4,5] {
  %w = const f32[4,3,3,3] random(seed=0)
  %b = const f32[4] random(seed=1)
  %y = conv2d(%x, %w, %b) {stride=[2, 2], pad=[1, 1, 1, 3]}
  return %y
}"""
    check_rewrite("canonicalize,dce", before, after, numerics={"rtol": 1e-5, "atol": 1e-5})


@pytest.mark.parametrize("pads,mode,value,why", [
    ("0, 0, 0, 1, 0, 0, 1, 2", "constant", 1.0, "a non-zero pad value"),
    ("0, 0, 0, 1, 0, 0, 1, 2", "reflect", 0.0, "a reflect pad"),
    ("0, 1, 0, 1, 0, 0, 1, 2", "constant", 0.0, "a channel pad"),
])
def test_pad_into_conv_no(pads, mode, value, why):
    ch = 4 if why == "a channel pad" else 3
    ir = PAD_CONV.format(out="f32[1,4,4,5]", pads=pads, mode=mode, value=value)
    if ch == 4:
        ir = ir.replace("f32[4,3,3,3]", "f32[4,4,3,3]")
    check_rewrite("canonicalize,dce", ir, ir, numerics={"rtol": 0, "atol": 0})
