"""to-bf16: conv2d, linear and matmul layers with a constant weight compute in bf16
(docs/bf16.md).

    op(x, w, b?, r?) {attrs}  ->  bf16_<base>(x, bf16(w), b?, r?) {attrs with the epilogue's}

op is conv2d, linear, matmul or their fused forms; bf16(w) is the weight rounded once to the
nearest bf16 (ties to even) and stored as a bf16 constant. x stays f32 in the graph: the kernel
rounds it, accumulates in f32 and writes f32, so the ops around the layer (softmax, LayerNorm,
GELU, residual adds) are untouched and stay f32.

Declines (the layer stays f32): the weight is not a constant, an input is not f32. Stats:
rewritten (layers made bf16).
"""

from __future__ import annotations

import numpy as np

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops.bf16 import BF16_LAYER_BASE, BF16_OPS
from rtinfer.ir.ops.fused import EPILOGUE_ATTRS
from rtinfer.ir.types import DType
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet


def to_bf16(rw: Rewriter, h: Node) -> Value | None:
    x, w = h.inputs[0], h.inputs[1]
    if not w.is_const:
        return rw.decline("{} weight is not a constant (activation x activation stays f32)",
                          h.op)
    bad = [v for v in h.inputs if v.type.dtype != DType.f32 or v.type.quant is not None]
    if bad:
        return rw.decline("{} input {} is not f32", h.op, bad[0].type)
    # rounded once here: the kernels pack these bits and the reference reads the same ones
    weight = rw.const(np.asarray(w.const_data, np.float32).astype(DType.bf16.np))
    attrs = dict(h.attrs)
    for k, a in EPILOGUE_ATTRS.items():
        attrs.setdefault(k, a.default)
    return rw.op(BF16_OPS[BF16_LAYER_BASE[h.op]], x, weight, *h.inputs[2:], **attrs)


RULES = RuleSet("to-bf16", [
    # op(x, w, b?, r?) -> bf16_<base>(x, bf16(w), b?, r?)
    Rule("layer", P.op(tuple(BF16_LAYER_BASE), ..., name="h"), to_bf16),
])


@graph_pass("to-bf16", summary="compute conv2d/linear/matmul layers with constant weights in "
                               "bf16 (bf16 weights, f32 accumulation and output)")
def to_bf16_pass(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("rewritten", RULES.apply(graph, ctx))
    rw = Rewriter(graph, ctx)
    for node in reversed(list(graph.nodes)):  # the f32 weights the layers no longer read
        if node.op == "const":
            rw.erase_if_dead(node)


def bf16_layers(graph: Graph) -> list[Node]:
    """The bf16 layers of ``graph``, in order."""
    ops = set(BF16_OPS.values())
    return [n for n in graph.nodes if n.op in ops]
