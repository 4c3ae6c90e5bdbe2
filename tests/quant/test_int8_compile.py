"""``rtinfer.compile(precision="int8")`` on real data: a CNN trained on scikit-learn's digits,
calibrated on training images, measured on held-out ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.errors import QuantizeError
from rtinfer.int8 import Int8Report
from tests.pruning.test_prune_api import _one_thread, digits  # noqa: F401  (fixtures)

B = 32


def _top1(fn, x, y) -> float:
    with torch.no_grad():
        return 100.0 * (fn(x).argmax(1) == y).float().mean().item()


def _calibration(x, train, n: int = 8) -> list[tuple[torch.Tensor]]:
    return [(x[train[i:i + B]],) for i in range(0, n * B, B)]


@pytest.fixture(scope="module")
def int8_digits(digits, tmp_path_factory):  # noqa: F811
    model, x, y, train, test = digits
    cm = rtinfer.compile(model, example_inputs=(x[:B],), precision="int8",
                         calibration=_calibration(x, train), backend="torch",
                         dynamic_dims={"x": {0: "B"}},
                         cache=tmp_path_factory.mktemp("cache"))
    return cm


def test_int8_digits_keeps_top1(digits, int8_digits):  # noqa: F811
    model, x, y, train, test = digits
    fp32, int8 = _top1(model, x[test], y[test]), _top1(int8_digits, x[test], y[test])
    print(f"digits top-1: fp32 {fp32:.2f}, int8 {int8:.2f}")
    assert fp32 > 97.0
    assert int8 >= fp32 - 0.2  # the bound (ONNX Runtime's static int8 loses 0.17)
    ops = int8_digits.ir.op_counts()
    # the classifier is static or dynamic int8, whichever measured more accurate
    assert ops.get("qconv2d") == 3, ops
    assert ops.get("qlinear", 0) + ops.get("qlinear_dynamic", 0) == 1, ops
    # consecutive int8 layers stay int8: one quantize at the input, the pools on integers
    assert ops.get("quantize") == 1 and "dequantize" not in ops, ops
    pools = [n for n in int8_digits.ir.nodes if n.op == "max_pool2d"]
    # a dynamic classifier reads f32: the pool before it then dequantizes (the last one)
    on_ints = [p.out.type.dtype.is_int for p in pools]
    assert pools and on_ints == [True] * (len(pools) - 1) + ["qlinear_dynamic" not in ops]


def test_int8_report_lists_every_layer(int8_digits):
    report = int8_digits.report()
    assert "int8: 4 of 4 layers int8" in report
    rec = Int8Report.from_record(int8_digits.info.int8)
    assert [r.op for r in rec.layers] == ["fused_conv2d"] * 3 + ["linear"]
    assert all(r.sensitivity is not None and r.sensitivity >= 0 for r in rec.layers)
    assert rec.layers[0].name.startswith("0:features.")
    assert 0 < rec.error < 0.05


def test_int8_compile_is_cached_with_its_calibration(digits, int8_digits, tmp_path):  # noqa: F811
    model, x, y, train, test = digits
    kw = dict(example_inputs=(x[:B],), precision="int8", backend="torch",
              dynamic_dims={"x": {0: "B"}}, cache=tmp_path)
    first = rtinfer.compile(model, calibration=_calibration(x, train), **kw)
    again = rtinfer.compile(model, calibration=_calibration(x, train), **kw)
    assert (first.info.cache, again.info.cache) == ("miss", "hit")
    assert "int8: 4 of 4 layers int8" in again.report()  # the table survives the cache
    other = rtinfer.compile(model, calibration=_calibration(x, train, n=4), **kw)
    assert other.info.cache == "miss"  # other calibration data: another compiled model
    fp32 = rtinfer.compile(model, example_inputs=(x[:B],), backend="torch",
                           dynamic_dims={"x": {0: "B"}}, cache=tmp_path)
    assert fp32.info.cache == "miss" and "qconv2d" not in fp32.ir.op_counts()


def test_accuracy_budget_sends_the_most_sensitive_layers_back_to_fp32(digits):  # noqa: F811
    model, x, y, train, test = digits
    free = Int8Report.from_record(rtinfer.compile(
        model, example_inputs=(x[:B],), precision="int8", calibration=_calibration(x, train, 4),
        backend="torch", cache=False).info.int8)
    budget = free.all_int8_error / 2
    cm = rtinfer.compile(model, example_inputs=(x[:B],), precision="int8",
                         calibration=_calibration(x, train, 4), accuracy_budget=budget,
                         backend="torch", cache=False)
    rec = Int8Report.from_record(cm.info.int8)
    back = [r for r in rec.layers if r.precision == "fp32"]
    assert back and all("sensitive" in r.why for r in back)
    assert rec.error <= budget
    # the layers sent back are the most sensitive ones
    kept = [r for r in rec.layers if r.precision == "int8"]
    assert min(r.sensitivity for r in back) >= max((r.sensitivity for r in kept), default=0)
    ops = cm.ir.op_counts()
    assert ops.get("qconv2d", 0) + ops.get("qlinear", 0) == len(kept)
    out = cm(x[test[:B]])
    with torch.no_grad():
        ref = model(x[test[:B]])
    held_out = float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))
    assert held_out < 3 * budget  # held-out images: the same order as the calibration's


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "int4"}, "precision='int4': choose one of fp32, bf16, int8"),
    ({"precision": "int8"}, "precision='int8' needs calibration="),
    ({"calibration": [()]}, "calibration and accuracy_budget apply to precision='int8'"),
    ({"precision": "int8", "calibration": [(np.zeros(3),)], "accuracy_budget": -1},
     "accuracy_budget must be a positive number"),
])
def test_bad_precision_arguments(digits, kwargs, message):  # noqa: F811
    model, x, *_ = digits
    with pytest.raises(QuantizeError, match=message):
        rtinfer.compile(model, example_inputs=(x[:B],), cache=False, **kwargs)


def test_a_bad_calibration_batch_is_named(digits):  # noqa: F811
    model, x, *_ = digits
    bad = [(x[:B],), (x[:B, :, :4],)]
    with pytest.raises(QuantizeError, match="calibration batch 1"):
        rtinfer.compile(model, example_inputs=(x[:B],), precision="int8", calibration=bad,
                        backend="torch", cache=False)


def test_int8_digits_on_the_native_backend(digits, int8_digits):  # noqa: F811
    """The same model on rtinfer's int8 kernels: top-1 within the bound, every layer timed
    (int8 vs fp32 at its shape on this CPU), and the native run agreeing with the torch
    backend's fake-quant one to within a quantization step of the logits."""
    model, x, y, train, test = digits
    cm = rtinfer.compile(model, example_inputs=(x[:B],), precision="int8",
                         calibration=_calibration(x, train), backend="native",
                         dynamic_dims={"x": {0: "B"}}, cache=False)
    fp32 = _top1(model, x[test], y[test])
    assert _top1(cm, x[test], y[test]) >= fp32 - 0.2
    rec = Int8Report.from_record(cm.info.int8)
    assert all(r.fp32_ms and r.int8_ms for r in rec.layers)
    assert all(r.precision == "int8" or "not faster" in r.why for r in rec.layers)
    with torch.no_grad():
        got, fake = cm(x[test]), int8_digits(x[test])
    assert any("int8" in k for k in cm.module.stats.kernels), cm.module.stats.kernels
    if all(r.precision == "int8" for r in rec.layers):  # the same model as int8_digits
        cos = torch.nn.functional.cosine_similarity(got.flatten(), fake.flatten(), dim=0)
        assert cos > 0.999
        assert (got.argmax(1) == fake.argmax(1)).float().mean() > 0.99
