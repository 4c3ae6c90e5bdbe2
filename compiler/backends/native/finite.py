"""The finite fast path: a bound on every value of a graph, from a bound on its inputs.

oneDNN computes a fused relu or clip with max/min instructions, which turn NaN into the bound
(torch keeps NaN); so the native backend runs those clamps as its own pass after the primitive
(``Tail`` in ``cpp/native/dnnl_common.h``), one more read and write of the output: 7% of
MobileNetV2, whose 34 ReLU6 tails also keep each 1x1 expansion apart from the depthwise
convolution after it. The pass is needed only where a NaN or an infinity can reach the clamp.

``input_bound(graph)`` proves, op by op, that no value is NaN or infinite when every input is
finite and within ``[-T, T]``: each value gets an upper bound on its magnitude (a convolution
or linear: the input's bound times the largest L1 norm of a filter, plus the largest bias; a
clip: its bounds; pooling and reshapes: the input's), and every bound must stay below
``LIMIT``, far from float32's largest value, so no sum overflows. It returns the largest such
T (at most ``T_MAX``), or None where some op has no rule or the graph has no clamp to gain
from. The native module then builds its plan with the clamps fused and checks each call's
inputs (``within``: one pass, NaN fails it); a call outside the bound runs the exact plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops.registry import INJECTIVE

# every bound must stay below this: float32 overflows at 3.4e38, and the summation order of a
# kernel never takes a partial sum above the sum of the magnitudes the bound counts
LIMIT = 1e30
# the largest input bound searched for (inputs of CNNs are pixels or normalized features)
T_MAX = 1e12
# activations that clamp (the ones the fast path fuses) and the bound of each activation given
# its input's bound b (alpha, beta: the node's attributes)
CLAMPS = frozenset({"relu", "clip"})
_ACT: dict[str, Callable[[float, float, float], float]] = {
    "none": lambda b, a, c: b,
    "relu": lambda b, a, c: b,
    "clip": lambda b, a, c: min(b, max(abs(a), abs(c))),
    "leaky_relu": lambda b, a, c: b * max(1.0, abs(a)),
    "gelu": lambda b, a, c: b,
    "gelu_tanh": lambda b, a, c: b,
    "silu": lambda b, a, c: b,
    "hardswish": lambda b, a, c: b,
    "sigmoid": lambda b, a, c: 1.0,
    "tanh": lambda b, a, c: 1.0,
}
# ops whose output is a mean or a pick of input values, or shrinks them: the input's bound
_WITHIN_INPUT = frozenset({"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "reduce_mean",
                           "relu"})
# the heavy ops: a constant weight (input 1), an optional bias (input 2), an epilogue
_WEIGHTED = frozenset({"conv2d", "fused_conv2d", "linear", "fused_linear"})

Rule = Callable[[list[float]], float]


def _const(v: Value) -> np.ndarray | None:
    return np.asarray(v.const_data) if v.is_const else None


def _filter_l1(w: np.ndarray, out_axis: int = 0) -> float:
    """The largest L1 norm over the output units of weight ``w`` (axis ``out_axis``), summed
    in float64."""
    w = np.abs(np.moveaxis(w, out_axis, 0)).reshape(w.shape[out_axis], -1)
    return float(w.sum(axis=1, dtype=np.float64).max(initial=0.0))


def _largest(v: Value | None) -> float:
    """The largest magnitude in constant ``v`` (0 for None or a value that is not constant)."""
    c = _const(v) if v is not None else None
    return float(np.abs(c).max(initial=0)) if c is not None else 0.0


def _weighted_rule(node: Node) -> Rule | None:
    a = node.attrs
    act = a.get("activation", "none")
    w = _const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if act not in _ACT or w is None or not np.isfinite(w).all():
        return None
    # conv: [O, C/g, kh, kw]; linear: [N, K] (torch's layout) or [K, N]: the larger of the two
    # L1 norms bounds either
    l1 = (_filter_l1(w) if node.op.endswith("conv2d") or w.ndim != 2
          else max(_filter_l1(w, 0), _filter_l1(w, 1)))
    bias = _largest(node.inputs[2]) if len(node.inputs) > 2 else 0.0
    if not math.isfinite(bias):
        return None
    mode = a.get("residual", "none")
    f = _ACT[act]
    lo, hi = float(a.get("alpha", 0.0)), float(a.get("beta", 0.0))

    def rule(b: list[float]) -> float:
        y = b[0] * l1 + bias
        r = b[-1] if mode != "none" else 0.0
        if not y + r < LIMIT:
            # the sums before the activation could overflow (and +inf meet -inf in one sum:
            # NaN), however small the clip makes the output
            return math.inf
        return f(y + r, lo, hi) if mode == "pre" else f(y, lo, hi) + r

    return rule


def _rule(node: Node) -> Rule | None:
    """A function from the bounds of ``node``'s inputs to the bound of its output (None: no
    rule, the fast path is off)."""
    if node.op in _WEIGHTED:
        return _weighted_rule(node)
    if node.op in _WITHIN_INPUT:
        return lambda b: b[0]
    if node.op == "add":
        return lambda b: b[0] + b[1]
    if node.opdef.has(INJECTIVE):  # every output element is an input element (or the pad value)
        pad = abs(float(node.attrs.get("value", 0.0))) if node.op == "pad" else 0.0
        return lambda b: max(pad, *b)
    return None


def has_clamps(graph: Graph) -> bool:
    """Whether a convolution or linear of ``graph`` clamps (relu, clip) in its epilogue."""
    return any(n.op in _WEIGHTED and n.attrs.get("activation", "none") in CLAMPS
               for n in graph.nodes)


def input_bound(graph: Graph) -> float | None:
    """The largest T (at most ``T_MAX``) such that every value of ``graph`` stays finite and
    below ``LIMIT`` in magnitude when every input is finite and within [-T, T]; None where
    the graph has no fused clamp, an input that is not float32, or an op without a rule."""
    if not has_clamps(graph):
        return None
    if any(v.type.dtype.torch != torch.float32 for v in graph.inputs):
        return None
    steps: list[tuple[Node, Rule]] = []
    consts: dict[int, float] = {}  # the bound of each constant input, computed once
    for node in graph.nodes:
        if node.op == "const":
            continue
        rule = _rule(node)
        if rule is None:
            return None
        steps.append((node, rule))
        for v in node.inputs:
            if v is not None and v.is_const and id(v) not in consts:
                consts[id(v)] = _largest(v)

    def fits(t: float) -> bool:
        bound = dict(consts)
        bound.update((id(v), t) for v in graph.inputs)
        for node, rule in steps:
            out = rule([0.0 if v is None else bound.get(id(v), math.inf) for v in node.inputs])
            if not out < LIMIT:
                return False
            for v in node.outputs:
                bound[id(v)] = out
        return all(bound.get(id(v), math.inf) < LIMIT for v in graph.outputs)

    if not fits(1.0):
        return None
    lo, hi = 1.0, T_MAX
    if fits(hi):
        return hi
    while hi / lo >= 1.01:  # bisection in log space: the bound is monotone in t
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def within(tensors: tuple[torch.Tensor, ...] | list[torch.Tensor], t: float) -> bool:
    """Whether every input is finite and within [-t, t] (one pass each; NaN fails)."""
    for x in tensors:
        if x.numel() == 0:
            continue
        lo, hi = torch.aminmax(x)
        if not (float(lo) >= -t and float(hi) <= t):
            return False
    return True
