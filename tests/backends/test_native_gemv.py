"""rtinfer's own small-batch linear (GEMV) step on the native backend: the lowering takes it
for a constant weight and a few rows, at every CPU level this host runs, and it computes what
torch computes (bias, activation, residual pre/post, odd K and N, NaN rows, 1 and 2 threads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer import models
from rtinfer.backends.native.linalg import GEMV_MAX_ROWS, GEMV_MAX_WEIGHT
from rtinfer.backends.native.lowerer import Lowerer
from rtinfer.errors import BackendError
from rtinfer.ir.graph import Graph
from rtinfer.ir.types import DType, TensorType

ACTS = {
    "none": (lambda y: y, 0.0, 0.0),
    "relu": (torch.relu, 0.0, 0.0),
    "gelu": (torch.nn.functional.gelu, 0.0, 0.0),
    "gelu_tanh": (lambda y: torch.nn.functional.gelu(y, approximate="tanh"), 0.0, 0.0),
    "clip": (lambda y: torch.clamp(y, -0.5, 0.75), -0.5, 0.75),
    "leaky_relu": (lambda y: torch.nn.functional.leaky_relu(y, 0.1), 0.1, 0.0),
}


def _linear_graph(x_shape, w, bias, activation="none", residual="none", op="fused_linear"):
    """A one-node graph: op(x, w, bias?, r?) named "fc"; w is [N, K] for linear, [K, N] for
    matmul."""
    g = Graph("gemv")
    x = g.add_input(TensorType(DType.f32, x_shape), "x")
    n = w.shape[0] if op.endswith("linear") else w.shape[1]
    out_shape = (*x_shape[:-1], n)
    ins = [x, g.add_const(w.numpy())]
    if bias is not None or residual != "none":
        b = bias if bias is not None else torch.zeros(n)
        ins.append(g.add_const(b.numpy()))
    if residual != "none":
        ins.append(g.add_input(TensorType(DType.f32, out_shape), "r"))
    _, alpha, beta = ACTS[activation]
    y = g.add_op(op, *ins, activation=activation, alpha=alpha, beta=beta, residual=residual)
    y.producer.name = "fc"
    g.set_outputs([y])
    return g, out_shape


def _run(native, g, inputs, threads):
    lw = Lowerer(g, [tuple(t.shape) for t in inputs], strict=True, threads=threads, ext=native)
    lw.lower()
    plan = lw.build(native)
    return plan.run(inputs, threads)[0], lw.kernels


def _reference(x, w_kn, bias, activation, residual, r):
    act = ACTS[activation][0]
    y = x @ w_kn + (bias if bias is not None else 0.0)
    if residual == "pre":
        return act(y + r)
    y = act(y)
    return y + r if residual == "post" else y


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
# (600, 500): enough weight (300k floats) that 2 threads split the column blocks
@pytest.mark.parametrize("K,N", [(100, 37), (64, 64), (257, 130), (600, 500)])
def test_gemv_matches_torch_at_every_level(native, rows, K, N, threads):
    torch.manual_seed(rows * 1000 + K + N)
    w = torch.randn(N, K)
    bias = torch.randn(N)
    x = torch.randn(rows, K)
    g, _ = _linear_graph((rows, K), w, bias)
    y, kernels = _run(native, g, [x], threads)
    assert kernels == {"gemv": 1}, kernels
    torch.testing.assert_close(y, x @ w.t() + bias, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("residual", ["none", "pre", "post"])
@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemv_epilogue_matches_torch(native, activation, residual, with_bias):
    torch.manual_seed(1)
    K, N, rows = 100, 37, 3
    w = torch.randn(N, K) * 0.1
    bias = torch.randn(N) if with_bias else None
    x = torch.randn(rows, K)
    r = torch.randn(rows, N)
    g, _ = _linear_graph((rows, K), w, bias, activation, residual)
    ins = [x, r] if residual != "none" else [x]
    y, kernels = _run(native, g, ins, 2)
    assert kernels == {"gemv": 1}, kernels
    torch.testing.assert_close(y, _reference(x, w.t(), bias, activation, residual, r),
                               rtol=1e-5, atol=1e-4)


def test_gemv_3d_input_and_matmul_with_constant_weight(native):
    torch.manual_seed(2)
    x = torch.randn(2, 1, 100)
    w_kn = torch.randn(100, 37)
    bias = torch.randn(37)
    g, out_shape = _linear_graph(tuple(x.shape), w_kn, bias, "relu", op="fused_matmul")
    y, kernels = _run(native, g, [x], 2)
    assert kernels == {"gemv": 1} and tuple(y.shape) == out_shape == (2, 1, 37)
    torch.testing.assert_close(y, torch.relu(x @ w_kn + bias), rtol=1e-5, atol=1e-4)


def test_gemv_nan_and_inf_propagate_as_a_matmul(native):
    torch.manual_seed(3)
    w = torch.randn(37, 100)
    x = torch.randn(3, 100)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    g, _ = _linear_graph((3, 100), w, None, "relu")
    y, _ = _run(native, g, [x], 2)
    want = torch.relu(x @ w.t())
    assert torch.isnan(y[1]).all()  # a NaN in the row reaches every column, through the relu
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-4, equal_nan=True)


def test_more_rows_than_the_rule_stay_on_onednn(native):
    rows = GEMV_MAX_ROWS + 1
    w = torch.randn(37, 100)
    g, _ = _linear_graph((rows, 100), w, None)
    x = torch.randn(rows, 100)
    y, kernels = _run(native, g, [x], 1)
    assert "gemv" not in kernels and kernels.get("oneDNN matmul") == 1, kernels
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-4)


def test_a_weight_past_the_rule_stays_on_onednn(native):
    K, N = 1025, 1024  # one element past GEMV_MAX_WEIGHT's 4 MB
    assert K * N > GEMV_MAX_WEIGHT
    torch.manual_seed(4)
    w = torch.randn(N, K)
    g, _ = _linear_graph((1, K), w, None)
    x = torch.randn(1, K)
    y, kernels = _run(native, g, [x], 1)
    assert "gemv" not in kernels and kernels.get("oneDNN matmul") == 1, kernels
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-4, atol=1e-3)


def test_unsupported_activation_stays_on_onednn(native):
    w = torch.randn(37, 100)
    g, _ = _linear_graph((1, 100), w, None)
    g.nodes[-1].attrs["activation"] = "tanh"
    x = torch.randn(1, 100)
    y, kernels = _run(native, g, [x], 1)
    assert "gemv" not in kernels, kernels
    torch.testing.assert_close(y, torch.tanh(x @ w.t()), rtol=1e-5, atol=1e-4)


def test_bad_shapes_are_rejected_naming_the_node(native):
    # a weight whose K differs from the given K: the step's builder names the node
    plan = native.Plan()
    with pytest.raises(ValueError, match=r"fc: the weight must be \[K, N\] = \[100, 37\]"):
        native.add_gemv(plan, "fc", 0, 1, -1, 1, 100, 37, torch.randn(99, 37), None, "none",
                        0.0, 0.0, "none")
    with pytest.raises(ValueError, match=r"fc: the bias must be float32 \[37\], got \[36\]"):
        native.add_gemv(plan, "fc", 0, 1, -1, 1, 100, 37, torch.randn(100, 37), torch.randn(36),
                        "none", 0.0, 0.0, "none")
    with pytest.raises(ValueError, match="fc: residual mode 'pre' needs a residual slot"):
        native.add_gemv(plan, "fc", 0, 1, -1, 1, 100, 37, torch.randn(100, 37), None, "none",
                        0.0, 0.0, "pre")
    # through the lowering: an x whose last dim is not the weight's K (a graph edited after
    # type inference) is an rtinfer error naming the node, not a crash
    w = torch.randn(37, 100)
    g, _ = _linear_graph((1, 100), w, None)
    g.inputs[0].type = TensorType(DType.f32, (1, 99))
    with pytest.raises(BackendError, match="fc"):
        _run(native, g, [torch.randn(1, 99)], 1)


def test_user_weight_is_not_modified(native):
    w = torch.randn(100, 37)
    before = w.clone()
    plan = native.Plan()
    native.add_gemv(plan, "fc", 0, 1, -1, 1, 100, 37, w, None, "none", 0.0, 0.0, "none")
    assert torch.equal(w, before)


def test_resnet18_classifier_runs_as_gemv_and_matches_eager():
    torch.manual_seed(0)
    m = models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    cm = rtinfer.compile(m, "cpu", (x,), backend="native")
    with torch.no_grad():
        want = m(x)
    np.testing.assert_allclose(cm(x).detach().numpy(), want.numpy(), rtol=1e-3, atol=1e-3)
    steps = [name for name, _ in cm.module.profile(x, iters=1)]
    assert any(s.endswith(": gemv") for s in steps), steps
    assert cm.module.stats.kernels.get("gemv") == 1
