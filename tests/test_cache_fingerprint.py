"""The model fingerprint: a warm compile of the same nn.Module or ONNX model skips capture and
rebuilds the eager output structure; any change that could change the capture (a weight, a
buffer, the forward code, an attribute, a hook, the input types) misses; what the fingerprint
cannot vouch for falls back to the capture-keyed cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import rtinfer
import rtinfer.frontends
from rtinfer.cache import model_fingerprint


class Config:
    def __init__(self, alpha: float):
        self.alpha = alpha


class Net(torch.nn.Module):
    """conv-bn, a config object, a class attribute, a keyword input and a dict output."""

    gain = 1.0

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.cfg = Config(0.5)

    def forward(self, x, shift=None):
        y = torch.relu(self.bn(self.conv(x))) * self.cfg.alpha * self.gain
        if shift is not None:
            y = y + shift
        return {"y": y, "pooled": (y.mean((2, 3)), y.amax((2, 3)))}


class OtherNet(Net):
    """Net with other forward code."""

    def forward(self, x, shift=None):
        out = super().forward(x, shift)
        out["y"] = out["y"] * 2
        return out


def _net(cls=Net):
    torch.manual_seed(0)
    m = cls().eval()
    m.bn.running_mean.uniform_(-0.5, 0.5)
    return m


def _inputs(n=1):
    torch.manual_seed(1)
    return {"x": torch.randn(n, 3, 8, 8), "shift": torch.randn(n, 4, 8, 8)}


@pytest.fixture
def captures(monkeypatch):
    """Counts the captures compile runs."""
    calls = []
    real = rtinfer.frontends.capture

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rtinfer.frontends, "capture", counting)
    return calls


def _compile(model, inputs, cache, **kw):
    return rtinfer.compile(model, example_inputs=inputs, cache=cache, backend="torch", **kw)


def _same(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)


def test_a_warm_compile_skips_capture(tmp_path, monkeypatch):
    m, inputs = _net(), _inputs()
    cold = _compile(m, inputs, tmp_path)
    assert cold.info.cache == "miss" and list((tmp_path / "models").glob("*.json"))

    def refuse(*args, **kwargs):
        raise AssertionError("capture ran")

    monkeypatch.setattr(rtinfer.frontends, "capture", refuse)
    warm = _compile(m, inputs, tmp_path)
    assert warm.info.cache == "hit" and warm.info.cache_by == "model"
    assert warm.info.cache_key == cold.info.cache_key and warm.info.frontend == "torch"
    assert not any(k.startswith("capture") for k in warm.info.timings)
    assert "capture and pipeline skipped" in warm.report()
    assert warm.info.ops_before == cold.info.ops_before and warm.fused_ops == cold.fused_ops
    other = _inputs(1)
    _same(warm(**other), cold(**other))  # the dict/tuple output structure, rebuilt
    _same(warm(other["x"], other["shift"]), cold(**other))
    with torch.no_grad():
        torch.testing.assert_close(warm(**other)["y"], m(**other)["y"], rtol=1e-4, atol=1e-5)


def _change_weight(m):
    with torch.no_grad():
        m.conv.weight[0, 0, 0, 0] += 1e-3


def _change_buffer(m):
    m.bn.running_var[1] = 3.0


def _change_config(m):
    m.cfg.alpha = 0.25


def _add_hook(m):
    m.conv.register_forward_hook(lambda mod, args, out: out * 2)


def _patch_forward(m):
    m.forward = lambda x, shift=None: Net.forward(m, x, None)


def _retie(m):
    m.conv2 = m.conv  # one more name for the same module


@pytest.mark.parametrize("change", [_change_weight, _change_buffer, _change_config, _add_hook,
                                    _patch_forward, _retie])
def test_a_change_to_the_model_changes_the_fingerprint(change):
    m, inputs = _net(), _inputs()
    before = model_fingerprint(m, inputs)
    change(m)
    assert before is not None and model_fingerprint(m, inputs) not in (None, before)


def test_class_attributes_and_methods_are_read_on_every_fingerprint(monkeypatch):
    m, inputs = _net(), _inputs()
    before = model_fingerprint(m, inputs)
    monkeypatch.setattr(Net, "gain", 2.0)
    changed = model_fingerprint(m, inputs)
    monkeypatch.setattr(Net, "forward", OtherNet.forward)  # patched code, same source file
    assert len({before, changed, model_fingerprint(m, inputs)}) == 3


class Named(str):
    pass


def test_subclasses_of_builtins_hash_their_value():
    m, inputs = _net(), _inputs()
    m.cfg.mode = Named("a")
    before = model_fingerprint(m, inputs)
    m.cfg.mode = Named("b")
    assert before is not None and model_fingerprint(m, inputs) not in (None, before)


def test_the_fingerprint_covers_inputs_and_dynamic_dims():
    m, inputs = _net(), _inputs()
    base = model_fingerprint(m, inputs)
    assert model_fingerprint(m, {k: v.clone() + 1 for k, v in inputs.items()}) == base
    others = [model_fingerprint(m, _inputs(2)),  # another batch size
              model_fingerprint(m, {"x": inputs["x"]}),  # another input structure
              model_fingerprint(m, {**inputs, "x": inputs["x"].double()}),
              model_fingerprint(m, inputs, {"x": {0: "B"}})]
    assert len({base, *others}) == 5


def test_a_changed_weight_or_class_misses(tmp_path, captures):
    m, inputs = _net(), _inputs()
    _compile(m, inputs, tmp_path)
    _change_weight(m)
    cm = _compile(m, inputs, tmp_path)
    assert captures == [1, 1] and cm.info.cache == "miss"
    with torch.no_grad():
        torch.testing.assert_close(cm(**inputs)["y"], m(**inputs)["y"], rtol=1e-4, atol=1e-5)
    assert _compile(m, inputs, tmp_path).info.cache_by == "model" and captures == [1, 1]
    other = _net(OtherNet)  # the first model's weights and structure, other forward code
    cm = _compile(other, inputs, tmp_path)
    assert captures == [1, 1, 1] and cm.info.cache == "miss"
    with torch.no_grad():
        torch.testing.assert_close(cm(**inputs)["y"], other(**inputs)["y"])


def test_what_the_fingerprint_cannot_vouch_for_falls_back_to_capture(tmp_path, captures):
    m, inputs = _net(), _inputs()
    m.pattern = re.compile("a+")  # C state, no __dict__: the hasher cannot vouch for it
    assert model_fingerprint(m, inputs) is None
    _compile(m, inputs, tmp_path)
    cm = _compile(m, inputs, tmp_path)
    assert captures == [1, 1] and cm.info.cache == "hit" and cm.info.cache_by == "ir"
    assert not (tmp_path / "models").exists()


def test_a_bad_fingerprint_entry_is_a_miss(tmp_path, captures):
    m, inputs = _net(), _inputs()
    _compile(m, inputs, tmp_path)
    (entry,) = (tmp_path / "models").glob("*.json")
    entry.write_text("{not json")
    cm = _compile(m, inputs, tmp_path)
    assert captures == [1, 1] and cm.info.cache_by == "ir"
    assert _compile(m, inputs, tmp_path).info.cache_by == "model" and captures == [1, 1]


def test_fingerprints_are_deterministic_and_fast():
    from rtinfer.models import resnet18

    torch.manual_seed(0)
    m = resnet18()
    x = torch.randn(1, 3, 224, 224)
    here = model_fingerprint(m, x)
    assert here is not None and model_fingerprint(m, x) == here
    # another process with another str hash seed (set and frozenset order) agrees
    code = ("import torch; from rtinfer.models import resnet18; "
            "from rtinfer.cache import model_fingerprint; torch.manual_seed(0); m = resnet18(); "
            "print(model_fingerprint(m, torch.randn(1, 3, 224, 224)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True)
    assert out.stdout.strip() == here


def _onnx_model(scale: float):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((4, 4), scale, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_files_and_protos_skip_capture_too(tmp_path, captures):
    import onnx

    path = tmp_path / "mm.onnx"
    onnx.save(_onnx_model(0.5), path)
    cache = tmp_path / "cache"
    x = np.ones((2, 4), np.float32)
    rtinfer.compile(str(path), cache=cache, backend="torch")
    cm = rtinfer.compile(str(path), cache=cache, backend="torch")
    assert captures == [1] and cm.info.cache_by == "model" and cm.info.frontend == "onnx"
    np.testing.assert_allclose(cm(x), np.full((2, 4), 2.0, np.float32))
    onnx.save(_onnx_model(0.25), path)  # the same path, another model
    cm = rtinfer.compile(str(path), cache=cache, backend="torch")
    assert captures == [1, 1]
    np.testing.assert_allclose(cm(x), np.full((2, 4), 1.0, np.float32))

    proto = _onnx_model(0.75)
    rtinfer.compile(proto, cache=cache, backend="torch")
    cm = rtinfer.compile(proto, cache=cache, backend="torch")
    assert captures == [1, 1, 1] and cm.info.cache_by == "model"
    np.testing.assert_allclose(cm(x), np.full((2, 4), 3.0, np.float32))


def test_onnx_external_data_is_part_of_the_fingerprint(tmp_path):
    import onnx

    path = tmp_path / "ext.onnx"
    onnx.save(_onnx_model(0.5), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.bin", size_threshold=0)
    before = model_fingerprint(str(path))
    data = tmp_path / "ext.bin"
    blob = bytearray(data.read_bytes())
    blob[0] ^= 0x01
    data.write_bytes(bytes(blob))
    assert before is not None and model_fingerprint(str(path)) not in (None, before)
