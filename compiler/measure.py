"""Comparing a model with its compiled self: outputs as flat arrays, fidelity, latency
percentiles (``rtinfer optimize`` and ``rtinfer demo`` report these)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from rtinfer.errors import OptimizeError


def flat_outputs(out: Any) -> list[np.ndarray]:
    """A model's outputs (tensors, arrays, nested in dicts, lists and tuples) as a flat list of
    numpy arrays, in order; floating-point tensors as float32."""
    if isinstance(out, torch.Tensor):
        return [out.detach().float().numpy() if out.dtype.is_floating_point
                else out.detach().numpy()]
    if isinstance(out, np.ndarray):
        return [out]
    if isinstance(out, dict):
        return [a for v in out.values() for a in flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [a for v in out for a in flat_outputs(v)]
    return []


def fidelity(want: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """The largest absolute difference and the lowest cosine similarity over the outputs; an
    ``OptimizeError`` when their number or sizes differ."""
    if len(want) != len(got):
        raise OptimizeError(f"the compiled model returned {len(got)} outputs, the baseline "
                            f"{len(want)}")
    worst_err, worst_cos = 0.0, 1.0
    for a, b in zip(want, got, strict=True):
        a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        if a64.shape != b64.shape:
            raise OptimizeError(f"an output has {b64.size} elements, the baseline's {a64.size}")
        if a64.size == 0:
            continue
        worst_err = max(worst_err, float(np.max(np.abs(a64 - b64))))
        na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
        cos = 1.0 if na == nb == 0 else float(a64 @ b64 / max(na * nb, 1e-300))
        worst_cos = min(worst_cos, cos)
    return {"max_abs_error": worst_err, "cosine_similarity": worst_cos}


def percentiles(times: list[float]) -> dict[str, float]:
    """p50, p90 and mean of per-call seconds, in milliseconds."""
    a = np.asarray(times) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "mean": float(a.mean())}


# p90 over p50 above this: the tail is not the model's (another process, frequency, swapping)
UNSTABLE_TAIL = 1.5


def stability_warnings(latency_ms: dict[str, dict[str, float]],
                       load: tuple[float, float] | None = None,
                       cores: int | None = None) -> list[str]:
    """Why a latency table should not be trusted as it stands: a p90 far above its p50, or a
    machine that was busy (1-minute load average before and after, against the cores usable)."""
    out = []
    for name, q in latency_ms.items():
        if q["p50"] > 0 and q["p90"] / q["p50"] > UNSTABLE_TAIL:
            out.append(f"unstable measurement: {name} p90 {q['p90']:.3f} ms is "
                       f"{q['p90'] / q['p50']:.1f}x its p50 {q['p50']:.3f} ms (another process, "
                       f"CPU frequency or memory pressure); rerun on a quiet machine or with "
                       f"more --runs")
    if load is not None and cores:
        busy = max(load)
        if busy > 0.75 * cores:
            out.append(f"the machine was busy while measuring: 1-minute load average "
                       f"{load[0]:.2f} before, {load[1]:.2f} after, on {cores} usable core(s); "
                       f"latencies are likely inflated")
    return out


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


__all__ = ["fidelity", "flat_outputs", "load_average", "percentiles", "stability_warnings",
           "usable_cores"]
