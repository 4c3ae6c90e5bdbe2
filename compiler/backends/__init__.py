"""Backends: generate executable code from an optimized IR graph.

``torch``: a ``torch.fx.GraphModule`` calling ATen and oneDNN's fused primitives; the other
backends hand it the ops they cannot lower. ``tvm``: a TVM Relax module run by the Relax VM
(``tvm_backend``). ``native``: rtinfer's C++ executor and kernels (``native_backend``).
``dispatch.build`` builds any of them by name. ``auto``: each backend of ``AUTO_CANDIDATES``
that is installed, serves the target and does not decline the graph is built and raced on the
example inputs in interleaved rounds; the one a sign test finds faster wins, and a tie goes to
the one with less per-call overhead (``auto.select_backend``; ``rtinfer.compile`` remembers the
choice and its evidence in its cache, per CPU level).
"""

from __future__ import annotations

from rtinfer.backends.auto import AUTO_CANDIDATES, AutoCandidate, auto_candidates
from rtinfer.backends.dispatch import BACKENDS, resolve_backend

__all__ = ["AUTO_CANDIDATES", "BACKENDS", "AutoCandidate", "auto_candidates", "resolve_backend"]
