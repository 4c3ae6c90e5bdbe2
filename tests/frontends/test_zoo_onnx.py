"""Zoo models exported with torch.onnx.export and captured back through the ONNX frontend.

The IR interpreter's outputs must match eager torch to 1e-4. Two small vision models run in
the fast suite; the whole zoo runs under ``-m slow``.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.ir import interpret

sys.path.insert(0, str(Path(__file__).parent))
from zoo import ZOO  # noqa: E402

FAST_ONNX = ("resnet", "vit")
# torch.onnx.export (TorchScript path) cannot export these: the failure is the exporter's
EXPORT_FAILS = {"gpt2": "aten::diff has no ONNX export", "llama": "aten::diff has no ONNX export"}


class _Positional(torch.nn.Module):
    """Call a model that takes keyword tensors with positional ones (for the exporter)."""

    def __init__(self, model: torch.nn.Module, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *args):
        return self.model(**dict(zip(self.keys, args, strict=True)))


def _first_tensor(out) -> torch.Tensor:
    while not torch.is_tensor(out):
        out = out[0] if isinstance(out, (tuple, list)) else out.to_tuple()[0]
    return out


def check_model(name: str) -> None:
    model, ex = ZOO[name]()
    keys = list(ex) if isinstance(ex, dict) else None
    args = tuple(ex.values()) if keys else tuple(ex)
    module = (_Positional(model, keys) if keys else model).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=17)
    graph = rtinfer.capture(__import__("onnx").load_from_string(f.getvalue()))
    with torch.no_grad():
        ref = _first_tensor(module(*args)).numpy()
    got = interpret(graph, *[a.numpy() for a in args])
    got = got[0] if isinstance(got, tuple) else got
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", FAST_ONNX)
def test_zoo_model_through_onnx(name):
    check_model(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_full_zoo_through_onnx(name):
    if name in EXPORT_FAILS:
        pytest.xfail(EXPORT_FAILS[name])
    check_model(name)
