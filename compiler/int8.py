"""``precision="int8"``: calibrate, insert QDQ, choose int8 or fp32 per layer by measured
sensitivity and speed within the accuracy budget, then lower to the quantized ops.

    graph, report = quantize_for_compile(graph, batches, accuracy_budget=0.01, backend="native")
    print(report.table())     # per layer: precision, sensitivity, int8 vs fp32 kernel time, why

The steps (docs/int8.md):

1. ``smooth-quant`` (transformer linears after a LayerNorm; a no-op elsewhere), then
   ``calibrate``: the statistics every QDQ form below reads (one run over the data).
2. Speed: where the backend can time one layer (native), each layer's int8 and fp32 kernels
   are timed at its shape on this CPU; a layer stays fp32 where its fp32 kernel, plus the
   quantize/dequantize an fp32 layer needs between int8 ones, is faster than its int8 kernel.
3. Sensitivity: each int8 layer alone quantized (every other layer fp32), its output error on
   the first calibration batches: ``mean over batches of |y_int8 - y_fp32| / |y_fp32|`` (L2
   norms over all outputs). The same error of the whole candidate model is what the budget
   bounds.
4. With ``accuracy_budget``: while the model's error exceeds it, the most sensitive int8 layer
   goes back to fp32 (greedy), and the error is measured again.
5. ``lower-int8``: the QDQ chains of the int8 layers become qconv2d / qlinear / qmatmul.

Each candidate model is ``insert-qdq`` of the fp32 graph with that set of layers int8: a layer
kept fp32 has its fp32 weight and bias (after smooth-quant, which keeps the fp32 model's
function) and reads real activations, and what is measured is exactly what is built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from rtinfer.backends.torch_backend import build_module
from rtinfer.errors import QuantizeError
from rtinfer.ir.graph import Graph, Node
from rtinfer.ir.interpreter import bind_dims
from rtinfer.pass_manager import PipelineContext, run_pipeline
from rtinfer.workers import current as current_workers

PRECISIONS = ("fp32", "bf16", "int8")
# in the compile cache's key: a cached int8 model made by an older algorithm is not reused
INT8_VERSION = 5
METHODS = ("auto", "entropy", "minmax", "percentile", "mse")
# compile(precision="int8")'s per-token dynamic linears: chosen per layer, off, or every linear
DYNAMIC_CHOICES = ("auto", "never", "always")
SENSITIVITY_BATCHES = 8  # calibration batches the errors are measured on
# an fp32 layer between int8 ones dequantizes its input and quantizes its output: about this
# many ns per element of the two (rtinfer's quantize ~0.7 ns, dequantize ~0.15 ns, one thread)
CONVERT_NS_PER_ELEMENT = 0.5


DYNAMIC_MARGIN = 0.9  # a slower dynamic linear is kept only below this share of static's error


def _le(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a <= b


@dataclass
class LayerRow:
    """One layer of the int8 report."""

    name: str
    op: str
    shape: str  # the weight's shape
    precision: str  # "int8" (static) | "int8-dyn" (per-token dynamic) | "fp32"
    sensitivity: float | None  # output error with this layer alone int8 (as chosen)
    fp32_ms: float | None
    int8_ms: float | None  # the chosen int8 kernel's time (static or dynamic)
    why: str
    # linears: the output error and kernel time of the dynamic and static forms
    dynamic_sensitivity: float | None = None
    static_sensitivity: float | None = None
    dynamic_ms: float | None = None
    static_ms: float | None = None


@dataclass
class Int8Report:
    """What ``precision="int8"`` chose and measured (``CompiledModel.report()`` prints it)."""

    method: str
    batches: int
    budget: float | None
    error: float  # the chosen model's output error on the measured batches
    all_int8_error: float  # every layer int8
    layers: list[LayerRow] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def int8_layers(self) -> int:
        return sum(r.precision.startswith("int8") for r in self.layers)

    @property
    def dynamic_layers(self) -> int:
        return sum(r.precision == "int8-dyn" for r in self.layers)

    def table(self) -> str:
        def num(x: float | None, fmt: str) -> str:
            return "-" if x is None else format(x, fmt)

        budget = "none" if self.budget is None else f"{self.budget:g}"
        lines = [
            f"int8: {self.int8_layers} of {len(self.layers)} layers int8, "
            f"{self.dynamic_layers} of them dynamic per token ({self.method} "
            f"calibration on {self.batches} batches); output error {self.error:.4g} "
            f"(all int8: {self.all_int8_error:.4g}; budget {budget})",
            f"  {'layer':<28} {'op':<14} {'weight':<16} {'precision':<9} {'sensitivity':>11} "
            f"{'fp32 ms':>8} {'int8 ms':>8}  why",
        ]
        for r in self.layers:
            lines.append(f"  {r.name[:28]:<28} {r.op:<14} {r.shape:<16} {r.precision:<9} "
                         f"{num(r.sensitivity, '11.3g')} {num(r.fp32_ms, '8.3f')} "
                         f"{num(r.int8_ms, '8.3f')}  {r.why}")
        if self.seconds:
            lines.append("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Int8Report:
        rows = [LayerRow(**r) for r in rec.get("layers", [])]
        return cls(**{**rec, "layers": rows})


def check_precision(precision: str, calibration: Any, accuracy_budget: Any) -> None:
    """The compile arguments of the precision, checked before any work."""
    if precision not in PRECISIONS:
        raise QuantizeError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and calibration is None:
        raise QuantizeError("precision='int8' needs calibration=...: an iterable of input "
                            "tuples like example_inputs (a few hundred real inputs is typical)")
    if precision != "int8" and (calibration is not None or accuracy_budget is not None):
        raise QuantizeError(f"calibration and accuracy_budget apply to precision='int8', not "
                            f"{precision!r}")
    if accuracy_budget is not None and (
            isinstance(accuracy_budget, bool) or not isinstance(accuracy_budget, (int, float))
            or not 0 < accuracy_budget < math.inf):
        raise QuantizeError(f"accuracy_budget must be a positive number (the largest relative "
                            f"output error allowed, e.g. 0.01), got {accuracy_budget!r}")


# -- layers ------------------------------------------------------------------------------------


def _layer_name(n: Node, i: int) -> str:
    """The module the layer came from (``torch:encoder.layer.0.output.dense (aten.linear)``
    -> ``encoder.layer.0.output.dense``), else its value's name, else ``op#i``."""
    origin = n.provenance.origin
    if ":" in origin:
        where = origin.split(":", 1)[1].split(" (", 1)[0].strip()
        if where:
            return f"{i}:{where}"
    return f"{i}:{n.out.name or n.op}"


class Variants:
    """The smoothed fp32 graph, its calibration statistics, and the QDQ graph of any set of its
    layers made int8 (the rest fp32, reading real values: no quantize is left on their path)."""

    def __init__(self, fp32: Graph, pctx: PipelineContext, per_channel: bool, levels: int):
        from rtinfer.passes.quant.calibrate import CALIBRATION, plan

        self.fp32, self.pctx = fp32, pctx
        run_pipeline(fp32, "calibrate", pipeline_ctx=pctx)
        self.stats = pctx.analysis(CALIBRATION, _not_computed, fp32)
        self.layers = plan(fp32).layers
        self.options = f"per-channel={str(per_channel).lower()},weight-max={levels}"
        self.method = "entropy"

    def graph(self, int8: set[int], dynamic: set[int] = frozenset()) -> Graph:
        """A clone of the fp32 graph with the layers in ``int8`` in QDQ form (ranges by the
        observer ``self.method``) and the linears in ``dynamic`` as ``qlinear_dynamic``."""
        from rtinfer.passes.quant.calibrate import CALIBRATION, CalibrationStats

        g = self.fp32.clone()
        vmap = {id(a): b for a, b in zip(self.fp32.values(), g.values(), strict=True)}
        stats = CalibrationStats({vmap[id(v)]: s for v, s in self.stats.stats.items()},
                                 self.stats.batches)
        self.pctx.provide(CALIBRATION, g, stats)
        layers = ",".join(map(str, sorted(int8 - dynamic))) or "none"
        dyn = ",".join(map(str, sorted(dynamic))) or "none"
        run_pipeline(g, f'insert-qdq{{{self.options},method={self.method},layers="{layers}",'
                        f'dynamic="{dyn}"}}', pipeline_ctx=self.pctx)
        return g


def _not_computed(graph: Graph) -> None:
    raise QuantizeError("int8: the calibration statistics were not computed")


# -- measuring ---------------------------------------------------------------------------------


def _runner(graph: Graph) -> Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]:
    module = build_module(graph)

    def run(xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with torch.inference_mode():
            outs = module(*xs)
        outs = outs if isinstance(outs, (tuple, list)) else [outs]
        return [o.float() for o in outs]
    return run


def _calibration_runner(graph: Graph) -> Callable[..., Sequence[torch.Tensor]]:
    """The pipeline's ``GraphRunner`` for calibration: the torch backend, built once."""
    module = build_module(graph)

    def run(*xs: torch.Tensor) -> Sequence[torch.Tensor]:
        with torch.inference_mode():
            return module(*xs)
    return run


def graph_error(ref: list[list[torch.Tensor]], data: list[list[torch.Tensor]],
                graph: Graph) -> float:
    """``output_error`` of ``graph`` run on ``data`` against ``ref`` (a worker's task)."""
    run = _runner(graph)
    return output_error(ref, [run(b) for b in data])


def output_error(ref: list[list[torch.Tensor]], got: list[list[torch.Tensor]]) -> float:
    """Mean over batches of ``|got - ref| / |ref|`` (L2 norms over all outputs of a batch)."""
    errs = []
    for r, g in zip(ref, got, strict=True):
        num = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(r, g, strict=True)))
        den = math.sqrt(sum(float((a ** 2).sum()) for a in r))
        errs.append(num / den if den > 0 else num)
    return float(np.mean(errs))


def _weight_levels(backend: str) -> int:
    """127, or 63 where the native backend's int8 kernels have no VNNI (8-bit weights would
    saturate their 16-bit pair sums); the torch backend computes in fp32 (fake-quant)."""
    if backend not in ("native", "auto"):
        return 127
    try:
        from rtinfer.backends.native import weight_max
    except ImportError:
        return 127
    return weight_max()


def _convert_ms(node: Node, dims: dict) -> float:
    """What an fp32 ``node`` between int8 layers costs in conversions, estimated (symbolic
    dims at ``dims``, the first calibration batch's sizes)."""
    elements = 0
    for v in (node.inputs[0], node.out):
        n = 1
        for d in v.type.shape:
            n *= d if isinstance(d, int) else int(d.subs(dims))
        elements += n
    return elements * CONVERT_NS_PER_ELEMENT * 1e-6


def _static_layer(node: Node, dims: dict) -> Node:
    """``node`` alone in a scratch graph, its symbolic dims bound to ``dims`` (the sizes of the
    first calibration batch): a dynamic model's layers are timed at the size it calibrated on."""
    from rtinfer.ir.types import TensorType

    if all(v.type.is_static for v in node.inputs):
        return node
    g = Graph("layer")
    ins = []
    for v in node.inputs:
        if v.is_const:
            ins.append(g.add_const(v.const_data, quant=v.type.quant))
        else:
            shape = tuple(int(d.subs(dims)) if not isinstance(d, int) else d
                          for d in v.type.shape)
            ins.append(g.add_input(TensorType(v.type.dtype, shape, v.type.quant)))
    return g.create_node(node.op, ins, dict(node.attrs))


def _layer_times(layers: list[Node], backend: str, dims: dict
                 ) -> list[tuple[float, float] | None]:
    """(fp32 ms, int8 ms) of each layer's kernel at its shape (symbolic dims at ``dims``),
    where the backend can time one layer (native); None otherwise."""
    if backend not in ("native", "auto"):
        return [None] * len(layers)
    from rtinfer.backends.native import time_layer
    from rtinfer.errors import RtinferError

    out: list[tuple[float, float] | None] = []
    for n in layers:
        try:
            out.append(time_layer(_static_layer(n, dims)))
        except RtinferError:  # a layer the native backend cannot time: chosen on accuracy
            out.append(None)
    return out


def _dynamic_times(layers: list[Node], backend: str, dims: dict) -> list[float | None]:
    """The ``qlinear_dynamic`` kernel time (ms) of each linear layer at its shape, where the
    backend can time one layer (native); None for other layers and backends."""
    if backend not in ("native", "auto"):
        return [None] * len(layers)
    from rtinfer.backends.native.quant_dynamic import time_dynamic_layer
    from rtinfer.errors import RtinferError
    from rtinfer.ir.ops.quant import LAYER_BASE

    out: list[float | None] = []
    for n in layers:
        if LAYER_BASE.get(n.op) != "linear":
            out.append(None)
            continue
        try:
            out.append(time_dynamic_layer(_static_layer(n, dims))[1])
        except RtinferError:
            out.append(None)
    return out


def quantize_for_compile(graph: Graph, batches: list[list[torch.Tensor]],
                         accuracy_budget: float | None = None, *, method: str = "auto",
                         backend: str = "native", per_channel: bool = True,
                         dynamic: str = "auto",
                         progress: Callable[[str], None] | None = None
                         ) -> tuple[Graph, Int8Report]:
    """The int8 graph (lowered) of the optimized fp32 ``graph`` (not modified) and the report.

    ``dynamic``: "auto" (each linear static or per-token dynamic, whichever is more accurate
    on the calibration batches among the forms faster than fp32), "never" or "always" (every
    linear dynamic)."""
    from rtinfer.ir.ops.quant import LAYER_BASE

    if method not in METHODS:
        raise QuantizeError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    if dynamic not in DYNAMIC_CHOICES:
        raise QuantizeError(f"dynamic={dynamic!r}: choose one of {', '.join(DYNAMIC_CHOICES)}")
    say = progress or (lambda s: None)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    fp32 = graph.clone()
    pctx = PipelineContext(data={"calibration": batches}, runner=_calibration_runner)
    run_pipeline(fp32, "smooth-quant", pipeline_ctx=pctx)
    v = Variants(fp32, pctx, per_channel, _weight_levels(backend))
    seconds["calibrate"] = time.perf_counter() - t
    n = len(v.layers)
    every = set(range(n))
    linears = {i for i, fn in enumerate(v.layers) if LAYER_BASE[fn.op] == "linear"}
    rows = [LayerRow(_layer_name(fn, i), fn.op, "x".join(map(str, fn.inputs[1].type.shape)),
                     "int8", None, None, None, "") for i, fn in enumerate(v.layers)]

    # which forms may run: static where its kernel (plus conversions) beats fp32, dynamic
    # where its kernel (quantizing the activation included) beats fp32
    t = time.perf_counter()
    dims = bind_dims([v.type for v in fp32.inputs], [tuple(x.shape) for x in batches[0]])
    static_ok, dynamic_ok = set(every), set(linears) if dynamic != "never" else set()
    if dynamic == "always":
        static_ok -= linears
    static_times = _layer_times(v.layers, backend, dims)
    dyn_times = _dynamic_times(v.layers, backend, dims) if dynamic_ok else [None] * n
    for i, (layer, row) in enumerate(zip(v.layers, rows, strict=True)):
        times = static_times[i]
        if times is not None:
            row.fp32_ms, row.static_ms = times
            convert = _convert_ms(layer, dims)
            if not row.static_ms < row.fp32_ms + convert:
                static_ok.discard(i)
                row.why = f"int8 not faster at this shape (fp32 + {convert:.3f} ms of " \
                          f"conversions)"
            elif row.static_ms >= row.fp32_ms:
                row.why = f"int8 kernel slower, but fp32 here costs {convert:.3f} ms of " \
                          f"conversions"
        row.dynamic_ms = dyn_times[i]
        if row.dynamic_ms is not None and row.fp32_ms is not None \
                and not row.dynamic_ms < row.fp32_ms:
            dynamic_ok.discard(i)
    candidates = static_ok | dynamic_ok
    for i in every - candidates:
        rows[i].precision, rows[i].int8_ms = "fp32", rows[i].static_ms  # the time that lost
        if i in linears and dynamic != "never":
            rows[i].why += "; dynamic int8 not faster either" if rows[i].why else \
                "dynamic int8 not faster at this shape"
    seconds["time layers"] = time.perf_counter() - t

    t = time.perf_counter()
    data = batches[:SENSITIVITY_BATCHES]
    run_fp32 = _runner(fp32)
    ref = [run_fp32(b) for b in data]

    def error(int8: set[int], dyn: set[int] = frozenset()) -> float:
        run = _runner(v.graph(int8 | dyn, dyn))
        return output_error(ref, [run(b) for b in data])

    all_static = every - linears if dynamic == "always" else every
    all_dynamic = linears if dynamic == "always" else set()
    if method == "auto":  # the observer whose all-int8 model is closest to fp32, measured
        errors = {}
        for m in METHODS[1:]:
            v.method = m
            errors[m] = error(all_static, all_dynamic)
        v.method = min(errors, key=errors.__getitem__)
        all_int8 = errors[v.method]
        seconds["choose observer"] = time.perf_counter() - t
    else:
        v.method = method
        all_int8 = error(all_static, all_dynamic)
    dyn_chosen: set[int] = set()
    # each layer's errors in the loop's order, over the compile's workers (rtinfer.workers:
    # Ray tasks where a cluster is given, else computed here one at a time as the loop asks)
    alone = [({i}, set()) if static else ({i}, {i}) for i in sorted(candidates)
             for static in (True, False) if i in (static_ok if static else dynamic_ok)]
    measured = current_workers().map(graph_error, (v.graph(*a) for a in alone), (ref, data))
    for i, row in enumerate(rows):
        if i not in candidates:  # a layer fp32 for speed needs no accuracy verdict
            continue
        say(f"sensitivity {i + 1}/{n}")
        if i in static_ok:
            row.static_sensitivity = next(measured)
        if i in dynamic_ok:
            row.dynamic_sensitivity = next(measured)
        s, d = row.static_sensitivity, row.dynamic_sensitivity
        # the more accurate form, both fast enough; dynamic, when slower than static, must
        # be clearly more accurate (10%): a near tie goes to the faster kernel
        if d is not None and (s is None or d < s * (1.0 if _le(row.dynamic_ms, row.static_ms)
                                                   else DYNAMIC_MARGIN)):
            dyn_chosen.add(i)
            row.precision, row.sensitivity, row.int8_ms = "int8-dyn", d, row.dynamic_ms
        else:
            row.sensitivity, row.int8_ms = s, row.static_ms
    chosen = set(candidates)
    current = error(chosen - dyn_chosen, dyn_chosen)
    if accuracy_budget is not None:
        by_sensitivity = sorted(chosen, key=lambda i: -(rows[i].sensitivity or 0.0))
        for i in by_sensitivity:
            if current <= accuracy_budget:
                break
            chosen.discard(i)
            dyn_chosen.discard(i)
            rows[i].precision = "fp32"
            rows[i].why = f"sensitive: model error {current:.3g} > budget {accuracy_budget:g}"
            current = error(chosen - dyn_chosen, dyn_chosen)
    for i in chosen:
        rows[i].why = _why_int8(rows[i], accuracy_budget is not None)
    seconds["sensitivity"] = time.perf_counter() - t

    final = v.graph(chosen, dyn_chosen)
    run_pipeline(final, "lower-int8,dce")
    chosen_by = f"{v.method} (auto: " + ", ".join(f"{m} {e:.3g}" for m, e in errors.items()) + \
        ")" if method == "auto" else v.method
    report = Int8Report(chosen_by, len(data), accuracy_budget, current, all_int8, rows, seconds)
    return final, report


def _why_int8(r: LayerRow, budget: bool) -> str:
    """The report's reason for an int8 layer: its form, speed and (linears) why that form."""
    faster = f"{r.fp32_ms / r.int8_ms:.2f}x faster" if r.int8_ms and r.fp32_ms else \
        "speed not measured"
    within = ", within budget" if budget else ""
    s, d = r.static_sensitivity, r.dynamic_sensitivity
    if r.precision == "int8-dyn":
        than = f"error {d:.3g} vs static {s:.3g}" if s is not None else \
            "static int8 not faster than fp32"
        return f"dynamic per-token int8 ({than}; {faster}{within})"
    if d is not None:
        return f"int8 (error {s:.3g} vs dynamic {d:.3g}; {faster}{within})"
    slow = "; dynamic not faster than fp32" if r.dynamic_ms is not None else ""
    kept = f"; {r.why}" if r.why else ""
    return f"int8 ({faster}{within}{kept}{slow})"
