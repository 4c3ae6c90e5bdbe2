"""smooth-quant: move activation outliers of linears into their weights (SmoothQuant, Xiao et
al. 2023), folding the per-channel scale into the normalization that produces the activation.

    ys_k = linear_k(norm(x) {gamma, beta}, W_k)  for every reader k of the norm's output
      -> linear_k(norm(x) {gamma / s, beta / s}, W_k * s[None, :])
    s_j = max|X_j|^alpha / max_k max_i |W_k[i, j]|^(1 - alpha)    (clipped to [1e-5, 1e5])

``X`` is the norm's output over the calibration data (its per-channel |max| from the
"calibration" analysis), j its channels (the last axis). Dividing the norm's affine parameters
by s and multiplying the weights' input columns by s leaves every output equal (to fp32
rounding); the activation's outlier channels shrink and the weights absorb them, where
per-channel weight scales cope. Norms: ``layer_norm`` and ``rms_norm`` over the last axis
(gamma/beta of shape [C]); readers: ``linear``/``fused_linear`` with a constant weight [N, C].
One s serves all the linears; any other reader (a transformer's residual add reads the same
LayerNorm output) reads ``mul(norm', s)``, the unsmoothed value, instead.

Declines: no linear reads the norm's output, or it is a graph output; a weight is not a
constant; the norm normalizes more than the last axis. Requires: calibration data. Stats:
smoothed (norms), layers, restored (norms whose other readers get a mul).
"""

from __future__ import annotations

import numpy as np

from rtinfer.errors import QuantizeError
from rtinfer.ir.graph import Graph, Node
from rtinfer.pass_manager import Option, PassContext, RewriteEvent, graph_pass
from rtinfer.passes.quant.calibrate import calibration_stats, is_quantizable
from rtinfer.rewrite.rewriter import Rewriter

NORMS = frozenset({"layer_norm", "rms_norm"})
SMOOTHED = frozenset({"linear", "fused_linear"})


def smoothing_scale(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); 1 where either max is 0."""
    x = np.asarray(x_absmax, np.float64)
    w = np.asarray(w_absmax, np.float64)
    ok = (x > 0) & (w > 0)
    s = np.ones_like(x)
    s[ok] = x[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5)


def _readers(rw: Rewriter, norm: Node) -> tuple[list[Node], list[tuple[Node, int]]] | None:
    """The linears reading ``norm``'s output as their activation, and every other use (a
    transformer's residual add, say), or None (declined) without such a linear."""
    out = norm.out
    if rw.graph.is_output(out):
        return rw.decline("the normalized value is a graph output")
    linears: list[Node] = []
    others: list[tuple[Node, int]] = []
    for u, i in out.uses:
        if i == 0 and u.op in SMOOTHED and is_quantizable(u):
            if u not in linears:
                linears.append(u)
        else:
            others.append((u, i))
    if not linears:
        return rw.decline("no linear reads the normalized value as its activation")
    return linears, others


def smooth_quant_graph(graph: Graph, ctx: PassContext, alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise QuantizeError(f"smooth-quant: alpha must be in [0, 1], got {alpha}")
    rw = Rewriter(graph, ctx)
    norms = [n for n in graph.nodes if n.op in NORMS]
    # calibrating costs a run over the data: only for a graph with a norm to smooth (no CNN)
    stats = calibration_stats(ctx, graph) if norms else None
    for norm in norms:
        rw.begin(norm, "smooth")
        c = norm.out.type.shape[-1]
        if norm.attrs["axis"] not in (-1, norm.out.type.rank - 1) or not isinstance(c, int):
            rw.decline("the norm normalizes over more than its last axis")
            continue
        params = norm.inputs[1:]
        if any(not p.is_const for p in params):
            rw.decline("the norm's gamma/beta are not constants")
            continue
        readers = _readers(rw, norm)
        if not readers:
            continue
        users, others = readers
        s_x = stats[norm.out].channel_absmax if stats and norm.out in stats else None
        if s_x is None:
            rw.decline("no per-channel statistics of the normalized value")
            continue
        w_absmax = np.max([np.abs(u.inputs[1].const_data).max(0) for u in users], axis=0)
        s = smoothing_scale(s_x, w_absmax, alpha)
        dtype = norm.out.type.dtype.np
        gamma = params[0].const_data if params else np.ones(c, dtype)
        new_params = [rw.const((gamma / s).astype(dtype))]
        if len(params) > 1:
            new_params.append(rw.const((params[1].const_data / s).astype(dtype)))
        smoothed = rw.op(norm.op, norm.inputs[0], *new_params, **norm.attrs)
        if others:  # the residual (or any other reader) gets the unsmoothed value back
            restored = rw.op("mul", smoothed, rw.const(s.astype(dtype)))
            for node, i in others:
                rw.set_input(node, i, restored)
            ctx.stat("restored")
        for u in users:
            rw.begin(u, "smooth")
            w = u.inputs[1]
            new_w = rw.const((w.const_data * s[None, :]).astype(w.const_data.dtype))
            rw.set_input(u, 1, new_w)
            rw.set_input(u, 0, smoothed)
            rw.erase_if_dead(w.producer)
            ctx.stat("layers")
        rw.begin(norm, "smooth")
        before = rw.before
        rw.erase_if_dead(norm)
        for p in params:
            rw.erase_if_dead(p.producer)
        ctx.record_rewrite(RewriteEvent(ctx.pass_name, "smooth", before, "",
                                        ctx.stats["smoothed"]))
        ctx.stat("smoothed")


@graph_pass(
    "smooth-quant",
    summary="migrate activation outliers of linears after a norm into their weights "
            "(SmoothQuant)",
    options={"alpha": Option(float, 0.5, "migration strength: 0 keeps activations, 1 moves "
                                          "all of their range into the weights")},
)
def smooth_quant(graph: Graph, ctx: PassContext) -> None:
    smooth_quant_graph(graph, ctx, ctx.options["alpha"])
