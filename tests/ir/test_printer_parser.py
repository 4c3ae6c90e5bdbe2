"""The IR text form: printing, parsing back, and parse errors located at the offending token."""

from __future__ import annotations

import math
import textwrap

import ml_dtypes
import numpy as np
import pytest

from rtinfer.errors import ParseError, VerifyError
from rtinfer.ir import (
    DType,
    ElidedTensor,
    Graph,
    Provenance,
    QuantParams,
    TensorType,
    format_node,
    parse,
    print_graph,
    structural_diff,
    structural_equal,
    sym,
    tensor_digest,
    verify,
)
from rtinfer.ir.ops import Attr, op

# -- test-only ops: every attribute kind, two results, a quantized result ---------------------

@pytest.fixture(autouse=True, scope="module")
def _test_ops():
    """Declared for this module only (tests/conftest.py restores the op table after it)."""
    op("test_ir_attrs", ["x"], lambda ins, a: ins[0], lambda x, **a: x.copy(),
       attrs={"i": Attr("int", 0), "f": Attr("float", 0.5), "b": Attr("bool", False),
              "s": Attr("str", "a"), "ints": Attr("ints", ()), "floats": Attr("floats", ()),
              "strs": Attr("strs", ()), "dt": Attr("dtype", DType.f32),
              "shape": Attr("shape", ()), "table": Attr("tensor", None),
              "body": Attr("graph", None), "qp": Attr("quant", None),
              "mode": Attr("str", "x", ("x", "y"))},
       doc="test only: identity with an attribute of every kind")
    op("test_ir_split", ["x"], lambda ins, a: [ins[0], ins[0]],
       lambda x: (x.copy(), x.copy()), doc="test only: two copies of x")
    op("test_ir_quant", ["x"],
       lambda ins, a: TensorType(DType.i8, ins[0].shape, a["qp"]),
       lambda x, qp: np.clip(np.round(x / qp.scale) + qp.zero_point, -128, 127).astype(np.int8),
       attrs={"qp": Attr("quant")}, doc="test only: quantize to i8")


def ir(text: str) -> Graph:
    return parse(textwrap.dedent(text).strip() + "\n")


def roundtrip(g: Graph, **kw) -> Graph:
    text = print_graph(g, **kw)
    back = parse(text)
    diff = structural_diff(g, back)
    assert diff is None, f"{diff}\n{text}"
    assert print_graph(back, **kw) == text  # printing is a fixpoint
    return back


# -- printing ---------------------------------------------------------------------------------

def test_prints_the_documented_form():
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (sym("B"), 4)), "x")
    w = g.add_const(np.array([0.1, 0.2, -1.5, 3.0], dtype=np.float32), name="w")
    s = g.add_const(np.float32(2.0))
    y = g.add_op("add", x, w)
    y.name = "y"
    z = g.add_op("leaky_relu", g.add_op("mul", y, s), alpha=0.2)
    g.set_outputs([z, y])
    assert print_graph(g) == textwrap.dedent("""\
        func @main(%x: f32[B,4]) -> (f32[B,4], f32[B,4]) {
          %w = const f32[4] dense<[0.1, 0.2, -1.5, 3.0]>
          %0 = const f32[] dense<2.0>
          %y = add(%x, %w) : f32[B,4]
          %1 = mul(%y, %0) : f32[B,4]
          %2 = leaky_relu(%1) {alpha=0.2} : f32[B,4]
          return %2, %y
        }
        """)
    assert format_node(z.producer) == "%2 = leaky_relu(%1) {alpha=0.2} : f32[B,4]"
    assert repr(z.producer) == "<Node %2 = leaky_relu(%1) {alpha=0.2} : f32[B,4]>"
    assert str(g) == print_graph(g)


def test_single_output_prints_without_parentheses_and_defaults_are_filled():
    g = ir("""
        func @f(%x: f32[3]) -> f32[3] {
          %y = gelu(%x)
          return %y
        }""")
    assert 'func @f(%x: f32[3]) -> f32[3] {' in print_graph(g)
    assert '%y = gelu(%x) {approximate="none"} : f32[3]' in print_graph(g)


def test_name_hints_are_sanitized_and_deduplicated():
    g = Graph()
    a = g.add_input(TensorType(DType.f32, (2,)), "x")
    b = g.add_input(TensorType(DType.f32, (2,)), "x")
    c = g.add_input(TensorType(DType.f32, (2,)), "layer1.0/conv-1")
    d = g.add_input(TensorType(DType.f32, (2,)), "0")
    e = g.add_input(TensorType(DType.f32, (2,)))
    g.set_outputs([g.add_op("add", a, b), c, d, e])
    text = print_graph(g)
    assert "func @main(%x: f32[2], %x_1: f32[2], %layer1.0_conv_1: f32[2], %0: f32[2], " \
           "%1: f32[2])" in text  # a numeric hint is renumbered like no hint
    back = roundtrip(g)
    assert [v.name for v in back.inputs] == ["x", "x_1", "layer1.0_conv_1", None, None]


def test_provenance_prints_on_request_and_parses_back():
    g = ir("""
        func @main(%x: f32[2]) -> f32[2] {
          %y = relu(%x) loc("torch:layer1.relu", "fuse/relu-into-conv")
          return %y
        }""")
    node = g.nodes[0]
    assert node.provenance == Provenance("torch:layer1.relu", "fuse/relu-into-conv")
    assert "loc(" not in print_graph(g)
    text = print_graph(g, provenance=True)
    assert '%y = relu(%x) : f32[2] loc("torch:layer1.relu", "fuse/relu-into-conv")' in text
    assert parse(text).nodes[0].provenance == node.provenance
    other = g.clone()
    other.nodes[0].provenance = Provenance("elsewhere")
    assert structural_equal(g, other)  # provenance is not structure


# -- attributes -------------------------------------------------------------------------------

def test_every_attribute_kind_roundtrips():
    body = ir("""
        func @body(%a: f32[2], %b: f32[2]) -> f32[2] {
          %c = add(%a, %b)
          %d = relu(%c)
          return %d
        }""")
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (sym("B"), 2)), "x")
    y = g.add_op("test_ir_attrs", x, i=-3, f=1e-300, b=True, s='say "hi"\n\tà', ints=[1, -2],
                 floats=[0.1, -math.inf, 2.5e-8], strs=["a", "b,c"], dt=DType.bf16,
                 shape=[sym("B") * sym("S"), -1, 4],
                 table=np.arange(6, dtype=np.int32).reshape(2, 3), body=body,
                 qp=QuantParams(np.float32(0.05), np.int64(3)), mode="y")
    g.set_outputs([y])
    text = print_graph(g)
    assert ('{i=-3, f=1e-300, b=true, s="say \\"hi\\"\\n\\tà", ints=[1, -2], '
            'floats=[0.1, -inf, 2.5e-08], strs=["a", "b,c"], dt=bf16, shape=[B*S, -1, 4], '
            'table=i32[2,3] dense<[0, 1, 2, 3, 4, 5]>, body=func @body(') in text
    assert "qp=q(scale=0.05, zp=3), mode=\"y\"} : f32[B,2]" in text
    back = roundtrip(g)
    attrs = back.nodes[0].attrs
    assert attrs["s"] == 'say "hi"\n\tà' and attrs["dt"] is DType.bf16
    assert attrs["floats"][1] == -math.inf and attrs["f"] == 1e-300
    assert structural_equal(attrs["body"], body)
    verify(back)


def test_nested_graph_prints_as_an_indented_block():
    body = ir("""
        func @body(%a: f32[2]) -> f32[2] {
          %d = relu(%a)
          return %d
        }""")
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (2,)), "x")
    g.set_outputs([g.add_op("test_ir_attrs", x, body=body)])
    assert textwrap.dedent("""\
        body=func @body(%a: f32[2]) -> f32[2] {
              %d = relu(%a) : f32[2]
              return %d
            }, qp=none""") in print_graph(g)


def test_floats_roundtrip_exactly():
    values = [0.1, 1 / 3, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, math.inf, -math.inf]
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (2,)), "x")
    outs = [g.add_op("leaky_relu", x, alpha=v) for v in values]
    outs.append(g.add_op("test_ir_attrs", x, f=math.nan))
    g.set_outputs(outs)
    back = roundtrip(g)
    got = [n.attrs["alpha"] for n in back.nodes[:len(values)]]
    assert [v.hex() for v in got] == [v.hex() for v in values]
    assert math.isnan(back.nodes[-1].attrs["f"])


def test_integer_literal_coerces_to_float_attribute():
    g = ir("""
        func @main(%x: f32[2]) -> f32[2] {
          %y = leaky_relu(%x) {alpha=1}
          return %y
        }""")
    assert g.nodes[0].attrs["alpha"] == 1.0 and isinstance(g.nodes[0].attrs["alpha"], float)


# -- constants --------------------------------------------------------------------------------

@pytest.mark.parametrize("array", [
    np.array([0.1, -2.5, 3e-8, np.inf, -0.0], dtype=np.float32),
    np.array([1 / 3, 1e-310], dtype=np.float64),
    np.array([0.1, 65504.0, 6e-8], dtype=np.float16),
    np.array([0.1, 3.0, -1e30], dtype=ml_dtypes.bfloat16),
    np.array([[-128, 127], [0, 5]], dtype=np.int8),
    np.array([2**63 - 1, -(2**63)], dtype=np.int64),
    np.array([255, 0], dtype=np.uint8),
    np.array([True, False, True]),
    np.array(7, dtype=np.int32),
    np.array(np.nan, dtype=np.float32),
    np.zeros((0, 3), dtype=np.float32),
])
def test_constant_data_roundtrips_bit_exactly(array):
    g = Graph()
    g.set_outputs([g.add_const(array)])
    back = roundtrip(g, full_constants=True)
    got = back.nodes[0].attrs["value"]
    assert got.dtype == array.dtype and got.shape == array.shape
    assert got.tobytes() == array.tobytes()
    assert not got.flags.writeable


def test_zero_d_and_splat_and_random_constants():
    g = ir("""
        func @main() -> (f32[], f32[2,3], f32[3,4], f32[3,4], i32[5], i64[4], bool[4]) {
          %s = const f32[] dense<2.5>
          %t = const f32[2,3] dense<-1>
          %r = const f32[3,4] random(seed=0)
          %u = const f32[3,4] random(seed=1, low=-0.5, high=0.5)
          %i = const i32[5] random(seed=2)
          %j = const i64[4] random(seed=3, low=-3, high=3)
          %b = const bool[4] random(seed=4)
          return %s, %t, %r, %u, %i, %j, %b
        }""")
    s, t, r, u, i, j, b = (n.attrs["value"] for n in g.nodes)
    assert s.shape == () and s == np.float32(2.5)
    assert "%s = const f32[] dense<2.5>" in print_graph(g)
    np.testing.assert_array_equal(t, np.full((2, 3), -1, np.float32))
    np.testing.assert_array_equal(
        r, np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    assert u.dtype == np.float32 and np.all((u >= -0.5) & (u < 0.5))
    assert i.dtype == np.int32 and np.all((i >= 0) & (i < 10))
    assert np.all((j >= -3) & (j < 3)) and b.dtype == np.bool_
    again = ir(print_graph(g, full_constants=True))
    assert structural_equal(g, again)


def test_nested_dense_lists_are_accepted():
    g = ir("""
        func @main() -> i64[2,2] {
          %c = const i64[2,2] dense<[[1, 2], [3, 4]]>
          return %c
        }""")
    np.testing.assert_array_equal(g.nodes[0].attrs["value"], [[1, 2], [3, 4]])


def test_large_constants_are_elided_and_compare_by_digest():
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (8, 8)), "x")
    g.set_outputs([g.add_op("add", x, g.add_const(w, name="w"))])
    text = print_graph(g)
    assert f"%w = const f32[8,8] elided<{tensor_digest(w)}>" in text
    back = parse(text)
    value = back.nodes[0].attrs["value"]
    assert isinstance(value, ElidedTensor) and value.matches(w)
    assert back.nodes[0].out.type == TensorType(DType.f32, (8, 8))
    verify(back)
    assert structural_equal(g, back) and structural_equal(back, g)
    assert print_graph(back) == text

    other = Graph()
    x2 = other.add_input(TensorType(DType.f32, (8, 8)), "x")
    other.set_outputs([other.add_op("add", x2, other.add_const(w + 1))])
    assert "digest" in structural_diff(other, back)

    assert "elided" not in print_graph(g, full_constants=True)
    assert "elided" not in print_graph(g, elide_above=64)
    assert "elided" in print_graph(g, elide_above=63)
    roundtrip(g, full_constants=True)


# -- types ------------------------------------------------------------------------------------

def test_quantized_types_roundtrip():
    g = ir("""
        func @main(%x: f32[B,4], %w: i8[3,4] q(axis=0, scale=[0.5, 0.25, 0.125], zp=[0, 1, -1]))
            -> (i8[B,4] q(scale=0.05, zp=0),
                i8[3,4] q(axis=0, scale=[0.5, 0.25, 0.125], zp=[0, 1, -1])) {
          %q = test_ir_quant(%x) {qp=q(scale=0.05, zp=0)}
          return %q, %w
        }""")
    q = g.nodes[0].out.type
    assert q.dtype is DType.i8 and q.quant == QuantParams(np.float32(0.05), np.int64(0))
    assert g.inputs[1].type.quant.axis == 0
    text = print_graph(g)
    q005 = "q(scale=0.05, zp=0)"  # str(QuantParams): the f32 scale, exactly
    assert f"%q = test_ir_quant(%x) {{qp={q005}}} : i8[B,4] {q005}" in text
    roundtrip(g)
    verify(g)


def test_symbolic_dims_and_expressions():
    g = ir("""
        func @main(%x: f32[B,S,4], %y: f32[B*S,4]) -> f32[B*S,4] {
          %z = add(%y, %y)
          return %z
        }""")
    B, S = sym("B"), sym("S")
    assert g.inputs[0].type.shape == (B, S, 4)
    assert g.inputs[1].type == TensorType(DType.f32, (B * S, 4))
    assert "func @main(%x: f32[B,S,4], %y: f32[B*S,4]) -> f32[B*S,4]" in print_graph(g)
    roundtrip(g)


def test_multi_output_nodes():
    g = ir("""
        func @main(%x: f32[2]) -> (f32[2], f32[2]) {
          %a, %b = test_ir_split(%x)
          %c = add(%a, %b) : f32[2]
          return %c, %b
        }""")
    assert len(g.nodes[0].outputs) == 2 and g.outputs[1] is g.nodes[0].outputs[1]
    assert "%a, %b = test_ir_split(%x) : f32[2], f32[2]" in print_graph(g)
    back = roundtrip(g)
    swapped = ir("""
        func @main(%x: f32[2]) -> (f32[2], f32[2]) {
          %a, %b = test_ir_split(%x)
          %c = add(%a, %b)
          return %c, %a
        }""")
    assert "output 1: result 1 of" in structural_diff(back, swapped)


def test_comments_whitespace_and_node_order_independence():
    a = ir("""
        # a comment line
        func @main(%x: f32[2], %y: f32[2]) -> f32[2] {   // trailing comment
          %p = relu(%x)
          %q = sigmoid(%y)
          %r = add(%p, %q)
          return %r
        }""")
    b = ir("""
        func @main(%x: f32[2], %y: f32[2]) -> f32[2] { %q = sigmoid(%y) %p = relu(%x)
          %r = add(%p, %q) return %r }""")
    assert structural_equal(a, b)
    assert "op add vs sub" in structural_diff(a, ir(print_graph(a).replace("add(", "sub(")))


def test_declared_types_are_kept_so_the_verifier_can_reject_them():
    g = ir("""
        func @main(%x: f32[2]) -> f32[3] {
          %y = relu(%x) : f32[3]
          return %y
        }""")
    assert g.outputs[0].type == TensorType(DType.f32, (3,))
    with pytest.raises(VerifyError, match="expected f32\\[2\\], found f32\\[3\\]"):
        verify(g)


def test_empty_function():
    g = ir("func @nothing() -> () {\n  return\n}")
    assert g.inputs == [] and g.outputs == [] and g.name == "nothing"
    assert print_graph(g) == "func @nothing() -> () {\n  return\n}\n"


# -- parse errors -----------------------------------------------------------------------------

HEADER = "func @main(%x: f32[2]) -> f32[2] {\n"


@pytest.mark.parametrize("body, line, col, message", [
    ("  %y = frobnicate(%x)\n  return %y\n}", 2, 8,
     "unknown op 'frobnicate': it is not in the op table"),
    ("  %y = relu(%foo)\n  return %y\n}", 2, 13, "undefined value %foo"),
    ("  %y = relu(%x)\n  %y = relu(%x)\n  return %y\n}", 3, 3,
     "value %y defined twice (first at line 2, column 3)"),
    ("  %x = relu(%x)\n  return %x\n}", 2, 3, "value %x defined twice"),
    ("  %y = relu(%x) : f32[2], f32[2]\n  return %y\n}", 2, 17,
     "wrong number of result types: 1 result name(s) but 2 type(s)"),
    ("  %a, %b = relu(%x)\n  return %a\n}", 2, 3,
     "wrong number of results: relu produces 1 value(s), 2 name(s) given"),
    ("  %y = leaky_relu(%x) {alpha=\"big\"}\n  return %y\n}", 2, 30,
     "leaky_relu: attribute alpha: expected a float, got 'big'"),
    ("  %y = leaky_relu(%x) {beta=1.0}\n  return %y\n}", 2, 24,
     "unknown attribute(s) beta for op leaky_relu (valid: alpha)"),
    ("  %y = gelu(%x) {approximate=\"exact\"}\n  return %y\n}", 2, 30,
     "'exact' is not one of 'none', 'tanh'"),
    ("  %y = relu(%x) : f33[2]\n  return %y\n}", 2, 19, "unknown dtype 'f33'"),
    ("  %y = relu(%x) loc(\"abc)\n  return %y\n}", 2, 21, "unterminated string"),
    ("  %y = relu(%x)\n", 3, 1, "unterminated block: the body of @main (opened at line 1) "
                                "needs 'return'"),
    ("  %y = relu(%x)\n}", 3, 1, "expected 'return' before '}' ending @main"),
    ("  %y = relu(%x)\n  return %y\n}\n%z", 5, 1,
     "expected end of input after the function, found '%z'"),
    ("  %y = add(%x, %x, %x)\n  return %y\n}", 2, 8, "add takes 2 inputs (a, b), got 3"),
    ("  %c = const f32[3] dense<[1.0, 2.0]>\n  return %x\n}", 2, 21,
     "dense<...> has 2 values but f32[3] needs 3"),
    ("  %c = const i8[2] dense<[1, 300]>\n  return %x\n}", 2, 30, "300 is out of range for i8"),
    ("  %y = relu(%x)\n  return %y, %x\n}", 3, 3, "@main declares 1 result(s) but returns 2"),
    ("  %y = relu(%x) {alpha=1}\n  return %y\n}", 2, 18,
     "unknown attribute(s) alpha for op relu (valid: none)"),
    ("  %c = const f32[2] dense<[1.0, true]>\n  return %c\n}", 2, 33,
     "expected a number in a f32 constant, found 'true'"),
    ("  %c = const i8[2] dense<[1.5, 2]>\n  return %x\n}", 2, 27,
     "expected an integer in a i8 constant, found '1.5'"),
    ("  %c = const f32[2] dense<[1.0, ]>\n  return %c\n}", 2, 33,
     "expected a number or true/false in dense<[...]>, found nothing"),
    ("  %c = const f32[2] wat\n  return %c\n}", 2, 21,
     "expected constant data (dense<...>, random(seed=N) or elided<digest>), found 'wat'"),
    ("  %y = relu(%x) $\n  return %y\n}", 2, 17, "unexpected character '$'"),
    ("  %y = relu(%x {\n  return %y\n}", 2, 16, "expected ',' or ')' in the operand list, "
                                                "found '{'"),
])
def test_parse_errors_are_located(body, line, col, message):
    text = HEADER + body
    with pytest.raises(ParseError) as info:
        parse(text, source="t.ir")
    e = info.value
    assert message in e.message
    assert (e.line, e.col) == (line, col), e.message
    assert e.source == "t.ir"
    assert str(e).startswith(f"t.ir:{line}:{col}: error: ")
    if line <= len(text.splitlines()):  # the message quotes the line with a caret
        assert str(e).splitlines()[-1] == "  " + " " * (col - 1) + "^"


def test_type_inference_failure_is_located_at_the_node():
    text = ("func @main(%x: f32[2], %y: f32[3]) -> f32[2] {\n"
            "  %z = add(%x, %y)\n"
            "  return %z\n}")
    with pytest.raises(ParseError, match="type inference failed: add: shapes") as info:
        parse(text)
    assert (info.value.line, info.value.col) == (2, 8)


def test_error_in_a_type_is_located():
    with pytest.raises(ParseError) as info:
        parse("func @main(%x: f32[2, B**]) -> f32[2] {\n  return %x\n}")
    assert (info.value.line, info.value.col) == (1, 23)
    assert "invalid dim" in info.value.message
    with pytest.raises(ParseError, match="expected '->' and the result types") as info:
        parse("func @main(%x: f32[2]) f32[2] {\n  return %x\n}")
    assert (info.value.line, info.value.col) == (1, 24)


def test_return_type_mismatch_with_the_header():
    with pytest.raises(ParseError, match="%x has type f32\\[2\\] but @main declares result 0 "
                                         "as f32\\[3\\]") as info:
        parse("func @main(%x: f32[2]) -> f32[3] {\n  return %x\n}")
    assert (info.value.line, info.value.col) == (2, 10)


def test_elided_constant_needs_a_hex_digest_and_static_type():
    with pytest.raises(ParseError, match="hex digest"):
        parse("func @main() -> f32[2] {\n  %c = const f32[2] elided<xyz>\n  return %c\n}")
    with pytest.raises(ParseError, match="static shape"):
        parse("func @main() -> f32[B] {\n  %c = const f32[B] dense<1.0>\n  return %c\n}")


def test_the_reference_example_parses_and_verifies():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "ir-text.md"
    example = doc.read_text().split("```")[1]
    g = parse(example, source="docs/ir-text.md")
    verify(g)
    assert isinstance(g.nodes[3].attrs["value"], ElidedTensor)
    roundtrip(g)
