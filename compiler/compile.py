"""``rtinfer.compile``: capture, optimize and generate code in one call; ``CompiledModel``;
``save`` / ``load`` of compiled artifacts.

    cm = rtinfer.compile(model, example_inputs=x)        # nn.Module, GraphModule, ONNX, Graph
    y = cm(x)                                             # torch in -> torch out, numpy -> numpy
    print(cm.report())                                    # passes, fusions, fallbacks, timings
    cm.save("out/"); cm2 = rtinfer.load("out/")

An artifact directory holds ``graph.ir`` (the optimized IR; constants of more than 16 elements
elided to their digests), ``weights.npz`` (the elided constants' bytes, keyed by digest) and
``manifest.json`` (format version, rtinfer/torch versions, compile options, the eager model's
input/output structure and the sha256 of both files). Loading checks all of it.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from rtinfer.errors import ArtifactError, BackendError, ParseError, RtinferError
from rtinfer.ir.graph import Graph, Value
from rtinfer.ir.interpreter import bind_dims
from rtinfer.ir.ops.common import to_torch

# the hooks every nn.Module call consults (torch mutates these tables, never rebinds them)
_GLOBAL_HOOKS = (torch.nn.modules.module._global_forward_hooks,
                 torch.nn.modules.module._global_forward_pre_hooks,
                 torch.nn.modules.module._global_backward_hooks,
                 torch.nn.modules.module._global_backward_pre_hooks)

FORMAT = "rtinfer.compiled-model"
FORMAT_VERSION = 1
TARGETS = ("cpu",)


def default_pipeline() -> str:
    """O3 where it is registered, else O2."""
    from rtinfer.pass_manager import get_pipeline

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
    # backend="auto": {"choice", "ms": {backend: median ms}, "skipped": {backend: why},
    # "note", "remembered"} (stored in the compile cache, so a hit does not measure again)
    auto: dict[str, Any] = field(default_factory=dict)


class CompiledModel:
    """A compiled model: call it like the eager model.

    ``ir`` is the optimized graph, ``module`` the generated ``torch.fx.GraphModule`` (its
    parameters are trainable when compiled with ``trainable=True``).
    """

    def __init__(self, graph: Graph, module: torch.nn.Module, info: CompileInfo):
        from rtinfer.backends.torch_backend import TORCH_DTYPES

        self.ir = graph
        self.module = module
        self.info = info
        self._names = _input_names(graph)
        # checked once here rather than on every call: with no symbolic dims there is nothing
        # to bind across inputs
        self._symbolic = any(not v.type.is_static for v in graph.inputs)
        # (name, type, torch dtype, static shape or None) per input
        self._expect = [(name, v.type, TORCH_DTYPES[v.type.dtype],
                         tuple(v.type.shape) if v.type.is_static else None)
                        for name, v in zip(self._names, graph.inputs, strict=True)]
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
                if type(x) is not torch.Tensor or x.dtype is not dtype or x.shape != shape:
                    break
            else:
                outs = self._run(args)
                if self._single:
                    return outs[0]
                return self._outputs(outs, False)
        flat = self._flat_inputs(args, kwargs)
        as_numpy = bool(flat) and all(isinstance(a, np.ndarray) for a in flat)
        return self._outputs(self._run(self._check_inputs(flat)), as_numpy)

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
            unknown = sorted(set(kwargs) - set(self._names))
            if unknown:
                raise BackendError(f"unexpected input(s) {', '.join(map(repr, unknown))}; "
                                   f"the model takes {self._expected()}")
            given = dict(zip(self._names, args, strict=False)) | kwargs
            missing = [k for k in self._names if k not in given]
            if missing or len(args) > n:
                raise BackendError(f"expected {n} input(s) {self._expected()}, got "
                                   f"{len(args) + len(kwargs)}"
                                   + (f" (missing {', '.join(missing)})" if missing else ""))
            return [given[k] for k in self._names]
        if len(args) != n:
            raise BackendError(f"expected {n} input(s) {self._expected()}, got {len(args)}")
        return list(args)

    def _expected(self) -> str:
        return "(" + ", ".join(f"{k}: {v.type}" for k, v in zip(
            self._names, self.ir.inputs, strict=True)) + ")"

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
            if static is not None:
                ok = x.dtype == dtype and x.shape == static
            else:
                ok = x.dtype == dtype and x.dim() == t.rank and all(
                    not isinstance(d, int) or d == n
                    for d, n in zip(t.shape, x.shape, strict=True))
            if not ok:
                raise BackendError(f"input {name!r}: expected {t}, got {_describe(x)}")
            tensors.append(x)
        if not self._symbolic:
            return tensors
        try:
            bind_dims([v.type for v in self.ir.inputs], [tuple(x.shape) for x in tensors])
        except ValueError as e:
            i = getattr(e, "index", 0)
            raise BackendError(f"input {self._names[i]!r}: expected {self.ir.inputs[i].type}, "
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
                         f"{native.arena_bytes / 2**20:.2f} MiB")
        if i.auto:
            lines.append("  " + _auto_line(i.auto))
        if getattr(self.module, "tuning", None) is not None:
            lines.append("  " + self.module.tuning.summary())
        lines.append(f"  oneDNN fused primitives: {'yes' if i.mkldnn else 'no'}"
                     + (" (trainable: differentiable ATen path)" if i.trainable else ""))
        lines.append("  fallbacks: " + (", ".join(i.fallbacks) + " (NumPy reference, not "
                                                                  "differentiable)"
                                        if i.fallbacks else "none"))
        lines.append("  timings: " + ", ".join(f"{k} {v * 1e3:.1f} ms"
                                               for k, v in i.timings.items()))
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
        return write_artifact(Path(directory), self._graph_with_current_weights(), self.info,
                              self._names)


def write_artifact(out: Path, g: Graph, info: CompileInfo, names: list[str],
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``g`` as an artifact directory (``save``, and the compile cache's entries, which
    add ``extra`` fields to the manifest)."""
    from rtinfer.ir.constants import tensor_digest
    from rtinfer.ir.printer import print_graph
    from rtinfer.version import __version__

    out.mkdir(parents=True, exist_ok=True)
    text = print_graph(g)
    # every constant's bytes by digest; the IR text elides the larger ones to their digest
    arrays = {tensor_digest(n.attrs["value"]): np.frombuffer(
        np.ascontiguousarray(n.attrs["value"]).tobytes(), np.uint8) for n in g.constants()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    files = {"graph.ir": text.encode(), "weights.npz": buf.getvalue()}
    for name, blob in files.items():
        (out / name).write_bytes(blob)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "rtinfer_version": __version__, "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "backend": info.backend, "pipeline": info.pipeline,
        "trainable": info.trainable, "mkldnn": info.mkldnn,
        "input_names": names,
        "torch_io": _dump_torch_meta(g.meta.get("torch")),
        "files": {k: {"sha256": hashlib.sha256(v).hexdigest(), "bytes": len(v)}
                  for k, v in files.items()},
        **(extra or {}),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _auto_line(auto: dict[str, Any]) -> str:
    """``auto: torch 0.031 ms, tvm 0.045 ms -> torch``, with what was skipped and why."""
    ms = auto.get("ms") or {}
    times = ", ".join(f"{k} {v:.3f} ms" if v < 10 else f"{k} {v:.1f} ms" for k, v in ms.items())
    line = f"auto: {times} -> {auto['choice']}" if times else f"auto: {auto['choice']}"
    notes = [auto["note"]] if auto.get("note") else []
    notes += [f"{k} skipped: {why}" for k, why in (auto.get("skipped") or {}).items()]
    if auto.get("remembered"):
        notes.append("remembered from the cold compile, not measured again")
    return line + (f" ({'; '.join(notes)})" if notes else "")


def _describe(x: torch.Tensor) -> str:
    from rtinfer.backends.torch_backend import TORCH_DTYPES
    from rtinfer.ir.types import TensorType

    inv = {v: k for k, v in TORCH_DTYPES.items()}
    dt = inv.get(x.dtype)
    if dt is None:
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


def compile(model: Any, target: Any = "cpu", example_inputs: Any = None,
            pipeline: str | None = None, backend: str = "auto", dynamic_dims: Any = None,
            strict: bool = False, trainable: bool = False, mkldnn: bool | None = None,
            verify_each: bool = False,
            cache: bool | str | os.PathLike = True, tune: int = 0) -> CompiledModel:
    """Compile ``model`` (``nn.Module``, ``torch.fx.GraphModule``, ``onnx.ModelProto``, a path
    to an ``.onnx`` file, or an rtinfer ``Graph``) for ``target``.

    ``pipeline``: a pipeline string or named pipeline (default: O3 where registered, else O2).
    ``backend``: ``"auto"``, ``"torch"``, ``"native"`` (rtinfer's C++ executor and kernels;
    the torch backend, with a warning, where it cannot be built) or ``"tvm"`` (whose ``target``
    may also be an LLVM target string or a ``tvm.target.Target``); ``"auto"`` builds each backend of
    ``rtinfer.backends.AUTO_CANDIDATES`` that serves the target and does not decline the graph,
    times it briefly on the example inputs and keeps the fastest (the cache remembers the
    choice). ``dynamic_dims``:
    ``{input: {axis: "B"}}`` for the torch frontend, ``{input: {axis: "B"}}`` or names for ONNX.
    ``strict``: an op the backend has no lowering for is an error instead of running its
    reference. ``trainable``: parameters require grad and the module stays differentiable
    (no oneDNN inference-only primitives). ``cache``: ``True`` (``$RTINFER_CACHE_DIR``, else
    ``~/.cache/rtinfer``), a directory, or ``False``: a model compiled before with the same
    captured IR, target, backend, pipeline and versions skips the pipeline, and an
    ``nn.Module`` or ONNX model whose fingerprint (code, weights, input types) matches one
    compiled before skips capture too (``rtinfer.cache``; ``verify_each`` always runs the
    pipeline). ``tune=N`` (``backend="tvm"``): MetaSchedule tunes the TVM kernels, N measured
    trials in all, before the build; its records persist in ``<cache>/tvm-tune/<target>/`` (with
    ``cache=False``, in a temporary directory), so a later compile of the same kernels tunes
    nothing (``rtinfer.backends.tvm_tune``). The user's model is never modified.
    """
    from rtinfer import cache as compile_cache
    from rtinfer.backends import auto_candidates, resolve_backend
    from rtinfer.backends.tvm_tune import check_tune
    from rtinfer.pass_manager import run_pipeline

    resolved = resolve_backend(backend)
    tune = check_tune(tune, resolved)
    key_backend = f"{resolved}:tune={tune}" if tune else resolved
    candidates = auto_candidates(target, trainable) if resolved == "auto" else []
    # the TVM backend checks its own targets
    if (resolved == "auto" and not candidates) or (resolved == "torch" and target not in TARGETS):
        raise BackendError(f"unknown target {target!r}; rtinfer compiles for: "
                           f"{', '.join(TARGETS)} (CUDA comes with the native backend)")
    info = CompileInfo(backend=resolved, backend_requested=backend, trainable=trainable)
    info.pipeline = default_pipeline() if pipeline is None else pipeline
    root = compile_cache.cache_dir(cache)
    if root is not None:
        info.cache, info.cache_dir = "miss", str(root)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model_key, hit = None, None
    if root is not None and not verify_each and not isinstance(model, Graph):
        model_key, hit = _recall_model(root, model, example_inputs, dynamic_dims, str(target),
                                       key_backend, info)
        timings["fingerprint" if hit is None else "fingerprint + cache lookup"] = \
            time.perf_counter() - t0
    if hit is not None:
        graph, info.frontend, info.cache_by = hit[0], hit[1].get("frontend", ""), "model"
        t1 = time.perf_counter()
    else:
        t = time.perf_counter()
        graph = _capture(model, example_inputs, dynamic_dims, info)
        t1 = time.perf_counter()  # the key and the lookup count as "cache lookup"
        timings[f"capture ({info.frontend})"] = t1 - t
        info.ops_before = graph.op_counts()
        if root is not None:
            info.cache_key = compile_cache.cache_key(graph, str(target), info.pipeline,
                                                     key_backend)
            hit = None if verify_each else compile_cache.lookup(root, info.cache_key)
            if hit is not None:
                hit[0].meta = dict(graph.meta)  # the eager I/O structure, as captured just now
                info.cache_by = "ir"
    if hit is not None:
        graph, stored = hit
        info.cache = "hit"
        info.passes = [tuple(p) for p in stored.get("passes", [])]
        info.ops_before = stored.get("ops_before", info.ops_before)
        info.ops_after = graph.op_counts()
        info.cold_timings = dict(stored.get("cold_timings", {}))
    else:
        result = run_pipeline(graph, info.pipeline, verify_each=verify_each)
        info.passes = [(r.label, r.changed, dict(r.stats), r.seconds) for r in result.passes]
        info.ops_after = graph.op_counts()
    t2 = time.perf_counter()
    if info.cache_by != "model":
        timings["cache lookup" if info.cache == "hit" else "optimize"] = t2 - t1
    options = {"target": target, "trainable": trainable, "mkldnn": mkldnn, "strict": strict}
    if tune:  # the tuning records live beside the compile cache's entries
        options.update(tune=tune, tune_root=root)
    if resolved == "auto":
        module, info.backend, info.auto, measuring = _select_backend(
            graph, candidates, hit[1].get("auto") if hit is not None else None,
            example_inputs, options)
    else:
        module, measuring = _build(resolved, graph, **options), 0.0
        info.backend = getattr(module, "rtinfer_backend", resolved)  # native -> torch fallback
    info.fallbacks = list(module.rtinfer_fallback_ops)
    info.mkldnn = bool(module.rtinfer_mkldnn)
    t3 = time.perf_counter()
    timings["codegen"] = t3 - t2 - measuring
    if measuring:
        timings["measure (auto)"] = measuring
    info.timings = {**timings, "total": t3 - t0}
    cm = CompiledModel(graph, module, info)
    stored_ok = info.cache == "hit"
    if info.cache == "miss":
        info.cold_timings = dict(info.timings)
        stored_ok = compile_cache.store(root, info.cache_key, graph, info, cm._names)
    if model_key is not None and info.cache_by != "model" and stored_ok:
        _remember_model(root, model_key, info.cache_key, graph)
    return cm


def _capture(model: Any, example_inputs: Any, dynamic_dims: Any, info: CompileInfo) -> Graph:
    if isinstance(model, Graph):
        info.frontend = "rtinfer IR"
        return model.clone()
    from rtinfer.frontends import capture

    graph = capture(model, example_inputs, dynamic_dims=dynamic_dims)
    info.frontend = "torch" if isinstance(model, torch.nn.Module) else "onnx"
    return graph


def _recall_model(root: Path, model: Any, example_inputs: Any, dynamic_dims: Any, target: str,
                  backend: str, info: CompileInfo
                  ) -> tuple[str | None, tuple[Graph, dict[str, Any]] | None]:
    """The key of ``model`` 's fingerprint entry (None when it has no fingerprint) and, when
    one is stored, the optimized graph (with the eager I/O structure) and the stored compile
    info of the entry it names: capture is then skipped. Any doubt is a miss."""
    from rtinfer import cache as compile_cache

    fingerprint = compile_cache.model_fingerprint(model, example_inputs, dynamic_dims)
    if fingerprint is None:
        return None, None
    key = compile_cache.model_key(fingerprint, target, info.pipeline, backend)
    recalled = compile_cache.lookup_model(root, key)
    if recalled is None:
        return key, None
    entry, torch_io = recalled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = _load_torch_meta(torch_io)
    if (meta is not None) != isinstance(model, torch.nn.Module):
        return key, None  # a torch model's I/O structure that cannot be rebuilt: capture
    hit = compile_cache.lookup(root, entry)
    if hit is None:
        return key, None
    if meta is not None:
        hit[0].meta["torch"] = meta
    info.cache_key = entry
    return key, hit


def _remember_model(root: Path, key: str, entry: str, graph: Graph) -> None:
    """Store the fingerprint entry ``key`` naming cache entry ``entry``, with the eager I/O
    structure (not when it cannot be saved: capture then rebuilds it each time)."""
    from rtinfer import cache as compile_cache

    meta = graph.meta.get("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_io = _dump_torch_meta(meta)
    if meta is None or torch_io is not None:
        compile_cache.store_model(root, key, entry, torch_io)


def _build(backend: str, graph: Graph, *, target: Any, trainable: bool, mkldnn: bool | None,
           strict: bool, tune: int = 0, tune_root: Path | None = None) -> Any:
    """Generate ``backend`` 's module for ``graph`` (``tune``: see ``compile``)."""
    if backend == "native":
        return _build_native(graph, target=target, trainable=trainable, mkldnn=mkldnn,
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


def _build_native(graph: Graph, *, target: Any, trainable: bool, mkldnn: bool | None,
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
        warnings.warn(f"{e}; compiling with the torch backend instead", stacklevel=4)
        module = build_module(graph, mkldnn=mkldnn)
        module.rtinfer_backend = "torch"
        return module


# backend="auto" times each candidate's warm calls until it has AUTO_MAX_CALLS of them, has run
# for AUTO_BUDGET_S, or is clearly slower than the best so far (its median over AUTO_SLOWER
# times the best's after three calls, or one call over AUTO_HOPELESS times the best)
AUTO_BUDGET_S = 0.25
AUTO_MAX_CALLS = 25
AUTO_SLOWER = 1.5
AUTO_HOPELESS = 10.0


def _select_backend(graph: Graph, candidates: list, remembered: dict[str, Any] | None,
                    example_inputs: Any, options: dict[str, Any]
                    ) -> tuple[Any, str, dict[str, Any], float]:
    """``backend="auto"``: (the module, its backend, the record for ``CompileInfo.auto``, the
    seconds spent measuring). A remembered choice (a cache hit) is built without measuring;
    with one candidate left after the declines, nothing is measured."""
    skipped: dict[str, str] = {}
    viable = []
    for c in candidates:
        why = c.declines(graph)
        if why is None:
            viable.append(c.name)
        else:
            skipped[c.name] = why
    viable = viable or [candidates[0].name]
    if remembered and remembered.get("choice") in viable:
        choice = remembered["choice"]
        return _build(choice, graph, **options), choice, {**remembered, "remembered": True}, 0.0
    record: dict[str, Any] = {"choice": viable[0], "ms": {}, "skipped": skipped}
    if len(viable) == 1:
        return _build(viable[0], graph, **options), viable[0], record, 0.0
    first = _build(viable[0], graph, **options)  # the reference: its errors are the user's
    inputs = _measure_inputs(graph, first, example_inputs)
    if inputs is None:
        record["note"] = "not measured: symbolic input dims and no example inputs"
        return first, viable[0], record, 0.0
    medians: dict[str, float] = {}
    modules = {viable[0]: first}
    measuring = 0.0
    for name in viable:
        try:
            module = modules[name] if name in modules else _build(name, graph, **options)
            if name != viable[0] and module.rtinfer_fallback_ops:  # a lowering declined
                skipped[name] = f"falls back for {', '.join(module.rtinfer_fallback_ops)}"
                continue
            t = time.perf_counter()
            times = _time_calls(module, inputs, min(medians.values(), default=None))
            measuring += time.perf_counter() - t
        except Exception as e:  # noqa: BLE001  (a candidate that fails is not chosen)
            skipped[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        medians[name] = float(np.median(times))
        modules[name] = module
    if not medians:
        record["note"] = "every candidate failed on the example inputs"
        return first, viable[0], record, measuring
    choice = min(medians, key=medians.__getitem__)
    record.update(choice=choice, ms={k: v * 1e3 for k, v in medians.items()})
    return modules[choice], choice, record, measuring


def _time_calls(module: Any, inputs: list[torch.Tensor], best: float | None) -> list[float]:
    """Seconds per warm call of ``module`` on ``inputs`` (see ``AUTO_BUDGET_S``)."""
    times: list[float] = []
    start = time.perf_counter()
    with torch.no_grad():
        module(*inputs)  # warm-up: lazy initialization, caches
        warm = time.perf_counter() - start
        if best is not None and warm > max(AUTO_BUDGET_S, AUTO_HOPELESS * best):
            return [warm]
        # at least three timed calls (a slow warm-up must not leave none), then the budget
        while len(times) < 3 or (len(times) < AUTO_MAX_CALLS
                                 and time.perf_counter() - start < AUTO_BUDGET_S):
            t = time.perf_counter()
            module(*inputs)
            times.append(time.perf_counter() - t)
            if best is not None and (times[-1] > AUTO_HOPELESS * best or (
                    len(times) >= 3 and float(np.median(times)) > AUTO_SLOWER * best)):
                break
    return times


def _measure_inputs(graph: Graph, module: Any, example_inputs: Any) -> list[torch.Tensor] | None:
    """The graph's inputs for timing: the example inputs, else seeded ones of the graph's
    input types (static dims only); None when there are none."""
    if example_inputs is not None and "torch" in graph.meta:
        from rtinfer.frontends.torch_frontend import example_args

        probe = CompiledModel(graph, module, CompileInfo())
        try:
            args, kwargs = example_args(module, example_inputs)
            return probe._check_inputs(probe._flat_inputs(args, kwargs))
        except (RtinferError, TypeError, ValueError):
            pass
    if not all(v.type.is_static for v in graph.inputs):
        return None
    from rtinfer.backends.torch_backend import TORCH_DTYPES

    gen = torch.Generator().manual_seed(0)
    out = []
    for v in graph.inputs:
        dtype, shape = TORCH_DTYPES[v.type.dtype], tuple(int(n) for n in v.type.shape)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(dtype))
        else:  # zeros index every table; a bool mask of ones keeps every position
            out.append(torch.ones(shape, dtype=dtype) if dtype == torch.bool
                       else torch.zeros(shape, dtype=dtype))
    return out


# -- load -------------------------------------------------------------------------------------


def load(directory: str | os.PathLike, *, mkldnn: bool | None = None,
         backend: str | None = None) -> CompiledModel:
    """Load an artifact written by ``CompiledModel.save``; a missing, corrupted or
    incompatible artifact is an ``ArtifactError``. ``backend``: the backend to build (default:
    the one that compiled it when that is torch or native; a TVM-compiled model runs in the
    torch backend, and the report says so)."""
    root = Path(directory)
    graph, manifest = read_artifact(root)
    torch_meta = _load_torch_meta(manifest.get("torch_io"))
    if torch_meta is not None:
        graph.meta["torch"] = torch_meta
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
    module = _build(chosen, graph, target="cpu", trainable=trainable, mkldnn=mkldnn,
                    strict=False)
    info.backend = getattr(module, "rtinfer_backend", chosen)
    info.fallbacks = list(module.rtinfer_fallback_ops)
    info.mkldnn = bool(module.rtinfer_mkldnn)
    info.timings = {"codegen": time.perf_counter() - t0}
    cm = CompiledModel(graph, module, info)
    names = manifest.get("input_names")
    if isinstance(names, list) and len(names) == len(graph.inputs):
        cm._names = [str(n) for n in names]
    return cm


def read_artifact(root: Path, check_digests: bool = True) -> tuple[Graph, dict[str, Any]]:
    """The verified graph (weights restored) and the manifest of an artifact directory; a
    missing, corrupted or incompatible one is an ``ArtifactError``. ``check_digests=False``
    trusts weights.npz to match the IR's digests once its sha256 matched the manifest's (the
    compile cache, which wrote both)."""
    from rtinfer.ir.constants import ElidedTensor
    from rtinfer.ir.parser import parse
    from rtinfer.ir.verifier import verify

    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise ArtifactError(f"{root} is not a saved rtinfer model (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is corrupted: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath} is not an rtinfer compiled-model manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ArtifactError(f"{root} has artifact format version {version!r} (written by "
                            f"rtinfer {manifest.get('rtinfer_version', '?')}); this rtinfer "
                            f"reads format versions 1 to {FORMAT_VERSION}")
    blobs = {}
    for name in ("graph.ir", "weights.npz"):
        entry = manifest.get("files", {}).get(name)
        path = root / name
        if entry is None or not path.is_file():
            raise ArtifactError(f"{root}: {name} is missing")
        blob = path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != entry.get("sha256"):
            raise ArtifactError(f"{path} is corrupted: its sha256 is {digest[:16]}..., the "
                                f"manifest records {str(entry.get('sha256'))[:16]}...")
        blobs[name] = blob
    try:
        graph = parse(blobs["graph.ir"].decode(), source=str(root / "graph.ir"))
        with np.load(io.BytesIO(blobs["weights.npz"]), allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
    except (ParseError, ValueError, OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{root} could not be read: {e}") from None
    for node in graph.nodes:
        value = node.attrs["value"] if node.op == "const" else None
        if not isinstance(value, ElidedTensor):
            continue
        raw = weights.get(value.digest)
        if raw is None:
            raise ArtifactError(f"{root}: weights.npz lacks constant {value}")
        # the bytes np.load just read, reinterpreted in place (a copy costs 0.2 s on MiniLM)
        arr = raw.reshape(-1).view(value.dtype.np) if raw.dtype == np.uint8 and \
            raw.nbytes % value.dtype.np.itemsize == 0 else np.frombuffer(raw.tobytes(),
                                                                         value.dtype.np)
        if arr.size != int(np.prod(value.shape)) or (check_digests and not value.matches(
                arr.reshape(value.shape))):
            raise ArtifactError(f"{root}: the data of constant {value} does not match its "
                                f"digest")
        arr = arr.reshape(value.shape)
        arr.setflags(write=False)
        node.attrs["value"] = arr
    try:
        verify(graph)
    except RtinferError as e:
        raise ArtifactError(f"{root}: the saved IR does not verify: {e}") from None
    return graph, manifest


def _dump_torch_meta(meta: dict | None) -> dict | None:
    if meta is None:
        return None
    try:
        out = {"in_spec": pytree.treespec_dumps(meta["in_spec"]),
               "out_spec": pytree.treespec_dumps(meta["out_spec"]),
               "input_names": list(meta["input_names"]),
               "input_kinds": list(meta["input_kinds"]),
               "outputs": [list(t) for t in meta["outputs"]]}
        json.dumps(out)
        return out
    except Exception as e:  # an unserializable output structure: save flat outputs
        warnings.warn(f"the eager output structure cannot be saved ({e}); the loaded model "
                      f"returns a flat tuple", stacklevel=3)
        return None


def _load_torch_meta(saved: dict | None) -> dict | None:
    if not saved:
        return None
    try:
        specs = {k: _treespec_loads(saved[k]) for k in ("in_spec", "out_spec")}
    except Exception as e:
        warnings.warn(f"the saved output structure cannot be rebuilt ({e}); returning a flat "
                      f"tuple", stacklevel=3)
        return None
    return {**specs, "input_names": saved["input_names"], "input_kinds": saved["input_kinds"],
            "outputs": [tuple(t) for t in saved["outputs"]]}


def _treespec_loads(text: str):
    try:
        return pytree.treespec_loads(text)
    except Exception:
        # a type registered by a library not imported yet (transformers' ModelOutput classes):
        # import the modules the spec names from transformers, then retry
        for name in set(_spec_types(json.loads(text))):
            module = name.rpartition(".")[0]
            if module.split(".")[0] == "transformers":
                importlib.import_module(module)
        return pytree.treespec_loads(text)


def _spec_types(node: Any):
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node["type"]
        for child in node.get("children_spec", []):
            yield from _spec_types(child)
    elif isinstance(node, list):
        for child in node:
            yield from _spec_types(child)


__all__ = ["FORMAT_VERSION", "CompiledModel", "compile", "default_pipeline", "load"]
