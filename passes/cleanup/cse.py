"""cse: common-subexpression elimination.

    %a = op(%x, %y) {attrs};  %b = op(%x, %y) {attrs}    ->  uses of %b use %a
    %a = add(%x, %y);         %b = add(%y, %x)           ->  same (the op is commutative)
    %c = const T dense<D>;    %d = const T dense<D>      ->  uses of %d use %c (same bytes)

Nodes are keyed by op, inputs (after earlier merges), attributes and output types, in one
topological sweep. The node kept is the first one: it precedes every later duplicate, so it is
defined before all of their users. Floats compare by bit pattern (-0.0 != 0.0, nan == nan) and
constants by dtype, shape and exact bytes. Stats: merged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtinfer.ir.constants import ElidedTensor, tensor_digest
from rtinfer.ir.graph import Graph, Node
from rtinfer.ir.ops import COMMUTATIVE
from rtinfer.pass_manager import PassContext, RewriteEvent, graph_pass
from rtinfer.rewrite.rewriter import Rewriter


def _attr_key(value: Any) -> Any:
    """A hashable stand-in for an attribute value; equal keys mean equal values, except that
    tensors key by digest and are compared exactly afterwards (``_same_tensors``)."""
    if isinstance(value, np.ndarray):
        return ("tensor", value.dtype.str, value.shape, tensor_digest(value))
    if isinstance(value, ElidedTensor):
        return ("tensor", value.dtype.np.str, value.shape, value.digest)
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (float, np.floating)):
        return ("float", float(value).hex())
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_attr_key(v) for v in value))
    if isinstance(value, Graph):
        from rtinfer.ir.printer import print_graph

        return ("graph", print_graph(value, full_constants=True))
    try:
        hash(value)
    except TypeError:
        return ("repr", type(value).__name__, repr(value))
    return (type(value).__name__, value)


def _same_tensors(a: Node, b: Node) -> bool:
    """Exact equality of the tensor attributes (the key only compared digests)."""
    for k, x in a.attrs.items():
        y = b.attrs[k]
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            if np.ascontiguousarray(x).tobytes() != np.ascontiguousarray(y).tobytes():
                return False
        elif isinstance(x, ElidedTensor) and isinstance(y, np.ndarray):
            if not x.matches(y):
                return False
        elif isinstance(y, ElidedTensor) and isinstance(x, np.ndarray):
            if not y.matches(x):
                return False
    return True


def _key(node: Node) -> tuple:
    inputs = [id(v) for v in node.inputs]
    if len(inputs) == 2 and node.opdef.has(COMMUTATIVE):
        inputs.sort()
    attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
    return node.op, tuple(inputs), attrs, tuple(v.type for v in node.outputs)


@graph_pass("cse", summary="merge nodes with the same op, inputs and attributes, and equal "
                           "constants")
def cse(graph: Graph, ctx: PassContext) -> None:
    rw = Rewriter(graph, ctx)
    seen: dict[tuple, list[Node]] = {}
    merged = 0
    for node in list(graph.nodes):
        candidates = seen.setdefault(_key(node), [])
        keep = next((c for c in candidates if _same_tensors(c, node)), None)
        if keep is None:
            candidates.append(node)
            continue
        if not ctx.allow_rewrite():  # bisection's budget
            break
        rw.begin(node, "merge")
        before = rw.before
        for old, new in zip(node.outputs, keep.outputs, strict=True):
            rw.replace(old, new)
        rw.erase(node)
        ctx.record_rewrite(RewriteEvent(ctx.pass_name, "merge", before, rw.lazy_text(keep),
                                        merged))
        merged += 1
    ctx.stat("merged", merged)
