"""Winograd F(6x6, 3x3) as the native backend's candidates for 3x3 stride-1 convolutions:
NNPACK's (cpp/native/cpu_conv_winograd.cpp) and rtinfer's own (cpp/native/dnnl_winograd.cpp).
Each, forced with ``RTINFER_WINOGRAD=1`` / ``own``, computes what eager computes (epilogues,
odd sizes, batches), keeps eager's NaN and infinity pattern and a trained CNN's accuracy on real
data; by default they run only where the race keeps them, and ``RTINFER_WINOGRAD=0`` keeps
oneDNN everywhere. NNPACK's never runs at the generic level (it is AVX2 code); rtinfer's own
needs input and output channels in multiples of 16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rtinfer
from rtinfer.errors import BackendError
from tests.digits import trained as trained_digits

# $RTINFER_WINOGRAD's forcing values and the step names they give
ENGINES = {"1": "NNPACK Winograd", "own": "rtinfer Winograd"}


class Block(torch.nn.Module):
    """conv -> relu -> conv with a residual: the 3x3 layers of a ResNet basic block."""

    def __init__(self, c: int, o: int, mode: str, bias: bool) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(c, o, 3, 1, 1, bias=bias)
        self.c2 = torch.nn.Conv2d(o, o, 3, 1, 1, bias=bias)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c1(x))
        z = self.c2(y)
        if self.mode == "pre":
            return F.relu(z + y)
        if self.mode == "post":
            return F.relu(z) + y
        return z


def _steps(cm, x: torch.Tensor) -> list[str]:
    return [name for name, _ in cm.module.profile(x, iters=1)]


def _compile(model: torch.nn.Module, x: torch.Tensor):
    cm = rtinfer.compile(model, example_inputs=(x,), backend="native", cache=False)
    assert cm.info.backend == "native"
    return cm


def _winograd_level(native) -> bool:
    return native.level() != "generic"


def _applies(native, engine: str, c: int, o: int) -> bool:
    """NNPACK's needs AVX2 code (not the generic level); rtinfer's own whole 16-channel vectors."""
    if engine == "1":
        return _winograd_level(native)
    return c % 16 == 0 and o % 16 == 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("c,o,h,w,n,mode,bias", [
    (16, 16, 56, 56, 1, "pre", True),
    (16, 24, 13, 17, 1, "post", True),   # tiles cut at both edges, channels change
    (16, 32, 13, 17, 2, "post", True),   # the same for 16-channel vectors, a batch of two
    (8, 8, 6, 6, 2, "none", False),      # one tile, a batch of two, no bias
    (5, 16, 7, 40, 1, "pre", True),      # few input channels, a wide strip
    (32, 32, 4, 4, 1, "pre", True),      # smaller than one tile
    (32, 16, 7, 7, 1, "none", False),    # one tile and a row and column of a second
])
def test_forced_winograd_matches_eager_and_float64(native, monkeypatch, engine, c, o, h, w, n,
                                                   mode, bias):
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.setenv("RTINFER_WINOGRAD", engine)
    torch.manual_seed(0)
    model = Block(c, o, mode, bias).eval()
    x = torch.randn(n, c, h, w)
    cm = _compile(model, x)
    steps = _steps(cm, x)
    label = ENGINES[engine]
    want_n = _applies(native, engine, c, o) + _applies(native, engine, o, o)
    assert sum(label in s for s in steps) == want_n, steps
    if want_n:  # the compile report counts them apart
        assert f"oneDNN conv -> {label} x{want_n}" in cm.report(), cm.report()
    with torch.no_grad():
        want = model(x)
        exact = model.double()(x.double())
    got = cm(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # Winograd's rounding: a few 1e-6 of the largest output (direct summation: a few 1e-7)
    assert (got.double() - exact).abs().max() <= 2e-5 * exact.abs().max()


@pytest.mark.parametrize("engine", ENGINES)
def test_non_finite_inputs_take_the_direct_kernel(native, monkeypatch, engine):
    """A NaN spreads over whole 8x8 tiles in Winograd's transforms and inf * 0 gives NaN; such
    calls run oneDNN's direct kernel, so NaN, +-inf and huge values come out as eager's."""
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.setenv("RTINFER_WINOGRAD", engine)
    torch.manual_seed(0)
    model = Block(16, 16, "pre", True).eval()
    x = torch.randn(1, 16, 30, 30)
    cm = _compile(model, x)
    assert sum(ENGINES[engine] in s for s in _steps(cm, x)) == \
        2 * _applies(native, engine, 16, 16)
    for bad in (float("nan"), float("inf"), -float("inf"), 3e38):
        z = x.clone()
        z[0, 3, 14, 20] = bad
        with torch.no_grad():
            want = model(z)
        got = cm(z)
        assert torch.equal(got.isnan(), want.isnan()), bad
        assert torch.equal(got.isinf(), want.isinf()), bad
        fin = want.isfinite()
        torch.testing.assert_close(got[fin], want[fin], rtol=1e-4, atol=1e-4)
    # and the next finite call is Winograd's again, right
    torch.testing.assert_close(cm(x), model(x).detach(), rtol=1e-4, atol=1e-4)


def test_winograd_off_and_small_layers_keep_onednn(native, monkeypatch):
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    torch.manual_seed(0)
    model = Block(16, 16, "pre", True).eval()
    x = torch.randn(1, 16, 56, 56)
    monkeypatch.setenv("RTINFER_WINOGRAD", "0")
    cm = _compile(model, x)
    assert not any("Winograd" in s for s in _steps(cm, x))
    assert "Winograd" not in cm.report()
    # by default only layers of 4M multiply-adds or more are timed against oneDNN's kernel
    monkeypatch.delenv("RTINFER_WINOGRAD")
    small = torch.randn(1, 16, 12, 12)  # 0.3M multiply-adds a layer
    cm = _compile(model, small)
    assert not any("Winograd" in s for s in _steps(cm, small))
    torch.testing.assert_close(cm(small), model(small).detach(), rtol=1e-4, atol=1e-4)


def test_the_race_keeps_what_matches_eager(native, monkeypatch):
    """Whichever the timing keeps (a busy machine decides at random), the result is eager's."""
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.delenv("RTINFER_WINOGRAD", raising=False)
    torch.manual_seed(1)
    model = Block(32, 32, "pre", True).eval()
    x = torch.randn(1, 32, 42, 42)  # 17M multiply-adds a layer: raced
    cm = _compile(model, x)
    torch.testing.assert_close(cm(x), model(x).detach(), rtol=1e-4, atol=1e-4)


def test_bad_setting_is_named(native, monkeypatch):
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.setenv("RTINFER_WINOGRAD", "yes")
    model = Block(16, 16, "pre", True).eval()
    x = torch.randn(1, 16, 56, 56)
    if not _winograd_level(native):
        pytest.skip("the generic level never reads $RTINFER_WINOGRAD's candidate")
    with pytest.raises(BackendError, match="RTINFER_WINOGRAD"):
        _compile(model, x)


@pytest.fixture(scope="module")
def digits():
    """A CNN trained on scikit-learn's digits (tests/digits.py) and its held-out split."""
    pytest.importorskip("sklearn.datasets")
    model, _, _, x, y = trained_digits()
    return model, x, y


@pytest.mark.parametrize("engine", ENGINES)
def test_trained_digits_cnn_keeps_its_accuracy(native, monkeypatch, digits, engine):
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.setenv("RTINFER_WINOGRAD", engine)
    model, x, y = digits
    with torch.no_grad():
        want = model(x)
    eager_top1 = (want.argmax(1) == y).float().mean().item()
    assert eager_top1 > 0.93  # a trained model, or the comparison means nothing
    cm = _compile(model, x)
    # two 3x3 layers: 1 -> 16 (at AVX-512 rtinfer's stem kernel's; no 16-channel vectors)
    # and 16 -> 32
    wino = sum(ENGINES[engine] in s for s in _steps(cm, x))
    assert wino >= 1 if _applies(native, engine, 16, 32) else wino == 0
    got = cm(x)
    assert torch.equal(got.argmax(1), want.argmax(1))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
