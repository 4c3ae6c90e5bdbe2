"""rtinfer.compile end to end: eager parity and structure, numpy I/O, input checks, the user's
model untouched, save/load, corrupted artifacts, ONNX against onnxruntime, gradients."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rtinfer
from rtinfer.compile import CompiledModel
from rtinfer.errors import ArtifactError, BackendError


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class CNN(torch.nn.Module):
    """conv-bn-relu, a residual block, and a dict output."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        y = F.relu(self.c2(y) + y)
        return {"logits": self.fc(F.max_pool2d(y, 2).mean((2, 3))), "features": y}


def _model(cls):
    torch.manual_seed(0)
    m = cls()
    if isinstance(m, CNN):  # non-trivial running statistics for fold-batchnorm
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _assert_same_structure(got, want):
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    elif isinstance(want, dict):
        assert type(got) is type(want) and list(got) == list(want)
        for k in want:
            _assert_same_structure(got[k], want[k])
    else:
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _assert_same_structure(g, w)


@pytest.fixture(scope="module")
def mlp():
    model = _model(MLP)
    return model, rtinfer.compile(model, example_inputs=(torch.randn(2, 16),),
                                  dynamic_dims={"x": {0: "B"}})


@pytest.fixture(scope="module")
def cnn():
    model = _model(CNN)
    return model, rtinfer.compile(model, example_inputs=(torch.randn(2, 3, 16, 16),),
                                  dynamic_dims={"x": {0: "B"}})


def test_mlp_matches_eager_at_two_batch_sizes(mlp):
    model, cm = mlp
    for b in (1, 7):
        x = torch.randn(b, 16)
        with torch.no_grad():
            _assert_same_structure(cm(x), model(x))
    assert cm.fused_ops == {"fused_linear": 1}


def test_cnn_matches_eager_with_dict_output(cnn):
    model, cm = cnn
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        _assert_same_structure(cm(x), model(x))
    assert cm.fused_ops.get("fused_conv2d") == 2 and "batch_norm" not in cm.ir.op_counts()


def test_numpy_in_numpy_out(cnn):
    model, cm = cnn
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    out = cm(x)
    assert isinstance(out, dict) and all(isinstance(v, np.ndarray) for v in out.values())
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    np.testing.assert_allclose(out["logits"], want["logits"].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, match", [
    ((torch.randn(2, 3, 15, 16),), r"input 'x': expected f32\[B,3,16,16\], got f32\[2,3,15,16\]"),
    ((torch.randn(2, 3, 16, 16, dtype=torch.float64),),
     r"input 'x': expected f32\[B,3,16,16\], got f64\[2,3,16,16\]"),
    ((torch.randn(3, 16, 16),), r"input 'x': expected f32\[B,3,16,16\], got f32\[3,16,16\]"),
    ((torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)),
     r"expected 1 input\(s\) \(x: f32\[B,3,16,16\]\), got 2"),
    ((), r"expected 1 input\(s\) \(x: f32\[B,3,16,16\]\), got 0"),
    (("an image",), r"input 'x': expected f32\[B,3,16,16\], got a str"),
])
def test_bad_inputs_name_the_input(cnn, args, match):
    with pytest.raises(BackendError, match=match):
        cnn[1](*args)


def test_symbolic_dims_bind_consistently_across_inputs():
    g = rtinfer.ir.parse("""
    func @two(%a: f32[B,4], %b: f32[B,4]) -> f32[B,4] {
      %y = add(%a, %b)
      return %y
    }""")
    cm = rtinfer.compile(g)
    np.testing.assert_array_equal(cm(np.ones((3, 4), np.float32), b=np.ones((3, 4), np.float32)),
                                  np.full((3, 4), 2, np.float32))
    with pytest.raises(BackendError, match=r"input 'b': expected f32\[B,4\], got f32\[2,4\] "
                                           r"\(B is 3 elsewhere but 2 here\)"):
        cm(torch.ones(3, 4), torch.ones(2, 4))
    with pytest.raises(BackendError, match="unexpected input"):
        cm(torch.ones(3, 4), c=torch.ones(3, 4))


def test_compile_leaves_the_users_model_unchanged():
    model = _model(CNN).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    rtinfer.compile(model, example_inputs=(torch.randn(2, 3, 16, 16),))
    assert model.training and all(m.training for m in model.modules())
    assert [id(p) for p in model.parameters()] == params
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_report_names_passes_fusions_fallbacks_and_timings(cnn):
    text = cnn[1].report()
    chosen = cnn[1].info.backend  # auto measured the candidates
    for needle in ("pipeline: O3" if rtinfer.pass_manager.get_pipeline("O3") else "pipeline: O2",
                   "fold-batchnorm", "fused_conv2d x2", f"backend: {chosen} (auto -> {chosen})",
                   "fallbacks: none", "timings:", "codegen"):
        assert needle in text, needle


def test_report_says_how_fallbacks_run(cnn):
    """The torch backend runs an op it has no emitter for through its NumPy reference; TVM and
    native hand the node to the torch backend."""
    info = dataclasses.replace(cnn[1].info, fallbacks=["erf"], backend="torch")
    text = CompiledModel(cnn[1].ir, cnn[1].module, info).report()
    assert "fallbacks: erf (NumPy reference, not differentiable)" in text
    info.backend = info.backend_requested = "tvm"
    text = CompiledModel(cnn[1].ir, cnn[1].module, info).report()
    assert "fallbacks: erf (run by the torch backend)" in text


def test_save_load_round_trip_is_identical(cnn, tmp_path):
    _, cm = cnn
    cm.save(tmp_path / "cnn")
    loaded = rtinfer.load(tmp_path / "cnn")
    x = torch.randn(4, 3, 16, 16)
    a, b = cm(x), loaded(x)
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    manifest = json.loads((tmp_path / "cnn" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["torch_version"] == torch.__version__
    assert set(manifest["files"]) == {"graph.ir", "weights.npz"}


def test_corrupted_or_incompatible_artifacts_are_clear_errors(mlp, tmp_path):
    _, cm = mlp
    path = cm.save(tmp_path / "mlp")
    weights = path / "weights.npz"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    weights.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match=r"weights.npz is corrupted: its sha256"):
        rtinfer.load(path)

    path = cm.save(tmp_path / "mlp2")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99"):
        rtinfer.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        rtinfer.load(path)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        rtinfer.load(tmp_path)


def test_trainable_compile_gives_eager_gradients():
    model = _model(MLP)
    cm = rtinfer.compile(model, example_inputs=(torch.randn(2, 16),), trainable=True)
    assert not cm.info.mkldnn and "mkldnn" not in cm.module.code
    x0 = torch.randn(2, 16)
    x = x0.clone().requires_grad_()
    (cm(x) ** 2).sum().backward()
    xr = x0.clone().requires_grad_()
    (model(xr) ** 2).sum().backward()  # eval mode: dropout is the identity in both
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
    params = dict(cm.module.named_parameters())
    for name, p in model.named_parameters():
        got = params[name.replace(".", "_")]
        torch.testing.assert_close(got.grad, p.grad, rtol=1e-4, atol=1e-5)


def test_fine_tuned_weights_are_saved(tmp_path):
    cm = rtinfer.compile(_model(MLP), example_inputs=(torch.randn(2, 16),), trainable=True)
    with torch.no_grad():
        for p in cm.module.parameters():
            p.mul_(0.5)
    x = torch.randn(2, 16)
    loaded = rtinfer.load(cm.save(tmp_path / "tuned"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cm(x))


def _onnx_cnn(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("w", (8, 3, 3, 3)), ("b", (8,)), ("fw", (8, 4)), ("fb", (4,))]]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"])]
    graph = helper.make_graph(
        nodes, "onnx_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_onnx_file_matches_onnxruntime(tmp_path):
    import onnxruntime as ort

    path = str(_onnx_cnn(tmp_path / "cnn.onnx"))
    cm = rtinfer.compile(path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 12, 12)).astype(np.float32)
        got = cm(x)
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    # and the optimized IR exported back to ONNX runs in onnxruntime alike
    cm.export_onnx(tmp_path / "opt.onnx")
    opt = ort.InferenceSession(str(tmp_path / "opt.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(9).standard_normal((2, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(opt.run(None, {opt.get_inputs()[0].name: x})[0], cm(x),
                               rtol=1e-4, atol=1e-4)


def test_unknown_backend_and_target():
    relu = "func @f(%x: f32[2]) -> f32[2] {\n %y = relu(%x)\n return %y\n}"
    with pytest.raises(BackendError, match="unknown backend 'nope'; valid: auto, torch, tvm, "
                                           "native"):
        rtinfer.compile(rtinfer.ir.parse(relu), backend="nope")
    with pytest.raises(BackendError, match="backend='native' compiles for target 'cpu'"):
        rtinfer.compile(rtinfer.ir.parse(relu), backend="native", target="cuda")
    with pytest.raises(BackendError, match="unknown target"):
        rtinfer.compile(_model(MLP), target="cuda", example_inputs=(torch.randn(2, 16),))


def test_minilm_matches_eager_with_model_output_structure(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "rtinfer_zoo", Path(__file__).parent / "frontends" / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    model, inputs = zoo.ZOO["minilm-l6-v2"]()
    cm = rtinfer.compile(model, example_inputs=inputs)
    with torch.no_grad():
        want = model(**inputs)
    got = cm(**inputs)
    assert type(got) is type(want)
    for k in want.keys():
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4)
    loaded = rtinfer.load(cm.save(tmp_path / "minilm"))
    again = loaded(**inputs)
    assert type(again) is type(want)
    assert torch.equal(again.last_hidden_state, got.last_hidden_state)
