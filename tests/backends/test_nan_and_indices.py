"""What a compiled model must not get silently wrong (issue 16): NaN through fused activation
epilogues, out-of-range (and, for torch's ops, negative) indices, inputs on another device,
and an empty batch. Every backend is checked against eager torch; the native backend at each
CPU level this host runs (the ``native`` fixture)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rtinfer
from rtinfer.errors import BackendError, IndexOutOfRangeError, RtinferError
from tests.conftest import _cpu_levels

NAN, INF = float("nan"), float("inf")


@pytest.fixture(params=["torch", *(f"native-{lv}" for lv in _cpu_levels())])
def backend(request, monkeypatch):
    """The backend's name; "native" once for each CPU level this host runs (as the ``native``
    fixture: skipped where the extension cannot be built)."""
    if request.param == "torch":
        return "torch"
    from rtinfer.kernels import build

    level = request.param.removeprefix("native-")
    try:
        build.load(level=level)
    except build.NativeUnavailable as e:
        pytest.skip(f"native backend unavailable here: {e}")
    monkeypatch.setenv("RTINFER_CPU_ISA", level)
    return "native"


def compile_with(backend: str, model, inputs, **kw):
    cm = rtinfer.compile(model, example_inputs=inputs, backend=backend, cache=False, **kw)
    assert cm.info.backend == backend
    return cm


def same_specials(got: torch.Tensor, want: torch.Tensor) -> None:
    """NaN exactly where eager has NaN, the same infinities, finite values close."""
    assert got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan()), (
        f"NaN at {got.isnan().sum().item()} positions, eager {want.isnan().sum().item()}")
    assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[got.isinf()],
                                                                 want[want.isinf()])
    fin = want.isfinite()
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-4, atol=1e-4)


# -- NaN through fused epilogues ----------------------------------------------------------------

ACTIVATIONS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "hardtanh": lambda y: F.hardtanh(y, -0.5, 0.75),
    "clamp_min": lambda y: torch.clamp(y, min=0.0),
    "maximum": lambda y: torch.maximum(y, torch.zeros_like(y)),
    "minimum": lambda y: torch.minimum(y, torch.full_like(y, 0.5)),
    "leaky_relu_0": lambda y: F.leaky_relu(y, 0.0),
    "leaky_relu": lambda y: F.leaky_relu(y, 0.1),
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "hardswish": F.hardswish,
}


class ConvAct(torch.nn.Module):
    def __init__(self, act, residual: str = "none"):
        super().__init__()
        self.conv, self.act, self.residual = torch.nn.Conv2d(4, 4, 3, padding=1), act, residual

    def forward(self, x):
        y = self.conv(x)
        if self.residual == "pre":
            return self.act(y + x)
        if self.residual == "post":
            return self.act(y) + x
        return self.act(y)


class LinearAct(torch.nn.Module):
    def __init__(self, act, residual: str = "none"):
        super().__init__()
        self.fc, self.act, self.residual = torch.nn.Linear(8, 8), act, residual

    def forward(self, x):
        y = self.fc(x)
        if self.residual == "pre":
            return self.act(y + x)
        if self.residual == "post":
            return self.act(y) + x
        return self.act(y)


# gelu, sigmoid and hardswish of inf: eager's formulas give NaN where oneDNN's give the limit;
# that is not NaN propagation, so those are checked on NaN inputs only
SMOOTH = {"gelu", "sigmoid", "hardswish"}


def _specials(shape: tuple[int, ...], inf: bool = True) -> dict[str, torch.Tensor]:
    """One NaN pixel, an all-NaN input and (with ``inf``) one +inf pixel."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    one_nan, one_inf = x.clone(), x.clone()
    one_nan.view(-1)[5] = NAN
    one_inf.view(-1)[7] = INF
    out = {"one_nan": one_nan, "all_nan": torch.full(shape, NAN)}
    return out | {"one_inf": one_inf} if inf else out


# every activation alone; with a residual added before or after it, those the backends run
# apart from oneDNN's post-ops (relu, clip, leaky with slope 0) and one of the others
CONV_CASES = [(act, "none") for act in ACTIVATIONS] + [
    (act, residual) for act in ("relu", "relu6", "leaky_relu_0", "gelu")
    for residual in ("pre", "post")]


@pytest.mark.parametrize(("act", "residual"), CONV_CASES)
def test_conv_activation_keeps_nan(backend, act, residual):
    torch.manual_seed(0)
    m = ConvAct(ACTIVATIONS[act], residual).eval()
    cm = compile_with(backend, m, (torch.randn(2, 4, 6, 6),))
    for x in _specials((2, 4, 6, 6), inf=act not in SMOOTH).values():
        same_specials(cm(x), m(x))


# 32 rows take oneDNN's linear (torch backend) and its matmul or ATen's GEMM (native); 2 rows
# the small-batch paths
LINEAR_CASES = [(act, residual, 32) for act in ("relu", "relu6", "leaky_relu_0")
                for residual in ("none", "pre", "post")] + [
    ("relu", "none", 2), ("relu", "post", 2), ("hardtanh", "none", 32), ("gelu", "pre", 32)]


@pytest.mark.parametrize(("act", "residual", "rows"), LINEAR_CASES)
def test_linear_activation_keeps_nan(backend, act, residual, rows):
    torch.manual_seed(0)
    m = LinearAct(ACTIVATIONS[act], residual).eval()
    cm = compile_with(backend, m, (torch.randn(rows, 8),))
    for x in _specials((rows, 8), inf=act not in SMOOTH).values():
        same_specials(cm(x), m(x))


@pytest.mark.parametrize("gemm", ["aten", "onednn"])
def test_native_matmul_epilogue_keeps_nan_on_either_gemm(native, monkeypatch, gemm):
    """The native matmul's two candidates (oneDNN's fused primitive, ATen's GEMM plus the
    epilogue), each forced: both keep NaN through relu and clip."""
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.setenv("RTINFER_GEMM", gemm)
    torch.manual_seed(0)
    for act in ("relu", "relu6"):
        for residual in ("none", "pre"):
            m = LinearAct(ACTIVATIONS[act], residual).eval()
            cm = compile_with("native", m, (torch.randn(64, 8),))
            for x in _specials((64, 8)).values():
                same_specials(cm(x), m(x))


class Elementwise(torch.nn.Module):
    """A chain the fuser turns into one generated elementwise body."""

    def forward(self, x, y):
        a = F.relu(x * 2.0 + 1.0)
        b = F.hardtanh(y - 0.5, -1.0, 1.0)
        c = torch.maximum(a, b) + torch.minimum(x, y)
        return F.leaky_relu(c, 0.0) + torch.clamp(x, 0.0, 6.0)


def test_generated_elementwise_keeps_nan(backend):
    m = Elementwise().eval()
    x, y = torch.randn(4, 16), torch.randn(4, 16)
    cm = compile_with(backend, m, (x, y))
    for sx in _specials((4, 16)).values():
        same_specials(cm(sx, y), m(sx, y))
        same_specials(cm(x, sx), m(x, sx))


def test_o0_and_o3_agree_on_nan(backend):
    m = ConvAct(F.relu).eval()
    x = _specials((2, 4, 6, 6))["one_nan"]
    o0 = compile_with(backend, m, (x,), pipeline="O0")(x)
    o3 = compile_with(backend, m, (x,), pipeline="O3")(x)
    assert o3.isnan().any()
    assert torch.equal(o0.isnan(), o3.isnan())


# -- indices ------------------------------------------------------------------------------------


class Indexing(torch.nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.emb = torch.nn.Embedding(5, 3)

    def forward(self, i, x):
        if self.op == "embedding":
            return self.emb(i)
        if self.op == "index_select":
            return x.index_select(0, i)
        if self.op == "index_select_axis1":
            return x.t().index_select(1, i)
        return torch.gather(x, 0, i[:, None].expand(-1, 4))  # "gather"


INDEX_OPS = ["embedding", "index_select", "index_select_axis1", "gather"]
GOOD = torch.tensor([0, 4, 2, 1])


@pytest.mark.parametrize("op", INDEX_OPS)
def test_in_range_indices_match_eager(backend, op):
    torch.manual_seed(0)
    m, x = Indexing(op).eval(), torch.randn(5, 4)
    cm = compile_with(backend, m, (GOOD, x))
    assert torch.equal(cm(GOOD, x), m(GOOD, x))


@pytest.mark.parametrize("bad", [-1, -5, 5, 100])
@pytest.mark.parametrize("op", INDEX_OPS)
def test_out_of_range_and_negative_indices_raise_as_eager(backend, op, bad):
    torch.manual_seed(0)
    m, x = Indexing(op).eval(), torch.randn(5, 4)
    cm = compile_with(backend, m, (GOOD, x))
    idx = torch.tensor([0, bad, 2, 1])
    with pytest.raises((IndexError, RuntimeError)):
        m(idx, x)  # eager rejects every one of these
    with pytest.raises(IndexOutOfRangeError, match=rf"index {bad}\b") as err:
        cm(idx, x)
    # an rtinfer error that is also the IndexError eager raises, naming the op
    assert isinstance(err.value, RtinferError) and isinstance(err.value, IndexError)
    assert ("embedding" if op == "embedding" else "gather") in str(err.value)
    assert torch.equal(cm(GOOD, x), m(GOOD, x))  # the model keeps working


def test_advanced_indexing_keeps_negative_indices(backend):
    """x[idx] counts a negative index from the end in eager: so does the compiled model."""

    class Take(torch.nn.Module):
        def forward(self, i, x):
            return x[i]

    x, i = torch.randn(5, 4), torch.tensor([0, -1, -5, 4])
    cm = compile_with(backend, Take(), (i, x))
    assert torch.equal(cm(i, x), x[i])
    with pytest.raises(IndexOutOfRangeError, match="index -6"):
        cm(torch.tensor([0, -6, 1, 1]), x)


def test_onnx_gather_keeps_negative_indices(backend, tmp_path):
    """ONNX Gather allows indices in [-n, n): an ONNX model's negative index counts from the
    end, and one outside that range is an error."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 4]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "gather.onnx"
    onnx.save(model, str(path))
    x, i = torch.randn(5, 4), torch.tensor([-1, 0, -5])
    cm = rtinfer.compile(str(path), example_inputs=(x, i), backend=backend, cache=False)
    assert torch.equal(cm(x, i), x[i])
    with pytest.raises(IndexOutOfRangeError, match="index -6"):
        cm(x, torch.tensor([-6, 0, 1]))


def test_interpreter_rejects_what_eager_rejects():
    from rtinfer.ir.interpreter import interpret

    m = Indexing("index_select").eval()
    x = torch.randn(5, 4)
    g = rtinfer.capture(m, (GOOD, x))
    with pytest.raises(RtinferError, match=r"index -1 at position \[1\]"):
        interpret(g, torch.tensor([0, -1, 2, 1]).numpy(), x.numpy())


# -- devices and empty batches ------------------------------------------------------------------


@pytest.mark.parametrize("device", ["meta"])
def test_non_cpu_input_is_a_clear_error(backend, device):
    m = ConvAct(F.relu).eval()
    x = torch.randn(2, 4, 6, 6)
    cm = compile_with(backend, m, (x,))
    with pytest.raises(BackendError, match=rf"input 'x' is on device {device}.*CPU"):
        cm(x.to(device))
    if backend == "native":  # the module itself, called directly, does not read the address
        with pytest.raises(BackendError, match=f"device {device}"):
            cm.module(x.to(device))
    same_specials(cm(x), m(x))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def test_empty_batch_gives_an_empty_output_as_eager(backend):
    torch.manual_seed(0)
    m = Net().eval()
    cm = compile_with(backend, m, (torch.randn(2, 3, 8, 8),), dynamic_dims={"x": {0: "B"}})
    empty = torch.randn(0, 3, 8, 8)
    out = cm(empty)
    assert out.shape == m(empty).shape == (0, 2)
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(cm(x), m(x), rtol=1e-4, atol=1e-4)  # plans for real sizes


def test_compiled_for_an_empty_batch(backend):
    m = Net().eval()
    empty = torch.randn(0, 3, 8, 8)
    cm = compile_with(backend, m, (empty,))
    assert cm(empty).shape == (0, 2)
