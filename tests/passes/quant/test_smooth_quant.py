"""smooth-quant: activation outliers after a LayerNorm move into the linears' weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.ir import interpret, parse
from rtinfer.ir.interpreter import interpret_values
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager import PipelineContext, run_pipeline

# gamma puts outliers on channels 3 and 11 (x30), as LayerNorms in transformers do
GAMMA = ", ".join("30.0" if j in (3, 11) else "1.0" for j in range(16))
MODEL = f"""
func @main(%x: f32[B,16]) -> (f32[B,8], f32[B,4]) {{
  %g = const f32[16] dense<[{GAMMA}]>
  %beta = const f32[16] random(seed=1)
  %n = layer_norm(%x, %g, %beta) {{axis=-1}}
  %w1 = const f32[8,16] random(seed=2)
  %b1 = const f32[8] random(seed=3)
  %y1 = linear(%n, %w1, %b1)
  %w2 = const f32[4,16] random(seed=4)
  %y2 = linear(%n, %w2)
  return %y1, %y2
}}
"""


def _batches(n: int = 4, seed: int = 0) -> list[tuple[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(8, 16)).astype(np.float32),) for _ in range(n)]


def _norm_out(graph, x: np.ndarray) -> np.ndarray:
    values = interpret_values(graph, [x])
    (n,) = [n for n in graph.nodes if n.op == "layer_norm"]
    return values[n.out]


def _smooth(text: str, alpha: float = 0.5):
    graph = parse(text)
    result = run_pipeline(graph, f"smooth-quant{{alpha={alpha}}}", verify_each=True,
                          pipeline_ctx=PipelineContext(data={"calibration": _batches()}))
    return graph, result


def test_smoothing_keeps_outputs_and_balances_activation_and_weight_ranges():
    original = parse(MODEL)
    smoothed, result = _smooth(MODEL)
    assert result.stat("smooth-quant", "smoothed") == 1
    assert result.stat("smooth-quant", "layers") == 2
    x = np.concatenate([b[0] for b in _batches()])
    for a, b in zip(interpret(original, x), interpret(smoothed, x), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)  # numerics: fp32 rounding
    before, after = np.abs(_norm_out(original, x)).max(0), np.abs(_norm_out(smoothed, x)).max(0)
    # the outlier channels shrink: max over median from ~30x to a few x
    assert before.max() / np.median(before) > 20
    assert after.max() / np.median(after) < 0.25 * before.max() / np.median(before)
    # alpha = 0.5: on the calibration data each channel's activation max equals the largest
    # weight of its column over both linears (both become sqrt(max|X_j| * max|W_j|))
    w = np.concatenate([n.inputs[1].const_data for n in smoothed.nodes if n.op == "linear"])
    np.testing.assert_allclose(after, np.abs(w).max(0), rtol=1e-4)


def test_smoothing_lowers_the_int8_error_on_outliers():
    x = np.concatenate([b[0] for b in _batches(2, seed=7)])
    ref = interpret(parse(MODEL), x)[0]
    errors = {}
    for alpha in (None, 0.5):
        q = rtinfer.quantize(parse(MODEL), calibration=_batches(), method="minmax",
                             smooth_quant=alpha)
        verify(q)
        errors[alpha] = np.abs(interpret(q, x)[0] - ref).mean()
    assert errors[0.5] < 0.9 * errors[None]


def test_another_reader_keeps_the_unsmoothed_value():
    """A residual add (here a relu) reads the LayerNorm output too: it reads mul(norm', s),
    the value it read before, while the linears read the smoothed one."""
    text = MODEL.replace("return %y1, %y2", "%a = add(%y2, %y2)\n  %z = relu(%n)\n"
                         "  return %y1, %z").replace("-> (f32[B,8], f32[B,4])",
                                                     "-> (f32[B,8], f32[B,16])")
    original = parse(text)
    graph, result = _smooth(text)
    assert result.stat("smooth-quant", "smoothed") == 1
    assert result.stat("smooth-quant", "restored") == 1
    x = np.concatenate([b[0] for b in _batches()])
    for a, b in zip(interpret(original, x), interpret(graph, x), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    (relu,) = [n for n in graph.nodes if n.op == "relu"]
    assert relu.inputs[0].producer.op == "mul"


def test_declines_without_a_linear_reader():
    text = MODEL.replace("%y1 = linear(%n, %w1, %b1)", "%y1 = linear(%x, %w1, %b1)").replace(
        "%y2 = linear(%n, %w2)", "%y2 = linear(%x, %w2)\n  %r = relu(%n)")
    graph, result = _smooth(text)
    assert result.stat("smooth-quant", "smoothed") == 0
    assert any("no linear reads the normalized value" in d.reason for d in result.declines)
    (norm,) = [n for n in graph.nodes if n.op == "layer_norm"]
    assert norm.inputs[1].const_data[3] == pytest.approx(30.0)  # gamma as it was


def test_alpha_out_of_range_is_an_error():
    with pytest.raises(rtinfer.RtinferError, match=r"alpha must be in \[0, 1\]"):
        _smooth(MODEL, alpha=1.5)


def test_torch_tensors_work_as_calibration():
    batches = [(torch.from_numpy(b[0]),) for b in _batches()]
    q = rtinfer.quantize(parse(MODEL), calibration=batches, smooth_quant=0.5)
    verify(q)
