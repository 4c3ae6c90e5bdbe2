"""fuse-layernorm: LayerNorm and RMSNorm spelled out become one ``layer_norm`` / ``rms_norm``.

    d = x - mean(x);  d / sqrt(mean(d^2) + eps)          -> layer_norm(x) {axis, eps}
    x * rsqrt(mean(x^2) + eps)                           -> rms_norm(x) {axis, eps}
    layer_norm(x) * gamma                                -> layer_norm(x, gamma)
    layer_norm(x, gamma) + beta                          -> layer_norm(x, gamma, beta)
    rms_norm(x) * gamma                                  -> rms_norm(x, gamma)

The means run over the trailing axes ``axis..rank-1`` with ``keepdims``; ``d^2`` is ``pow(d, 2)``
or ``d * d``; ``1 / sqrt(v)`` is ``div``, ``rsqrt`` or ``reciprocal(sqrt)``. The affine part folds
in one step at a time, so a norm with only a scale, or a scale written as ``[1, 1, C]``, fuses
too. Run after canonicalize: it removes no-op casts (``x.float()``) and puts the constants of
``gamma * y`` and ``y + beta`` on the right.

Declines: the means are not over the same trailing axes (or drop them), eps is not a scalar
constant, gamma/beta do not broadcast along the normalized axes only, the normalized value is
also used without the affine part. Stats: fused.
"""

from __future__ import annotations

import numpy as np

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet, ops
from rtinfer.rewrite.pattern import Pattern

EPS = P.const("eps")

# -- by example: the normalizations, each spelling of d^2 and of 1/sqrt(v) ---------------------

SQUARES = [lambda d: ops.pow(d, 2.0), lambda d: d * d]
INV_SQRTS = [
    lambda y, v: y / ops.sqrt(v),
    lambda y, v: y * ops.rsqrt(v),
    lambda y, v: y * ops.reciprocal(ops.sqrt(v)),
]


def _layer_norm(square, inv_sqrt) -> Pattern:
    def layer_norm(x):
        d = x - P.op("reduce_mean", x, name="mean")
        return inv_sqrt(d, P.op("reduce_mean", square(d), name="var") + EPS)
    return P.trace(layer_norm)


def _rms_norm(square, inv_sqrt) -> Pattern:
    def rms_norm(x):
        return inv_sqrt(x, P.op("reduce_mean", square(x), name="var") + EPS)
    return P.trace(rms_norm)


LAYER_NORMS = [_layer_norm(sq, inv) for sq in SQUARES for inv in INV_SQRTS]
RMS_NORMS = [_rms_norm(sq, inv) for sq in SQUARES for inv in INV_SQRTS]


# -- actions -----------------------------------------------------------------------------------


def _trailing(node: Node) -> tuple[int, ...] | None:
    """The reduced axes of a keepdims mean, if they are the trailing axes k..rank-1."""
    rank = node.inputs[0].type.rank
    axes = node.attrs["axes"]
    axes = tuple(sorted(a % rank for a in axes)) if axes else tuple(range(rank))
    if not node.attrs["keepdims"] or axes != tuple(range(rank - len(axes), rank)):
        return None
    return axes


def _scalar(c: Value) -> float | None:
    data = c.const_data
    if not isinstance(data, np.ndarray) or data.size == 0 or not np.all(data == data.flat[0]):
        return None
    return float(data.flat[0])


def _norm_params(rw: Rewriter, x: Value, eps: Value, *means: Node) -> tuple[int, float] | str:
    if not x.type.dtype.is_float:
        return f"x is {x.type.dtype}, not float"
    axes = [_trailing(m) for m in means]
    if any(a is None for a in axes):
        return (f"a mean over axes {[list(m.attrs['axes']) for m in means]} "
                f"(keepdims={means[0].attrs['keepdims']}) is not over the trailing axes of "
                f"{x.type} with keepdims")
    if len(set(axes)) != 1:
        return f"the means run over different axes {axes}"
    e = _scalar(eps)
    if e is None or eps.type.rank > x.type.rank:
        return "eps is not one scalar constant"
    return x.type.rank - len(axes[0]), e


def layer_norm(rw: Rewriter, x: Value, eps: Value, mean: Node, var: Node) -> Value | None:
    params = _norm_params(rw, x, eps, mean, var)
    if isinstance(params, str):
        return rw.decline(params)
    axis, e = params
    return rw.op("layer_norm", x, axis=axis, eps=e)


def rms_norm(rw: Rewriter, x: Value, eps: Value, var: Node) -> Value | None:
    params = _norm_params(rw, x, eps, var)
    if isinstance(params, str):
        return rw.decline(params)
    axis, e = params
    return rw.op("rms_norm", x, axis=axis, eps=e)


def _affine_param(norm: Node, c: Value) -> np.ndarray | str:
    """c as an array of the normalized shape x.shape[axis:], if it broadcasts only along it."""
    x = norm.inputs[0].type
    axis = norm.attrs["axis"] % x.rank
    tail = x.shape[axis:]
    data = c.const_data
    if not isinstance(data, np.ndarray):
        return "the affine constant is elided"
    if not all(isinstance(d, int) for d in tail):
        return f"the normalized shape {tail} is symbolic"
    lead = data.shape[:max(0, data.ndim - len(tail))]
    if data.ndim > x.rank or any(d != 1 for d in lead):
        return f"{c.type} varies along axes that are not normalized"
    try:
        return np.broadcast_to(data.reshape(data.shape[len(lead):]), tail).astype(
            x.dtype.np).copy()
    except ValueError:
        return f"{c.type} does not broadcast to the normalized shape {list(tail)}"


def _why_not_affine(norm: Node) -> str | None:
    if len(norm.out.users) > 1 or norm.graph.is_output(norm.out):
        return f"the {norm.op} output is also used without the affine part"
    return None


def scale(rw: Rewriter, norm: Node, gamma: Value) -> Value | None:
    why = _why_not_affine(norm)
    if why:
        return rw.decline(why)
    g = _affine_param(norm, gamma)
    if isinstance(g, str):
        return rw.decline(g)
    return rw.op(norm.op, norm.inputs[0], rw.const(g), **norm.attrs)


def shift(rw: Rewriter, norm: Node, beta: Value) -> Value | None:
    why = _why_not_affine(norm)
    if why:
        return rw.decline(why)
    b = _affine_param(norm, beta)
    if isinstance(b, str):
        return rw.decline(b)
    x = norm.inputs[0]
    gamma = norm.inputs[1] if len(norm.inputs) > 1 else rw.const(np.ones_like(b))
    return rw.op("layer_norm", x, gamma, rw.const(b), **norm.attrs)


X = P.var("x")
RULES = RuleSet("fuse-layernorm", [
    # (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) -> layer_norm(x) {axis, eps}
    *(Rule(f"layer-norm-{i}", p, layer_norm) for i, p in enumerate(LAYER_NORMS)),
    # x / sqrt(mean(x^2) + eps) -> rms_norm(x) {axis, eps}
    *(Rule(f"rms-norm-{i}", p, rms_norm) for i, p in enumerate(RMS_NORMS)),
    # layer_norm(x) * gamma -> layer_norm(x, gamma);  rms_norm(x) * gamma -> rms_norm(x, gamma)
    Rule("scale", P.op("mul", P.op(("layer_norm", "rms_norm"), X, name="norm"), P.const("gamma")),
         scale),
    # layer_norm(x, [gamma]) + beta -> layer_norm(x, gamma or 1, beta)
    Rule("shift", P.op("add", P.op("layer_norm", X, ..., name="norm",
                                   where=lambda n: len(n.inputs) < 3), P.const("beta")), shift),
])


@graph_pass("fuse-layernorm", summary="replace LayerNorm / RMSNorm spelled out with means by "
                                      "one layer_norm / rms_norm op", requires=["canonicalize"])
def fuse_layernorm(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("fused", RULES.apply(graph, ctx))
