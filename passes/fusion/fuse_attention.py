"""fuse-attention: softmax(q @ k^T * scale + mask) @ v spelled out becomes one
``scaled_dot_product_attention``.

    matmul(softmax(matmul(q, kT) * s + mask), v)      -> scaled_dot_product_attention(q, k, v, mask)
                                                                                  {scale=s}

q is ``[..., L, E]``, kT ``[..., E, S]``, v ``[..., S, Ev]``; the head split/merge around
the core is fuse-mha's, the Q/K/V projections merge-parallel-linears'. The scores are spelled

- ``(q * s1) @ (kT * s2)``: torch.onnx's SDPA (both sides scaled by sqrt(scale)); scale = s1 * s2
- ``(q @ kT) * s`` or ``(q @ kT) / s``: Hugging Face eager attention; scale = s or 1 / s
- ``q @ kT``: no scale (T5; or q scaled before the head split): scale = 1

with an optional additive float mask, and an optional NaN guard after the softmax
(``where(p != p, 0, p)``, torch.onnx's spelling of torch's "fully masked rows give zeros",
which the op already does). k is recovered from kT: ``transpose(k', perm)`` gives k' with the
last two axes of perm swapped (the identity drops out), torch.onnx's
``reshape(transpose(reshape(k, [N, S, E]), [0, 2, 1]), [..., E, S])`` gives k, anything else
a new transpose of kT. Run after canonicalize (constants on the right; a division by a power of
two is already a multiplication) and before fuse-epilogue (which would fuse the mask add into
the matmul).

Numerics: the scale is applied once instead of on each side, and fully masked rows (every
score -inf) give zeros where an unguarded softmax gave NaN. Declines: the softmax is not over
the key axis, a scale is not one scalar, the mask does not broadcast to the scores without
growing them, the probabilities are used elsewhere too (returned attention weights).
Stats: fused.
"""

from __future__ import annotations

import math

import numpy as np

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet, ops
from rtinfer.rewrite.pattern import Pattern

# -- by example: scores x mask x NaN guard ------------------------------------------------------

SCORES = {
    "onnx-sdpa": lambda q, kT: (q * P.const("s1")) @ (kT * P.const("s2")),
    "mul-scale": lambda q, kT: (q @ kT) * P.const("s"),
    "div-scale": lambda q, kT: (q @ kT) / P.const("d"),
    "no-scale": lambda q, kT: q @ kT,
}


def _attention(scores, masked: bool, guarded: bool) -> Pattern:
    def attention(q, kT, v, mask):
        s = scores(q, kT)
        p = P.op("softmax", s + mask if masked else s, name="softmax")
        if guarded:
            p = ops.where(ops.not_equal(p, p), 0.0, p)
        return P.op("matmul", p, v, name="out")
    return P.trace(attention)


PATTERNS = {f"{name}{'-masked' if masked else ''}{'-guarded' if guarded else ''}":
            _attention(scores, masked, guarded)
            for name, scores in SCORES.items() for masked in (True, False)
            for guarded in (True, False)}

# -- the action ----------------------------------------------------------------------------------


def _scalar(c: Value | None) -> float | None:
    if c is None:
        return 1.0
    data = c.const_data
    if not isinstance(data, np.ndarray) or data.size == 0 or not np.all(data == data.flat[0]):
        return None
    return float(data.flat[0])


def _swap_last(perm: tuple[int, ...]) -> tuple[int, ...]:
    return perm[:-2] + (perm[-1], perm[-2])


def _untranspose(rw: Rewriter, kT: Value) -> Value:
    """k = kT with its last two axes swapped, reusing the value kT was transposed from."""
    node = kT.producer
    rank = kT.type.rank
    if node is not None and node.op == "transpose":
        src = node.inputs[0]
        perm = tuple(p % rank for p in node.attrs["perm"]) or tuple(reversed(range(rank)))
        perm = _swap_last(perm)
        return src if perm == tuple(range(rank)) else rw.op("transpose", src, perm=perm)
    if node is not None and node.op == "reshape":  # torch.onnx: k -> [N, S, E] -> [N, E, S]
        t = node.inputs[0].producer
        r = t.inputs[0].producer if t is not None and t.op == "transpose" else None
        if (r is not None and r.op == "reshape" and t.attrs["perm"] and
                tuple(p % 3 for p in t.attrs["perm"]) == (0, 2, 1)):
            k = r.inputs[0]
            want = kT.type.shape[:-2] + (kT.type.shape[-1], kT.type.shape[-2])
            if k.type.rank == rank and all(a == b for a, b in zip(k.type.shape, want,
                                                                  strict=True)):
                return k
    return rw.op("transpose", kT, perm=_swap_last(tuple(range(rank))))


def fuse(rw: Rewriter, q: Value, kT: Value, v: Value, softmax: Node, out: Node,
         mask: Value | None = None, s1: Value | None = None, s2: Value | None = None,
         s: Value | None = None, d: Value | None = None) -> Value | None:
    if not q.type.dtype.is_float:
        return rw.decline("q is {}, not float", q.type.dtype)
    scores = softmax.inputs[0]
    if softmax.attrs["axis"] % scores.type.rank != scores.type.rank - 1:
        return rw.decline("softmax over axis {} of {}, not the key axis (the last)",
                          softmax.attrs["axis"], scores.type)
    factors = [_scalar(c) for c in (s1, s2, s)]
    div = _scalar(d)
    if any(f is None for f in factors) or div is None:
        return rw.decline("the scale is not one scalar constant")
    scale = math.prod(factors) / div
    if scale == 0.0 or not math.isfinite(scale):
        return rw.decline("scale {} (0 means the default 1/sqrt(E) in the fused op)", scale)
    probs = out.inputs[0]
    guard = {probs.producer} | {u.producer for u in probs.producer.inputs if u.producer}
    inside = guard | {out} if probs is not softmax.out else {out}
    if (len(probs.users) > 1 or any(u not in inside for u in softmax.out.users)
            or softmax.graph.is_output(softmax.out) or softmax.graph.is_output(probs)):
        return rw.decline("the attention probabilities are used elsewhere too "
                          "(returned attention weights?)")
    if mask is not None:
        add = scores.producer
        raw = add.inputs[1] if add.inputs[0] is mask else add.inputs[0]
        if raw.type != scores.type:
            return rw.decline("the mask {} grows the scores {} to {}", mask.type, raw.type,
                              scores.type)
    k = _untranspose(rw, kT)
    ins = [q, k, v] + ([mask] if mask is not None else [])
    return rw.op("scaled_dot_product_attention", *ins, scale=scale, causal=False)


RULES = RuleSet("fuse-attention", [
    # softmax(q @ kT * scale [+ mask]) [NaN guard] @ v -> scaled_dot_product_attention(q, k, v)
    Rule(name, pattern, fuse) for name, pattern in PATTERNS.items()
])


@graph_pass("fuse-attention", summary="replace softmax(q @ k^T * scale + mask) @ v by one "
                                      "scaled_dot_product_attention op", requires=["canonicalize"])
def fuse_attention(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("fused", RULES.apply(graph, ctx))
