"""Every zoo model runs on the native backend and matches eager (native_zoo.py)."""

from __future__ import annotations

import pytest

from .native_zoo import TOL, ZOO, run_native

build = pytest.importorskip("rtinfer.kernels.build")
FAST = ("minilm-l6-v2", "resnet", "mobilenet-v2", "gpt2", "whisper-encoder")


pytestmark = pytest.mark.usefixtures("native")


def _check(name: str) -> None:
    r = run_native(name)
    assert r["backend"] == "native"
    assert r["max_abs_err"] <= TOL, r


@pytest.mark.parametrize("name", FAST)
def test_fast_zoo_models_match_eager(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ZOO if n not in FAST])
def test_zoo_model_matches_eager(name):
    _check(name)
