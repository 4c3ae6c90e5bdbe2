"""insert-qdq: the QDQ form of docs/int8.md, from the "calibration" analysis.

    layer(x, w, b, [r])  ->  layer(dq(q_x), dq(w_q), b, [dq(q_r)])
        q_x = quantize(x) {u8, scale, zero point}   one per value, shared by its int8 readers
        w_q = const i8 {quant: symmetric, per output channel (per-channel=true) or per tensor}
    pt(x)  ->  pt(dq(quantize(x)))   pass-through ops (max_pool2d, reshape, flatten, transpose,
                                     concat) whose output an int8 layer reads, with the
                                     parameters of their output (lower-int8 runs them on ints)
    linear(x, w, b, [r])  ->  qlinear_dynamic(x, w_q, b, [r])    the layers in ``dynamic``: x
                                     stays f32 and is quantized per row at run time

Layers: ``conv2d``, ``linear``, ``matmul`` with a constant float weight and their ``fused_*``
forms (``ops`` picks among conv2d, linear, matmul). Everything else (layer_norm, softmax, gelu,
adds outside a fused residual, ...) stays fp32 and keeps reading the fp32 values.

A wrapped pass-through op computes on the quantized value, so its fp32 readers (if any) see
the quantized result too. Layers already in QDQ form are left alone: the pass converges.

Activations are u8, asymmetric (oneDNN's source zero points): the observer's range [lo, hi],
widened to contain 0, maps onto 0..255 with 0 exact (post-ReLU data: zero point 0). A value and
the pass-through outputs it feeds share one set of parameters, the union of their ranges.
Weights are s8 symmetric (zero point 0, -127..127), scale = max |w| / 127 per output channel
(the op table's ``WeightRole.out_axis``).

Requires: calibration data (pipeline input "calibration"). Numerics: int8 rounding (tests bound
the accuracy loss on real data). Stats: layers, activations, pass-through.
"""

from __future__ import annotations

import numpy as np

from rtinfer.errors import QuantizeError
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops.fused import EPILOGUE_ATTRS
from rtinfer.ir.ops.quant import LAYER_BASE
from rtinfer.ir.types import DType, QuantParams
from rtinfer.pass_manager import Option, PassContext, RewriteEvent, graph_pass
from rtinfer.passes.quant.calibrate import (
    CalibrationStats,
    activation_inputs,
    calibration_stats,
    plan,
)
from rtinfer.passes.quant.observers import OBSERVERS, observe, s8_weight, u8_params
from rtinfer.rewrite.rewriter import Rewriter

LAYER_KINDS = ("conv2d", "linear", "matmul")
# the analysis insert-qdq leaves behind: each weight's dequantize value -> the fp32 array it
# replaced (what bias-correction measures the rounding against); kept while the graph is
FLOAT_WEIGHTS = "qdq-float-weights"


def parse_ops(text: str) -> set[str]:
    """The ``ops`` option: comma-separated layer kinds."""
    ops = {o.strip() for o in text.split(",") if o.strip()}
    unknown = sorted(ops - set(LAYER_KINDS))
    if unknown or not ops:
        raise QuantizeError(f"insert-qdq: ops {text!r}: unknown layer kinds {unknown} (choose "
                            f"among {', '.join(LAYER_KINDS)})")
    return ops


def group_params(group: list[Value], stats: CalibrationStats, method: str) -> tuple[float, int]:
    """u8 (scale, zero point) of a group of values that share parameters: the union of the
    observer's ranges of its members."""
    ranges = [observe(stats[v].hist, method) for v in group]
    return u8_params(min(r[0] for r in ranges), max(r[1] for r in ranges))


def weight_const(rw: Rewriter, w: Value, out_axis: int | None, levels: int = 127) -> Value:
    """An s8 constant carrying its QuantParams for the float constant ``w``."""
    q, scale = s8_weight(w.const_data, out_axis, levels)
    if out_axis is None:
        qp = QuantParams(np.float32(scale), np.int64(0))
    else:
        qp = QuantParams(scale, np.zeros(scale.shape, np.int64), out_axis)
    return rw.const(q, quant=qp)


def parse_layers(text: str) -> set[int] | None:
    """The ``layers`` option: "all", "none" or comma-separated layer indices (graph order)."""
    if text.strip() == "all":
        return None
    if text.strip() == "none":
        return set()
    try:
        out = {int(t) for t in text.split(",") if t.strip()}
    except ValueError:
        out = {-1}
    if any(i < 0 for i in out):
        raise QuantizeError(f"insert-qdq: layers {text!r}: give all, none or layer indices "
                            f"(0, 1, ... in graph order), comma-separated")
    return out


def dynamic_layers(graph: Graph, ops: set[str] | None, dynamic: set[int] | None) -> list[Node]:
    """The layers (indices in ``plan(graph, ops).layers``; None: every linear) that become
    ``qlinear_dynamic``; a layer that is not a linear is a ``QuantizeError`` naming it."""
    layers = plan(graph, ops).layers
    if dynamic is None:
        return [n for n in layers if LAYER_BASE[n.op] == "linear"]
    out = []
    for i in sorted(dynamic):
        if i >= len(layers):
            raise QuantizeError(f"insert-qdq: dynamic layer {i}: the graph has {len(layers)} "
                                f"quantizable layers")
        if LAYER_BASE[layers[i].op] != "linear":
            raise QuantizeError(f"insert-qdq: dynamic layer {i} (%{layers[i].out.name}) is a "
                                f"{layers[i].op}; only linear layers quantize dynamically")
        out.append(layers[i])
    return out


def _make_dynamic(rw: Rewriter, n: Node, per_channel: bool, weight_levels: int) -> None:
    """``n`` (linear / fused_linear with a constant weight) -> ``qlinear_dynamic`` reading the
    same f32 activation, its weight an s8 constant with QuantParams."""
    rw.begin(n, "dynamic")
    w = n.inputs[1]
    axis = n.opdef.weight.axes(w.type.rank)[0] if per_channel else None
    attrs = {k: n.attrs.get(k, a.default) for k, a in EPILOGUE_ATTRS.items()}
    new = rw.op("qlinear_dynamic", n.inputs[0], weight_const(rw, w, axis, weight_levels),
                *n.inputs[2:], **attrs)
    rw.replace(n.out, new)
    rw.erase(n)
    if w.producer is not None:
        rw.erase_if_dead(w.producer)


def insert_qdq_graph(graph: Graph, ctx: PassContext, stats: CalibrationStats, method: str,
                     per_channel: bool, ops: set[str] | None = None,
                     weight_levels: int = 127, only: set[int] | None = None,
                     dynamic: set[int] | None = frozenset()) -> None:
    """Rewrite ``graph`` into the QDQ form in place, with ranges from ``stats``; ``only``:
    the indices of the layers made int8 (None: all); ``dynamic``: the indices of the linears
    made ``qlinear_dynamic`` instead (None: every linear; they are not static int8 then)."""
    dyn = dynamic_layers(graph, ops, dynamic)
    if dyn:
        everyone = plan(graph, ops).layers
        dyn_ids = {id(n) for n in dyn}
        static = {i for i, n in enumerate(everyone) if id(n) not in dyn_ids}
        only = static if only is None else only & static
    p = plan(graph, ops, only)
    rw = Rewriter(graph, ctx)
    readers: dict[Value, list[tuple[Node, int]]] = {}
    for n in p.layers:
        for i in activation_inputs(n):
            readers.setdefault(n.inputs[i], []).append((n, i))
    for n in p.passthrough:
        for i, u in enumerate(n.inputs):
            readers.setdefault(u, []).append((n, i))
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    applied = 0

    for group in p.groups:
        missing = [v for v in group if v not in stats]
        if missing:
            raise QuantizeError(f"insert-qdq: no calibration statistics for "
                                f"%{missing[0].name or missing[0].uid}")
        scale, zp = group_params(group, stats, method)
        for v in group:
            uses = sorted(readers.get(v, []), key=lambda u: order[id(u[0])])
            if not uses:  # every member has a reader by construction (plan); be safe anyway
                continue
            rw.begin(uses[0][0], "activation")
            q = rw.op("quantize", v, scale=[scale], zero_point=[zp], axis=[], dtype=DType.u8)
            dq = rw.op("dequantize", q)
            for node, i in uses:
                rw.set_input(node, i, dq)
            ctx.record_rewrite(RewriteEvent(ctx.pass_name, "activation", rw.before, "", applied))
            applied += 1
            ctx.stat("activations")

    made: dict[Value, Value] = {}  # a weight shared by several layers is quantized once
    for n in p.layers:
        role = n.opdef.weight
        w = n.inputs[role.input]
        rw.begin(n, "weight")
        if w not in made:
            axis = role.axes(w.type.rank)[0] if per_channel else None
            made[w] = rw.op("dequantize", weight_const(rw, w, axis, weight_levels))
        rw.set_input(n, role.input, made[w])
        ctx.record_rewrite(RewriteEvent(ctx.pass_name, "weight", rw.before, "", applied))
        applied += 1
        ctx.stat("layers")
    # bias-correction, later in the pipeline, compares each layer with its fp32 weight
    float_weights = ctx.pipeline.analysis(FLOAT_WEIGHTS, lambda g: {}, graph)
    float_weights.update({dq: w.const_data for w, dq in made.items()})
    for w in made:
        if w.producer is not None:
            rw.begin(w.producer, "weight")
            rw.erase_if_dead(w.producer)
    ctx.stat("pass-through", len(p.passthrough))
    for n in dyn:  # after the static layers: a weight they share was quantized from the f32 one
        _make_dynamic(rw, n, per_channel, weight_levels)
        ctx.record_rewrite(RewriteEvent(ctx.pass_name, "dynamic", rw.before, "", applied))
        applied += 1
        ctx.stat("dynamic")


@graph_pass(
    "insert-qdq",
    summary="quantize int8 layers' weights and read their activations through quantize pairs",
    options={
        "method": Option(str, "entropy", "the activation observer", choices=tuple(OBSERVERS)),
        "per-channel": Option(bool, True, "weight scales per output channel (false: per "
                                          "tensor)"),
        "ops": Option(str, ",".join(LAYER_KINDS), "the layer kinds made int8, comma-separated"),
        "weight-max": Option(int, 127, "the largest weight level: 127, or 63 (7-bit weights) "
                                       "for int8 kernels without VNNI, which saturate 8-bit "
                                       "products (rtinfer.backends.native.weight_max)"),
        "layers": Option(str, "all", "which of the quantizable layers (indices in graph order, "
                                     "comma-separated; all; none) become int8: mixed "
                                     "precision leaves the rest fp32"),
        "dynamic": Option(str, "none", "which linears (layer indices as for layers; all: "
                                       "every linear; none) become qlinear_dynamic: "
                                       "activations quantized per row at run time"),
    },
    preserves=(FLOAT_WEIGHTS,),
)
def insert_qdq(graph: Graph, ctx: PassContext) -> None:
    o = ctx.options
    ops = parse_ops(o["ops"])
    if not plan(graph, ops).layers:  # nothing to quantize (or done already): no data run
        return
    stats = calibration_stats(ctx, graph)
    if not 1 <= o["weight-max"] <= 127:
        raise QuantizeError(f"insert-qdq: weight-max {o['weight-max']} is not in 1..127")
    insert_qdq_graph(graph, ctx, stats, o["method"], o["per-channel"], ops, o["weight-max"],
                     parse_layers(o["layers"]), parse_layers(o["dynamic"]))
