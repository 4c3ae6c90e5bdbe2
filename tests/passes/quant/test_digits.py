"""int8 on real data: a CNN trained here on scikit-learn's digits, captured, optimized (O3) and
quantized, keeps its held-out top-1 within 0.5 points of fp32."""

from __future__ import annotations

import numpy as np
import pytest

import rtinfer
from rtinfer.ir import interpret, parse
from rtinfer.ir.equality import structural_equal
from rtinfer.ir.printer import print_graph
from rtinfer.ir.verifier import verify
from tests.digits import trained as trained_digits

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    """(O3 graph, calibration batches, held-out images, labels), trained in about a second."""
    model, x_train, _, x_test, y_test = trained_digits()
    graph = rtinfer.optimize(rtinfer.capture(model, (x_test[:4],), dynamic_dims={"x": {0: "B"}}),
                             "O3")
    calibration = [(x_train[i:i + 32],) for i in range(0, 256, 32)]
    return graph, calibration, x_test.numpy(), y_test.numpy()


def _top1(graph, x: np.ndarray, y: np.ndarray) -> float:
    return float((interpret(graph, x).argmax(1) == y).mean() * 100)


def test_int8_keeps_top1_within_half_a_point(digits):
    graph, calibration, x, y = digits
    fp32 = _top1(graph, x, y)
    assert fp32 > 93.0  # a trained model, or the comparison means nothing
    qgraph = rtinfer.quantize(graph, calibration=calibration, method="entropy", per_channel=True)
    verify(qgraph)
    ops = qgraph.op_counts()
    assert ops["quantize"] >= 4 and ops["fused_conv2d"] == 2  # O3 fused conv+bn+relu, int8
    assert abs(_top1(qgraph, x, y) - fp32) <= 0.5
    assert structural_equal(parse(print_graph(qgraph, full_constants=True)), qgraph)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_every_observer_keeps_top1_within_a_point(digits, method):
    graph, calibration, x, y = digits
    qgraph = rtinfer.quantize(graph, calibration=calibration, method=method)
    assert abs(_top1(qgraph, x, y) - _top1(graph, x, y)) <= 1.0
