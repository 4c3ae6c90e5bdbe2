"""One entry point that builds any backend's module for an optimized graph, by backend name.

``rtinfer.compile`` and ``rtinfer.load`` build through ``build``, and so does ``backend="auto"``
(``rtinfer.backends.auto``) for each candidate it measures.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from rtinfer.errors import BackendError
from rtinfer.ir.graph import Graph

BACKENDS = ("torch", "tvm", "native")


def resolve_backend(name: str) -> str:
    """``name`` checked: ``auto`` or a backend of ``BACKENDS``, else a ``BackendError``."""
    if name == "auto" or name in BACKENDS:
        return name
    raise BackendError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")


def build(backend: str, graph: Graph, *, target: Any, trainable: bool, mkldnn: bool | None,
          strict: bool, tune: int = 0, tune_root: Path | None = None) -> Any:
    """Generate ``backend`` 's module for ``graph``. ``tune=N`` (``tvm``): MetaSchedule tunes
    the kernels first, its records kept under ``tune_root`` (``None``: in a temporary
    directory that serves this build only)."""
    if backend == "native":
        return build_native(graph, target=target, trainable=trainable, mkldnn=mkldnn,
                            strict=strict)
    if backend == "tvm":
        from rtinfer.backends.tvm_backend import build_tvm_module

        if tune and tune_root is None:  # cache=False: the records serve this compile only
            with tempfile.TemporaryDirectory(prefix="rtinfer-tune-") as tmp:
                module = build_tvm_module(graph, target=target, strict=strict, tune=tune,
                                          tune_root=tmp)
            module.tuning.db_dir = None
            return module
        return build_tvm_module(graph, target=target, strict=strict, tune=tune,
                                tune_root=tune_root)
    from rtinfer.backends.torch_backend import build_module

    return build_module(graph, trainable=trainable, mkldnn=mkldnn, strict=strict)


def build_native(graph: Graph, *, target: Any, trainable: bool, mkldnn: bool | None,
                 strict: bool) -> Any:
    """The native module; where it cannot be built here (no C++ compiler, no oneDNN), the torch
    backend's, with a warning that says why (``strict=True``: the error instead)."""
    from rtinfer.backends.native_backend import build_native_module
    from rtinfer.backends.torch_backend import build_module
    from rtinfer.kernels.build import NativeUnavailable

    if trainable:
        raise BackendError("backend='native' runs inference only; trainable=True needs "
                           "backend='torch'")
    if target != "cpu":
        raise BackendError(f"backend='native' compiles for target 'cpu', not {target!r} (its "
                           f"CUDA kernels are in rtinfer.kernels.cuda)")
    try:
        return build_native_module(graph, strict=strict)
    except NativeUnavailable as e:
        if strict:
            raise
        # stacklevel: the caller of rtinfer.compile (compile -> build stage -> build -> here)
        warnings.warn(f"{e}; compiling with the torch backend instead", stacklevel=5)
        module = build_module(graph, mkldnn=mkldnn)
        module.rtinfer_backend = "torch"
        return module


__all__ = ["BACKENDS", "build", "build_native", "resolve_backend"]
