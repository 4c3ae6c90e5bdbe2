"""bias-correction: undo the mean output shift that rounding a layer's weights causes.

    layer(x, dq(W_q), b)  ->  layer(x, dq(W_q), b + E[W x] - E[W_q x])
    E[W x] - E[W_q x] = (W - W_q) E[x]    per output channel (the layer is linear in x)

``E[x]`` is measured on the QDQ graph (so ``x`` is the quantized input the layer really sees)
over the calibration batches, averaged over the batch axis: a linear's mean over every axis but
the features; for a convolution the mean input image, convolved with ``W - W_q`` (padding
included) and averaged over the output positions. The fp32 weights ``W`` come from insert-qdq
(the analysis ``qdq-float-weights``), so this pass runs right after it. The epilogue (activation,
residual) comes after the bias, so a fused layer's pre-activation mean is the one corrected.
After the correction E[y_q] = E[y] on the calibration data, channel by channel (Nagel et al.,
"Data-Free Quantization", 2019, empirical bias correction).

Declines: a layer with a residual but no bias (no slot to add one); a batched matmul weight.
Requires: insert-qdq, calibration data. Stats: corrected.
"""

from __future__ import annotations

import numpy as np

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops import get_op
from rtinfer.pass_manager import PassContext, RewriteEvent, graph_pass
from rtinfer.passes.quant.calibrate import (
    CALIBRATION,
    QUANTIZABLE,
    Want,
    calibration_batches,
    collect,
    residual_index,
)
from rtinfer.passes.quant.insert_qdq import FLOAT_WEIGHTS
from rtinfer.rewrite.rewriter import Rewriter

INPUT_MEANS = "qdq-input-means"


def bias_index(node: Node) -> int | None:
    """The input index of ``node``'s bias when it has one."""
    names = node.opdef.inputs
    if "bias?" not in names:
        return None
    k = names.index("bias?")
    present = len(node.inputs) - (0 if residual_index(node) is None else 1)
    return k if present > k else None


def output_shift(node: Node, dw: np.ndarray, mean_x: np.ndarray) -> np.ndarray | None:
    """E[dW x] per output channel for the batch-mean input ``mean_x`` (batch axis removed)."""
    base = node.op.removeprefix("fused_")
    if base == "linear":
        m = mean_x.reshape(-1, mean_x.shape[-1]).mean(0)
        return dw.astype(np.float64) @ m
    if base == "matmul":
        if dw.ndim != 2:
            return None
        m = mean_x.reshape(-1, mean_x.shape[-1]).mean(0)
        return m @ dw.astype(np.float64)
    conv = get_op(base)
    attrs = {k: node.attrs[k] for k in conv.attrs}
    y = conv.evaluate([mean_x[None].astype(np.float32), dw.astype(np.float32)], attrs)[0]
    channel = 3 if attrs.get("layout") == "NHWC" else 1
    return np.moveaxis(y.astype(np.float64), channel, 0).reshape(y.shape[channel], -1).mean(1)


def _input_means(ctx: PassContext, graph: Graph, layers: list[Node]) -> dict[Value, np.ndarray]:
    def compute(g: Graph) -> dict[Value, np.ndarray]:
        batches = calibration_batches(g, ctx.pipeline.input(CALIBRATION))
        wants = {n.inputs[0]: Want(hist=False, mean=True) for n in layers}
        stats = collect(g, batches, wants, ctx.pipeline.runner, desc="bias correction")
        return {v: stats[v].mean for v in wants}

    return ctx.pipeline.analysis(INPUT_MEANS, compute, graph)


@graph_pass("bias-correction", requires=["insert-qdq"],
            summary="correct int8 layers' biases by the mean output shift of weight rounding")
def bias_correction(graph: Graph, ctx: PassContext) -> None:
    float_weights = ctx.pipeline.analysis(FLOAT_WEIGHTS, lambda g: {}, graph)
    layers = [n for n in graph.nodes if n.op in QUANTIZABLE
              and n.inputs[n.opdef.weight.input] in float_weights]
    if not layers:
        return
    means = _input_means(ctx, graph, layers)
    rw = Rewriter(graph, ctx)
    for n in layers:
        rw.begin(n, "correct")
        wdq = n.inputs[n.opdef.weight.input]
        wq = get_op("dequantize").evaluate([wdq.producer.inputs[0].const_data], {},
                                           in_types=[wdq.producer.inputs[0].type])[0]
        shift = output_shift(n, float_weights[wdq] - wq, means[n.inputs[0]])
        if shift is None:
            rw.decline("a batched matmul weight of rank {}", wq.ndim)
            continue
        b = bias_index(n)
        if b is None and residual_index(n) is not None:
            rw.decline("the layer has a residual but no bias to correct")
            continue
        before = rw.before
        dtype = n.out.type.dtype.np
        old = np.zeros(shift.shape, dtype) if b is None else n.inputs[b].const_data
        if old is None:  # a bias computed at run time: add the shift to it
            rw.decline("the bias is not a constant")
            continue
        bias = rw.const((old.astype(np.float64) + shift).astype(dtype))
        if b is not None:
            old_b = n.inputs[b]
            rw.set_input(n, b, bias)
            rw.erase_if_dead(old_b.producer)
        else:  # the layer had no bias: the same layer with one
            op = n.op if n.op != "matmul" else "fused_matmul"
            new = rw.op(op, *n.inputs, bias, **n.attrs)
            rw.replace(n.out, new)
            rw.erase(n)
        ctx.record_rewrite(RewriteEvent(ctx.pass_name, "correct", before, "",
                                        ctx.stats["corrected"]))
        ctx.stat("corrected")
