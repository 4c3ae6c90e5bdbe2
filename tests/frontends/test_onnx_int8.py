"""Quantized ONNX models in and out: ONNX Runtime's quantized formats import in rtinfer's QDQ
form (docs/int8.md) and match ONNX Runtime; rtinfer's int8 IR exports as QDQ ONNX that ONNX
Runtime runs as rtinfer's interpreter does.

Hand-built graphs check each op exactly; real models (a CNN and an MLP trained here on
sklearn's digits, quantized by ``onnxruntime.quantization``) check the formats end to end.

Where rtinfer and ONNX Runtime compute a quantized value differently (rtinfer: the f32 op on
dequantized values, then ``quantize``; ONNX Runtime: int32 accumulation, then one f32 requantize
multiplier), a real value that lands within float rounding of a rounding boundary
(``k + 0.5`` steps) may round to either side: the two agree to within one quantization step of
the output, not bit for bit. The dynamic-quantization ops compute on integers that floats hold
exactly, so those agree bit for bit.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import rtinfer
from rtinfer.errors import CaptureError, ModelError
from rtinfer.ir import interpret, verify
from rtinfer.ir.graph import Graph
from rtinfer.ir.types import DType, QuantParams, TensorType
from tests.frontends.onnx_build import init, model, vi

RNG = np.random.default_rng(0)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def run_ort(m: onnx.ModelProto, *arrays: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), arrays, strict=True)})


def capture(m: onnx.ModelProto) -> Graph:
    g = rtinfer.capture(m)
    verify(g)
    return g


def assert_within_one_step(got: np.ndarray, expected: np.ndarray, step: float) -> None:
    """Equal up to one quantization step (see the module docstring for why), and equal
    exactly for nearly all elements (a rounding tie is rare)."""
    assert got.shape == expected.shape and got.dtype == expected.dtype
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    assert diff.max() <= step * (1 + 1e-5), (diff.max(), step)
    assert np.mean(diff > step * 1e-3) <= 0.01


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes if n.op != "const"]


def int8_weights(g: Graph) -> list:
    """The ``const`` nodes that hold quantized integer weights."""
    return [n for n in g.nodes if n.op == "const" and n.out.type.quant is not None]


# -- DynamicQuantizeLinear, MatMulInteger, ConvInteger: bit for bit ----------------------------


@pytest.mark.parametrize("kind", ["mixed", "zeros", "positive", "negative"])
def test_dynamic_quantize_linear_matches_onnxruntime_bit_for_bit(kind):
    x = {"mixed": RNG.standard_normal((4, 33)) * 3, "zeros": np.zeros((4, 33)),
         "positive": RNG.random((4, 33)) + 0.5, "negative": -RNG.random((4, 33))}[kind]
    x = x.astype(np.float32)
    m = model([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])],
              [vi("x", [4, 33])],
              [vi("y", [4, 33], TensorProto.UINT8), vi("s", [], TensorProto.FLOAT),
               vi("z", [], TensorProto.UINT8)])
    got = interpret(capture(m), x)
    for a, e in zip(got, run_ort(m, x), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_array_equal(a, e)
    if kind == "zeros":  # ONNX Runtime's scale for an all-zero input: 1, not 0 / 255
        assert got[1] == 1.0


def _matmul_integer(k: int, b: np.ndarray, bz: np.ndarray) -> onnx.ModelProto:
    return model([helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])],
                 [vi("a", [3, 5, k], TensorProto.UINT8), vi("az", [], TensorProto.UINT8)],
                 [vi("y", [3, 5, b.shape[1]], TensorProto.INT32)],
                 [init("b", b), init("bz", bz)])


@pytest.mark.parametrize("k,float_type", [(40, DType.f32), (4096, DType.f64)])
def test_matmul_integer_is_exact(k, float_type):
    # k=4096: sums of up to 4096 * 255 * 128 pass 2**24, so f32 would round them: f64
    a = RNG.integers(0, 256, (3, 5, k)).astype(np.uint8)
    b = RNG.integers(-128, 128, (k, 6)).astype(np.int8)
    bz = RNG.integers(-3, 3, 6).astype(np.int8)  # one zero point per column of b
    m = _matmul_integer(k, b, bz)
    g = capture(m)
    assert next(n for n in g.nodes if n.op == "matmul").out.type.dtype is float_type
    az = np.array(117, np.uint8)  # a run-time zero point, as DynamicQuantizeLinear makes
    got = interpret(g, a, az)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, run_ort(m, a, az)[0])


def test_conv_integer_is_exact():
    x = RNG.integers(0, 256, (2, 4, 7, 7)).astype(np.uint8)
    w = RNG.integers(0, 256, (6, 2, 3, 3)).astype(np.uint8)
    m = model([helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[1, 1, 1, 1],
                                strides=[2, 1], group=2)],
              [vi("x", [2, 4, 7, 7], TensorProto.UINT8)],
              [vi("y", [2, 6, 4, 7], TensorProto.INT32)],
              [init("w", w), init("xz", np.array(100, np.uint8)),
               init("wz", np.array(131, np.uint8))])
    g = capture(m)
    assert ops(g).count("conv2d") == 1
    got = interpret(g, x)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, run_ort(m, x)[0])


# -- QLinearConv, QLinearMatMul, QDQ: rtinfer's QDQ form -----------------------------------------


def _per_channel_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    red = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=red) / 127).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8), scale


def _qlinear_conv_model(x_scale: str = "xs") -> tuple[onnx.ModelProto, float]:
    """QuantizeLinear -> QLinearConv (per-channel int8 weight, int32 bias) -> both the uint8
    output and its DequantizeLinear; returns the model and y's scale."""
    wq, ws = _per_channel_int8(RNG.standard_normal((6, 3, 3, 3)).astype(np.float32), 0)
    xs, ys = np.float32(0.02), np.float32(0.05)
    bias = RNG.integers(-2000, 2000, 6).astype(np.int32)  # scale xs * ws, zero point 0
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quant_x"),
        helper.make_node("QLinearConv", ["xq", x_scale, "xz", "w", "ws", "wz", "ys", "yz", "b"],
                         ["yq"], pads=[1, 1, 1, 1], name="qconv"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="dequant_y"),
    ]
    inits = [init("xs", xs), init("xz", np.uint8(128)), init("w", wq), init("ws", ws),
             init("wz", np.zeros(6, np.int8)), init("ys", ys), init("yz", np.uint8(100)),
             init("b", bias)]
    inputs = [vi("x", [1, 3, 8, 8])] + ([vi(x_scale, [])] if x_scale != "xs" else [])
    return model(nodes, inputs, [vi("yq", [1, 6, 8, 8], TensorProto.UINT8),
                                 vi("y", [1, 6, 8, 8])], inits), float(ys)


def test_qlinear_conv_imports_as_qdq_and_matches_onnxruntime():
    m, ys = _qlinear_conv_model()
    before = m.SerializeToString()
    g = capture(m)
    assert m.SerializeToString() == before  # the caller's model is left alone
    # quantize -> dequantize -> conv2d (int8 weight through dequantize) -> quantize, with no
    # cast between a quantize and its dequantize for lower-int8 to step over
    conv = next(n for n in g.nodes if n.op == "conv2d")
    x_deq, w_deq, bias = conv.inputs
    assert x_deq.producer.op == "dequantize"
    assert x_deq.producer.inputs[0].producer.op == "quantize"
    w = w_deq.producer.inputs[0]
    assert w_deq.producer.op == "dequantize" and w.is_const and w.type.dtype is DType.i8
    assert w.type.quant.axis == 0 and w.type.quant.scale.shape == (6,)
    assert bias.is_const and bias.type.dtype is DType.f32
    (out,) = conv.out.users
    assert out.op == "quantize" and list(out.attrs["scale"]) == [pytest.approx(ys)]
    x = RNG.uniform(-2.5, 2.5, (1, 3, 8, 8)).astype(np.float32)
    (yq, y), (eq, e) = interpret(g, x), run_ort(m, x)
    assert_within_one_step(yq, eq, 1)
    assert_within_one_step(y, e, ys)


def test_qlinear_matmul_imports_as_qdq_and_matches_onnxruntime():
    bq, bs = _per_channel_int8(RNG.standard_normal((16, 8)).astype(np.float32), 1)
    nodes = [
        helper.make_node("QuantizeLinear", ["a", "as", "az"], ["aq"]),
        helper.make_node("QLinearMatMul", ["aq", "as", "az", "b", "bs", "bz", "ys", "yz"],
                         ["yq"], name="qmm"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    ys = np.float32(0.1)
    inits = [init("as", np.float32(0.03)), init("az", np.int8(-5)), init("b", bq),
             init("bs", bs), init("bz", np.zeros(8, np.int8)), init("ys", ys),
             init("yz", np.int8(3))]
    m = model(nodes, [vi("a", [2, 4, 16])], [vi("y", [2, 4, 8])], inits)
    g = capture(m)
    mm = next(n for n in g.nodes if n.op == "matmul")
    w = mm.inputs[1].producer.inputs[0]
    assert w.is_const and w.type.dtype is DType.i8 and w.type.quant.axis == 1
    assert mm.inputs[0].producer.op == "dequantize"
    a = RNG.uniform(-3, 3, (2, 4, 16)).astype(np.float32)
    assert_within_one_step(interpret(g, a), run_ort(m, a)[0], float(ys))


def test_dequantize_linear_of_an_int8_initializer_keeps_the_weight_int8():
    # QDQ format: the weight is an int8 initializer read through DequantizeLinear (per output
    # channel), and Gemm with it is still a linear layer
    wq, ws = _per_channel_int8(RNG.standard_normal((5, 12)).astype(np.float32), 0)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=0),
        helper.make_node("Gemm", ["xd", "wd", "b"], ["y"], transB=1),
    ]
    inits = [init("xs", np.float32(0.01)), init("xz", np.uint8(120)), init("w", wq),
             init("ws", ws), init("b", RNG.standard_normal(5).astype(np.float32))]
    m = model(nodes, [vi("x", [3, 12])], [vi("y", [3, 5])], inits)
    g = capture(m)
    assert ops(g) == ["quantize", "cast", "dequantize", "dequantize", "linear"]
    (w,) = int8_weights(g)
    assert w.attrs["quant"] == QuantParams(ws, np.zeros(5, np.int64), 0)
    np.testing.assert_array_equal(w.attrs["value"], wq)
    x = RNG.uniform(-1, 1, (3, 12)).astype(np.float32)
    np.testing.assert_allclose(interpret(g, x), run_ort(m, x)[0], rtol=1e-5, atol=1e-5)


def test_dequantize_linear_with_a_run_time_scale_computes_it():
    m = model([helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
              [vi("q", [2, 3], TensorProto.INT8), vi("s", [])], [vi("y", [2, 3])],
              [init("z", np.int8(-4))])
    q = RNG.integers(-128, 128, (2, 3)).astype(np.int8)
    s = np.array(0.37, np.float32)
    np.testing.assert_array_equal(interpret(capture(m), q, s), run_ort(m, q, s)[0])


@pytest.mark.parametrize("zp_type,zp", [(TensorProto.UINT8, np.uint8(7)),
                                         (TensorProto.INT16, np.int16(-300))])
def test_quantize_linear_with_a_run_time_scale_computes_it(zp_type, zp):
    # the IR's quantize takes its scale as an attribute; a computed one is the formula itself
    m = model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])],
              [vi("x", [3, 50]), vi("s", [])], [vi("y", [3, 50], zp_type)], [init("z", zp)],
              opset=21)  # 16-bit QuantizeLinear
    g = capture(m)
    assert "quantize" not in ops(g)
    x = (RNG.standard_normal((3, 50)) * 40).astype(np.float32)
    x[0, :4] = [0.5, 1.5, -2.5, 1e9]  # ties round to even; saturation
    for s in (np.array(0.25, np.float32), np.array(0.003, np.float32)):
        got = interpret(g, x, s)
        assert got.dtype == zp.dtype
        np.testing.assert_array_equal(got, run_ort(m, x, s)[0])


def test_a_run_time_scale_where_a_constant_is_needed_names_the_node():
    m, _ = _qlinear_conv_model(x_scale="x_scale_in")
    with pytest.raises(CaptureError, match=r"QLinearConv node qconv: .*x scale.*x_scale_in"):
        rtinfer.capture(m)


def test_a_zero_scale_is_a_model_error_naming_the_node():
    m = model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q0")],
              [vi("x", [4])], [vi("y", [4], TensorProto.UINT8)],
              [init("s", np.float32(0)), init("z", np.uint8(0))])
    with pytest.raises(ModelError, match=r"QuantizeLinear node q0: .*scale must be finite"):
        rtinfer.capture(m)


def test_a_per_row_qlinear_matmul_scale_is_unsupported_at_its_node():
    nodes = [helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"],
                              ["y"], name="mm_rows")]
    inits = [init("as", np.full(4, 0.1, np.float32)), init("az", np.zeros(4, np.uint8)),
             init("b", np.ones((3, 2), np.int8)), init("bs", np.float32(0.1)),
             init("bz", np.int8(0)), init("ys", np.float32(0.1)), init("yz", np.uint8(0))]
    m = model(nodes, [vi("a", [4, 3], TensorProto.UINT8)], [vi("y", [4, 2], TensorProto.UINT8)],
              inits)
    with pytest.raises(CaptureError, match=r"QLinearMatMul node mm_rows: .*per-row"):
        rtinfer.capture(m)


# -- real models: trained here, quantized by onnxruntime.quantization ----------------------------


class DigitsCNN(torch.nn.Module):
    """conv + relu + maxpool + conv + residual add + global average pool + linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        h = torch.relu(self.c2(h) + h)
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


class DigitsMLP(torch.nn.Module):
    """Two layers as x @ W + b, which ONNX spells MatMul (quantize_dynamic's MatMulInteger)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(64, 32) * 0.1)
        self.b1 = torch.nn.Parameter(torch.zeros(32))
        self.w2 = torch.nn.Parameter(torch.randn(32, 10) * 0.1)
        self.b2 = torch.nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2


def _train(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, steps: int) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(module.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only contend on a shared machine
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,))
            loss = torch.nn.functional.cross_entropy(module(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    module.eval()


def _export(module: torch.nn.Module, example: np.ndarray, path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # the legacy exporter: fast, and it folds the weights into plain initializers
        torch.onnx.export(module, (torch.from_numpy(example),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory):
    """fp32 CNN and MLP trained on digits, and their ONNX Runtime-quantized forms."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    labels = d.target.astype(np.int64)
    train, test = slice(0, 1400), slice(1400, None)
    tmp = tmp_path_factory.mktemp("int8")
    cnn, mlp = DigitsCNN(), DigitsMLP()
    _train(cnn, images[train, None], labels[train], 200)
    _train(mlp, images[train].reshape(-1, 64), labels[train], 200)
    _export(cnn, images[:1, None], tmp / "cnn.onnx")
    _export(mlp, images[:1].reshape(-1, 64), tmp / "mlp.onnx")

    class Digits(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": images[i:i + 16, None]} for i in range(0, 128, 16)])

        def get_next(self):
            return next(self.batches, None)

    paths = {"cnn": tmp / "cnn.onnx", "mlp": tmp / "mlp.onnx"}
    for name, fmt, types in [("qdq", QuantFormat.QDQ, None),
                             # QOperator writes Add, Gemm and pooling as com.microsoft ops
                             # (QLinearAdd, QGemm): only the standard QLinearConv/MatMul here
                             ("qop", QuantFormat.QOperator, ["Conv", "MatMul"])]:
        paths[f"cnn_{name}"] = tmp / f"cnn_{name}.onnx"
        quantize_static(str(paths["cnn"]), str(paths[f"cnn_{name}"]), Digits(),
                        quant_format=fmt, per_channel=True, op_types_to_quantize=types,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    paths["mlp_dynamic"] = tmp / "mlp_dynamic.onnx"
    quantize_dynamic(str(paths["mlp"]), str(paths["mlp_dynamic"]), weight_type=QuantType.QInt8)
    # ONNX Runtime's ConvInteger takes uint8 weights
    paths["cnn_dynamic"] = tmp / "cnn_dynamic.onnx"
    quantize_dynamic(str(paths["cnn"]), str(paths["cnn_dynamic"]), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv"])
    models = {k: onnx.load(str(p)) for k, p in paths.items()}
    return models, images[test], labels[test]


def _inputs(name: str, images: np.ndarray) -> np.ndarray:
    return images.reshape(-1, 64) if name.startswith("mlp") else images[:, None]


def _output_step(name: str, m: onnx.ModelProto) -> float:
    """How far one quantization step of the last quantized tensor moves the output: its scale
    for a dequantized output (QDQ); for the QOperator CNN, whose mean pool and linear layer run
    in f32 after the last QLinearConv, that step through them (at most scale * max_o
    sum_i |W_oi|)."""
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    last = m.graph.node[-1]
    if last.op_type == "DequantizeLinear":
        return float(inits[last.input[1]])
    qconv = [n for n in m.graph.node if n.op_type == "QLinearConv"][-1]
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    return float(inits[qconv.input[6]]) * float(np.abs(inits[gemm.input[1]]).sum(axis=1).max())


@pytest.mark.parametrize("name", ["cnn_qdq", "cnn_qop"])
def test_statically_quantized_cnn_matches_onnxruntime(digits_models, name):
    models, images, labels = digits_models
    m, x = models[name], _inputs(name, images)
    g = capture(m)
    weights = int8_weights(g)
    # QDQ: every conv/linear weight an int8 constant, per output channel
    n_weights = 3 if name == "cnn_qdq" else 2
    assert len(weights) == n_weights
    assert all(w.out.type.dtype is DType.i8 and w.out.type.quant.axis == 0 for w in weights)
    assert "dequantize" in ops(g) and "quantize" in ops(g)
    expected = run_ort(m, x)[0]
    step = _output_step(name, m)
    assert_within_one_step(interpret(g, x), expected, step)
    compiled = rtinfer.compile(m, backend="torch", cache=False)
    got = compiled(torch.from_numpy(x)).detach().numpy()
    assert_within_one_step(got, expected, step)
    # the same predictions as ONNX Runtime, and int8 costs little accuracy on real digits
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.995
    fp32 = run_ort(models["cnn"], x)[0]
    assert np.mean(got.argmax(1) == labels) >= np.mean(fp32.argmax(1) == labels) - 0.02


@pytest.mark.parametrize("name,int_op", [("mlp_dynamic", "MatMulInteger"),
                                         ("cnn_dynamic", "ConvInteger")])
def test_dynamically_quantized_models_match_onnxruntime(digits_models, name, int_op):
    models, images, _ = digits_models
    m, x = models[name], _inputs(name, images)
    assert int_op in {n.op_type for n in m.graph.node}
    assert "DynamicQuantizeLinear" in {n.op_type for n in m.graph.node}
    g = capture(m)
    expected = run_ort(m, x)[0]
    # run-time scales: the integer ops are exact, leaving f32 rounding of the scale multiply
    # and the bias add (ONNX Runtime fuses them into one kernel)
    atol = 1e-6 * float(np.abs(expected).max())
    np.testing.assert_allclose(interpret(g, x), expected, rtol=0, atol=atol)
    compiled = rtinfer.compile(m, backend="torch", cache=False)
    np.testing.assert_allclose(compiled(torch.from_numpy(x)).detach().numpy(), expected, rtol=0,
                               atol=atol)


# -- export: rtinfer's int8 IR as QDQ ONNX --------------------------------------------------------


def _quantize_attrs(scale: float, zp: int, dt: DType) -> dict:
    return {"scale": [scale], "zero_point": [zp], "dtype": dt}


def _weight(g: Graph, shape: tuple[int, ...], axis: int):
    wq, ws = _per_channel_int8(RNG.standard_normal(shape).astype(np.float32), axis)
    return g.add_const(wq, quant=QuantParams(ws, np.zeros(ws.size, np.int64), axis))


def _quantized_ops_graph() -> Graph:
    """qconv2d (relu, quantized residual, u8 out) -> qlinear (i8 out) and qmatmul (f32 out)."""
    g = Graph("int8")
    x = g.add_input(TensorType(DType.f32, (2, 4, 6, 6)), "x")
    r = g.add_input(TensorType(DType.f32, (2, 8, 6, 6)), "r")
    xq = g.add_op("quantize", x, **_quantize_attrs(0.02, 128, DType.u8))
    rq = g.add_op("quantize", r, **_quantize_attrs(0.03, -2, DType.i8))
    c = g.add_op("qconv2d", xq, _weight(g, (8, 4, 3, 3), 0),
                 g.add_const(RNG.standard_normal(8).astype(np.float32)), rq, stride=[1, 1],
                 pad=[1, 1, 1, 1], dilation=[1, 1], groups=1, activation="relu",
                 residual="pre", out_dtype=DType.u8, out_scale=0.05, out_zero_point=0)
    flat = g.add_op("reshape", c, shape=[2, 288])  # int8 pass-through, as lower-int8 leaves it
    lin = g.add_op("qlinear", flat, _weight(g, (10, 288), 0),
                   g.add_const(RNG.standard_normal(10).astype(np.float32)), activation="none",
                   residual="none", out_dtype=DType.i8, out_scale=0.2, out_zero_point=1)
    mm = g.add_op("qmatmul", flat, _weight(g, (288, 5), 1), activation="none", residual="none")
    g.set_outputs([lin, mm])
    verify(g)
    return g


def test_quantized_ops_export_as_qdq_that_onnxruntime_runs_as_the_interpreter():
    g = _quantized_ops_graph()
    m = rtinfer.export_onnx(g, check=True)
    types = [n.op_type for n in m.graph.node]
    assert {"Conv", "Gemm", "MatMul"} <= set(types) and "QLinearConv" not in types
    # the weights stay int8 initializers, dequantized per output channel
    inits = {t.name: t for t in m.graph.initializer}
    w_dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"
            and inits.get(n.input[0]) is not None
            and inits[n.input[0]].data_type == TensorProto.INT8]
    assert sorted(n.attribute[0].i for n in w_dq) == [0, 0, 1]
    x = RNG.uniform(-2, 2, (2, 4, 6, 6)).astype(np.float32)
    r = RNG.uniform(-3, 3, (2, 8, 6, 6)).astype(np.float32)
    (lin, mm), (elin, emm) = interpret(g, x, r), run_ort(m, x, r)
    assert_within_one_step(elin, lin, 1)  # int8 codes
    np.testing.assert_allclose(emm, mm, rtol=1e-5, atol=1e-5)  # f32 out: no requantization


def test_int8_constant_round_trips_through_onnx():
    g = Graph("w")
    x = g.add_input(TensorType(DType.f32, (3, 12)), "x")
    w = _weight(g, (5, 12), 0)
    g.set_outputs([g.add_op("linear", x, g.add_op("dequantize", w))])
    m = rtinfer.export_onnx(g, check=True)
    (init_w,) = [t for t in m.graph.initializer if list(t.dims) == [5, 12]]
    assert init_w.data_type == TensorProto.INT8
    np.testing.assert_array_equal(numpy_helper.to_array(init_w), w.const_data)
    back = capture(m)
    (w2,) = int8_weights(back)
    assert w2.attrs["quant"] == w.type.quant
    xv = RNG.standard_normal((3, 12)).astype(np.float32)
    np.testing.assert_allclose(run_ort(m, xv)[0], interpret(g, xv), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(interpret(back, xv), interpret(g, xv), rtol=1e-6, atol=1e-6)


def test_onnxruntime_qdq_model_lowered_by_rtinfer_exports_and_matches(digits_models):
    from rtinfer.pass_manager import run_pipeline

    models, images, _ = digits_models
    x = _inputs("cnn_qdq", images)
    g = capture(models["cnn_qdq"])
    lowered = run_pipeline(g.clone(), "dce,lower-int8", verify_each=True,
                           out=io.StringIO()).graph
    assert {"qconv2d", "qlinear"} <= set(ops(lowered))
    m = rtinfer.export_onnx(lowered, check=True)
    assert_within_one_step(run_ort(m, x)[0], interpret(lowered, x),
                           _output_step("cnn_qdq", models["cnn_qdq"]))
