"""The IR parser on hostile text: mutated valid programs raise only ``ParseError`` (or another
rtinfer error), never a raw Python exception, and never hang; the cases the fuzzer once found
are kept as regression tests with the line and column they must name.

The default run mutates a few hundred texts (a few seconds); ``-m slow`` runs many more seeds.
"""

from __future__ import annotations

import random
import re
import textwrap

import numpy as np
import pytest

from rtinfer.errors import ParseError
from rtinfer.ir import parse
from rtinfer.ir.constants import MAX_CONSTANT_BYTES
from tests.fuzzing import run_case

BASES = [
    """
    func @main(%x: f32[B,3,8,8], %ids: i64[2,4]) -> (f32[B,8,8,8], f32[B,4,8,8]) {
      %w = const f32[8,3,3,3] random(seed=0)
      %b = const f32[8] dense<[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]>
      %s = const f32[] dense<2.0>
      %t = const i32[2,2] dense<[[1, 2], [3, 4]]>
      %big = const f32[512,512] elided<3fa8c1d2e4b7>
      %y = conv2d(%x, %w, %b) {stride=[1, 1], pad=[1, 1, 1, 1], dilation=[1, 1], groups=1}
      %a, %c = split(%y) {axis=1, sizes=[4, 4]} : f32[B,4,8,8], f32[B,4,8,8]
      %r = reshape(%ids) {shape=[8]}
      %m = const f32[10,4] random(seed=3, low=-1, high=1)
      %e = embedding(%m, %r)
      %q = quantize(%y) {scale=[0.05], zero_point=[0]} : i8[B,8,8,8] q(scale=0.05, zp=0)
      return %y, %a
    }
    """,
    """
    func @mlp(%x: f32[B*S,16]) -> f32[B*S,4] {
      %w1 = const f32[32,16] random(seed=1)
      %b1 = const f32[32] dense<0.5>
      %h = linear(%x, %w1, %b1) loc("fc1", "capture")
      %g = gelu(%h) {approximate="tanh"}
      %w2 = const f32[4,32] random(seed=2, low=-0.5, high=0.5)
      %y = linear(%g, %w2)
      %k = const i64[3] random(seed=4, low=-3, high=3)
      %n = const bool[2,2] dense<[[true, false], [false, true]]>
      %z = leaky_relu(%y) {alpha=0.2} : f32[B*S,4]
      return %z
    }
    """,
]
BASES = [textwrap.dedent(b).strip() + "\n" for b in BASES]

_TOKEN = re.compile(r'"[^"\n]*"|elided<[^>]*>|%[\w.]+|@\w+|-?\d+(?:\.\d*)?(?:e-?\d+)?|\w+|->|\S')
HUGE = ["99999999999999999999999999999", "-99999999999999999999", "1e400", "-1e999",
        "10000000000", "4294967296", "9223372036854775808", "18446744073709551616", "-1", "0",
        "2147483648", "1e-400", "nan", "-inf", "1" + "0" * 400]
SNIPPETS = ["dense<", "dense<[", "random(seed=-5)", "random(seed=1, low=5, high=-5)",
            "random(seed=1, low=inf, high=1)", "q(", "q(scale=[], zp=[])", "func", "elided<zz>",
            "f32[100000,100000]", "f32[99999999999999999999]", "f32[10000000000] dense<1.0>",
            "dense<1.0>", "(" * 2000, "[" * 3000, "B*" * 500 + "B", '"\\u12"', "loc(",
            "f32[2] random(seed=99999999999999999999999)", "i64[2] random(seed=0, low=0.5, "
            "high=2)", "u64[2] random(seed=0, low=0, high=18446744073709551616)"]


def mutate(rng: random.Random, text: str) -> str:
    """One to three token-level mutations: swaps, deletions, duplicates, huge or negated
    numbers, deep nesting and hostile snippets."""
    toks = _TOKEN.findall(text)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(toks))
        k = rng.randrange(8)
        if k == 0:
            j = rng.randrange(len(toks))
            toks[i], toks[j] = toks[j], toks[i]
        elif k == 1:
            del toks[i]
        elif k == 2:
            toks.insert(i, rng.choice(toks))
        elif k == 3:
            nums = [j for j, t in enumerate(toks) if re.fullmatch(r"-?\d+(\.\d*)?", t)]
            toks[rng.choice(nums) if nums else i] = rng.choice(HUGE)
        elif k == 4:
            n = rng.choice([8, 70, 1000, 5000])
            toks[i] = "[" * n + toks[i] + "]" * rng.choice([0, n])
        elif k == 5:
            toks[i] = "-" + toks[i]
        elif k == 6:
            toks.insert(i, rng.choice(SNIPPETS))
        else:
            toks[i] = rng.choice(HUGE + SNIPPETS)
    return " ".join(toks)


def _fuzz(seeds: range) -> dict[str, int]:
    outcome = {"parsed": 0, "ParseError": 0, "other rtinfer error": 0}
    for seed in seeds:
        rng = random.Random(seed)
        text = mutate(rng, BASES[seed % len(BASES)])
        err = run_case(f"parser fuzz seed {seed}: {text[:300]!r}", lambda t=text: parse(t),
                       seconds=5.0)
        if err is None:
            outcome["parsed"] += 1
        elif isinstance(err, ParseError):
            assert err.line >= 1 and err.col >= 1, f"seed {seed}: {err}"
            outcome["ParseError"] += 1
        else:
            outcome["other rtinfer error"] += 1
    return outcome


def test_bases_parse():
    for text in BASES:
        parse(text)


def test_mutations_raise_only_rtinfer_errors():
    outcome = _fuzz(range(500))
    assert outcome["ParseError"] > 250, outcome  # the mutations do reach the error paths


@pytest.mark.slow
def test_mutations_raise_only_rtinfer_errors_long():
    _fuzz(range(500, 20_000))


# -- regressions: what the fuzzer found, each named at its line and column --------------------


def _parse_error(body: str) -> ParseError:
    text = f"func @main(%x: f32[2]) -> f32[2] {{\n{body}\n  return %x\n}}\n"
    with pytest.raises(ParseError) as info:
        parse(text)
    return info.value


def test_giant_dense_splat_is_refused_before_it_is_built():
    # 10^10 elements: formerly a Python list of 10^10 entries (MemoryError), now checked first
    e = _parse_error("  %c = const f32[100000,100000] dense<1.0>")
    assert (e.line, e.col) == (2, 33)
    assert "40,000,000,000 bytes" in str(e) and f"{MAX_CONSTANT_BYTES:,}" in str(e)


def test_giant_random_constant_is_refused():
    e = _parse_error("  %c = const f32[4294967296,3,3,3] random(seed=0)")
    assert (e.line, e.col) == (2, 36) and "bytes" in str(e)


def test_huge_dim_does_not_overflow():
    e = _parse_error("  %c = const f32[99999999999999999999] dense<1.0>")
    assert (e.line, e.col) == (2, 18) and "does not fit in 64 bits" in str(e)
    e = _parse_error("  %c = const f32[9223372036854775807,4] dense<1.0>")
    assert "bytes" in str(e)  # in range as a dim, but the product is far over the limit


def test_huge_attribute_int():
    e = _parse_error("  %y = softmax(%x) {axis=99999999999999999999999}")
    assert (e.line, e.col) == (2, 26) and "integer '99999999999999999999999' does not fit in " \
        "64 bits" in str(e)
    e = _parse_error("  %y = reshape(%x) {shape=[2, 99999999999999999999]}")
    assert (e.line, e.col) == (2, 31) and "does not fit in 64 bits" in str(e)


def test_huge_int_in_a_float_constant_is_inf_in_both_dense_paths():
    # float(10**400) raises OverflowError; the text means what 1e400 means: +-inf in a float
    huge = "1" + "0" * 400
    for dense in (f"[1, {huge}, -{huge}]", f"[[1, {huge}, -{huge}]]"):  # fast path, slow path
        g = parse(f"func @m() -> f32[1,3] {{\n  %c = const f32[1,3] dense<{dense}>\n"
                  "  return %c\n}\n")
        assert g.outputs[0].const_data.tolist() == [[1.0, np.inf, -np.inf]]


def test_negative_seed():
    e = _parse_error("  %c = const f32[2] random(seed=-5)")
    assert (e.line, e.col) == (2, 21) and "non-negative" in str(e)


@pytest.mark.parametrize("args, says", [
    ("low=5, high=-5", "low < high"),
    ("low=0.5, high=2", "integer low and high"),
    ("low=0, high=99999999999", "<= low < high <="),
    ("low=inf, high=1", "finite numbers"),
])
def test_bad_random_bounds(args, says):
    e = _parse_error(f"  %c = const i32[2] random(seed=0, {args})")
    assert (e.line, e.col) == (2, 21) and says in str(e)


def test_random_bounds_that_fit_still_work():
    g = parse("func @m() -> i8[64] {\n  %c = const i8[64] random(seed=0, low=-128, high=128)\n"
              "  return %c\n}\n")
    data = g.outputs[0].const_data
    assert data.dtype == np.int8 and data.min() >= -128


@pytest.mark.parametrize("body, col", [
    ("  %c = const f32[1] dense<" + "[" * 5000 + "1" + "]" * 5000 + ">", 26 + 64),
    ("  %y = leaky_relu(%x) {alpha=" + "[" * 5000 + "]" * 5000 + "}", 30 + 63),
    ("  %y = leaky_relu(%x) {alpha=" + "q(scale=" * 3000 + "1" + ")" * 3000 + "}", 31 + 8 * 63),
])
def test_deep_nesting_is_a_parse_error(body, col):
    # the enclosing func is the first level, so the 64th list (or q) is the one refused
    e = _parse_error(body)
    assert (e.line, e.col) == (2, col) and "nested deeper than 64 levels" in str(e)


def test_long_dim_expression_is_a_parse_error():
    e = _parse_error("  %c = const f32[" + "B*" * 3000 + "B] dense<1.0>")
    assert (e.line, e.col) == (2, 18) and "longer than 64 tokens" in str(e)
