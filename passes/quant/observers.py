"""Observers: collected statistics of a tensor -> the range its quantization covers.

Statistics come from one pass over the calibration data (``calibrate.py``): the exact min and
max, and a ``Histogram`` of 2048 bins whose range grows with the data. Each observer is a plain
function of the histogram:

    minmax:      [min, max]                       (every value fits; outliers cost resolution)
    percentile:  [q(100 - p), q(p)], p = 99.99    (the tails beyond the p-th percentile clip)
    entropy:     [-T, T] ∩ [min, max], T the threshold that minimizes KL(P || Q) between the
                 |x| histogram clipped at T (P) and its quantization to the int8 levels (Q)
                 (TensorRT's calibrator: "8-bit Inference with TensorRT", Migacz 2017)
    mse:         f * [min, max], f minimizing E[(x - dq(q(x)))^2] (clipping error outside,
                 the uniform rounding error scale^2 / 12 inside)

A range always contains 0 (``Histogram`` covers [min(0, min), max(0, max)]): zero padding and
ReLU outputs must be exact in the quantized form.

The adaptive histogram (one pass, exact merging): bins are ``width`` wide from ``lo``. When a
batch falls outside, the range grows to cover it by widening the bins by a power of two,
``width' = width * 2^k``, and moving ``lo`` by a whole number ``m`` of old bins, so old bin
``i`` lies entirely inside new bin ``(m + i) // 2^k``: the counts merge without any
interpolation, and the new batch is histogrammed on the new bins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from rtinfer.errors import QuantizeError

BINS = 2048
U8_LEVELS = 256
_KL_FLOOR = 1e-6
_STRIDE = 8  # the entropy search's coarse step, in bins


@dataclass
class Histogram:
    """``bins`` counts of equal width from ``lo``, plus the exact ``min`` and ``max`` seen."""

    bins: int = BINS
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lo: float = 0.0
    width: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @property
    def hi(self) -> float:
        return self.lo + self.width * self.bins

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def centers(self) -> np.ndarray:
        return self.lo + (np.arange(self.bins) + 0.5) * self.width

    def add(self, t: torch.Tensor, where: str = "a value") -> None:
        """Count the elements of ``t`` (one batch), growing the range first if they need it."""
        if t.numel() == 0:
            return
        t = t.detach()
        if not t.is_floating_point():
            t = t.float()
        # two reductions: torch.aminmax is several times slower on CPU than min() and max()
        mn, mx = float(t.min()), float(t.max())
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise QuantizeError(f"calibration: {where} has non-finite values (min {mn}, max "
                                f"{mx}); int8 cannot represent them")
        self.min, self.max = min(self.min, mn), max(self.max, mx)
        self._cover(min(mn, 0.0), max(mx, 0.0))
        counts = torch.histc(t.float(), self.bins, self.lo, self.hi).double().numpy()
        # an extreme that float32 rounding puts a hair outside [lo, hi] is dropped by histc;
        # it belongs to the end bin on its side
        dropped = t.numel() - counts.sum()
        if dropped > 0:
            counts[-1 if mx >= self.hi - self.width else 0] += dropped
        self.counts += counts

    def _cover(self, lo: float, hi: float) -> None:
        if self.width == 0.0:  # the first batch sets the range
            self.lo = lo
            self.width = max((hi - lo) / self.bins, 1e-12)
            self.counts = np.zeros(self.bins)
            return
        if lo >= self.lo and hi <= self.hi:
            return
        grew_lo, grew_hi = lo < self.lo, hi > self.hi
        lo, hi = min(lo, self.lo), max(hi, self.hi)
        m = max(0, math.ceil((self.lo - lo) / self.width))  # old bins the start moves down
        need = m + math.ceil((hi - self.lo) / self.width)  # old-width bins the range must span
        k = max(1, math.ceil(math.log2(need / self.bins)))
        # the spare old-width bins of the wider range go to the side(s) that grew: data that
        # grew downwards once tends to do so again, and a range starting at 0 (ReLU) stays there
        spare = self.bins * 2 ** k - need
        m += spare if grew_lo and not grew_hi else spare // 2 if grew_lo else 0
        merged = np.zeros(self.bins)
        np.add.at(merged, (m + np.arange(self.bins)) // 2 ** k, self.counts)
        self.counts = merged
        self.lo -= m * self.width
        self.width *= 2 ** k

    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """Counts of |x| on ``bins`` bins over [0, max |x|], and their width. A histogram that
        starts at 0 is its own; otherwise the bins fold around 0 (each bin's count moves to the
        bin of its center's magnitude)."""
        top = max(-self.min, self.max, 1e-12)
        if self.lo >= 0.0:
            return self.counts.copy(), self.width
        counts, _ = np.histogram(np.abs(self.centers()), bins=self.bins, range=(0.0, top),
                                 weights=self.counts)
        return counts, top / self.bins


Range = tuple[float, float]


def _check(h: Histogram) -> None:
    if h.total <= 0:
        raise QuantizeError("an observer needs a histogram with data (no calibration batch "
                            "reached this value)")


def minmax(h: Histogram) -> Range:
    """[min, max] of everything seen."""
    _check(h)
    return h.min, h.max


def percentile(h: Histogram, percent: float = 99.99) -> Range:
    """[q(100 - p), q(p)]: the bin edges where the cumulative count crosses each percentile,
    never beyond the data."""
    _check(h)
    if not 50.0 < percent <= 100.0:
        raise QuantizeError(f"percentile must be in (50, 100], got {percent}")
    cum = np.cumsum(h.counts) / h.total
    frac = percent / 100.0
    top = int(np.searchsorted(cum, frac - 1e-12))  # first bin reaching the fraction
    bottom = int(np.searchsorted(cum, 1.0 - frac + 1e-12))
    hi = h.lo + (min(top, h.bins - 1) + 1) * h.width
    lo = h.lo + bottom * h.width
    return max(lo, h.min), min(hi, h.max)


def _smooth(d: np.ndarray, eps: float = _KL_FLOOR) -> np.ndarray:
    """``d`` (summing to 1) mixed with ``eps`` on every bin, still summing to 1: KL stays
    finite where P has mass Q has none (the clipped tail on an empty edge bin), and that
    clipped mass m costs about m log(m / eps)."""
    return (d + eps) / (1.0 + eps * len(d))


def _kl_threshold(counts: np.ndarray, levels: int) -> int:
    """TensorRT's search: the number of |x| bins i (>= levels) whose clipped distribution P
    (the tail added to the last bin) loses the least information, KL(P || Q), when its i bins
    are merged into ``levels`` quantization levels and spread back evenly over the nonzero
    bins (Q)."""
    n = len(counts)
    if n <= levels:
        return n
    total = counts.sum()
    nonzero = counts > 0
    # prefix sums give every merged group's count and nonzero bins in O(levels) per candidate
    c0 = np.concatenate([[0.0], np.cumsum(counts)])
    z0 = np.concatenate([[0], np.cumsum(nonzero)])
    bins = np.arange(n)

    def kl_at(i: int) -> float:
        if c0[i] <= 0:
            return math.inf
        edges = (np.arange(levels + 1) * i) // levels  # group k holds bins edges[k]..[k+1]-1
        group_avg = (c0[edges[1:]] - c0[edges[:-1]]) / np.maximum(z0[edges[1:]] - z0[edges[:-1]], 1)
        group = ((bins[:i] + 1) * levels + i - 1) // i - 1
        q = np.where(nonzero[:i], group_avg[group], 0.0) / c0[i]  # sums to 1
        p = counts[:i] / total
        p[-1] += (total - c0[i]) / total  # the clipped tail lands on the edge bin
        mask = p > 0
        return float(np.sum(p[mask] * np.log(p[mask] / _smooth(q)[mask])))

    # coarse to fine: every STRIDE-th candidate, then each one around the best (4x fewer
    # evaluations; KL varies slowly with i, and the result moves by at most a few bins)
    coarse = list(range(levels, n + 1, _STRIDE)) + [n]
    best = min(coarse, key=kl_at)
    fine = range(max(levels, best - _STRIDE + 1), min(n, best + _STRIDE - 1) + 1)
    return min(fine, key=kl_at)


def entropy(h: Histogram) -> Range:
    """[-T, T] clipped to the data, T minimizing KL divergence (TensorRT). Non-negative data
    (ReLU outputs) use all 256 u8 levels on [0, T]; signed data 128 levels per side."""
    _check(h)
    counts, width = h.abs_histogram()
    # the first bin holds exact zeros (half of a ReLU's output) and values that quantize to 0
    # under any candidate: left in, its spike dominates KL whenever merging blurs it, and drags
    # the threshold down to the first candidate whose bins map one to one onto levels
    counts[0] = 0.0
    levels = U8_LEVELS if h.min >= 0.0 else U8_LEVELS // 2
    t = _kl_threshold(counts, levels) * width
    return max(h.min, -t), min(h.max, t)


def mse(h: Histogram, candidates: int = 200) -> Range:
    """f * [min, max] for the f in (0, 1] that minimizes the expected squared error of u8
    quantization: (x - clip(x))^2 outside the range, scale^2 / 12 inside (uniform rounding)."""
    _check(h)
    c, n = h.centers(), h.counts / h.total
    lo0, hi0 = min(h.min, 0.0), max(h.max, 0.0)
    f = np.linspace(1.0 / candidates, 1.0, candidates)[:, None]
    lo, hi = lo0 * f, hi0 * f
    scale = np.maximum(hi - lo, 1e-12) / (U8_LEVELS - 1)
    clipped = np.clip(c[None, :], lo, hi)
    err = np.where(c[None, :] == clipped, scale ** 2 / 12.0, (c[None, :] - clipped) ** 2)
    best = float(f[int(np.argmin(err @ n)), 0])
    return max(h.min, lo0 * best), min(h.max, hi0 * best)


OBSERVERS: dict[str, Callable[[Histogram], Range]] = {
    "minmax": minmax, "percentile": percentile, "entropy": entropy, "mse": mse,
}


def observe(h: Histogram, method: str) -> Range:
    """The range ``method`` (one of ``OBSERVERS``) gives for ``h``."""
    try:
        fn = OBSERVERS[method]
    except KeyError:
        raise QuantizeError(f"unknown observer {method!r} (choose one of "
                            f"{', '.join(OBSERVERS)})") from None
    return fn(h)


def u8_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of asymmetric u8 covering [lo, hi] widened to contain 0, with 0
    exactly representable."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32((hi - lo) / (U8_LEVELS - 1)))
    if not scale > 0.0:  # a constant-zero tensor: any scale represents it
        return 1.0, 0
    zero_point = int(np.clip(round(-lo / scale), 0, U8_LEVELS - 1))
    return scale, zero_point


def s8_weight(w: np.ndarray, axis: int | None, levels: int = 127
              ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric s8 (zero point 0, levels -levels..levels: 127, or 63 where the CPU's int8
    kernels would saturate 8-bit weights) of ``w``: the int8 array and its scales, one per
    index of ``axis`` (None: one for the tensor). An all-zero channel gets scale 1."""
    w = np.asarray(w, np.float32)
    if axis is None:
        amax = np.asarray(np.abs(w).max())
    else:
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1)
    scale = np.where(amax > 0, amax / float(levels), 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -levels, levels).astype(np.int8)
    return q, scale
