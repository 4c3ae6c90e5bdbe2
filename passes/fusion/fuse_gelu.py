"""fuse-gelu: GELU spelled out with erf or tanh becomes one ``gelu`` op.

    0.5 * x * (1 + erf(x / sqrt(2)))                                  -> gelu(x)
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))           -> gelu(x) {approximate=tanh}

Exporters write the same function with its products grouped differently (``(x * 0.5) * (...)``
from torch, ``(x * (...)) * 0.5`` from torch.onnx, ``x * (0.5 * (...))`` by hand), ``x / sqrt(2)``
or ``x * (1/sqrt(2))``, and ``x^3`` as ``pow(x, 3)`` or ``x * x * x``. Every combination is one
traced pattern below; constants match within the tracer's ``rel_tol=1e-6`` (exporters round
them to f32). Run after canonicalize, which puts constants on the right and turns ``sub`` of a
constant into ``add``, so one spelling of each sum and product is enough.

Declines: x is not float. Stats: fused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rtinfer.ir.graph import Graph, Value
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet, ops
from rtinfer.rewrite.pattern import Pattern

SQRT1_2 = 1.0 / math.sqrt(2.0)
SQRT2 = math.sqrt(2.0)
SQRT2_PI = math.sqrt(2.0 / math.pi)

# -- the inner functions: what 1 + erf(..) or 1 + tanh(..) is applied to -------------------------

ERF_ARGS: list[Callable[[Pattern], Pattern]] = [
    lambda x: ops.erf(x * SQRT1_2),  # x * (1/sqrt(2))
    lambda x: ops.erf(x / SQRT2),  # x / sqrt(2): canonicalize keeps it (1/sqrt(2) is inexact)
]
TANH_ARGS: list[Callable[[Pattern], Pattern]] = [
    # tanh(sqrt(2/pi) * (x + 0.044715 * x^3))
    lambda x: ops.tanh((x + ops.pow(x, 3.0) * 0.044715) * SQRT2_PI),
    lambda x: ops.tanh((x + x * x * x * 0.044715) * SQRT2_PI),
    lambda x: ops.tanh((x + (x * x) * (x * 0.044715)) * SQRT2_PI),
    # tanh(x * sqrt(2/pi) * (1 + 0.044715 * x * x))      (HF FastGELU)
    lambda x: ops.tanh((x * SQRT2_PI) * ((x * 0.044715) * x + 1.0)),
]

# -- the outer products: 0.5 * x * (1 + inner), grouped three ways -------------------------------

OUTERS: list[Callable[[Pattern, Pattern], Pattern]] = [
    lambda x, t: (x * 0.5) * (t + 1.0),  # torch, HF: 0.5 * x * (1 + t)
    lambda x, t: (x * (t + 1.0)) * 0.5,  # torch.onnx: x * (1 + t) * 0.5
    lambda x, t: x * ((t + 1.0) * 0.5),  # x * (0.5 * (1 + t))
]


def _variants(inners: list[Callable[[Pattern], Pattern]]) -> list[Pattern]:
    def by_example(inner, outer):
        def gelu(x):
            return outer(x, inner(x))
        return P.trace(gelu)
    return [by_example(inner, outer) for inner in inners for outer in OUTERS]


def fuse(approximate: str) -> Callable[..., Value | None]:
    def action(rw: Rewriter, x: Value) -> Value | None:
        if not x.type.dtype.is_float:
            return rw.decline("x is {}, not float", x.type.dtype)
        return rw.op("gelu", x, approximate=approximate)
    action.__name__ = f"gelu_{approximate}"
    return action


RULES = RuleSet("fuse-gelu", [
    # 0.5 * x * (1 + erf(x / sqrt(2))) -> gelu(x)
    *(Rule(f"erf-{i}", p, fuse("none")) for i, p in enumerate(_variants(ERF_ARGS))),
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) -> gelu(x) {approximate=tanh}
    *(Rule(f"tanh-{i}", p, fuse("tanh")) for i, p in enumerate(_variants(TANH_ARGS))),
])


@graph_pass("fuse-gelu", summary="replace GELU spelled out with erf or tanh by one gelu op",
            requires=["canonicalize"])
def fuse_gelu(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("fused", RULES.apply(graph, ctx))
