"""Acceptance: real models through O3 keep their outputs and lose their spelled-out subgraphs.

- all-MiniLM-L6-v2 (real weights), through torch.export and through torch.onnx.export (opset
  17 and 14): every attention (head split/merge included), LayerNorm and GELU is one op, the
  Q/K/V projections one linear, nothing spelled out is left, at least 60% fewer op nodes
  (consts not counted; the counts with consts are printed), eager outputs to 1e-4;
- ResNet-18 and MobileNetV2 (rtinfer.models, trained-looking BatchNorm statistics): every
  batch_norm folded, every activation inside a fused conv;
- the zoo (tests/frontends/zoo.py): a fast subset here, the rest under ``-m slow``;
  ``python -m tests.passes.zoo_o3`` writes docs/optimized-zoo.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtinfer import models
from tests.passes.zoo_o3 import LEFTOVERS, ZOO, close_enough, optimize_model

FAST_ZOO = ("gpt2", "llama", "vit")


@pytest.fixture(scope="module")
def minilm():
    return models.minilm(), models.minilm_inputs(seq=16)


def _check_minilm(r, label: str) -> None:
    fused = r["fused"]
    # every layer's attention is one op with its head split/merge, its Q/K/V one projection
    assert fused["multi_head_attention"] == 6, fused
    assert fused["layer_norm"] == 13, fused  # 12 in the layers + the embeddings'
    assert fused["gelu"] == 6, fused
    ops = r["graph"].op_counts()
    assert ops.get("split") == 6, ops
    assert not (set(LEFTOVERS) | {"pow", "sqrt", "not_equal", "scaled_dot_product_attention",
                                  "transpose"}) & set(ops), ops
    op_drop = 1 - r["ops_after"] / r["ops_before"]
    node_drop = 1 - r["nodes_after"] / r["nodes_before"]
    print(f"MiniLM via {label}: ops {r['ops_before']} -> {r['ops_after']} (-{op_drop:.0%}), "
          f"nodes with consts {r['nodes_before']} -> {r['nodes_after']} (-{node_drop:.0%})")
    assert op_drop >= 0.60, (r["ops_before"], r["ops_after"])
    for got, want in zip(r["outputs"], r["eager"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_minilm_through_torch(minilm):
    # torch.export already keeps layer_norm, gelu and SDPA whole: the drop comes from the head
    # split/merge (fuse-mha) and the Q/K/V merge
    _check_minilm(optimize_model(*minilm, via="torch"), "torch.export")


def test_minilm_through_onnx(minilm):
    # opset 17: LayerNormalization is one ONNX op; attention and GELU come spelled out
    _check_minilm(optimize_model(*minilm, via="onnx", opset=17), "ONNX opset 17")


@pytest.mark.slow
def test_minilm_through_onnx_opset14(minilm):
    # opset 14: LayerNorm is spelled out too (ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add)
    _check_minilm(optimize_model(*minilm, via="onnx", opset=14), "ONNX opset 14")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("via", ["torch", "onnx"])
def test_cnn_folds_and_fuses(name, via):
    torch.manual_seed(0)
    model = models.randomize_batchnorm(getattr(models, name)())
    r = optimize_model(model, (models.image_input(1, 64),), via=via)
    ops = r["graph"].op_counts()
    assert not {"batch_norm", "relu", "clip", "hardtanh"} & set(ops), ops
    n_act = sum(1 for n in r["graph"].nodes if n.op == "fused_conv2d"
                and n.attrs["activation"] != "none")
    want = {"resnet18": 17, "mobilenet_v2": 35}[name]  # every ReLU / ReLU6 after a conv
    assert n_act == want, ops
    for got, eager in zip(r["outputs"], r["eager"], strict=True):
        np.testing.assert_allclose(got, eager, rtol=1e-4, atol=1e-4)


def _zoo(name: str) -> None:
    model, inputs = ZOO[name]()
    r = optimize_model(model, inputs)
    assert close_enough(r), f"{name}: max abs error {r['max_abs_err']:.2e}"
    assert r["nodes_after"] < r["nodes_before"]


@pytest.mark.parametrize("name", FAST_ZOO)
def test_zoo_fast(name):
    _zoo(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ZOO) - set(FAST_ZOO)))
def test_zoo_slow(name):
    _zoo(name)
