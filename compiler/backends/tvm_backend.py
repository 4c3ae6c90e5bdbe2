"""The TVM backend: an IR graph becomes a Relax module, built for an LLVM target, run by the
Relax VM.

    build_tvm_module(graph, target="cpu", strict=False, tune=0) -> TVMModule

Untuned, the kernels keep the naive loop nests of Relax's legalization (convolutions run ~100x
slower than oneDNN's); ``tune=N`` has MetaSchedule tune them first (``tvm_tune``).

``LOWERINGS`` is one table, op name -> ``Lowering`` (``tvm_lower.context``), filled by the
family modules of ``rtinfer.backends.tvm_lower`` (``elementwise``, ``nn``, ``reduce``,
``shape``, ``fused``). A lowering receives the context and the node's inputs as Relax
expressions (``None`` for a missing optional input; variadic inputs as one list) and the node's
attributes by name, and returns the Relax expression (or expressions) of its results;
intermediate results it binds with ``cx.emit``. A lowering that cannot handle a node's
attributes raises ``rtinfer.errors.Unsupported``. What the backend knows about an op's kernel
is recorded on its entry: ``grouped``, ``slow_untuned``.

rtinfer's fusion decisions are kept: a ``fused_*`` node is lowered inside its own Relax function
marked ``Primitive`` (as ``relax.transform.FuseOps`` marks the groups it forms), which
``FuseTIR`` turns into one kernel; the other nodes become one kernel each (``FuseOps`` does not
run, so TVM makes no fusion decisions of its own).

A node without a lowering (or whose lowering declines) runs in the torch backend: it becomes a
``call_dps_packed`` of a Python function that calls the node's torch module on DLPack views of
the VM's tensors (``tvm_lower.driver``). ``TVMModule.fallback_ops`` names those ops; with
``strict=True`` they are a ``BackendError`` instead. Tensors cross between torch and TVM through
DLPack without copies (inputs that are not 64-byte aligned and contiguous are copied once).

Symbolic dims become ``tirx.Var`` s of the Relax function's signature, so one build serves
every size the IR allows.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from rtinfer.backends import (
    tvm_lower,  # noqa: F401  (fills LOWERINGS)
    tvm_tune,
)
from rtinfer.backends.tvm_lower.context import (
    LOWERINGS,
    TVM_DTYPES,
    UNSUPPORTED,
    LowerContext,
    Lowering,
    lowers,
    require_tvm,
)
from rtinfer.backends.tvm_lower.driver import Lowered, lower_graph, take_raised
from rtinfer.errors import BackendError
from rtinfer.ir.graph import Graph
from rtinfer.ir.ops import OPS
from rtinfer.paths import tuning_root

# -- targets ----------------------------------------------------------------------------------


def resolve_target(target: Any) -> Any:
    """A ``tvm.target.Target`` for ``target``: ``"cpu"`` (the host, ISA detected), an LLVM
    target string (``"llvm"``, ``"llvm -mcpu=znver4 -mattr=+avx2"``, or the JSON form) or a
    ``tvm.target.Target``. Only LLVM (CPU) targets run here."""
    tvm = require_tvm()
    if isinstance(target, tvm.target.Target):
        t = target
    elif target in (None, "cpu"):
        t = tvm.target.Target.from_device("cpu")
    elif isinstance(target, (str, dict)):
        spec: Any = target
        if isinstance(target, str) and target.lstrip().startswith("{"):
            spec = json.loads(target)
        elif isinstance(target, str) and " " in target.strip():
            # TVM 0.27 reads only the JSON form; "llvm -mcpu=x -mattr=+a,+b" becomes it
            kind, *opts = target.split()
            spec = {"kind": kind}
            for o in opts:
                k, _, v = o.lstrip("-").partition("=")
                spec[k] = (v.split(",") if k in ("mattr", "libs", "keys")
                           else int(v) if v.lstrip("-").isdigit() else (v or True))
        try:
            t = tvm.target.Target(spec)
        except Exception as e:
            raise BackendError(f"unknown TVM target {target!r}: {str(e).splitlines()[0]} "
                               f"(use 'cpu', 'llvm', 'llvm -mcpu=<cpu>' or a "
                               f"tvm.target.Target)") from None
    else:
        raise BackendError(f"target must be 'cpu', an LLVM target string or a "
                           f"tvm.target.Target, got {type(target).__name__}")
    if t.kind.name != "llvm":
        raise BackendError(f"the TVM backend runs on the CPU: target {target!r} is a "
                           f"{t.kind.name} target; use 'cpu' or an LLVM target")
    return t


# -- building and running ---------------------------------------------------------------------


def relax_pipeline() -> Any:
    """Legalize to TIR and fuse each Primitive function (rtinfer's fused nodes) into one
    kernel; no FuseOps: TVM makes no fusion decisions of its own."""
    tvm = require_tvm()
    from tvm import relax

    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])


class TVMModule:
    """The built model: ``module(*tensors)`` returns a tuple of torch tensors (DLPack views of
    the VM's outputs)."""

    def __init__(self, lowered: Lowered, executable: Any, target: Any, n_outputs: int):
        tvm = require_tvm()
        from tvm import relax

        self.relax_module = lowered.mod
        self.executable = executable
        self.target = target
        self.vm = relax.VirtualMachine(executable, tvm.cpu())
        self._main = self.vm["main"]
        self._callbacks = lowered.callbacks  # keeps the fallbacks alive with the module
        self.fallback_reasons = dict(lowered.fallbacks)
        self.rtinfer_fallback_ops = sorted(lowered.fallbacks)
        self.rtinfer_mkldnn = False
        self.n_fused_kernels = lowered.n_kernels_fused
        self.n_outputs = n_outputs
        self.tuning: Any = None  # a tvm_tune.TuneReport when built with tune=N

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = [_to_tvm(t) for t in tensors]
        try:
            out = self._main(*args)
        except Exception:
            err = take_raised()  # a fallback's own error (an index out of range), as it was
            if err is not None:
                raise err from None
            raise
        outs = list(out) if self.n_outputs > 1 else [out]
        return tuple(torch.from_dlpack(o) for o in outs)

    forward = __call__

    def __repr__(self) -> str:
        return (f"<TVMModule target={self.target.kind.name} fused kernels="
                f"{self.n_fused_kernels} fallbacks={self.rtinfer_fallback_ops}>")


def _to_tvm(t: torch.Tensor) -> Any:
    import tvm_ffi

    t = t.detach()
    if not t.is_contiguous() or t.data_ptr() % 64:
        t = t.clone(memory_format=torch.contiguous_format)
    try:
        return tvm_ffi.from_dlpack(t, require_alignment=64, require_contiguous=True)
    except Exception:  # an odd allocation: copy into a fresh (aligned) tensor
        return tvm_ffi.from_dlpack(t.clone(), require_alignment=64, require_contiguous=True)


def build_tvm_module(graph: Graph, *, target: Any = "cpu", strict: bool = False,
                     tune: int = 0, tune_root: str | os.PathLike | None = None) -> TVMModule:
    """Lower ``graph`` to Relax, build it for ``target`` and load it in the Relax VM.

    ``tune=N``: MetaSchedule tunes the kernels first, N measured trials in all, and the build
    applies its best schedules; the records persist in
    ``tvm_tune.database_dir(tuning_root(tune_root), target)`` (``tune_root``: the rtinfer cache
    directory by default), so kernels tuned before
    are not tuned again. ``TVMModule.tuning`` says what was done."""
    require_tvm()
    from tvm import relax

    tune = tvm_tune.check_tune(tune, "tvm")
    t = resolve_target(target)
    if tune:
        t = tvm_tune.tuning_target(t)
        if not all(v.type.is_static for v in graph.inputs):
            raise BackendError("TVM backend: tune=N needs static input shapes (MetaSchedule "
                               "tunes kernels for one shape); compile without dynamic dims")
    lowered = lower_graph(graph, strict=strict)
    tuning = None
    try:
        with t:
            mod = relax_pipeline()(lowered.mod)
        if tune:
            db_dir = tvm_tune.database_dir(tuning_root(tune_root), t)
            tuning = tvm_tune.tune_module(mod, t, tune, db_dir)
            executable = tvm_tune.build_tuned(mod, t, db_dir)
        else:
            executable = relax.build(mod, t)
    except BackendError:
        raise
    except Exception as e:
        what = "tuning or building" if tune else "building"
        raise BackendError(f"TVM backend: {what} @{graph.name} for {t} failed: "
                           f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    module = TVMModule(lowered, executable, t, len(graph.outputs))
    module.tuning = tuning
    return module


def coverage() -> tuple[int, int, list[str]]:
    """(ops with a lowering, ops in the table, ops without one); ``const`` counts as lowered."""
    names = OPS.names()
    missing = [n for n in names if n != "const" and n not in LOWERINGS]
    return len(names) - len(missing), len(names), missing


def fallback_ops(graph: Graph) -> list[str]:
    """The ops of ``graph`` with no lowering at all (others may still decline a node)."""
    return sorted({n.op for n in graph.nodes if n.op != "const" and n.op not in LOWERINGS})


def declines(graph: Graph) -> str | None:
    """Why ``backend="auto"`` should not build ``graph`` with TVM (ops it would hand to the torch
    backend, untuned kernels known to be far slower), or None."""
    missing = fallback_ops(graph)
    if missing:
        return f"no TVM lowering for {', '.join(missing)}"
    slow = sorted({n.op for n in graph.nodes if n.op in LOWERINGS
                   and LOWERINGS[n.op].slow_untuned})
    if slow:
        return f"untuned TVM kernels for {', '.join(slow)} are ~100x slower than oneDNN's"
    return None


__all__ = ["LOWERINGS", "TVM_DTYPES", "UNSUPPORTED", "LowerContext", "Lowered", "Lowering",
           "TVMModule", "build_tvm_module", "coverage", "declines", "fallback_ops",
           "lower_graph", "lowers", "relax_pipeline", "resolve_target"]
