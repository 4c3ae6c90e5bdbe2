"""Matrix products: matmul (numpy semantics), bmm (strict 3-d), linear (torch F.linear) and
einsum (numpy einsum over an equation)."""

from __future__ import annotations

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.ops.common import (
    broadcast_shapes,
    need_dims_equal,
    need_float,
    need_no_quant,
    need_numeric,
    need_rank,
    same_dtype,
    upcast,
)
from rtinfer.ir.ops.costs import linear_cost, matmul_cost
from rtinfer.ir.ops.registry import OPAQUE, OUT_FUSABLE, Attr, PortAxis, WeightRole, op
from rtinfer.ir.types import TensorType, dims_equal


def _matmul_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    a, b = ins
    dt = same_dtype(ins, "a and b")
    need_numeric(a, "a")
    need_no_quant(ins)
    if a.rank == 0 or b.rank == 0:
        raise IRError(f"matmul needs operands of rank >= 1, got {a} and {b}")
    k_a = a.shape[-1]
    k_b = b.shape[-2] if b.rank >= 2 else b.shape[0]
    if not dims_equal(k_a, k_b):
        raise IRError(f"contracted dims differ: {a} @ {b} ({k_a} vs {k_b})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m = a.shape[-2:-1] if a.rank >= 2 else ()
    n = b.shape[-1:] if b.rank >= 2 else ()
    return TensorType(dt, batch + tuple(m) + tuple(n))


def _matmul_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(upcast(a), upcast(b)).astype(a.dtype, copy=False)


def _matmul_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    a, b = ins
    nb = max(a.rank - 2, b.rank - 2, 0)
    out_rank = nb + (a.rank >= 2) + (b.rank >= 2)
    groups = []
    for ax in range(nb):  # batch dims broadcast like an elementwise op
        g = {("out", 0, ax)}
        for i, t in enumerate(ins):
            j = ax - (nb - (t.rank - 2))
            if j >= 0 and t.shape[j] != 1:
                g.add(("in", i, j))
        groups.append(frozenset(g))
    groups.append(frozenset({("in", 0, a.rank - 1), ("in", 1, max(b.rank - 2, 0))}))  # K
    if a.rank >= 2:
        groups.append(frozenset({("in", 0, a.rank - 2), ("out", 0, nb)}))  # M
    if b.rank >= 2:
        groups.append(frozenset({("in", 1, b.rank - 1), ("out", 0, out_rank - 1)}))  # N
    return groups


op("matmul", ["a", "b"], _matmul_infer, _matmul_ref, traits=[OUT_FUSABLE],
   channels=_matmul_channels, weight=WeightRole(1, out_axis=-1, in_axis=-2), cost=matmul_cost,
   doc="numpy matmul: [..., M, K] @ [..., K, N] with batch broadcasting; 1-d operands gain "
       "and lose a unit dim")


def _bmm_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    need_rank(ins[0], 3, "a")
    need_rank(ins[1], 3, "b")
    need_dims_equal(ins[0].shape[0], ins[1].shape[0], "batch sizes differ")
    return _matmul_infer(ins, attrs)


op("bmm", ["a", "b"], _bmm_infer, _matmul_ref, traits=[OUT_FUSABLE], channels=_matmul_channels,
   doc="batched matmul of [B, M, K] and [B, K, N] (no broadcasting)")


def _linear_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    dt = same_dtype(ins)
    need_float(x, "x")
    need_no_quant(ins)
    if x.rank < 1:
        raise IRError(f"x must have rank >= 1, got {x}")
    need_rank(w, 2, "weight [out, in]")
    if not dims_equal(x.shape[-1], w.shape[1]):
        raise IRError(f"x has {x.shape[-1]} features but weight {w} expects {w.shape[1]}")
    if b is not None and (b.rank != 1 or not dims_equal(b.shape[0], w.shape[0])):
        raise IRError(f"bias must be [{w.shape[0]}], got {b}")
    return TensorType(dt, x.shape[:-1] + (w.shape[0],))


def _linear_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = upcast(x) @ upcast(w).T
    if b is not None:
        y = y + upcast(b)
    return y.astype(x.dtype, copy=False)


def _linear_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    x = ins[0]
    r = x.rank
    groups = [frozenset({("in", 0, ax), ("out", 0, ax)}) for ax in range(r - 1)]
    groups.append(frozenset({("in", 0, r - 1), ("in", 1, 1)}))
    out = {("in", 1, 0), ("out", 0, r - 1)}
    if len(ins) > 2:
        out.add(("in", 2, 0))
    groups.append(frozenset(out))
    return groups


op("linear", ["x", "weight", "bias?"], _linear_infer, _linear_ref, traits=[OUT_FUSABLE],
   channels=_linear_channels, weight=WeightRole(1, out_axis=0, in_axis=1), cost=linear_cost,
   doc="x @ weight.T + bias, weight [out, in] (torch F.linear)")


def _einsum_terms(eq: str, ins: list[TensorType]) -> tuple[list[str], str]:
    """Input subscripts with ``...`` expanded to upper-case letters, and the output's
    (implicit form: the letters used once, sorted, after the broadcast axes)."""
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ins):
        raise IRError(f"equation {eq!r} has {len(terms)} operands, got {len(ins)} inputs")
    n_ell = max((t.rank - len(s.replace("...", "")) for s, t in zip(terms, ins, strict=True)
                 if "..." in s), default=0)
    ell = "".join(chr(ord("A") + i) for i in range(n_ell))
    out = []
    for s, t in zip(terms, ins, strict=True):
        if not s.replace("...", "").isalpha() and s.replace("...", ""):
            raise IRError(f"bad subscripts {s!r} in {eq!r}")
        k = t.rank - len(s.replace("...", ""))
        s = s.replace("...", ell[n_ell - k:]) if "..." in s else s
        if len(s) != t.rank:
            raise IRError(f"subscripts {s!r} do not match {t}")
        out.append(s)
    if arrow:
        res = rhs.replace("...", ell)
    else:
        letters = "".join(out)
        res = ell + "".join(sorted(c for c in set(letters) if c.islower()
                                   and letters.count(c) == 1))
    return out, res


def _einsum_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    dt = same_dtype(ins)
    need_numeric(ins[0], "inputs")
    need_no_quant(ins)
    terms, res = _einsum_terms(attrs["equation"], ins)
    size: dict[str, object] = {}
    for s, t in zip(terms, ins, strict=True):
        for c, d in zip(s, t.shape, strict=True):
            if c not in size or size[c] == 1:
                size[c] = d
            elif d != 1 and not dims_equal(size[c], d):
                raise IRError(f"subscript {c} is {size[c]} and {d} in {attrs['equation']!r}")
    if len(set(res)) != len(res) or any(c not in size for c in res):
        raise IRError(f"bad output subscripts {res!r} in {attrs['equation']!r}")
    return TensorType(dt, tuple(size[c] for c in res))


def _einsum_ref(xs: list[np.ndarray], equation: str) -> np.ndarray:
    out = np.einsum(equation, *[upcast(x) for x in xs])
    return np.asarray(out).astype(xs[0].dtype, copy=False)


op("einsum", ["*xs"], _einsum_infer, _einsum_ref, attrs={"equation": Attr("str")},
   traits=[OPAQUE],
   doc="Einstein summation over the inputs by equation, as numpy.einsum (explicit '->' or "
       "implicit output, '...' broadcasts) (ONNX Einsum, torch.einsum)")
