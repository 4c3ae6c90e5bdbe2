"""Observers and the adaptive histogram on known distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtinfer.errors import QuantizeError
from rtinfer.passes.quant.observers import (
    Histogram,
    entropy,
    minmax,
    mse,
    observe,
    percentile,
    s8_weight,
    u8_params,
)


def _hist(*batches: torch.Tensor) -> Histogram:
    h = Histogram()
    for b in batches:
        h.add(b)
    return h


def _long_tail(seed: int = 0) -> torch.Tensor:
    """ReLU-like activations: |N(0, 1)|, plus 0.01% outliers up to 100."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200_000, generator=g).abs()
    x[:20] = torch.linspace(20.0, 100.0, 20)
    return x


def test_growing_range_merges_counts_exactly():
    # batches of growing spread on both sides: the range widens several times
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(50_000, generator=g) * (1 + 0.5 * i) + 0.3 * i for i in range(8)]
    h = _hist(*batches)
    everything = torch.cat(batches)
    assert h.total == everything.numel()
    assert (h.min, h.max) == (float(everything.min()), float(everything.max()))
    assert h.lo <= h.min and h.hi >= h.max
    # the merged counts equal a histogram of all the data on the final bins (bins merge whole;
    # only elements on a bin edge may land on either side)
    direct = torch.histc(everything, h.bins, h.lo, h.hi).double().numpy()
    assert np.abs(direct - h.counts).sum() <= 1e-4 * everything.numel()
    # the bins stay fine: the range is at most 4x the data's (growth doubles the width)
    assert h.hi - h.lo <= 4 * (h.max - min(h.min, 0.0))


def test_range_starting_at_zero_stays_there():
    h = _hist(torch.rand(1000), torch.rand(1000) * 5, torch.rand(1000) * 40)
    assert h.lo == 0.0 and h.max > 39


def test_minmax_keeps_the_long_tail_and_entropy_clips_it():
    h = _hist(_long_tail())
    lo, hi = minmax(h)
    assert (lo, hi) == (h.min, 100.0) and 0.0 < h.min < 1e-3
    e_lo, e_hi = entropy(h)
    assert e_lo == h.min
    # the bulk (|N(0,1)|: 99.9% below 3.3) sets the threshold, not the outliers
    assert 2.5 < e_hi < 15.0
    p_lo, p_hi = percentile(h, 99.9)
    assert p_lo == h.min and 3.0 < p_hi < 3.6



def _u8_error(x: torch.Tensor, rng: tuple[float, float]) -> float:
    scale, zp = u8_params(*rng)
    q = torch.clamp(torch.round(x / scale) + zp, 0, 255)
    return float(((q - zp) * scale - x).pow(2).mean())


def test_mse_minimizes_the_quantization_error():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200_000, generator=g).abs() ** 2  # a heavy right tail
    h = _hist(x)
    err = {name: _u8_error(x, fn(h)) for name, fn in
           (("mse", mse), ("minmax", minmax), ("entropy", entropy), ("p99", percentile))}
    assert err["mse"] < err["minmax"]
    assert err["mse"] <= 1.05 * min(err.values())


def test_entropy_keeps_a_distribution_without_tail():
    h = _hist(torch.rand(100_000) * 6.0)
    assert entropy(h)[1] > 0.9 * 6.0
    assert mse(h)[1] > 0.9 * 6.0


def test_signed_entropy_is_symmetric_and_clips_both_tails():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200_000, generator=g)
    x[:10], x[10:20] = -80.0, 60.0
    lo, hi = entropy(_hist(x))
    assert lo == -hi and 2.0 < hi < 15.0


def test_observe_names_unknown_methods():
    with pytest.raises(QuantizeError, match="unknown observer 'kl'.*entropy"):
        observe(_hist(torch.rand(10)), "kl")


def test_non_finite_data_is_an_error_naming_the_value():
    with pytest.raises(QuantizeError, match="%x.*non-finite"):
        Histogram().add(torch.tensor([1.0, float("inf")]), "%x")


def test_u8_params_represent_zero_exactly():
    scale, zp = u8_params(0.0, 2.55)
    assert (scale, zp) == (pytest.approx(0.01), 0)
    scale, zp = u8_params(-1.0, 3.0)
    assert zp == round(1.0 / scale) and scale == pytest.approx(4.0 / 255)
    assert u8_params(0.5, 2.0)[1] == 0  # widened to contain 0
    assert u8_params(0.0, 0.0) == (1.0, 0)


def test_s8_weight_is_symmetric_per_output_channel():
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    w[2] *= 100.0
    q, scale = s8_weight(w, 0)
    assert q.dtype == np.int8 and scale.shape == (4,)
    assert np.abs(q).max() == 127 and q.min() >= -127
    err = np.abs(q * scale[:, None, None, None] - w)
    assert np.all(err <= scale[:, None, None, None] / 2 + 1e-6)
    # per tensor: one scale, set by the largest channel
    q1, s1 = s8_weight(w, None)
    assert s1.shape == () and s1 == pytest.approx(np.abs(w).max() / 127)
