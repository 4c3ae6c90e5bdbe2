"""Backends: generate executable code from an optimized IR graph.

``torch``: a ``torch.fx.GraphModule`` calling ATen and oneDNN's fused primitives; every other
backend falls back to it for ops it cannot lower. ``tvm``: a TVM Relax module run by the Relax
VM (``tvm_backend``). ``auto``: each backend of ``AUTO_CANDIDATES`` that is installed, serves the
target and does not decline the graph is built and timed on the example inputs; the fastest wins
(``rtinfer.compile`` remembers the choice in its cache).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from rtinfer.errors import BackendError

if TYPE_CHECKING:
    from rtinfer.ir.graph import Graph

F = TypeVar("F", bound=Callable[..., Any])

BACKENDS = ("torch", "tvm", "native")
PLANNED: dict[str, str] = {}


def resolve_backend(name: str) -> str:
    """``name`` checked: ``auto`` or a backend of ``BACKENDS``, else a ``BackendError``."""
    if name == "auto" or name in BACKENDS:
        return name
    if name in PLANNED:
        raise BackendError(f"backend {name!r}: {PLANNED[name]}; use backend='torch' or 'auto'")
    raise BackendError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")


# -- backend="auto" ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoCandidate:
    """A backend ``backend="auto"`` may pick. ``available()``: it is installed (cheap: no
    import). ``declines(graph)``: why building it for ``graph`` is not worth it (ops it would
    hand to another backend, kernels known to be far slower), or None."""

    name: str
    targets: tuple[str, ...]
    available: Callable[[], bool]
    declines: Callable[[Graph], str | None] = lambda graph: None
    differentiable: bool = False  # serves trainable=True


def _installed(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


def _tvm_declines(graph: Graph) -> str | None:
    from rtinfer.backends.tvm_backend import declines

    return declines(graph)


def _native_available() -> bool:
    """oneDNN and a C++ compiler are here (the extension builds on first use)."""
    from rtinfer.kernels.build import NativeUnavailable, compiler, onednn_prefix

    try:
        compiler()
        onednn_prefix()
    except NativeUnavailable:
        return False
    return True


# in the order they are measured: the first is the reference the others must beat
AUTO_CANDIDATES: list[AutoCandidate] = [
    AutoCandidate("torch", ("cpu",), lambda: True, differentiable=True),
    AutoCandidate("tvm", ("cpu",), _installed("tvm"), _tvm_declines),
    AutoCandidate("native", ("cpu",), _native_available),
]


def auto_candidates(target: Any, trainable: bool = False) -> list[AutoCandidate]:
    """The candidates of ``backend="auto"`` installed here that serve ``target``."""
    if not isinstance(target, str):
        return []
    return [c for c in AUTO_CANDIDATES if target in c.targets and (c.differentiable or not
                                                                     trainable) and c.available()]


__all__ = ["AUTO_CANDIDATES", "BACKENDS", "AutoCandidate", "auto_candidates", "resolve_backend"]
