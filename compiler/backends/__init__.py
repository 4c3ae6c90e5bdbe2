"""Backends: generate executable code from an optimized IR graph.

``torch``: a ``torch.fx.GraphModule`` calling ATen and oneDNN's fused primitives; every other
backend falls back to it for ops it cannot lower. ``tvm``: a TVM Relax module run by the Relax
VM (``tvm_backend``). ``auto`` is ``torch`` for now (the native C++/CUDA backend comes later).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from rtinfer.errors import BackendError

F = TypeVar("F", bound=Callable[..., Any])

BACKENDS = ("torch", "tvm")
PLANNED = {"native": "the native C++/CUDA backend is not available yet"}


def resolve_backend(name: str) -> str:
    """The backend ``name`` stands for (``auto`` -> ``torch``), or a ``BackendError``."""
    if name == "auto":
        return "torch"
    if name in BACKENDS:
        return name
    if name in PLANNED:
        raise BackendError(f"backend {name!r}: {PLANNED[name]}; use backend='torch' or 'auto'")
    raise BackendError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")


def registrar(table: dict[str, Any], what: str) -> Callable[..., Callable[[F], F]]:
    """A decorator factory filling a backend's op table (``@emits("add", "sub")``); an op given
    two entries is an error at import."""
    def register(*names: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            for n in names:
                if n in table:
                    raise ValueError(f"op {n!r} has two {what}s")
                table[n] = fn
            return fn
        return deco
    return register


__all__ = ["BACKENDS", "registrar", "resolve_backend"]
