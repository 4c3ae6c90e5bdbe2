"""bias-correction: the mean output shift of weight rounding, measured on real data, goes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rtinfer
from rtinfer.ir import interpret
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager import PipelineContext, run_pipeline

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = sklearn_datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return x[:1000], x[1000:]


def _layer(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        layer = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        weight = layer[1].weight
    else:
        layer = nn.Conv2d(1, 8, 3, padding=1)
        weight = layer.weight
    with torch.no_grad():  # one large weight: per-tensor scales round the others coarsely
        weight[0].view(-1)[0] = 8.0
    return layer.eval()


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_bias_correction_removes_the_mean_output_shift(digits, kind):
    train, test = digits
    graph = rtinfer.capture(_layer(kind), (train[:4],), dynamic_dims={"input": {0: "B"}})
    calibration = [(train[i:i + 100],) for i in range(0, 1000, 100)]
    ref = interpret(graph, test.numpy())
    shift, error = {}, {}
    for correct in (False, True):
        q = rtinfer.quantize(graph, calibration=calibration, method="minmax", per_channel=False,
                             bias_correction=correct)
        verify(q)
        diff = interpret(q, test.numpy()) - ref
        axes = tuple(a for a in range(diff.ndim) if a != 1)  # all but the channel axis
        shift[correct] = np.abs(diff.mean(axis=axes)).mean()
        error[correct] = np.abs(diff).mean()
    # held-out digits: the per-channel mean shift drops, and the mean error with it
    assert shift[True] < 0.3 * shift[False]
    assert error[True] < error[False]


def test_bias_correction_adds_a_bias_to_a_layer_without_one(digits):
    train, test = digits
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False)).eval()
    graph = rtinfer.capture(model, (train[:4],), dynamic_dims={"input": {0: "B"}})
    pctx = PipelineContext(data={"calibration": [(train[:200],)]})
    result = run_pipeline(graph, "insert-qdq{per-channel=false},bias-correction",
                          pipeline_ctx=pctx, verify_each=True)
    assert result.stat("bias-correction", "corrected") == 1
    (lin,) = [n for n in graph.nodes if n.op == "linear"]
    assert len(lin.inputs) == 3 and lin.inputs[2].is_const


def test_bias_correction_needs_insert_qdq_first():
    with pytest.raises(rtinfer.RtinferError, match="insert-qdq"):
        run_pipeline(rtinfer.ir.parse("""
        func @main(%x: f32[2,4]) -> f32[2,3] {
          %w = const f32[3,4] random(seed=0)
          %y = linear(%x, %w)
          return %y
        }"""), "bias-correction")
