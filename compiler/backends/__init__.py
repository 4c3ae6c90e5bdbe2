"""Backends: generate executable code from an optimized IR graph.

``torch``: a ``torch.fx.GraphModule`` calling ATen and oneDNN's fused primitives; every other
backend falls back to it for ops it cannot lower. ``auto`` is ``torch`` for now (TVM and the
native C++/CUDA backend come later).
"""

from __future__ import annotations

from rtinfer.errors import BackendError

BACKENDS = ("torch",)
PLANNED = {"tvm": "the TVM Relax backend is not available yet",
           "native": "the native C++/CUDA backend is not available yet"}


def resolve_backend(name: str) -> str:
    """The backend ``name`` stands for (``auto`` -> ``torch``), or a ``BackendError``."""
    if name == "auto":
        return "torch"
    if name in BACKENDS:
        return name
    if name in PLANNED:
        raise BackendError(f"backend {name!r}: {PLANNED[name]}; use backend='torch' or 'auto'")
    raise BackendError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "resolve_backend"]
