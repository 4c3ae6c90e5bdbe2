"""Zoo models exported with torch.onnx.export and captured back through the ONNX frontend.

The IR interpreter's outputs must match eager torch to 1e-4 on every output. Two small models
run in the fast suite; the whole zoo runs under ``-m slow``.
"""

from __future__ import annotations

import pytest

from tests.frontends.zoo import ZOO, run_model_onnx, within_tolerance

FAST_ONNX = ("resnet", "bert")


def check_model(name: str) -> None:
    r = run_model_onnx(name)
    assert within_tolerance(r), f"{name}: max abs error {r['max_abs_err']:.3g} vs eager"


@pytest.mark.parametrize("name", FAST_ONNX)
def test_zoo_model_through_onnx(name):
    check_model(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ZOO) - set(FAST_ONNX)))
def test_full_zoo_through_onnx(name):
    check_model(name)
