"""The systems the benchmark compares: one small adapter each, in one table.

An adapter's ``setup(workload, settings)`` compiles or loads the workload's model and returns a
``Prepared``: a zero-argument callable that runs one inference on the workload's fixed inputs,
and a function that turns that call's result into the first output as a NumPy array (the
fidelity check compares it with eager). A system that cannot run here raises ``Unavailable``
with the reason (a package that is not installed, a backend not written yet); any other
exception is recorded as an error of that system on that model.

Inputs are converted to each system's own tensor type once, in ``setup``: the timed call is
the inference itself, as a deployed model would make it. The harness turns autograd off
globally (``torch.set_grad_enabled(False)``) before any setup.

The int8 systems (``precision="int8"``) quantize with the workload's 128 calibration inputs
(``Workload.data()``, benchmarks/calibration.py) inside ``setup``, so their setup time includes
calibration; their ``Prepared.infer`` runs any input tuple, which the harness uses to compare
them with fp32 eager on the held-out inputs (benchmarks/int8.py).

The bf16 systems (``precision="bf16"``) need no calibration; they are judged on the same
held-out inputs. Each one is ``Unavailable`` where it would not compute in bf16 (an fp32
model timed in the bf16 table would be a false bf16 number): rtinfer compiles fp32 on a CPU
(or under a ``$RTINFER_CPU_ISA`` cap) without AVX512_BF16 / AMX-BF16; OpenVINO is asked which
precision its compiled model resolved the hint to.
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from calibration import DataSet, DataUnavailable
from workloads import Workload


class Unavailable(Exception):
    """The system cannot run on this machine (the message says why)."""


@dataclass
class Settings:
    threads: int
    pipeline: str | None = None  # rtinfer's pipeline; None: its default (O3)
    tune_trials: int = 0  # MetaSchedule trials of the tuned TVM systems (0: they are left out)


@dataclass
class Prepared:
    run: Callable[[], Any]
    output: Callable[[Any], np.ndarray]
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # recorded with the result as is
    # one inference on any input tuple shaped like the workload's, its first output as NumPy
    # (the int8 and bf16 systems': the held-out accuracy check runs it)
    infer: Callable[[tuple[torch.Tensor, ...]], np.ndarray] | None = None


@dataclass(frozen=True)
class System:
    name: str
    summary: str
    setup: Callable[[Workload, Settings], Prepared]
    rtinfer: bool = False  # one of ours: not a peer
    slow: bool = False  # untuned and slow on convolutions: --skip-slow leaves it out
    needs_onnx: bool = False  # runs the workload's ONNX export
    tuned: bool = False  # tunes with MetaSchedule (Settings.tune_trials; minutes of setup)
    # what a CPU-level cap (run.py --isa) reaches: "capped", "partly capped" or "uncapped",
    # then how (see ISA_CAP_TORCH and the table below)
    isa_cap: str = "uncapped"
    # the same where run.py --isa avx2 also masks CPUID (cpuid_mask.py); None: as isa_cap
    isa_cap_masked: str | None = None
    # "fp32", "int8" or "bf16": int8 and bf16 systems are compared with their own precision's
    # peers (the best int8 / bf16 peer) and judged by accuracy on held-out data, not by the
    # fp32 fidelity tolerance
    precision: str = "fp32"


LOW_PRECISIONS = ("int8", "bf16")  # the precisions judged by held-out accuracy


def first_output(out: Any) -> np.ndarray:
    """The first tensor of a result (torch, NumPy, TVM or OpenVINO tensors; tuples, lists and
    TVM arrays of them) as a NumPy array."""
    while True:
        if isinstance(out, torch.Tensor):
            return out.detach().numpy()
        if isinstance(out, np.ndarray):
            return out
        if hasattr(out, "numpy") and callable(out.numpy):
            return np.asarray(out.numpy())
        if hasattr(out, "data") and isinstance(out.data, np.ndarray):
            return out.data
        if isinstance(out, dict):
            out = next(iter(out.values()))
            continue
        out = out[0]


def _require(module: str, pip_name: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise Unavailable(f"{pip_name} is not installed ({e}); pip install {pip_name}") from None


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- PyTorch ----------------------------------------------------------------------------------


def setup_eager(w: Workload, s: Settings) -> Prepared:
    model, inputs = w.model, w.inputs

    def run():
        return model(*inputs)

    return Prepared(run, first_output)


def _setup_torch_compile(w: Workload, options: dict[str, Any] | None) -> Prepared:
    # a private copy: dynamo keys its cache on the module's code, and each torch.compile call
    # gets its own backend object, so two configurations never share a compiled graph
    model = copy.deepcopy(w.model)
    compiled = torch.compile(model, backend="inductor", options=options)
    inputs = w.inputs

    def run():
        return compiled(*inputs)

    return Prepared(run, first_output)  # compiles on the first call (counted in setup time)


def setup_torch_compile(w: Workload, s: Settings) -> Prepared:
    return _setup_torch_compile(w, None)


def setup_torch_compile_freezing(w: Workload, s: Settings) -> Prepared:
    # torch._inductor.config.freezing: weights become constants, conv/linear weights are
    # prepacked for oneDNN and constant subgraphs are folded
    return _setup_torch_compile(w, {"freezing": True})


# -- ONNX Runtime, OpenVINO -------------------------------------------------------------------


def _feeds(w: Workload, names: list[str],
           inputs: tuple[torch.Tensor, ...] | None = None) -> dict[str, np.ndarray]:
    """``inputs`` (default: the workload's) as NumPy feeds for the model inputs ``names``."""
    values = w.numpy_inputs() if inputs is None else [x.numpy() for x in inputs]
    arrays = dict(zip(w.input_names, values, strict=True))
    if set(names) <= set(arrays):
        return {n: arrays[n] for n in names}
    return dict(zip(names, values, strict=False))  # exporter renamed: by position


def _ort_session(ort: Any, path: Path, s: Settings) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = s.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def setup_onnxruntime(w: Workload, s: Settings) -> Prepared:
    ort = _require("onnxruntime", "onnxruntime")
    path, exporter = w.onnx()
    sess = _ort_session(ort, path, s)
    feeds = _feeds(w, [i.name for i in sess.get_inputs()])

    def run():
        return sess.run(None, feeds)

    return Prepared(run, first_output, [f"ONNX exporter: {exporter}"])


def _openvino_config(s: Settings, precision: str = "f32") -> dict[str, Any]:
    """The CPU plugin's settings of every OpenVINO system: LATENCY, one stream, ``precision``
    as INFERENCE_PRECISION_HINT (on CPUs with bf16 units OpenVINO otherwise defaults to bf16,
    which is another precision than every fp32 column)."""
    return {"INFERENCE_NUM_THREADS": s.threads, "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}


def setup_openvino(w: Workload, s: Settings) -> Prepared:
    ov = _require("openvino", "openvino")
    path, exporter = w.onnx()
    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", _openvino_config(s))
    request = compiled.create_infer_request()
    feeds = _feeds(w, [p.get_any_name() for p in compiled.inputs])
    out0 = compiled.output(0)

    def run():
        return request.infer(feeds)

    return Prepared(run, lambda r: np.array(r[out0]),
                    [f"ONNX exporter: {exporter}", "OpenVINO CPU, f32 precision hint",
                     _openvino_kernels(compiled)])


# the layer types that hold a model's FLOPs, whose kernels say which ISA OpenVINO runs
_OV_HEAVY = ("Convolution", "FullyConnected", "MatMul")


def _openvino_kernels(compiled: Any) -> str:
    """Which kernels the CPU plugin chose for the heavy layers (the runtime model's
    ``primitiveType``: ``brgconv_avx2_f32``, ``gemm_mlas_f32``, ...): the ISA it really runs,
    whatever a cap asked. MLAS picks its ISA from CPUID when it runs."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" not in info or "primitiveType" not in info:
            continue
        layer = str(info["layerType"].astype(str))
        if layer in _OV_HEAVY:
            key = f"{layer} {info['primitiveType'].astype(str)}"
            counts[key] = counts.get(key, 0) + 1
    return ("kernels: " + ", ".join(f"{k} ×{n}" for k, n in sorted(counts.items()))
            if counts else "kernels: none of " + "/".join(_OV_HEAVY))


def _openvino_runtime_precisions(compiled: Any) -> dict[str, int]:
    """How many operations of a compiled model run at each precision (the runtime model's
    ``runtimePrecision``, what the CPU plugin chose, whatever the hint asked)."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info:
            p = str(info["runtimePrecision"].astype(str))
            counts[p] = counts.get(p, 0) + 1
    return counts


def _openvino_bf16_note(hint: Any, counts: dict[str, int]) -> str:
    """What openvino-bf16 computes: the resolved hint, the runtime precisions of its ops (a
    fused ``Subgraph`` reports f32 and computes at the hint's precision: the MLP's one at 1
    thread differs from f32 OpenVINO by 7e-4, as bf16 does), and whether the CPU's bf16 is
    native or emulated."""
    from rtinfer.bf16 import BF16_FEATURES
    from rtinfer.kernels import isa

    native = [f for f in BF16_FEATURES if f in isa.host_features()]
    return (f"OpenVINO CPU, bf16 precision hint (resolved to {hint}); ops by runtime "
            f"precision: " + ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
            + ("; bf16 instructions: " + ", ".join(native) if native else
               "; no bf16 instructions: OpenVINO emulates bf16 on AVX-512 (slower than f32)"))


def setup_openvino_bf16(w: Workload, s: Settings) -> Prepared:
    """``openvino`` with INFERENCE_PRECISION_HINT "bf16": the CPU plugin runs its heavy ops in
    bf16 and leaves the rest f32. OpenVINO keeps the hint on any AVX-512 (or AVX2-VNNI-2) CPU,
    emulating bf16 where the CPU lacks bf16 instructions (the notes say which); unavailable
    where it resolves the hint to f32 (it would time f32)."""
    ov = _require("openvino", "openvino")
    path, exporter = w.onnx()
    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", _openvino_config(s, "bf16"))
    counts = _openvino_runtime_precisions(compiled)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    if hint != ov.Type.bf16:
        raise Unavailable(f"OpenVINO resolved the bf16 precision hint to {hint} here (its "
                          f"CPU plugin finds no AVX-512 or AVX2-VNNI-2, or ONEDNN_MAX_CPU_ISA "
                          f"caps them): it would time f32")
    names = [p.get_any_name() for p in compiled.inputs]
    return _openvino_prepared(compiled, w, names,
                              [f"ONNX exporter: {exporter}", _openvino_bf16_note(hint, counts)],
                              {"bf16_ops": counts.get("bf16", 0),
                               "runtime_ops": sum(counts.values())})


def _openvino_prepared(compiled: Any, w: Workload, names: list[str], notes: list[str],
                       info: dict[str, Any]) -> Prepared:
    """An OpenVINO compiled model as a benchmark system: one infer request, timed on the
    workload's inputs, and ``infer`` for the held-out accuracy check."""
    request = compiled.create_infer_request()
    feeds = _feeds(w, names)
    out0 = compiled.output(0)
    notes = [*notes, _openvino_kernels(compiled)]

    def run():
        return request.infer(feeds)

    def infer(inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        return np.array(request.infer(_feeds(w, names, inputs))[out0])

    return Prepared(run, lambda r: np.array(r[out0]), notes, info, infer)


# -- int8 peers: ONNX Runtime's quantization tool, OpenVINO with NNCF --------------------------


def _onnx_input_names(path: Path) -> list[str]:
    """The graph inputs of an ONNX file that are not initializers (older exporters list
    weights as inputs too)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]


def _int8_data(w: Workload) -> DataSet:
    try:
        return w.data()
    except DataUnavailable as e:
        raise Unavailable(str(e)) from None


def setup_onnxruntime_int8(w: Workload, s: Settings) -> Prepared:
    """ONNX Runtime's own int8 recipes on the workload's ONNX export, after
    ``quant_pre_process`` (shape inference and graph optimization, which ONNX Runtime's docs
    ask for before quantizing). CNNs: static QDQ quantization (``quantize_static``: S8S8, the
    docs' first choice, per-channel weights, MinMax calibration over the 128 calibration
    inputs). Transformers: ``quantize_dynamic`` (per-channel s8 weights, activation scales
    computed per call), which its docs recommend for them; it takes no calibration data."""
    ort = _require("onnxruntime", "onnxruntime")
    import onnx
    from onnxruntime import quantization as ortq
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = _int8_data(w)
    path, exporter = w.onnx()
    names = _onnx_input_names(path)
    pre, out = path.with_name(f"{w.name}-pre.onnx"), path.with_name(f"{w.name}-ort-int8.onnx")
    t0 = time.perf_counter()
    quant_pre_process(path, pre)
    if data.task == "embed":
        # per-channel weights: per-tensor ones lose much more here (MiniLM on the held-out
        # sentences: cosine 0.969 and 83% of neighbours kept, against 0.994 and 89%)
        ortq.quantize_dynamic(pre, out, per_channel=True, weight_type=ortq.QuantType.QInt8)
        recipe = ("quantize_dynamic, per-channel s8 weights, activations quantized per call "
                  "(no calibration)")
    else:

        class Reader(ortq.CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(data.calibration)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self.it, None)
                return None if batch is None else _feeds(w, names, batch)

            def rewind(self) -> None:
                self.it = iter(data.calibration)

        ortq.quantize_static(pre, out, Reader(), quant_format=ortq.QuantFormat.QDQ,
                             per_channel=True, activation_type=ortq.QuantType.QInt8,
                             weight_type=ortq.QuantType.QInt8)
        recipe = (f"quantize_static QDQ S8S8, per-channel, MinMax over "
                  f"{len(data.calibration)} calibration inputs")
    calibration_s = time.perf_counter() - t0
    # what was quantized: the activation quantizers the recipe inserted
    quantizers = sum(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")
                     for n in onnx.load(str(out)).graph.node)
    sess = _ort_session(ort, out, s)
    feeds = _feeds(w, names)

    def run():
        return sess.run(None, feeds)

    def infer(inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        return first_output(sess.run(None, _feeds(w, names, inputs)))

    return Prepared(run, first_output, [f"ONNX exporter: {exporter}", recipe],
                    {"calibration_s": calibration_s, "quantize_nodes": quantizers}, infer)


def setup_openvino_int8(w: Workload, s: Settings) -> Prepared:
    """NNCF's post-training quantization of OpenVINO's model of the ONNX export
    (``nncf.quantize`` with the 128 calibration inputs; ``model_type=TRANSFORMER`` for MiniLM,
    which keeps softmax, LayerNorm and the like in floating point and uses the mixed preset),
    compiled for the CPU like the fp32 system (LATENCY hint, one stream, f32 for what stays
    in floating point)."""
    ov = _require("openvino", "openvino")
    nncf = _require("nncf", "nncf")
    data = _int8_data(w)
    path, exporter = w.onnx()
    core = ov.Core()
    model = core.read_model(str(path))
    names = [p.get_any_name() for p in model.inputs]
    dataset = nncf.Dataset([_feeds(w, names, batch) for batch in data.calibration])
    model_type = nncf.ModelType.TRANSFORMER if data.task == "embed" else None
    nncf.set_log_level(logging.ERROR)  # its INFO lines and progress bars drown the run's log
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, dataset, subset_size=len(data.calibration),
                              model_type=model_type)
    calibration_s = time.perf_counter() - t0
    quantizers = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    compiled = core.compile_model(quantized, "CPU", _openvino_config(s))
    return _openvino_prepared(compiled, w, names,
                              [f"ONNX exporter: {exporter}", f"nncf.quantize, "
                               f"{len(data.calibration)} calibration inputs"
                               + (", model_type=TRANSFORMER" if model_type else "")
                               + "; OpenVINO CPU, f32 precision hint outside the int8 ops"],
                              {"calibration_s": calibration_s, "quantize_nodes": quantizers})


# -- TVM's own path ---------------------------------------------------------------------------


def tvm_target() -> Any:
    """``llvm`` for this host's CPU. TVM 0.27 takes targets as dicts and maps ``mcpu=native``
    to ``generic``, so the host CPU is named explicitly."""
    import tvm
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())})


def setup_tvm_relax(w: Workload, s: Settings) -> Prepared:
    tvm = _require("tvm", "apache-tvm")
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    exported = torch.export.export(w.model, w.inputs)
    mod = from_exported_program(exported)
    target = tvm_target()
    vm = relax.VirtualMachine(relax.build(mod, target), tvm.cpu())
    main = vm["main"]
    args = [tvm.runtime.tensor(x) for x in w.numpy_inputs()]

    def run():
        return main(*args)

    return Prepared(run, first_output,
                    [f"target {target.attrs.get('mcpu', '?')}, untuned (no MetaSchedule)"])


def _tuned_info(report: Any) -> dict[str, Any]:
    return {"tune_trials": report.trials, "tune_trials_run": report.trials_run,
            "tune_tasks": report.tasks, "tune_s": report.seconds}


def setup_tvm_relax_tuned(w: Workload, s: Settings) -> Prepared:
    """TVM's own tuning flow (``relax.pipeline.static_shape_tuning_pipeline``: decompose for
    inference, legalize, FuseOps, FuseTIR, tune, apply the database) on its own import of the
    model, tuned by the same MetaSchedule settings as rtinfer's (``rtinfer.backends.tvm_tune``):
    only the kernels, the tasks, differ."""
    tvm = _require("tvm", "apache-tvm")
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from rtinfer.backends import tvm_tune

    exported = torch.export.export(w.model, w.inputs)
    mod = from_exported_program(exported)
    target = tvm_tune.tuning_target(tvm_target())
    with target:
        mod = tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
            relax.get_pipeline("zero")])(mod)
    with tempfile.TemporaryDirectory(prefix="rtinfer-bench-tune-") as tmp:
        report = tvm_tune.tune_module(mod, target, s.tune_trials, Path(tmp))
        vm = relax.VirtualMachine(tvm_tune.build_tuned(mod, target, Path(tmp)), tvm.cpu())
    main = vm["main"]
    args = [tvm.runtime.tensor(x) for x in w.numpy_inputs()]

    def run():
        return main(*args)

    return Prepared(run, first_output,
                    [f"target {target.attrs.get('mcpu', '?')}, MetaSchedule: "
                     f"{report.trials_run} trials over {report.tasks} tasks in "
                     f"{report.seconds:.0f} s"], _tuned_info(report))


# -- rtinfer ----------------------------------------------------------------------------------


def _rtinfer_compile(w: Workload, s: Settings, backend: str, **options: Any) -> Any:
    """``rtinfer.compile`` of the workload (``options``: more keywords, such as
    ``precision``); a backend that is not there is ``Unavailable``."""
    import rtinfer
    from rtinfer.errors import BackendError

    try:
        return rtinfer.compile(w.model, example_inputs=w.inputs, backend=backend,
                               pipeline=s.pipeline, **options)
    except BackendError as e:
        if "not available" in str(e) or "unknown backend" in str(e):
            raise Unavailable(str(e)) from None
        raise


def _setup_rtinfer(w: Workload, s: Settings, backend: str) -> Prepared:
    return _rtinfer_prepared(w, _rtinfer_compile(w, s, backend))


def _rtinfer_prepared(w: Workload, cm: Any) -> Prepared:
    """A compiled rtinfer model as a system: notes, GFLOP and, on the native backend, the
    kernels' own time (``kernel_ms``) and plan steps."""
    inputs = w.inputs

    def run():
        return cm(*inputs)

    info = cm.info
    notes = [f"pipeline {info.pipeline}, backend {info.backend}"]
    if info.fallbacks:
        notes.append("reference fallbacks: " + ", ".join(info.fallbacks))
    from rtinfer.ir.flops import flops

    extra: dict[str, Any] = {"gflop": flops(cm.ir) / 1e9}
    if info.backend == "native":  # the kernels' own time: the rest of a call is overhead
        for _ in range(3):
            run()
        steps = cm.module.profile(*inputs, iters=20)
        extra["kernel_ms"] = sum(sec for _, sec in steps) * 1e3
        extra["plan_steps"] = len(steps)
        if info.bf16:  # the bf16 primitives in the plan (not their f32 -> bf16 reorders)
            extra["bf16_steps"] = sum("oneDNN bf16" in name and "(to bf16)" not in name
                                      for name, _ in steps)
    return Prepared(run, first_output, notes, extra)


def setup_rtinfer_tvm_tuned(w: Workload, s: Settings) -> Prepared:
    import rtinfer

    # cache=False: a fresh tuning database, so the tuning time is a real one
    cm = rtinfer.compile(w.model, example_inputs=w.inputs, backend="tvm", target=tvm_target(),
                         pipeline=s.pipeline, tune=s.tune_trials, cache=False)
    inputs, report = w.inputs, cm.module.tuning

    def run():
        return cm(*inputs)

    notes = [f"pipeline {cm.info.pipeline}, MetaSchedule: {report.trials_run} trials over "
             f"{report.tasks} tasks in {report.seconds:.0f} s"]
    if cm.info.fallbacks:
        notes.append("reference fallbacks: " + ", ".join(cm.info.fallbacks))
    return Prepared(run, first_output, notes, _tuned_info(report))


def setup_rtinfer_torch(w: Workload, s: Settings) -> Prepared:
    return _setup_rtinfer(w, s, "torch")


def setup_rtinfer_tvm(w: Workload, s: Settings) -> Prepared:
    return _setup_rtinfer(w, s, "tvm")


def setup_rtinfer_native(w: Workload, s: Settings) -> Prepared:
    return _setup_rtinfer(w, s, "native")


def setup_rtinfer_bf16(w: Workload, s: Settings) -> Prepared:
    """``rtinfer.compile(precision="bf16", backend="native")``. Unavailable where rtinfer has no
    bf16 kernels (``rtinfer.bf16.bf16_support``: the CPU lacks AVX512_BF16 and AMX-BF16, or
    ``$RTINFER_CPU_ISA`` caps them away): compile would fall back to fp32 (``Bf16Fallback``),
    and that model's time in the bf16 table would pass for a bf16 one."""
    from rtinfer.bf16 import Bf16Fallback, bf16_support

    ok, why = bf16_support()
    if not ok:
        raise Unavailable(f"no bf16 kernels here: {why}; rtinfer would compile fp32 "
                          f"(Bf16Fallback)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Bf16Fallback)  # checked below, from the record
        cm = _rtinfer_compile(w, s, "native", precision="bf16")
    record = cm.info.bf16 or {}
    if not record.get("available"):  # e.g. the CPU level changed between the check and here
        raise Unavailable(f"rtinfer fell back to fp32: {record.get('why', 'no bf16 record')}")
    p = _rtinfer_prepared(w, cm)
    layers = len(record["layers"])
    p.notes.insert(1, f"bf16 kernels ran: {layers} layers bf16 ({record['why']}), "
                      f"{p.info.get('bf16_steps', '?')} oneDNN bf16 primitives in the plan; "
                      f"{record['f32_layers']} conv/linear/matmul layers stay f32")
    p.info["bf16_layers"] = layers

    def infer(batch: tuple[torch.Tensor, ...]) -> np.ndarray:
        # a copy: the native executor may hand back its own output buffer
        return np.array(first_output(cm(*batch)), copy=True)

    p.infer = infer
    return p


def setup_rtinfer_int8(w: Workload, s: Settings) -> Prepared:
    """``rtinfer.compile(precision="int8")`` on the native backend with the 128 calibration
    inputs and no accuracy budget (issue 13's public surface)."""
    import rtinfer
    from rtinfer.errors import BackendError

    data = _int8_data(w)
    t0 = time.perf_counter()
    try:
        cm = rtinfer.compile(w.model, example_inputs=w.inputs, precision="int8",
                             calibration=data.calibration, accuracy_budget=None,
                             backend="native", pipeline=s.pipeline)
    except TypeError as e:
        # only compile() refusing the int8 keywords means int8 is not there yet; any other
        # TypeError is a bug of int8 itself and is recorded as an error
        if ("unexpected keyword argument" in str(e)
                and any(k in str(e) for k in ("precision", "calibration", "accuracy_budget"))):
            raise Unavailable("rtinfer int8 not built yet") from None
        raise
    except BackendError as e:
        if "not available" in str(e) or "unknown backend" in str(e):
            raise Unavailable(str(e)) from None
        raise
    calibration_s = time.perf_counter() - t0
    inputs = w.inputs

    def run():
        return cm(*inputs)

    def infer(batch: tuple[torch.Tensor, ...]) -> np.ndarray:
        # a copy: the native executor may hand back its own output buffer, which the next
        # call overwrites (the held-out check keeps every output)
        return np.array(first_output(cm(*batch)), copy=True)

    notes = [f"pipeline {cm.info.pipeline}, backend {cm.info.backend}, int8, "
             f"{len(data.calibration)} calibration inputs"]
    if cm.info.fallbacks:
        notes.append("reference fallbacks: " + ", ".join(cm.info.fallbacks))
    return Prepared(run, first_output, notes, {"calibration_s": calibration_s}, infer)


# What run.py --isa avx2|avx512 sets, before any runtime loads, and whom it reaches. Torch's
# ATen kernels read ATEN_CPU_CAPABILITY, its bundled oneDNN ONEDNN_MAX_CPU_ISA, MKL (torch's
# BLAS here) MKL_ENABLE_INSTRUCTIONS; Inductor picks its vector ISA from ATEN_CPU_CAPABILITY and
# its -march from TORCHINDUCTOR_CPP_MARCH. ONNX Runtime's MLAS dispatches on cpuid and has no
# cap. OpenVINO's oneDNN fork (and plugin kernels that ask it, via mayiuse) honours
# ONEDNN_MAX_CPU_ISA, but OpenVINO's own ISA checks honour OV_CPU_MAX_ISA only in debug-caps
# builds, not in release wheels (openvinotoolkit/openvino PRs #36980, #38257): partly capped.
# TVM compiles with LLVM for the host CPU (tvm_target): uncapped.
ISA_CAP_TORCH = ("capped: ATen (ATEN_CPU_CAPABILITY, avx2 run only), MKL "
                 "(MKL_ENABLE_INSTRUCTIONS, avx2 run only), oneDNN (ONEDNN_MAX_CPU_ISA)")
ISA_CAP_INDUCTOR = ISA_CAP_TORCH + ", Inductor C++ (vector ISA, TORCHINDUCTOR_CPP_MARCH)"
ISA_UNCAPPED_ORT = "uncapped: MLAS dispatches on cpuid"
ISA_PARTLY_OV = ("partly capped: its oneDNN honours ONEDNN_MAX_CPU_ISA; OpenVINO's own kernels "
                 "read OV_CPU_MAX_ISA only in debug-caps builds (set anyway)")
ISA_UNCAPPED_TVM = "uncapped: LLVM code for the host CPU"
# Under the CPUID mask (run.py --isa avx2 where CPUID faulting exists) the libraries that
# dispatch on CPUID see an AVX2-only CPU: MLAS, OpenVINO's own kernels and its MLAS. TVM's
# target names the host's core (mcpu), whose features LLVM takes from the name: still uncapped.
ISA_MASKED_ORT = "capped: CPUID shows no AVX-512 (MLAS dispatches on CPUID)"
ISA_MASKED_OV = ("capped: CPUID shows no AVX-512 (OpenVINO's kernels and its MLAS dispatch on "
                 "CPUID), its oneDNN ONEDNN_MAX_CPU_ISA")
ISA_UNCAPPED_TVM_MASKED = ("uncapped: LLVM code for the host CPU model (mcpu), whose features "
                           "LLVM takes from the name, not CPUID")
ISA_CAP_NATIVE = ("capped: RTINFER_CPU_ISA (own kernels, generated code, its oneDNN); ATen "
                  "GEMM candidates as torch")

SYSTEMS: dict[str, System] = {sys.name: sys for sys in [
    System("eager", "PyTorch eager, autograd off", setup_eager, isa_cap=ISA_CAP_TORCH),
    System("torch.compile", "torch.compile, inductor, default mode", setup_torch_compile,
           isa_cap=ISA_CAP_INDUCTOR),
    System("torch.compile+freezing", "torch.compile, inductor with "
           "torch._inductor.config.freezing = True", setup_torch_compile_freezing,
           isa_cap=ISA_CAP_INDUCTOR),
    System("onnxruntime", "ONNX Runtime CPU, ORT_ENABLE_ALL, on the torch.onnx.export "
           "(dynamo) model", setup_onnxruntime, needs_onnx=True, isa_cap=ISA_UNCAPPED_ORT,
           isa_cap_masked=ISA_MASKED_ORT),
    System("openvino", "OpenVINO CPU (LATENCY hint, f32) on the same ONNX model",
           setup_openvino, needs_onnx=True, isa_cap=ISA_PARTLY_OV,
           isa_cap_masked=ISA_MASKED_OV),
    System("tvm-relax", "TVM's own path: from_exported_program + relax.build for llvm "
           "(host CPU), untuned, no rtinfer passes", setup_tvm_relax, slow=True,
           isa_cap=ISA_UNCAPPED_TVM,
           isa_cap_masked=ISA_UNCAPPED_TVM_MASKED),
    System("tvm-relax-tuned", "TVM's own path tuned: from_exported_program, TVM's "
           "static-shape tuning flow (FuseOps, MetaSchedule with --tune-trials trials in all)",
           setup_tvm_relax_tuned, tuned=True, isa_cap=ISA_UNCAPPED_TVM,
           isa_cap_masked=ISA_UNCAPPED_TVM_MASKED),
    System("rtinfer-torch", "rtinfer.compile(backend='torch'), default pipeline (O3)",
           setup_rtinfer_torch, rtinfer=True, isa_cap=ISA_CAP_TORCH),
    System("rtinfer-tvm", "rtinfer.compile(backend='tvm'), default pipeline (O3)",
           setup_rtinfer_tvm, rtinfer=True, isa_cap=ISA_UNCAPPED_TVM,
           isa_cap_masked=ISA_UNCAPPED_TVM_MASKED),
    System("rtinfer-tvm-tuned", "rtinfer.compile(backend='tvm', tune=--tune-trials): "
           "MetaSchedule on rtinfer's fused kernels, same trial budget as tvm-relax-tuned",
           setup_rtinfer_tvm_tuned, rtinfer=True, tuned=True, isa_cap=ISA_UNCAPPED_TVM,
           isa_cap_masked=ISA_UNCAPPED_TVM_MASKED),
    System("rtinfer-native", "rtinfer.compile(backend='native'): rtinfer's C++ executor, "
           "oneDNN conv/matmul, own kernels, default pipeline (O3)",
           setup_rtinfer_native, rtinfer=True, isa_cap=ISA_CAP_NATIVE),
    System("onnxruntime-int8", "ONNX Runtime CPU on its own int8 quantization of the ONNX "
           "model: static QDQ S8S8 per-channel, 128 calibration inputs (CNNs); dynamic "
           "(transformers)", setup_onnxruntime_int8, needs_onnx=True,
           isa_cap=ISA_UNCAPPED_ORT, isa_cap_masked=ISA_MASKED_ORT, precision="int8"),
    System("openvino-int8", "OpenVINO CPU on NNCF post-training quantization (nncf.quantize, "
           "128 calibration inputs; model_type=TRANSFORMER for MiniLM)", setup_openvino_int8,
           needs_onnx=True, isa_cap=ISA_PARTLY_OV, isa_cap_masked=ISA_MASKED_OV,
           precision="int8"),
    System("rtinfer-int8", "rtinfer.compile(precision='int8', calibration=128 inputs, "
           "backend='native')", setup_rtinfer_int8, rtinfer=True, isa_cap=ISA_CAP_NATIVE,
           precision="int8"),
    System("openvino-bf16", "OpenVINO CPU (LATENCY hint, bf16 precision hint) on the same "
           "ONNX model; n/a where OpenVINO resolves the hint to f32", setup_openvino_bf16,
           needs_onnx=True, isa_cap=ISA_PARTLY_OV, isa_cap_masked=ISA_MASKED_OV,
           precision="bf16"),
    System("rtinfer-bf16", "rtinfer.compile(precision='bf16', backend='native'): oneDNN bf16 "
           "conv/matmul; n/a on a CPU (or --isa cap) without AVX512_BF16 / AMX-BF16",
           setup_rtinfer_bf16, rtinfer=True, isa_cap=ISA_CAP_NATIVE, precision="bf16"),
]}
