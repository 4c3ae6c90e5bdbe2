"""Cost hooks of the heavy ops (``OpDef.cost``): floating-point operations of one node, 2 per
multiply-add, 0 where a shape is symbolic. Elementwise and normalization work is not counted
(memory-bound, and small next to convolutions and matrix products)."""

from __future__ import annotations

import math
from typing import Any


def _static(shape) -> tuple[int, ...] | None:
    return tuple(shape) if all(isinstance(d, int) for d in shape) else None


def conv_cost(node: Any) -> int:
    # each output element: C/groups * prod(kernel) multiply-adds
    w, y = _static(node.inputs[1].type.shape), _static(node.out.type.shape)
    if w is None or y is None:
        return 0
    return 2 * math.prod(y) * math.prod(w[1:])


def linear_cost(node: Any) -> int:
    x, w = _static(node.inputs[0].type.shape), _static(node.inputs[1].type.shape)
    if x is None or w is None:
        return 0
    return 2 * math.prod(x) * w[0]  # x [..., K] @ W^T [K, N]


def matmul_cost(node: Any) -> int:
    a, y = _static(node.inputs[0].type.shape), _static(node.out.type.shape)
    if a is None or y is None:
        return 0
    return 2 * math.prod(y) * a[-1]  # every output element is a K-long dot product


def attention_cost(node: Any) -> int:
    q, k, y = (_static(v.type.shape) for v in (node.inputs[0], node.inputs[1], node.out))
    if q is None or k is None or y is None:
        return 0
    # q k^T: [.., L, E] x [.., S, E]; p v: [.., L, S] x [.., S, Ev]; heads packed or not, the
    # totals are numel(q) * S and numel(out) * S
    s = k[-2]
    return 2 * math.prod(q) * s + 2 * math.prod(y) * s
