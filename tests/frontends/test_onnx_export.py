"""The ONNX exporter: every exportable op runs in ONNX Runtime as in the reference interpreter.

Each op-table case of tests/ir/test_ops.py becomes a one-node graph (first input a graph input,
the others initializers); the export must pass the full ONNX checker and ONNX Runtime must
reproduce ``interpret``. Then: symbolic dims, the custom domain, blocking errors, external data,
opsets, half precision, names, and that export leaves the graph alone.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import rtinfer
from rtinfer.errors import ExportError
from rtinfer.frontends import onnx_export
from rtinfer.frontends.onnx_export import CUSTOM_DOMAIN, NO_ONNX_FORM, RULES
from rtinfer.ir import DType, Graph, TensorType, interpret, parse, structural_equal, sym
from rtinfer.ir.ops import OPS, Attr, OpDef

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
ROOT = Path(__file__).resolve().parents[2]


def _load_op_cases():
    """The per-op cases of tests/ir/test_ops.py (loaded by path: tests/ is not a package)."""
    name = "_rtinfer_op_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests/ir/test_ops.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].CASES


CASES = _load_op_cases()


def one_op_graph(case) -> Graph:
    g = Graph(case.op)
    types = case.types or [TensorType.of(a) for a in case.inputs]
    values = [g.add_input(types[0], "x")]
    values += [g.add_const(a, name=f"p{i}", quant=types[i].quant)  # int8 weights keep theirs
               for i, a in enumerate(case.inputs[1:], 1)]
    g.set_outputs(g.create_node(case.op, values, case.attrs).outputs)
    return g


def run_ort(model: onnx.ModelProto | str, *inputs: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), inputs, strict=True)})


def check_against_interpreter(g: Graph, inputs, rtol=1e-4, atol=1e-5, **options) -> onnx.ModelProto:
    model = rtinfer.export_onnx(g, **options)
    onnx.checker.check_model(model, full_check=True)
    expected = interpret(g, *inputs)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    got = run_ort(model, *inputs)
    assert len(got) == len(expected)
    for o, e in zip(got, expected, strict=True):
        assert o.dtype == e.dtype and o.shape == e.shape, (o.dtype, o.shape, e.dtype, e.shape)
        if e.dtype.kind in "biu":
            np.testing.assert_array_equal(o, e)
        else:
            np.testing.assert_allclose(o.astype(np.float64), e.astype(np.float64), rtol=rtol,
                                       atol=atol)
    return model


def _case_id(c) -> str:
    return c.id or c.op


EXPORTABLE = [c for c in CASES if c.op in RULES]


@pytest.mark.parametrize("case", EXPORTABLE, ids=[_case_id(c) for c in EXPORTABLE])
def test_op_runs_in_onnxruntime_as_in_the_interpreter(case):
    check_against_interpreter(one_op_graph(case), case.inputs[:1])


def test_every_exportable_op_has_a_case():
    covered = {c.op for c in CASES} | {"const"}
    assert set(RULES) - covered == set()


def test_ops_without_an_exporter_are_exactly_the_documented_ones():
    # the table's own ops (tests elsewhere declare throwaway ops in the same process)
    table = {o.name for o in OPS if o.infer.__module__.startswith("rtinfer.ir.ops.")}
    assert set(RULES) <= table
    missing = table - set(RULES) - {"const"}  # const becomes an initializer
    assert missing == set(NO_ONNX_FORM), (
        "an op without an ONNX export rule: add a rule to RULES in the module of its family in "
        "compiler/frontends/onnx_export/, or list it in NO_ONNX_FORM with the reason "
        "(and in docs/onnx-export.md)")
    doc = (ROOT / "docs/onnx-export.md").read_text()
    assert all(f"`{op}`" in doc for op in NO_ONNX_FORM)


# -- symbolic dims ------------------------------------------------------------------------------

BLOCK = """
func @block(%x: f32[B,S,16], %ids: i64[B,S]) -> (f32[B,S,16], f32[B*S,16], f32[B,S,16]) {
  %w = const f32[16,16] random(seed=0)
  %b = const f32[16] random(seed=1)
  %table = const f32[10,16] random(seed=2)
  %e = embedding(%table, %ids)
  %h = add(%x, %e)
  %y = linear(%h, %w, %b)
  %heads = reshape(%y) {shape=[B, S, 2, 8]}
  %q = transpose(%heads) {perm=[0, 2, 1, 3]}
  %a = scaled_dot_product_attention(%q, %q, %q) {causal=true}
  %t = transpose(%a) {perm=[0, 2, 1, 3]}
  %m = reshape(%t) {shape=[B, S, 16]}
  %n = layer_norm(%m)
  %flat = flatten(%n) {axis=0, end_axis=1}
  %g = gelu(%flat)
  %sm = softmax(%n) {axis=1}
  return %n, %g, %sm
}
"""


def test_symbolic_batch_and_sequence_run_at_two_sizes():
    g = parse(BLOCK)
    model = rtinfer.export_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    dims = [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output]
    assert dims == [["B", "S", 16], ["B*S", 16], ["B", "S", 16]]
    rng = np.random.default_rng(0)
    for b, s in ((1, 3), (3, 5)):
        x = rng.standard_normal((b, s, 16)).astype(np.float32)
        ids = rng.integers(0, 10, (b, s))
        got = run_ort(model, x, ids)
        for o, e in zip(got, interpret(g, x, ids), strict=True):
            np.testing.assert_allclose(o, e, rtol=1e-4, atol=1e-5)


def test_symbolic_spatial_dims_conv_and_pool():
    g = parse("""
    func @net(%x: f32[N,3,H,W]) -> f32[N,4,1,1] {
      %w = const f32[4,3,3,3] random(seed=0)
      %y = conv2d(%x, %w) {stride=[2], pad=[1]}
      %p = max_pool2d(%y) {kernel=[2]}
      %z = adaptive_avg_pool2d(%p) {output_size=[1]}
      return %z
    }""")
    rng = np.random.default_rng(1)
    for shape in ((1, 3, 8, 8), (2, 3, 12, 10)):
        check_against_interpreter(g, [rng.standard_normal(shape).astype(np.float32)])


# -- custom domain and blocking ops ---------------------------------------------------------------


@pytest.fixture
def fused_test_op(monkeypatch):
    """A made-up op with a graph-valued attribute and no export rule, for this test only."""
    opdef = OpDef("test_fused_body", ("x",), {"body": Attr("graph"), "alpha": Attr("float", 1.0),
                                              "flag": Attr("bool", False),
                                              "to": Attr("dtype", DType.f32),
                                              "shape": Attr("shape", ())},
                  frozenset(), lambda ins, a: ins[0], lambda x, **a: x)
    monkeypatch.setitem(OPS._ops, opdef.name, opdef)
    return opdef.name


def _custom_graph(op: str) -> Graph:
    body = parse("func @body(%a: f32[B,4]) -> f32[B,4] {\n  %r = relu(%a)\n  return %r\n}")
    g = Graph("custom")
    x = g.add_input(TensorType(DType.f32, (sym("B"), 4)), "x")
    y = g.add_op(op, x, body=body, alpha=0.5, flag=True, to=DType.f16, shape=[sym("B"), 4])
    z = g.add_op("cumsum", y, axis=1)
    w = g.add_op("cumsum", g.add_op("relu", z), axis=0)
    g.set_outputs([w])
    return g


def test_custom_domain_export(fused_test_op, monkeypatch):
    monkeypatch.delitem(RULES, "cumsum")
    model = rtinfer.export_onnx(_custom_graph(fused_test_op), allow_custom=True)
    onnx.checker.check_model(model, full_check=True)
    assert {(o.domain, o.version) for o in model.opset_import} >= {(CUSTOM_DOMAIN, 1)}
    custom = [n for n in model.graph.node if n.domain == CUSTOM_DOMAIN]
    assert [n.op_type for n in custom] == [fused_test_op, "cumsum", "cumsum"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in custom[0].attribute}
    assert attrs["alpha"] == 0.5 and attrs["flag"] == 1 and attrs["to"] == b"f16"
    assert attrs["shape"] == [b"B", b"4"]
    assert [n.op_type for n in attrs["body"].node] == ["Relu"]
    assert {a.name: a.i for a in custom[1].attribute} == {"axis": 1}


def test_export_error_names_every_blocking_op_and_node(fused_test_op, monkeypatch):
    monkeypatch.delitem(RULES, "cumsum")
    with pytest.raises(ExportError) as err:
        rtinfer.export_onnx(_custom_graph(fused_test_op))
    assert [op for op, _, _ in err.value.ops] == [fused_test_op, "cumsum", "cumsum"]
    assert len({node for _, node, _ in err.value.ops}) == 3
    msg = str(err.value)
    assert fused_test_op in msg and "cumsum" in msg and "allow_custom=True" in msg


def test_unsupported_node_falls_back_or_blocks():
    # adaptive pooling of a symbolic, uneven spatial dim has no standard form
    g = parse("""
    func @p(%x: f32[1,2,H,5]) -> f32[1,2,3,2] {
      %y = adaptive_avg_pool2d(%x) {output_size=[3, 2]}
      return %y
    }""")
    with pytest.raises(ExportError, match="adaptive_avg_pool2d at node .*symbolic"):
        rtinfer.export_onnx(g)
    model = rtinfer.export_onnx(g, allow_custom=True)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [
        (CUSTOM_DOMAIN, "adaptive_avg_pool2d")]


# -- files, opsets, precision, names ------------------------------------------------------------

MLP = """
func @mlp(%x: f32[B,64]) -> f32[B,32] {
  %w = const f32[32,64] random(seed=0)
  %b = const f32[32] random(seed=1)
  %y = linear(%x, %w, %b)
  %z = relu(%y)
  return %z
}
"""


def test_external_data_written_when_forced(tmp_path):
    g = parse(MLP)
    path = tmp_path / "mlp.onnx"
    model = rtinfer.export_onnx(g, path, external_data=True)
    data = tmp_path / "mlp.onnx.data"
    assert data.exists() and data.stat().st_size >= 32 * 64 * 4
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.checker.check_model(str(path), full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(run_ort(str(path), x)[0], interpret(g, x), rtol=1e-4, atol=1e-5)


def test_writes_a_single_file_by_default(tmp_path):
    path = tmp_path / "mlp.onnx"
    rtinfer.export_onnx(parse(MLP), path)
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.onnx"]
    assert all(t.data_location != onnx.TensorProto.EXTERNAL
               for t in onnx.load(str(path)).graph.initializer)


def test_export_leaves_the_graph_unchanged():
    g = parse(BLOCK)
    before, text = g.clone(), str(g)
    rtinfer.export_onnx(g, allow_custom=True, full_precision=True)
    assert str(g) == text and structural_equal(g, before)


@pytest.mark.parametrize("opset", [18, 23])
def test_other_opsets(opset):
    g = parse("""
    func @f(%x: f32[2,5,8]) -> f32[2,5,8] {
      %g = const f32[8] random(seed=0)
      %y = rms_norm(%x, %g)
      %z = gelu(%y) {approximate="tanh"}
      %w = gelu(%z)
      return %w
    }""")
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    model = check_against_interpreter(g, [x], opset=opset)
    ops = {n.op_type for n in model.graph.node}
    assert ("RMSNormalization" in ops) == (opset >= 23) and ("Gelu" in ops) == (opset >= 20)


def test_rejects_old_opsets():
    with pytest.raises(ExportError, match="opset 13"):
        rtinfer.export_onnx(parse(MLP), opset=13)


def test_float16_full_precision_matches_the_interpreter():
    g = parse("""
    func @h(%x: f16[2,4,8]) -> f16[2,4,8] {
      %w = const f16[8,8] random(seed=0)
      %gamma = const f16[8] random(seed=1)
      %y = linear(%x, %w)
      %n = layer_norm(%y, %gamma)
      %a = gelu(%n)
      %s = softmax(%a)
      %r = reshape(%s) {shape=[8, 8]}
      %m = reduce_mean(%r) {axes=[1], keepdims=true}
      %o = reshape(%m) {shape=[2, 4, 1]}
      %z = mul(%s, %o)
      return %z
    }""")
    x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float16)
    model = check_against_interpreter(g, [x], rtol=1e-2, atol=1e-3, full_precision=True)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_names_are_sanitized_and_unique():
    g = Graph("names")
    a = g.add_input(TensorType(DType.f32, (2,)), "in put")
    b = g.add_input(TensorType(DType.f32, (2,)), "in put")
    s = g.add_op("add", a, b)
    s.name = "sum:0"
    g.set_outputs([s, a, s])
    model = rtinfer.export_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["in_put", "in_put_1"]
    outs = [o.name for o in model.graph.output]
    assert outs[0] == "sum:0" and len(set(outs)) == 3
    x = np.ones(2, np.float32)
    got = run_ort(model, x, 2 * x)
    for o, e in zip(got, interpret(g, x, 2 * x), strict=True):
        np.testing.assert_array_equal(o, e)


def test_export_is_reachable_from_the_package(tmp_path):
    assert rtinfer.export_onnx is not onnx_export.export_onnx  # the lazy front door
    model = rtinfer.export_onnx(parse(MLP), tmp_path / "m.onnx")
    assert onnx.load(str(tmp_path / "m.onnx")).graph.name == model.graph.name == "mlp"


def test_quantized_chain_keeps_per_channel_parameters_through_data_movement():
    g = parse("""
    func @q(%x: f32[2,3,4,4]) -> (f32[2,4,4,3], f32[2,3,2,2]) {
      %q = quantize(%x) {scale=[0.02, 0.05, 0.1], zero_point=[0, -3, 5], axis=[1]}
      %t = transpose(%q) {perm=[0, 2, 3, 1]}
      %d = dequantize(%t)
      %p = max_pool2d(%q) {kernel=[2]}
      %e = dequantize(%p)
      return %d, %e
    }""")
    x = np.random.default_rng(0).uniform(-3, 3, (2, 3, 4, 4)).astype(np.float32)
    model = check_against_interpreter(g, [x])
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") == 2 and "QuantizeLinear" in ops


def test_bfloat16_types_export():
    g = parse("""
    func @b(%x: f32[2,3]) -> f32[2,3] {
      %h = cast(%x) {dtype=bf16}
      %y = cast(%h) {dtype=f32}
      return %y
    }""")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    model = check_against_interpreter(g, [x])
    vi = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    assert onnx.TensorProto.BFLOAT16 in vi.values()
