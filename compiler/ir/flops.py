"""Floating-point operations of a graph's heavy ops (2 per multiply-add), for reporting achieved
GFLOP/s beside a latency. Each op's count is its op-table entry's cost hook (``OpDef.cost``,
rtinfer/ir/ops/costs.py); ops without one (elementwise, normalization) count 0.

    flops(graph)  # ResNet-18 at 224x224: 3.6e9
"""

from __future__ import annotations

from rtinfer.ir.graph import Graph
from rtinfer.ir.ops import get_op


def flops(graph: Graph) -> int:
    """2 x the multiply-adds of the graph's convolutions, matrix products and attention."""
    total = 0
    for n in graph.nodes:
        cost = get_op(n.op).cost
        if cost is not None:
            total += cost(n)
    return total


__all__ = ["flops"]
