"""Comparing a model with its compiled self: outputs as flat arrays, fidelity, latency
percentiles (``rtinfer optimize`` and ``rtinfer demo`` report these)."""

from __future__ import annotations

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


__all__ = ["fidelity", "flat_outputs", "percentiles"]
