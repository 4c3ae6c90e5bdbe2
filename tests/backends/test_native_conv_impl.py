"""The native backend's choice among oneDNN's convolution implementations (cpp/native/dnnl_ops.cpp):
every candidate it may race, forced one at a time with ``$RTINFER_CONV_IMPL``, and the race
itself compute what eager computes, epilogues (relu, residual) and NaN included, at every CPU
level the host runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rtinfer
from rtinfer.errors import BackendError


class Stem(torch.nn.Module):
    """ResNet's first layers at a small size: the 7x7 stride-2 conv on 3 channels, a 3x3
    block with its residual add and a 1x1 stride-2 downsample, each large enough to race."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 7, 2, 3)
        self.c1 = torch.nn.Conv2d(32, 32, 3, 1, 1)
        self.c2 = torch.nn.Conv2d(32, 32, 3, 1, 1)
        self.down = torch.nn.Conv2d(32, 64, 1, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.stem(x))
        y = F.relu(self.c2(F.relu(self.c1(y))) + y)
        return self.down(y)


def _compile(model: torch.nn.Module, x: torch.Tensor):
    cm = rtinfer.compile(model, example_inputs=(x,), backend="native", cache=False)
    assert cm.info.backend == "native"
    return cm


@pytest.mark.parametrize("impl", ["0", "1", "2", None])
def test_every_conv_candidate_matches_eager(native, monkeypatch, impl):
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    if impl is None:
        monkeypatch.delenv("RTINFER_CONV_IMPL", raising=False)
    else:
        monkeypatch.setenv("RTINFER_CONV_IMPL", impl)
    torch.manual_seed(0)
    model = Stem().eval()
    x = torch.randn(1, 3, 96, 96)
    cm = _compile(model, x)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(cm(x), want, rtol=1e-4, atol=1e-4)
    # relu stays rtinfer's NaN-keeping clamp whichever implementation runs the convolution
    nan = x.clone()
    nan[0, 1, 40, 40] = float("nan")
    with torch.no_grad():
        want = model(nan)
    got = cm(nan)
    assert torch.equal(got.isnan(), want.isnan())
    fin = want.isfinite()
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-4, atol=1e-4)


def test_forced_candidates_are_real_implementations(native, monkeypatch):
    """Each forced candidate number names one of oneDNN's own kernels (never its reference
    one); a number past the last takes the last."""
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    torch.manual_seed(0)
    w, b = torch.randn(64, 64, 3, 3), torch.randn(64)

    def impl(n: str) -> str:
        monkeypatch.setenv("RTINFER_CONV_IMPL", n)
        return native.add_conv(native.Plan(), "conv", 0, 1, -1, [1, 64, 56, 56], w, b, [1, 1],
                               [1, 1], [1, 1], [1, 1], 1, "relu", 0.0, 0.0, "none", True,
                               True, 2, [1, 64, 56, 56])

    got = [impl(str(n)) for n in range(4)]
    assert not any(g.startswith("ref") for g in got), got
    assert got[3] == got[2], got


def test_bad_conv_impl_setting_is_named(native, monkeypatch):
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.setenv("RTINFER_CONV_IMPL", "fastest")
    torch.manual_seed(0)
    with pytest.raises(BackendError, match="RTINFER_CONV_IMPL.*fastest"):
        _compile(Stem().eval(), torch.randn(1, 3, 64, 64))(torch.randn(1, 3, 64, 64))
