"""insert-qdq and rtinfer.quantize: the QDQ form of docs/int8.md, and bad calibration data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.errors import PassError, QuantizeError
from rtinfer.ir import interpret, parse
from rtinfer.ir.equality import structural_equal
from rtinfer.ir.printer import print_graph
from rtinfer.ir.types import DType
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager import PipelineContext, run_pipeline

# conv -> relu -> max_pool -> flatten -> linear: int8 layers with pass-through ops between;
# layer_norm -> softmax stays fp32 while a second linear reads the same normalized value
MODEL = """
func @main(%x: f32[B,3,8,8]) -> (f32[B,10], f32[B,10]) {
  %w = const f32[8,3,3,3] random(seed=0)
  %b = const f32[8] random(seed=1)
  %c = conv2d(%x, %w, %b) {pad=[1, 1, 1, 1]}
  %r = relu(%c)
  %p = max_pool2d(%r) {kernel=[2, 2], stride=[2, 2]}
  %f = flatten(%p) {axis=1}
  %w2 = const f32[10,128] random(seed=2)
  %b2 = const f32[10] random(seed=3)
  %y = linear(%f, %w2, %b2)
  %n = layer_norm(%y) {axis=-1}
  %s = softmax(%n) {axis=-1}
  %w3 = const f32[10,10] random(seed=4)
  %z = linear(%n, %w3)
  return %s, %z
}
"""


def _batches(n: int = 4, batch: int = 2, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g),) for _ in range(n)]


def _inputs_of(graph, op: str) -> list[list[str]]:
    """For each ``op`` node: the ops producing its inputs ("input" for a graph input)."""
    return [[v.producer.op if v.producer else "input" for v in n.inputs]
            for n in graph.nodes if n.op == op]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def quantized():
    graph = parse(MODEL)
    before = print_graph(graph, full_constants=True)
    q = rtinfer.quantize(graph, calibration=_batches(), method="minmax")
    assert print_graph(graph, full_constants=True) == before  # the input graph is untouched
    return graph, q


def test_layers_read_activations_and_weights_through_dequantize(quantized):
    _, q = quantized
    verify(q)
    assert _inputs_of(q, "conv2d") == [["dequantize", "dequantize", "const"]]
    assert _inputs_of(q, "linear") == [["dequantize", "dequantize", "const"],
                                       ["dequantize", "dequantize"]]
    # pass-through ops read quantized values; fp32 readers (softmax) keep the fp32 value
    assert _inputs_of(q, "max_pool2d") == [["dequantize"]]
    assert _inputs_of(q, "flatten") == [["dequantize"]]
    assert _inputs_of(q, "softmax") == [["layer_norm"]]
    assert _inputs_of(q, "layer_norm") == [["linear"]]


def test_weights_are_symmetric_s8_per_output_channel(quantized):
    _, q = quantized
    weights = [n.out.type for n in q.nodes if n.op == "const" and n.out.type.dtype == DType.i8]
    assert sorted(t.shape[0] for t in weights) == [8, 10, 10]
    for t in weights:
        assert t.quant.axis == 0 and t.quant.scale.shape == (t.shape[0],)
        assert not t.quant.zero_point.any()
    assert not any(n.op == "const" and n.out.type.shape == (8, 3, 3, 3)
                   and n.out.type.dtype == DType.f32 for n in q.nodes)  # the fp32 weight is gone


def test_activations_are_u8_and_pass_through_chains_share_parameters(quantized):
    _, q = quantized
    quants = {n.inputs[0].producer.op if n.inputs[0].producer else "input": n.out.type
              for n in q.nodes if n.op == "quantize"}
    assert sorted(quants) == ["flatten", "input", "layer_norm", "max_pool2d", "relu"]
    assert all(t.dtype == DType.u8 for t in quants.values())
    # relu -> max_pool -> flatten -> linear: one set of parameters, zero point 0 (relu >= 0)
    assert quants["relu"].quant == quants["max_pool2d"].quant == quants["flatten"].quant
    assert quants["relu"].quant.zero_point == 0
    assert quants["layer_norm"].quant.zero_point > 0  # signed data: asymmetric u8
    # one quantize per value, shared by its int8 readers
    assert sum(n.op == "quantize" for n in q.nodes) == 5


def test_qdq_graph_stays_close_to_fp32_and_round_trips(quantized):
    graph, q = quantized
    x = _batches(1, batch=8, seed=9)[0][0].numpy()
    for a, b in zip(interpret(graph, x), interpret(q, x), strict=True):
        assert _cos(a, b) > 0.99
    text = print_graph(q, full_constants=True)
    assert structural_equal(parse(text), q)
    # the torch backend runs the QDQ form too, and agrees with the interpreter
    compiled = rtinfer.compile(q, backend="torch")
    for a, b in zip(compiled(torch.from_numpy(x)), interpret(q, x), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4)


def test_per_tensor_weights_and_op_selection():
    q = rtinfer.quantize(parse(MODEL), calibration=_batches(2), per_channel=False,
                         ops=("linear",))
    verify(q)
    assert _inputs_of(q, "conv2d") == [["input", "const", "const"]]  # conv left fp32
    weights = [n.out.type for n in q.nodes if n.op == "const" and n.out.type.dtype == DType.i8]
    assert len(weights) == 2 and all(t.quant.axis is None for t in weights)


def test_pipeline_reads_calibration_from_the_context_once():
    graph = parse(MODEL)
    pctx = PipelineContext(data={"calibration": _batches(2)})  # the interpreter runs it
    result = run_pipeline(graph, "calibrate,insert-qdq{method=percentile}", pipeline_ctx=pctx,
                          verify_each=True)
    assert pctx.computed.count("calibration") == 1  # insert-qdq reused calibrate's analysis
    assert result.stat("calibrate", "values") == 5
    assert result.stat("insert-qdq", "layers") == 3
    assert result.stat("insert-qdq", "pass-through") == 2


def test_insert_qdq_converges():
    graph = parse(MODEL)
    pctx = PipelineContext(data={"calibration": _batches(2)})
    run_pipeline(graph, "insert-qdq", pipeline_ctx=pctx)
    once = print_graph(graph, full_constants=True)
    result = run_pipeline(graph, "insert-qdq", pipeline_ctx=pctx)
    assert not result.changed and print_graph(graph, full_constants=True) == once


def test_insert_qdq_without_calibration_data_says_what_is_missing():
    with pytest.raises(PassError, match="data input 'calibration'"):
        run_pipeline(parse(MODEL), "insert-qdq")


@pytest.mark.parametrize("batches, message", [
    ([], "calibration is empty"),
    (torch.zeros(2, 3, 8, 8), "iterable of input tuples"),
    ([(torch.zeros(2, 3, 8, 8),), (torch.zeros(2, 3, 8, 8), torch.zeros(1))],
     r"batch 1 has 2 inputs; the graph takes 1: input 0 \('x': f32\[B,3,8,8\]\)"),
    ([(torch.zeros(2, 3, 8, 8),)] * 2 + [(torch.zeros(2, 3, 7, 8),)],
     r"batch 2, input 0 \('x'.*got shape \[2, 3, 7, 8\]"),
    ([(torch.zeros(2, 3, 8),)], r"batch 0, input 0 \('x'.*got shape \[2, 3, 8\]"),
    ([(np.zeros((2, 3, 8, 8), np.int64),)], r"batch 0, input 0 .*expected f32 data"),
    ([("image",)], r"batch 0, input 0 .*expected a tensor or array"),
])
def test_bad_calibration_data_names_the_batch_and_input(batches, message):
    graph = parse(MODEL)
    with pytest.raises(QuantizeError, match=message):
        rtinfer.quantize(graph, calibration=batches)


def test_bad_options_are_errors():
    with pytest.raises(QuantizeError, match="unknown method 'kl'"):
        rtinfer.quantize(parse(MODEL), calibration=_batches(1), method="kl")
    with pytest.raises(QuantizeError, match=r"unknown layer kinds \['lstm'\]"):
        rtinfer.quantize(parse(MODEL), calibration=_batches(1), ops=("linear", "lstm"))
    with pytest.raises(QuantizeError, match="takes an IR Graph"):
        rtinfer.quantize(MODEL, calibration=_batches(1))


def test_numpy_batches_and_one_shot_iterators_work():
    batches = [(b[0].numpy().astype(np.float64),) for b in _batches(2)]
    q1 = rtinfer.quantize(parse(MODEL), calibration=iter(batches), method="minmax")
    q2 = rtinfer.quantize(parse(MODEL), calibration=_batches(2), method="minmax")
    assert structural_equal(q1, q2)
