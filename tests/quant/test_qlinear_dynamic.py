"""Dynamic (per-token) int8 linears, ``qlinear_dynamic`` (docs/int8.md): the op's reference,
the torch emitter, insert-qdq's ``dynamic`` option and ``rtinfer.quantize(dynamic=...)``, the
native kernel at each CPU level, and ``compile(precision="int8")`` choosing per linear."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.backends.native_backend import NativeModule
from rtinfer.backends.torch_backend import build_module
from rtinfer.errors import IRError, PassError, QuantizeError
from rtinfer.int8 import Int8Report, quantize_for_compile
from rtinfer.ir.equality import structural_diff
from rtinfer.ir.graph import Graph
from rtinfer.ir.interpreter import interpret
from rtinfer.ir.ops.quant import dynamic_row_quantize
from rtinfer.ir.parser import parse
from rtinfer.ir.printer import print_graph
from rtinfer.ir.types import DType, QuantParams, TensorType
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager import run_pipeline


def s8_weight(w: np.ndarray) -> tuple[np.ndarray, QuantParams]:
    scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, QuantParams(scale, np.zeros(len(scale), np.int64), 0)


def dynamic_graph(activation: str = "none", residual: str = "none", bias: bool = True,
                  shape: tuple[int, ...] = (2, 5, 40), n: int = 24) -> tuple[Graph, list]:
    """One qlinear_dynamic and inputs for it (rows with an outlier, one all-zero row, one
    all-positive row)."""
    rng = np.random.default_rng(0)
    k = shape[-1]
    wq, qp = s8_weight(rng.standard_normal((n, k)).astype(np.float32))
    g = Graph("dyn")
    x = g.add_input(TensorType(DType.f32, shape), "x")
    ins = [x, g.add_const(wq, quant=qp)]
    if bias:
        ins.append(g.add_const(rng.standard_normal(n).astype(np.float32)))
    xs = rng.standard_normal(shape).astype(np.float32)
    xs.reshape(-1, k)[0, 3] = 40.0  # an outlier channel in one token
    xs.reshape(-1, k)[1] = 0.0
    xs.reshape(-1, k)[2] = np.abs(xs.reshape(-1, k)[2])
    inputs = [xs]
    if residual != "none":
        ins.append(g.add_input(TensorType(DType.f32, (*shape[:-1], n)), "r"))
        inputs.append(rng.standard_normal((*shape[:-1], n)).astype(np.float32))
    g.set_outputs([g.add_op("qlinear_dynamic", *ins, activation=activation, residual=residual)])
    verify(g)
    return g, inputs


def numpy_reference(x: np.ndarray, g: Graph) -> np.ndarray:
    """The definition, spelled out: codes per row -> dequantize -> x @ w^T + b."""
    node = g.nodes[-1]
    w = node.inputs[1]
    wd = w.const_data.astype(np.float32) * w.type.quant.scale[:, None]
    lo = np.minimum(x.min(-1, keepdims=True), 0)
    hi = np.maximum(x.max(-1, keepdims=True), 0)
    s = np.where(hi > lo, (hi - lo) / np.float32(255), np.float32(1)).astype(np.float32)
    zp = np.clip(np.rint(-lo / s), 0, 255)
    xd = (np.clip(np.rint(x / s) + zp, 0, 255) - zp) * s
    return xd.astype(np.float32) @ wd.T + node.inputs[2].const_data


# -- the op -----------------------------------------------------------------------------------


def test_row_codes_use_each_rows_own_range():
    x = np.array([[-1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [2.0, 6.0, 8.0]], np.float32)
    q, scale, zp = dynamic_row_quantize(x)
    np.testing.assert_array_equal(scale, np.float32([4 / 255, 1.0, 8 / 255]))
    np.testing.assert_array_equal(zp, [64, 0, 0])  # rint(1 / (4/255)) = 64: 0 is exact
    np.testing.assert_array_equal(q[0], [0, 64, 255])
    np.testing.assert_array_equal(q[1], [0, 0, 0])
    np.testing.assert_array_equal(q[2], [64, 191, 255])


def test_reference_is_row_quantize_dequantize_linear():
    g, (x,) = dynamic_graph()
    np.testing.assert_allclose(interpret(g, x), numpy_reference(x, g), rtol=1e-5, atol=1e-5)
    # the outlier costs only its own row: the other rows keep fine steps
    fp = x @ (g.nodes[-1].inputs[1].const_data * g.nodes[-1].inputs[1].type.quant.scale[:, None]
              ).T + g.nodes[-1].inputs[2].const_data
    err = np.abs(interpret(g, x) - fp).reshape(-1, 24).max(1)
    assert err[3:].max() < err[0] / 5


@pytest.mark.parametrize("activation,residual", [("gelu", "post"), ("relu", "pre"),
                                                 ("none", "none")])
def test_torch_backend_matches_the_interpreter(activation, residual):
    g, xs = dynamic_graph(activation, residual)
    out = build_module(g)(*(torch.from_numpy(a) for a in xs))
    out = out[0] if isinstance(out, (tuple, list)) else out
    np.testing.assert_allclose(out.numpy(), interpret(g, *xs), rtol=1e-5, atol=1e-5)


def test_prints_and_parses_back():
    g, _ = dynamic_graph("gelu", "post")
    text = print_graph(g)
    assert "qlinear_dynamic" in text
    assert structural_diff(parse(text), g) is None


def test_rejects_a_quantized_input_and_a_float_weight():
    g = Graph("bad")
    xq = g.add_input(TensorType(DType.u8, (2, 8), QuantParams(np.float32(0.1), np.int64(0))))
    wq, qp = s8_weight(np.ones((4, 8), np.float32))
    with pytest.raises(IRError, match="x must be f32"):
        g.add_op("qlinear_dynamic", xq, g.add_const(wq, quant=qp))
    x = g.add_input(TensorType(DType.f32, (2, 8)))
    with pytest.raises(IRError, match="weight must be i8"):
        g.add_op("qlinear_dynamic", x, g.add_const(np.ones((4, 8), np.float32)))


# -- passes and rtinfer.quantize ----------------------------------------------------------------


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)
        self.up = torch.nn.Linear(16, 64)
        self.down = torch.nn.Linear(64, 16)

    def forward(self, x):
        h = self.conv(x).flatten(2)  # [B, 4, 16]: 4 tokens of 16 features
        return self.down(torch.nn.functional.gelu(self.up(h))) + h


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = Mlp().eval()
    with torch.no_grad():
        model.up.weight[:, 3] *= 8  # an outlier input channel, as transformers have
    x = torch.randn(2, 4, 4, 4)
    g = run_pipeline(rtinfer.capture(model, (x,)), "O3").graph
    calibration = [(torch.randn(2, 4, 4, 4),) for _ in range(4)]
    return model, x, g, calibration


def test_quantize_dynamic_makes_every_linear_dynamic(mlp):
    model, x, g, calibration = mlp
    before = print_graph(g)
    q = rtinfer.quantize(g, calibration, dynamic=True)
    assert print_graph(g) == before  # the input graph is untouched
    ops = q.op_counts()
    assert ops.get("qlinear_dynamic") == 2, ops
    assert ops.get("quantize") == 1  # only the conv reads a calibrated activation
    run_pipeline(q, "lower-int8,dce")
    assert q.op_counts().get("qlinear_dynamic") == 2
    got = build_module(q)(x)
    got = got[0] if isinstance(got, (tuple, list)) else got
    np.testing.assert_allclose(got.numpy(), interpret(q, x.numpy()), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        want = model(x)
    assert float(torch.linalg.norm(got - want) / torch.linalg.norm(want)) < 0.02


def test_quantize_dynamic_by_index_keeps_the_rest_static(mlp):
    _, x, g, calibration = mlp
    q = rtinfer.quantize(g, calibration, dynamic=[2])  # layers: conv 0, up 1, down 2
    run_pipeline(q, "lower-int8,dce")
    ops = q.op_counts()
    assert ops.get("qlinear_dynamic") == 1 and ops.get("qlinear") == 1, ops
    dyn = next(n for n in q.nodes if n.op == "qlinear_dynamic")
    assert dyn.attrs["residual"] != "none"  # the fused residual add stays fused


@pytest.mark.parametrize("dynamic,message", [
    ([0], "dynamic layer 0 .* is a conv2d; only linear layers"),
    ([7], "dynamic layer 7: the graph has 3"),
    (["x"], "dynamic=\\['x'\\]"),
])
def test_quantize_dynamic_rejects_bad_layers(mlp, dynamic, message):
    _, _, g, calibration = mlp
    with pytest.raises(PassError, match=message):  # QuantizeError, or it through the pipeline
        rtinfer.quantize(g, calibration, dynamic=dynamic)


def test_compile_chooses_per_linear_and_says_why(mlp):
    _, _, g, calibration = mlp
    batches = [list(b) for b in calibration]
    q, report = quantize_for_compile(g, batches, backend="torch", method="minmax")
    rows = report.layers
    linears = [r for r in rows if "linear" in r.op]
    assert len(linears) == 2
    for r in linears:  # both forms measured; the more accurate one chosen
        assert r.static_sensitivity is not None and r.dynamic_sensitivity is not None
        dyn = r.dynamic_sensitivity < r.static_sensitivity
        assert r.precision == ("int8-dyn" if dyn else "int8")
        assert ("dynamic per-token int8" in r.why) == dyn
        assert "vs" in r.why
    assert any(r.precision == "int8-dyn" for r in linears)  # the outlier channel
    assert q.op_counts().get("qlinear_dynamic") == report.dynamic_layers
    assert "dynamic per token" in report.table()
    assert Int8Report.from_record(report.to_record()) == report
    never, rep = quantize_for_compile(g, batches, backend="torch", method="minmax",
                                      dynamic="never")
    assert "qlinear_dynamic" not in never.op_counts() and rep.dynamic_layers == 0
    assert report.error < rep.error
    with pytest.raises(QuantizeError, match="dynamic='sometimes'"):
        quantize_for_compile(g, batches, backend="torch", dynamic="sometimes")


# -- the native kernel ------------------------------------------------------------------------


from tests.backends.test_native_int8 import level  # noqa: E402,F401  (each CPU level)


@pytest.mark.parametrize("activation,residual,bias,shape", [
    ("none", "none", True, (2, 5, 40)),
    ("gelu", "none", True, (3, 7, 100)),
    ("relu", "post", True, (2, 5, 40)),
    ("gelu", "pre", True, (4, 33)),
    ("none", "none", False, (4, 33)),
    ("tanh", "post", True, (3, 17)),
])
def test_native_matches_the_interpreter(level, activation, residual, bias, shape):  # noqa: F811
    g, xs = dynamic_graph(activation, residual, bias, shape)
    m = NativeModule(g, strict=True)
    assert not m.stats.fallbacks
    assert any("dynamic" in k for k in m.stats.kernels), m.stats.kernels
    got = m(*(torch.from_numpy(a) for a in xs))
    got = (got[0] if isinstance(got, (tuple, list)) else got).numpy()
    want = interpret(g, *xs)
    # integer sums against the reference's f32 sums of rounded products
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("activation,residual,shape", [
    ("gelu", "pre", (3, 67, 40)),     # 201 rows: several row blocks a thread and a shorter last
    ("relu", "post", (1, 128, 48)),   # MiniLM's 128 tokens: one block a thread
    ("none", "none", (1, 3, 40)),     # 3 rows: blocks of 2 and 1 on two threads
])
def test_native_row_blocks_match_the_interpreter(level, threads, activation, residual,  # noqa: F811
                                                 shape):
    """The kernel cuts the rows into blocks (quantize, matmul and epilogue per block, one
    thread a block): every block, the shorter last one included, agrees with the reference,
    at one thread and at two; row codes come from each row's own range whichever block it is
    in (a NaN row in a later block gives NaN there only)."""
    g, xs = dynamic_graph(activation, residual, shape=shape)
    x = xs[0].copy()
    flat = x.reshape(-1, x.shape[-1])
    if len(flat) > 150:
        flat[150, 2] = np.nan  # in the third block of 51 rows
    xs = [x, *xs[1:]]
    want = interpret(g, *xs)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m = NativeModule(g, strict=True)
        got = m(*(torch.from_numpy(a) for a in xs))
    finally:
        torch.set_num_threads(old)
    got = (got[0] if isinstance(got, (tuple, list)) else got).numpy()
    rows_nan = np.isnan(want.reshape(-1, 24)).any(axis=1)
    np.testing.assert_array_equal(np.isnan(got.reshape(-1, 24)).any(axis=1), rows_nan)
    ok = ~rows_nan
    w, o = want.reshape(-1, 24)[ok], got.reshape(-1, 24)[ok]
    np.testing.assert_allclose(o, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))
    np.testing.assert_array_equal(xs[0], x)  # the input is not modified


def _with_non_finite_rows(xs: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """The inputs with a NaN in row 3, +inf in row 4 and -inf in row 5 of x, and the mask of
    those rows."""
    x = xs[0].copy()
    flat = x.reshape(-1, x.shape[-1])
    flat[3, 1], flat[4, 0], flat[5, -1] = np.nan, np.inf, -np.inf
    bad = np.zeros(flat.shape[0], bool)
    bad[3:6] = True
    return [x, *xs[1:]], bad


@pytest.mark.parametrize("activation,residual", [("relu", "pre"), ("gelu", "post")])
def test_a_row_with_nan_or_inf_gives_nan_outputs_on_every_backend(level, activation,  # noqa: F811
                                                                     residual):
    """A NaN or an infinity leaves its row without a range: every output of that row is NaN
    (as in an f32 linear), on the interpreter, the torch backend and the native kernel; the
    other rows are untouched."""
    g, xs = dynamic_graph(activation, residual, shape=(2, 5, 40))
    xs, bad = _with_non_finite_rows(xs)
    want = interpret(g, *xs).reshape(-1, 24)
    assert np.isnan(want[bad]).all() and np.isfinite(want[~bad]).all()
    clean = interpret(g, *[np.where(np.isfinite(a), a, 0).astype(np.float32) for a in xs])
    np.testing.assert_array_equal(want[~bad], clean.reshape(-1, 24)[~bad])
    tensors = [torch.from_numpy(a) for a in xs]
    for m in (build_module(g), NativeModule(g, strict=True)):
        got = m(*tensors)
        got = (got[0] if isinstance(got, (tuple, list)) else got).numpy().reshape(-1, 24)
        assert np.isnan(got[bad]).all(), type(m).__name__
        np.testing.assert_allclose(got[~bad], want[~bad], rtol=1e-4,
                                   atol=1e-4 * float(np.abs(want[~bad]).max()))


def test_onnx_export_gives_nan_rows_too():
    ort = pytest.importorskip("onnxruntime")
    g, xs = dynamic_graph("gelu", "post", shape=(2, 5, 40))
    xs, bad = _with_non_finite_rows(xs)
    m = rtinfer.export_onnx(g, check=True)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, dict(zip(names, xs, strict=True)))[0].reshape(-1, 24)
    want = interpret(g, *xs).reshape(-1, 24)
    assert np.isnan(got[bad]).all()
    np.testing.assert_allclose(got[~bad], want[~bad], rtol=1e-4, atol=1e-4)
