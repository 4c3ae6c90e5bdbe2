"""``rtinfer.compile``: capture, optimize and generate code in one call; ``CompiledModel``;
``save`` / ``load`` of compiled artifacts.

    cm = rtinfer.compile(model, example_inputs=x)        # nn.Module, GraphModule, ONNX, Graph
    y = cm(x)                                             # torch in -> torch out, numpy -> numpy
    print(cm.report())                                    # passes, fusions, fallbacks, timings
    cm.save("out/"); cm2 = rtinfer.load("out/")

``compile`` runs three stages: capture (the model into the IR), optimize (the pipeline) and build
(a backend's module), around the compile cache (``rtinfer.cache``), which can answer the first
two from an earlier compile. ``save`` writes the artifact directory ``rtinfer.artifact``
describes; ``load`` reads it back.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from rtinfer import frontends
from rtinfer.artifact import load_torch_meta, read_artifact, write_artifact
from rtinfer.backends import auto_candidates, dispatch, resolve_backend
from rtinfer.backends.auto import AutoCandidate, generated_inputs, select_backend
from rtinfer.backends.tvm_tune import check_tune
from rtinfer.cache import CacheHit, open_cache
from rtinfer.errors import BackendError, IRError, RtinferError
from rtinfer.ir.graph import Graph, Value
from rtinfer.ir.interpreter import bind_dims
from rtinfer.ir.ops.common import to_torch
from rtinfer.ir.types import DType, TensorType
from rtinfer.kernels.build import build_seconds as native_build_seconds
from rtinfer.pass_manager import PipelineContext, get_pipeline, run_pipeline
from rtinfer.workers import accepts_workers

# the hooks every nn.Module call consults (torch mutates these tables, never rebinds them)
_GLOBAL_HOOKS = (torch.nn.modules.module._global_forward_hooks,
                 torch.nn.modules.module._global_forward_pre_hooks,
                 torch.nn.modules.module._global_backward_hooks,
                 torch.nn.modules.module._global_backward_pre_hooks)

TARGETS = ("cpu",)


def default_pipeline() -> str:
    """O3 where it is registered, else O2."""
    return "O3" if get_pipeline("O3") is not None else "O2"


@dataclass
class CompileInfo:
    """What happened during compilation (``CompiledModel.report()`` prints it)."""

    frontend: str = ""
    pipeline: str = ""
    backend: str = "torch"
    backend_requested: str = "torch"
    trainable: bool = False
    mkldnn: bool = False
    fallbacks: list[str] = field(default_factory=list)
    passes: list[tuple[str, bool, dict[str, int], float]] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    cache: str = "off"  # "hit", "miss" or "off"
    cache_key: str = ""
    cache_dir: str = ""
    cache_by: str = ""  # a hit found by "model" (its fingerprint: capture skipped) or "ir"
    cold_timings: dict[str, float] = field(default_factory=dict)  # of the compile that stored
    # backend="auto": {"choice", "skipped": {backend: why}, "cpu", "note", and where measured
    # "ms": {backend: median ms}, "stats", "verdict", "tie", "measured"} (rtinfer.backends.auto
    # .select_backend; stored in the compile cache, so a hit on this CPU does not measure again:
    # it adds "remembered": True)
    auto: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    int8: dict[str, Any] | None = None  # precision="int8": rtinfer.int8.Int8Report's record
    bf16: dict[str, Any] | None = None  # precision="bf16": rtinfer.bf16.bf16_for_compile's
    simplify: dict[str, Any] | None = None  # prune=: rtinfer.simplify.SimplifyReport's record

    def artifact_options(self) -> dict[str, Any]:
        """The compile options an artifact's manifest records."""
        return {"backend": self.backend, "pipeline": self.pipeline, "trainable": self.trainable,
                "mkldnn": self.mkldnn}

    def cache_record(self) -> dict[str, Any]:
        """What the compile cache keeps of this compile, for a hit to report."""
        return {"frontend": self.frontend, "pipeline": self.pipeline,
                "passes": [list(p) for p in self.passes], "ops_before": self.ops_before,
                "ops_after": self.ops_after, "cold_timings": self.timings,
                "auto": self.auto or None, "int8": self.int8, "bf16": self.bf16}


class CompiledModel:
    """A compiled model: call it like the eager model.

    ``ir`` is the optimized graph, ``module`` the backend's module (the torch backend's is a
    ``torch.fx.GraphModule`` whose parameters are trainable when compiled with
    ``trainable=True``), ``input_names`` the names its inputs are passed by.
    """

    def __init__(self, graph: Graph, module: Any, info: CompileInfo,
                 input_names: list[str] | None = None):
        self.ir = graph
        self.module = module
        self.info = info
        self.input_names = input_names or _input_names(graph)
        # checked once here rather than on every call: with no symbolic dims there is nothing
        # to bind across inputs
        self._symbolic = any(not v.type.is_static for v in graph.inputs)
        # (name, type, torch dtype, static shape or None) per input
        self._expect = [(name, v.type, v.type.dtype.torch,
                         tuple(v.type.shape) if v.type.is_static else None)
                        for name, v in zip(self.input_names, graph.inputs, strict=True)]
        meta = graph.meta.get("torch")
        # the common call, checked in one pass: exactly the static dtypes and shapes, tensors
        # given positionally (where the eager model takes tensors only)
        positional = meta is None or (meta.get("in_spec") is not None and all(
            k == "tensor" for k in meta["input_kinds"]) and len(meta["input_kinds"]) == len(
            graph.inputs))
        self._fast = tuple((dtype, static) for _, _, dtype, static in self._expect) \
            if positional and not self._symbolic else None
        # one output tensor, returned as is (no pytree to rebuild)
        self._single = len(graph.outputs) == 1 and (meta is None or (
            meta["out_spec"].is_leaf() and list(meta["outputs"]) == [("out", 0)]))
        # ONNX inputs the graph was specialized on (a shape, axes, pads, k or scales given as an
        # input, built for its example value): each call must pass that value
        self._specialized = [(i, torch.from_numpy(np.array(a)))
                             for i, a in graph.meta.get("onnx_specialized", {}).values()]
        if self._specialized:
            self._fast = None  # the fast path checks types only

    @property
    def module(self) -> Any:
        return self._module

    @module.setter
    def module(self, module: Any) -> None:
        self._module = module
        # an nn.Module without hooks is run by its forward (nn.Module.__call__ and fx's
        # wrapper cost microseconds): the hook tables it would consult, looked at per call
        self._hook_tables = (
            module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
            module._backward_pre_hooks) if isinstance(module, torch.nn.Module) else None

    # -- calling ------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fast = self._fast
        if fast is not None and not kwargs and len(args) == len(fast):
            for x, (dtype, shape) in zip(args, fast, strict=True):
                if type(x) is not torch.Tensor or x.dtype is not dtype or x.shape != shape \
                        or not x.is_cpu:
                    break
            else:
                outs = self._run(args)
                if self._single:
                    return outs[0]
                return self._outputs(outs, False)
        flat = self._flat_inputs(args, kwargs)
        as_numpy = bool(flat) and all(isinstance(a, np.ndarray) for a in flat)
        return self._outputs(self._run(self._check_inputs(flat)), as_numpy)

    def bind_inputs(self, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        """The graph's input tensors for a call with these arguments, checked as a call
        checks them (a ``BackendError`` names the input that does not fit)."""
        return self._check_inputs(self._flat_inputs(args, kwargs))

    def _run(self, tensors: Any) -> Any:
        """The module's outputs; without autograd unless trainable with grad enabled."""
        m = self._module
        hooks = self._hook_tables
        run = m.forward if hooks is not None and not any(hooks) and not any(_GLOBAL_HOOKS) \
            and m._compiled_call_impl is None else m
        if not torch.is_grad_enabled() or self.info.trainable:
            return run(*tensors)
        torch._C._set_grad_enabled(False)  # torch.no_grad(), without the context manager
        try:
            return run(*tensors)
        finally:
            torch._C._set_grad_enabled(True)

    def _outputs(self, outs: Any, as_numpy: bool) -> Any:
        if as_numpy:
            outs = [_numpy_out(o.detach().numpy(), v)
                    for o, v in zip(outs, self.ir.outputs, strict=True)]
        if self._single:
            return outs[0]
        if "torch" in self.ir.meta:
            from rtinfer.frontends.torch_frontend import unflatten_outputs

            return unflatten_outputs(self.ir, outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _flat_inputs(self, args: tuple, kwargs: dict) -> list[Any]:
        n = len(self.ir.inputs)
        meta = self.ir.meta.get("torch")
        if meta is not None and meta.get("in_spec") is not None:
            kinds = meta["input_kinds"]
            if not kwargs and len(args) == len(kinds) == n and all(
                    k == "tensor" for k in kinds) and all(
                    isinstance(a, (torch.Tensor, np.ndarray)) for a in args):
                return list(args)  # the common call: tensors, positionally (no pytree walk)
            kw_names = list(meta["in_spec"].child(1).context)
            unknown = sorted(set(kwargs) - set(kw_names))
            if unknown:
                raise BackendError(f"unexpected input(s) {', '.join(map(repr, unknown))}; "
                                   f"the model takes {self._expected()}")
            ordered = {k: kwargs[k] for k in kw_names if k in kwargs}
            leaves = pytree.tree_leaves((tuple(args), ordered))
            if len(leaves) == len(meta["input_kinds"]):
                return [x for x, k in zip(leaves, meta["input_kinds"], strict=True)
                        if k == "tensor"]
            if not kwargs and len(args) == n:  # the graph's inputs, positionally
                return list(args)
            raise BackendError(f"expected {n} input(s) {self._expected()}, got "
                               f"{len(leaves)}")
        if kwargs:
            unknown = sorted(set(kwargs) - set(self.input_names))
            if unknown:
                raise BackendError(f"unexpected input(s) {', '.join(map(repr, unknown))}; "
                                   f"the model takes {self._expected()}")
            given = dict(zip(self.input_names, args, strict=False)) | kwargs
            missing = [k for k in self.input_names if k not in given]
            if missing or len(args) > n:
                raise BackendError(f"expected {n} input(s) {self._expected()}, got "
                                   f"{len(args) + len(kwargs)}"
                                   + (f" (missing {', '.join(missing)})" if missing else ""))
            return [given[k] for k in self.input_names]
        if len(args) != n:
            raise BackendError(f"expected {n} input(s) {self._expected()}, got {len(args)}")
        return list(args)

    def _sizes_hint(self, name: str, t: Any, x: torch.Tensor, dtype: torch.dtype) -> str:
        """When only sizes differ from a static dim, say how to compile for other sizes."""
        if x.dtype != dtype or x.dim() != t.rank:
            return ""
        fixed = [i for i, (d, n) in enumerate(zip(t.shape, x.shape, strict=True))
                 if isinstance(d, int) and d != n]
        if not fixed:
            return ""
        axes = ", ".join(f"{i}: {'B' if i == 0 else f'D{i}'!r}" for i in fixed)
        return (f". The model was compiled for these sizes (static shapes, from the example "
                f"inputs); to call it with others, compile with "
                f"dynamic_dims={{{name!r}: {{{axes}}}}} (symbolic sizes), or compile once "
                f"per size")

    def _expected(self) -> str:
        return "(" + ", ".join(f"{k}: {v.type}" for k, v in zip(
            self.input_names, self.ir.inputs, strict=True)) + ")"

    def _check_inputs(self, flat: list[Any]) -> list[torch.Tensor]:
        """Each input's dtype, rank and static dims, then the symbolic dims bound consistently
        across inputs; errors name the input, the expected type and the given one."""
        tensors = []
        for (name, t, dtype, static), x in zip(self._expect, flat, strict=True):
            if isinstance(x, np.ndarray):
                x = to_torch(x)
            if not isinstance(x, torch.Tensor):
                raise BackendError(f"input {name!r}: expected {t}, got a "
                                   f"{type(x).__name__} (pass a torch tensor or numpy array)")
            if not x.is_cpu:  # every backend runs on the CPU (native would read a bad address)
                raise BackendError(f"input {name!r} is on device {x.device}; this model was "
                                   f"compiled for the CPU: pass CPU tensors (x.cpu())")
            if static is not None:
                ok = x.dtype == dtype and x.shape == static
            else:
                ok = x.dtype == dtype and x.dim() == t.rank and all(
                    not isinstance(d, int) or d == n
                    for d, n in zip(t.shape, x.shape, strict=True))
            if not ok:
                raise BackendError(f"input {name!r}: expected {t}, got {_describe(x)}"
                                   + self._sizes_hint(name, t, x, dtype))
            tensors.append(x)
        for i, value in self._specialized:
            if not torch.equal(tensors[i], value):
                raise BackendError(
                    f"input {self.input_names[i]!r} = {tensors[i].tolist()}: the model was "
                    f"compiled for {value.tolist()}, the value in the example inputs (it is a "
                    "shape, axes, pads, k or scales operand the graph was specialized on); "
                    "compile again with example inputs holding the new value")
        if not self._symbolic:
            return tensors
        try:
            bind_dims([v.type for v in self.ir.inputs], [tuple(x.shape) for x in tensors])
        except ValueError as e:
            i = getattr(e, "index", 0)
            raise BackendError(f"input {self.input_names[i]!r}: expected {self.ir.inputs[i].type}, "
                               f"got {_describe(tensors[i])} ({e})") from None
        return tensors

    # -- reporting ----------------------------------------------------------------------------

    @property
    def fused_ops(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.info.ops_after.items()) if k.startswith("fused_")}

    def report(self) -> str:
        i = self.info
        nodes_before, nodes_after = sum(i.ops_before.values()), sum(i.ops_after.values())
        lines = [f"rtinfer compiled model @{self.ir.name}",
                 f"  frontend: {i.frontend}",
                 f"  pipeline: {i.pipeline or '(none)'}: {nodes_before} -> {nodes_after} nodes"]
        for label, changed, stats, seconds in i.passes:
            st = ", ".join(f"{k}={v}" for k, v in stats.items() if v)
            lines.append(f"    {label:<24} {'changed' if changed else '-':<8} "
                         f"{seconds * 1e3:8.2f} ms  {st}")
        fused = self.fused_ops
        lines.append("  fused ops: " + (", ".join(f"{k} x{v}" for k, v in fused.items())
                                        or "none"))
        backend = i.backend if i.backend_requested == i.backend else \
            f"{i.backend} ({i.backend_requested} -> {i.backend})"
        lines.append(f"  backend: {backend}")
        native = getattr(self.module, "stats", None) if i.backend == "native" else None
        if native is not None:
            kernels = ", ".join(f"{k} x{v}" for k, v in sorted(native.kernels.items()))
            lines.append(f"  native plan: {native.steps} steps ({kernels}); arena "
                         f"{native.arena_bytes / 2**20:.2f} MiB"
                         + (f"; threads: {native.threads}" if native.threads else ""))
            bound = getattr(self.module, "finite_bound", None)
            if bound is not None:
                lines.append(f"  finite fast path: relu/clip fused into oneDNN for inputs "
                             f"finite and within +-{bound:.3g}; a call outside runs the plan "
                             f"with NaN-keeping clamps")
        if i.auto:
            lines += ["  " + line for line in _auto_lines(i.auto)]
        if getattr(self.module, "tuning", None) is not None:
            lines.append("  " + self.module.tuning.summary())
        lines.append(f"  oneDNN fused primitives: {'yes' if i.mkldnn else 'no'}"
                     + (" (trainable: differentiable ATen path)" if i.trainable else ""))
        lines.append("  fallbacks: " + (f"{', '.join(i.fallbacks)} ({_fallback_note(i.backend)})"
                                        if i.fallbacks else "none"))
        lines.append("  timings: " + ", ".join(f"{k} {v * 1e3:.1f} ms"
                                               for k, v in i.timings.items()))
        if i.int8:
            from rtinfer.int8 import Int8Report

            lines += ["  " + line for line in Int8Report.from_record(i.int8).table().splitlines()]
        if i.bf16:
            from rtinfer.bf16 import report_lines

            lines += ["  " + line for line in report_lines(i.bf16)]
        if i.simplify:
            from rtinfer.simplify import simplify_lines

            lines += ["  " + line for line in simplify_lines(i.simplify)]
        lines.append("  " + self._cache_line())
        return "\n".join(lines)

    def _cache_line(self) -> str:
        i = self.info
        if i.cache == "off":
            return "cache: off"
        where = f"key {i.cache_key[:12]} in {i.cache_dir}"
        total = i.timings.get("total", 0.0) * 1e3
        if i.cache == "hit":
            cold = i.cold_timings.get("total", 0.0) * 1e3
            skipped = "capture and pipeline" if i.cache_by == "model" else "pipeline"
            return (f"cache: hit ({where}; {skipped} skipped): cold compile {cold:.1f} ms, "
                    f"this warm compile {total:.1f} ms")
        return f"cache: miss ({where}; stored): cold compile {total:.1f} ms"

    def __repr__(self) -> str:
        return (f"<CompiledModel @{self.ir.name}: {len(self.ir.inputs)} inputs, "
                f"{len(self.ir.nodes)} nodes, backend {self.info.backend}>")

    # -- export, save ---------------------------------------------------------------------------

    def export_onnx(self, path: str | os.PathLike, **options: Any):
        """The optimized IR as an ONNX model (``rtinfer.export_onnx`` options)."""
        from rtinfer.frontends import export_onnx

        return export_onnx(self._graph_with_current_weights(), path, **options)

    def _graph_with_current_weights(self) -> Graph:
        """The IR, with the module's (possibly fine-tuned) parameters as its constants."""
        if not self.info.trainable:
            return self.ir
        g = self.ir.clone()
        state = dict(self.module.named_parameters())
        names = getattr(self.module, "rtinfer_constants", {})
        for old, new in zip(self.ir.nodes, g.nodes, strict=True):
            name = names.get(id(old.out)) if old.op == "const" else None
            if name in state:
                arr = state[name].detach().numpy().copy()
                arr.setflags(write=False)
                new.attrs["value"] = arr
        return g

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the artifact directory (created if needed) and return its path."""
        spec = self.ir.meta.get("onnx_specialized")  # the call-time check travels with it
        extra = {"onnx_specialized": {n: {"index": i, "dtype": str(a.dtype), "value": a.tolist()}
                                      for n, (i, a) in spec.items()}} if spec else None
        return write_artifact(Path(directory), self._graph_with_current_weights(),
                              self.input_names, self.info.artifact_options(), extra)


def _auto_lines(auto: dict[str, Any]) -> list[str]:
    """``auto: tvm; tvm faster by 30% than torch (...)``, then when and on which CPU it was
    measured, or, for a choice the cache remembered, "remembered from <date> on this CPU (<cpu
    key>)", and the evidence (each candidate's median, quartiles and calls); then what was
    skipped and why."""
    lines = [f"auto: {auto['choice']}" + (f"; {auto['verdict']}" if auto.get("verdict") else "")]
    evidence = _auto_evidence(auto)
    if auto.get("remembered"):
        when = f" from {str(auto['measured'])[:10]}" if auto.get("measured") else ""
        cpu = f" on this CPU ({auto['cpu']})" if auto.get("cpu") else ""
        lines.append(f"  remembered{when}{cpu}, not measured again"
                     + ("; measured then:" if evidence else ""))
    elif evidence:
        lines.append(f"  measured {str(auto.get('measured', ''))[:16].replace('T', ' ')} UTC on "
                     f"{auto.get('cpu')}:")
    lines += [f"    {line}" for line in evidence]
    notes = [auto["note"]] if auto.get("note") else []
    notes += [f"{k} skipped: {why}" for k, why in (auto.get("skipped") or {}).items()]
    return lines + [f"  {note}" for note in notes]


def _auto_evidence(auto: dict[str, Any]) -> list[str]:
    """``torch 0.412 ms (quartiles 0.405-0.420, 40 calls)``, one per candidate measured (a
    record without quantiles: the medians alone)."""
    def ms(v: float) -> str:
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"

    stats = auto.get("stats")
    if not stats:
        return [f"{k} {ms(v)} ms" for k, v in (auto.get("ms") or {}).items()]
    return [f"{k} {ms(st['median'])} ms (quartiles {ms(st['p25'])}-{ms(st['p75'])}, "
            f"{st['calls']} calls" + (f"; out: {st['out']}" if st.get("out") else "") + ")"
            for k, st in stats.items()]


def _fallback_note(backend: str) -> str:
    """How the fallback ops of ``backend`` 's module run: the torch backend runs an op it has
    no emitter for through the op table's NumPy reference; TVM and native hand the node to the
    torch backend."""
    if backend == "torch":
        return "NumPy reference, not differentiable"
    return "run by the torch backend"


def _describe(x: torch.Tensor) -> str:
    try:
        dt = DType.from_torch(x.dtype)
    except IRError:
        return f"a {x.dtype} tensor of shape {list(x.shape)}"
    return str(TensorType(dt, tuple(int(n) for n in x.shape)))


def _numpy_out(a: np.ndarray, v: Value) -> np.ndarray:
    # torch has no bfloat16 numpy view; hand back the IR's numpy dtype
    return a if a.dtype == v.type.dtype.np else a.astype(v.type.dtype.np)


def _input_names(graph: Graph) -> list[str]:
    meta = graph.meta.get("torch")
    if meta is not None and len(meta.get("input_names", ())) == len(graph.inputs):
        return list(meta["input_names"])
    return [v.name or f"input_{i}" for i, v in enumerate(graph.inputs)]


# -- compile ----------------------------------------------------------------------------------


@accepts_workers  # workers=: where compile-time work fans out (rtinfer.workers)
def compile(model: Any, target: Any = "cpu", example_inputs: Any = None,
            pipeline: str | None = None, backend: str = "auto", dynamic_dims: Any = None,
            strict: bool = False, trainable: bool = False, mkldnn: bool | None = None,
            verify_each: bool = False,
            cache: bool | str | os.PathLike = True, tune: int = 0, precision: str = "fp32",
            calibration: Any = None, accuracy_budget: float | None = None,
            prune: Any = None, train_data: Any = None, validation: Any = None,
            distill_steps: int | None = None, distill_loss: str | None = None) -> CompiledModel:
    """Compile ``model`` (``nn.Module``, ``torch.fx.GraphModule``, ``onnx.ModelProto``, a path
    to an ``.onnx`` file, or an rtinfer ``Graph``) for ``target``.

    ``pipeline``: a pipeline string or named pipeline (default: O3 where registered, else O2).
    ``backend``: ``"auto"``, ``"torch"``, ``"native"`` (rtinfer's C++ executor and kernels;
    the torch backend, with a warning, where it cannot be built) or ``"tvm"`` (whose ``target``
    may also be an LLVM target string or a ``tvm.target.Target``); ``"auto"`` builds each
    backend of ``rtinfer.backends.AUTO_CANDIDATES`` that serves the target and does not decline
    the graph, times it briefly on the example inputs and keeps the fastest (the cache
    remembers the choice). ``dynamic_dims``: ``{input: {axis: "B"}}`` for the torch frontend,
    ``{input: {axis: "B"}}`` or names for ONNX. ``strict``: an op the backend has no lowering
    for is an error instead of a fallback (the torch backend runs such an op's NumPy
    reference; TVM and native hand it to the torch backend). ``trainable``: parameters require
    grad and the module stays differentiable (no oneDNN inference-only primitives). ``cache``:
    ``True`` (``$RTINFER_CACHE_DIR``, else ``~/.cache/rtinfer``), a directory, or ``False``: a
    model compiled before with the same captured IR, target, backend, pipeline and versions
    skips the pipeline, and an ``nn.Module`` or ONNX model whose fingerprint (code, weights,
    input types) matches one compiled before skips capture too (``rtinfer.cache``;
    ``verify_each`` always runs the pipeline). ``tune=N`` (``backend="tvm"``): MetaSchedule
    tunes the TVM kernels, N measured trials in all, before the build; its records persist in
    ``<cache>/tvm-tune/<target>/`` (with ``cache=False``, in a temporary directory), so a later
    compile of the same kernels tunes nothing (``rtinfer.backends.tvm_tune``). The user's model
    is never modified. ``workers``: ``"ray://host:port"`` fans the int8 per-layer sensitivity
    and MetaSchedule's builds and measurements (``tune=N``, ``rtinfer.backends.tvm_ray``)
    out over that Ray cluster (default: over Ray where ``ray.init`` was called, else local;
    ``"local"``); the result is the same either way (``rtinfer.workers``).

    ``precision``: ``"fp32"``, ``"int8"`` or ``"bf16"``. ``"int8"`` (``rtinfer.int8``) needs
    ``calibration``, an iterable of input tuples like ``example_inputs``: the optimized graph is
    calibrated on it, each layer's int8 output error and int8 vs fp32 kernel time measured, and
    layers go back to fp32 where int8 is not faster or, most sensitive first, until the output
    error is within ``accuracy_budget`` (the largest relative output error allowed, e.g. 0.01;
    ``None``: no bound); ``report()`` has the per-layer table. The calibration data's digest is
    part of the compile cache's key. ``"bf16"`` (``rtinfer.bf16``, docs/bf16.md): conv2d, linear
    and matmul layers with constant weights compute in bf16 (bf16 weights, f32 accumulation and
    output) where the CPU has AVX512_BF16 or AMX-BF16; elsewhere (or under
    ``$RTINFER_CPU_ISA``) the model compiles fp32 with a ``Bf16Fallback`` warning, and
    ``report()`` says which layers run bf16 or why none do.

    ``prune`` (``rtinfer.simplify``): ``rtinfer.prune``'s ratio, then distillation on
    ``train_data`` (``distill_steps``, ``distill_loss``), then ``precision``, all within one
    ``accuracy_budget`` measured on the held-out ``validation`` batches (with labels: top-1
    drop as a fraction; else relative output error); ``report()`` shows each step and every
    back-off. The pipeline trains: the compile cache is not used.
    """
    from rtinfer.bf16 import cache_tag as bf16_tag
    from rtinfer.int8 import INT8_VERSION, check_precision

    pruning = any(v is not None for v in (prune, train_data, validation, distill_steps,
                                          distill_loss))
    # with prune= the budget bounds the whole pipeline, not int8 alone (rtinfer.simplify)
    check_precision(precision, calibration, None if pruning else accuracy_budget)
    resolved = resolve_backend(backend)
    tune = check_tune(tune, resolved)
    candidates = auto_candidates(target, trainable) if resolved == "auto" else []
    # the TVM backend checks its own targets
    if (resolved == "auto" and not candidates) or (resolved == "torch" and target not in TARGETS):
        raise BackendError(f"unknown target {target!r}; rtinfer compiles for: "
                           f"{', '.join(TARGETS)} (CUDA comes with the native backend)")
    plan = None
    if pruning:
        from rtinfer.simplify import prepare

        plan = prepare(model, example_inputs, prune, precision=precision, train_data=train_data,
                       validation=validation, accuracy_budget=accuracy_budget,
                       distill_steps=distill_steps, distill_loss=distill_loss, backend=resolved)
        model, accuracy_budget, cache = plan.student, None, False
    info = CompileInfo(backend=resolved, backend_requested=backend, trainable=trainable,
                       pipeline=default_pipeline() if pipeline is None else pipeline,
                       precision=precision)
    # the data passes read is shared by the run (and its digest is in the cache key)
    batches = None if calibration is None else list(calibration)
    pctx = PipelineContext(data={} if batches is None else {"calibration": batches})
    # a tuned build is another result than an untuned one: the tuning budget is in the key, and
    # so is the digest of the data the passes read
    # and so are the precision and its budget (fp32 keys stay as they were)
    digest = pctx.data_digest() if precision == "fp32" else \
        f"{pctx.data_digest()};precision={precision};budget={accuracy_budget};" \
        f"int8={INT8_VERSION}" + (f";{bf16_tag()}" if precision == "bf16" else "")
    compile_cache = open_cache(cache, str(target), info.pipeline,
                               f"{resolved}:tune={tune}" if tune else resolved,
                               data_digest=digest)
    info.cache_dir = compile_cache.where
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    hit: CacheHit | None = None
    if compile_cache.state != "off" and not verify_each and not isinstance(model, Graph):
        hit = compile_cache.recall(model, example_inputs, dynamic_dims)
        timings["fingerprint" if hit is None else "fingerprint + cache lookup"] = \
            time.perf_counter() - t0
    if hit is None:
        t1 = time.perf_counter()
        graph = _capture(model, example_inputs, dynamic_dims, info)  # 1. capture
        if "onnx_specialized" in graph.meta:  # the model's fingerprint does not see the values
            compile_cache.fingerprint_key = None
        timings[f"capture ({info.frontend})"] = time.perf_counter() - t1
        # the key and the lookup count as "cache lookup" on a hit, as "optimize" on a miss
        t1 = time.perf_counter()
        info.ops_before = graph.op_counts()
        hit = compile_cache.lookup(graph, read=not verify_each)
        if hit is None:
            _optimize(graph, info, verify_each, pctx)  # 2. optimize
            timings["optimize"] = time.perf_counter() - t1
            if precision == "int8":
                t1 = time.perf_counter()
                graph = _int8(graph, model, batches, accuracy_budget, resolved, info, plan)
                timings["int8 (calibrate, measure, lower)"] = time.perf_counter() - t1
            elif precision == "bf16":
                from rtinfer.bf16 import bf16_for_compile

                t1 = time.perf_counter()
                graph, info.bf16 = bf16_for_compile(graph)
                info.ops_after = graph.op_counts()
                if info.bf16["available"]:
                    timings["bf16 (to-bf16)"] = time.perf_counter() - t1
        else:
            timings["cache lookup"] = time.perf_counter() - t1
    if hit is not None:
        graph = hit.graph
        _recalled(info, hit)
    if precision == "bf16":
        from rtinfer.bf16 import warn_fallback

        warn_fallback(info.bf16)
    info.cache, info.cache_key = compile_cache.state, compile_cache.key
    t2 = time.perf_counter()
    options = {"target": target, "trainable": trainable, "mkldnn": mkldnn, "strict": strict}
    if tune:  # the tuning records live beside the compile cache's entries
        options.update(tune=tune, tune_root=compile_cache.root)
    built_before = native_build_seconds()
    module, measuring = _build(graph, info, candidates, hit, example_inputs, options)  # 3. build
    t3 = time.perf_counter()
    # the native extension's one-time build (a minute or two, on first use) is not the model's
    building = native_build_seconds() - built_before
    timings["codegen"] = t3 - t2 - measuring - building
    if building:
        timings["native kernels build (once per CPU level)"] = building
    if measuring:
        timings["measure (auto)"] = measuring
    info.timings = {**timings, "total": t3 - t0 - building}
    cm = CompiledModel(graph, module, info)
    if plan is not None:
        info.simplify = plan.finish(cm, info.backend)
    if info.cache == "miss":
        info.cold_timings = dict(info.timings)
    compile_cache.store(graph, cm.input_names, info.artifact_options(), info.cache_record())
    return cm


def _capture(model: Any, example_inputs: Any, dynamic_dims: Any, info: CompileInfo) -> Graph:
    """Stage 1: the model as a new IR graph (a ``Graph`` is cloned: the user's is kept)."""
    if isinstance(model, Graph):
        info.frontend = "rtinfer IR"
        return model.clone()
    graph = frontends.capture(model, example_inputs, dynamic_dims=dynamic_dims)
    info.frontend = "torch" if isinstance(model, torch.nn.Module) else "onnx"
    return graph


def _optimize(graph: Graph, info: CompileInfo, verify_each: bool,
              pctx: PipelineContext) -> None:
    """Stage 2: the pipeline, in place."""
    result = run_pipeline(graph, info.pipeline, verify_each=verify_each, pipeline_ctx=pctx)
    info.passes = [(r.label, r.changed, dict(r.stats), r.seconds) for r in result.passes]
    info.ops_after = graph.op_counts()


def _int8(graph: Graph, model: Any, batches: list, accuracy_budget: float | None,
          backend: str, info: CompileInfo, plan: Any = None) -> Graph:
    """Stage 2b: the int8 graph of the optimized one, with calibration batches bound to the
    graph's inputs as a call binds its arguments."""
    from rtinfer.int8 import quantize_for_compile
    from rtinfer.passes.quant.calibrate import calibration_batches

    if "torch" in graph.meta:
        from rtinfer.frontends.torch_frontend import example_args

        binder = CompiledModel(graph, None, CompileInfo())
        bound = []
        for b, batch in enumerate(batches):
            try:
                args, kwargs = example_args(model, batch)
                bound.append(binder.bind_inputs(*args, **kwargs))
            except (RtinferError, TypeError, ValueError) as e:
                from rtinfer.errors import QuantizeError

                raise QuantizeError(f"calibration batch {b}: {e}") from None
        batches = bound
    if plan is not None:  # prune=: int8 within what is left of the pipeline's budget
        from rtinfer.frontends.torch_frontend import example_args

        binder = CompiledModel(graph, None, CompileInfo())

        def bind(batch: Any) -> list[torch.Tensor]:
            args, kwargs = example_args(model, batch)
            return binder.bind_inputs(*args, **kwargs)

        qgraph, report = plan.quantize(graph, calibration_batches(graph, batches), bind)
    else:
        qgraph, report = quantize_for_compile(graph, calibration_batches(graph, batches),
                                              accuracy_budget, backend=backend)
    info.int8 = report.to_record()
    info.ops_after = qgraph.op_counts()
    return qgraph


def _recalled(info: CompileInfo, hit: CacheHit) -> None:
    """Stages 1 (a hit by the model's fingerprint) or 2 answered by the cache: what the cold
    compile reported."""
    record = hit.record
    info.cache_by = hit.by
    if hit.by == "model":
        info.frontend = record.get("frontend", "")
    info.passes = [tuple(p) for p in record.get("passes", [])]
    info.ops_before = record.get("ops_before", info.ops_before)
    info.ops_after = hit.graph.op_counts()
    info.cold_timings = dict(record.get("cold_timings", {}))
    info.int8 = record.get("int8")
    info.bf16 = record.get("bf16")


def _build(graph: Graph, info: CompileInfo, candidates: list[AutoCandidate],
           hit: CacheHit | None, example_inputs: Any, options: dict[str, Any]
           ) -> tuple[Any, float]:
    """Stage 3: the backend's module and the seconds ``backend="auto"`` spent measuring (it
    builds the choice a cache hit remembers without measuring)."""
    if info.backend == "auto":
        module, info.backend, info.auto, measuring = select_backend(
            graph, candidates, hit.record.get("auto") if hit is not None else None,
            functools.partial(_timing_inputs, graph, example_inputs), options)
    else:
        module, measuring = dispatch.build(info.backend, graph, **options), 0.0
        info.backend = getattr(module, "rtinfer_backend", info.backend)  # native -> torch
    info.fallbacks = list(module.rtinfer_fallback_ops)
    info.mkldnn = bool(module.rtinfer_mkldnn)
    return module, measuring


def _timing_inputs(graph: Graph, example_inputs: Any, module: Any) -> list[torch.Tensor] | None:
    """What ``backend="auto"`` times ``module`` on: the example inputs, bound to the graph's
    inputs as a call of the compiled model binds them, else seeded inputs of the graph's
    input types (None where they have symbolic dims)."""
    if example_inputs is not None and "torch" in graph.meta:
        from rtinfer.frontends.torch_frontend import example_args

        try:
            args, kwargs = example_args(module, example_inputs)
            return CompiledModel(graph, module, CompileInfo()).bind_inputs(*args, **kwargs)
        except (RtinferError, TypeError, ValueError):
            pass
    return generated_inputs(graph)


# -- load -------------------------------------------------------------------------------------


def load(directory: str | os.PathLike, *, mkldnn: bool | None = None,
         backend: str | None = None) -> CompiledModel:
    """Load an artifact written by ``CompiledModel.save``; a missing, corrupted or
    incompatible artifact is an ``ArtifactError``. ``backend``: the backend to build (default:
    the one that compiled it when that is torch or native; a TVM-compiled model runs in the
    torch backend, and the report says so)."""
    root = Path(directory)
    graph, manifest = read_artifact(root)
    torch_meta = load_torch_meta(manifest.get("torch_io"))
    if torch_meta is not None:
        graph.meta["torch"] = torch_meta
    if manifest.get("onnx_specialized"):
        graph.meta["onnx_specialized"] = _load_specialized(manifest["onnx_specialized"], graph,
                                                           root)
    saved = str(manifest.get("backend", "torch"))
    trainable = bool(manifest.get("trainable"))
    chosen = backend or (saved if saved in ("torch", "native") else "torch")
    if chosen not in ("torch", "native"):
        raise BackendError(f"load(backend={chosen!r}): a loaded model builds with 'torch' or "
                           f"'native'")
    info = CompileInfo(frontend=f"loaded from {root}", pipeline=manifest.get("pipeline", ""),
                       backend=chosen, backend_requested=saved, trainable=trainable)
    info.ops_before = info.ops_after = graph.op_counts()
    t0 = time.perf_counter()
    module = dispatch.build(chosen, graph, target="cpu", trainable=trainable, mkldnn=mkldnn,
                            strict=False)
    info.backend = getattr(module, "rtinfer_backend", chosen)
    info.fallbacks = list(module.rtinfer_fallback_ops)
    info.mkldnn = bool(module.rtinfer_mkldnn)
    info.timings = {"codegen": time.perf_counter() - t0}
    names = manifest.get("input_names")
    names = [str(n) for n in names] if isinstance(names, list) and len(names) == len(
        graph.inputs) else None
    return CompiledModel(graph, module, info, names)


def _load_specialized(saved: Any, graph: Graph, root: Path) -> dict[str, tuple[int, np.ndarray]]:
    """The manifest's ``onnx_specialized`` (see ``CompiledModel.save``) as graph meta; a
    malformed entry is an ``ArtifactError``."""
    from rtinfer.errors import ArtifactError

    out = {}
    try:
        for name, e in saved.items():
            i = int(e["index"])
            if not 0 <= i < len(graph.inputs):
                raise ValueError(f"index {i} out of range")
            out[str(name)] = (i, np.array(e["value"], dtype=np.dtype(e["dtype"])).reshape(
                graph.inputs[i].type.shape))
    except Exception as e:  # any malformed field: the manifest is corrupted
        raise ArtifactError(f"{root}/manifest.json: malformed onnx_specialized entry "
                            f"({type(e).__name__}: {e})") from None
    return out


__all__ = ["CompileInfo", "CompiledModel", "TARGETS", "compile", "default_pipeline", "load"]
