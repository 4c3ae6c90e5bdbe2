"""Floating-point operations of a graph's heavy ops (2 per multiply-add), for reporting achieved
GFLOP/s beside a latency. Elementwise and normalization work is not counted (it is memory-bound
and small next to the convolutions and matrix products).

    flops(graph)  # ResNet-18 at 224x224: 3.6e9
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rtinfer.ir.graph import Graph, Node


def _static(shape) -> tuple[int, ...] | None:
    return tuple(shape) if all(isinstance(d, int) for d in shape) else None


def _conv(node: Node) -> int:
    # each output element: C/groups * prod(kernel) multiply-adds
    w, y = _static(node.inputs[1].type.shape), _static(node.out.type.shape)
    if w is None or y is None:
        return 0
    return 2 * math.prod(y) * math.prod(w[1:])


def _linear(node: Node) -> int:
    x, w = _static(node.inputs[0].type.shape), _static(node.inputs[1].type.shape)
    if x is None or w is None:
        return 0
    return 2 * math.prod(x) * w[0]  # x [..., K] @ W^T [K, N]


def _matmul(node: Node) -> int:
    a, y = _static(node.inputs[0].type.shape), _static(node.out.type.shape)
    if a is None or y is None:
        return 0
    return 2 * math.prod(y) * a[-1]  # every output element is a K-long dot product


def _attention(node: Node) -> int:
    q, k, y = (_static(v.type.shape) for v in (node.inputs[0], node.inputs[1], node.out))
    if q is None or k is None or y is None:
        return 0
    # q k^T: [.., L, E] x [.., S, E]; p v: [.., L, S] x [.., S, Ev]; heads packed or not, the
    # totals are numel(q) * S and numel(out) * S
    s = k[-2]
    return 2 * math.prod(q) * s + 2 * math.prod(y) * s


FLOPS: dict[str, Callable[[Node], int]] = {
    "conv1d": _conv, "conv2d": _conv, "conv3d": _conv,
    "fused_conv1d": _conv, "fused_conv2d": _conv,
    "linear": _linear, "fused_linear": _linear,
    "matmul": _matmul, "fused_matmul": _matmul,
    "scaled_dot_product_attention": _attention, "multi_head_attention": _attention,
}


def flops(graph: Graph) -> int:
    """2 x the multiply-adds of the graph's convolutions, matrix products and attention."""
    return sum(FLOPS[n.op](n) for n in graph.nodes if n.op in FLOPS)


__all__ = ["FLOPS", "flops"]
