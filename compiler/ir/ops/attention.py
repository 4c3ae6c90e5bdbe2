"""Attention: scaled dot-product attention with torch SDPA semantics, and its multi-head form
over [..., S, H*D] activations (the head split and merge inside the op)."""

from __future__ import annotations

import math

import numpy as np
import sympy

from rtinfer.errors import IRError
from rtinfer.ir.ops import channel_maps
from rtinfer.ir.ops.common import (
    broadcast_shapes,
    fmt_shapes,
    need_float,
    need_no_quant,
    same_dtype,
    upcast,
)
from rtinfer.ir.ops.costs import attention_cost
from rtinfer.ir.ops.registry import OPAQUE, Attr, PortAxis, op
from rtinfer.ir.types import DType, TensorType, dims_equal, make_dim


def _sdpa_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    q, k, v = ins[:3]
    mask = ins[3] if len(ins) > 3 else None
    dt = same_dtype([q, k, v], "q, k and v")
    need_float(q, "q")
    need_no_quant(ins)
    for t, what in ((q, "q [..., L, E]"), (k, "k [..., S, E]"), (v, "v [..., S, Ev]")):
        if t.rank < 2:
            raise IRError(f"{what} must have rank >= 2, got {t}")
    if not dims_equal(q.shape[-1], k.shape[-1]):
        raise IRError(f"q and k differ in head dim: {q} vs {k}")
    if not dims_equal(k.shape[-2], v.shape[-2]):
        raise IRError(f"k and v differ in sequence length: {k} vs {v}")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if mask is not None:
        if mask.dtype is not DType.bool and mask.dtype != dt:
            raise IRError(f"mask must be bool or {dt}, got {mask.dtype}")
        scores = batch + (q.shape[-2], k.shape[-2])
        try:
            ok = mask.rank <= len(scores) and broadcast_shapes(mask.shape, scores) == scores
        except IRError:
            ok = False
        if not ok:
            raise IRError(f"mask {mask} does not broadcast to the scores "
                          f"{fmt_shapes([scores])} ([..., L, S])")
    return TensorType(dt, batch + (q.shape[-2], v.shape[-1]))


def _sdpa_ref(q, k, v, mask, scale: float, causal: bool) -> np.ndarray:
    scale = scale or 1.0 / math.sqrt(q.shape[-1])
    s = np.matmul(upcast(q), np.swapaxes(upcast(k), -1, -2)) * scale
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + upcast(mask)
    # fully masked rows (every score -inf) give zeros, as torch's SDPA does since 2.5
    # (_safe_softmax); torch.onnx spells the same as where(isnan(p), 0, p)
    dead = np.all(s == -np.inf, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        s = np.exp(s - np.where(dead, 0.0, s.max(axis=-1, keepdims=True)))
        p = np.where(dead, 0.0, s / s.sum(axis=-1, keepdims=True))
    return np.matmul(p, upcast(v)).astype(q.dtype, copy=False)


def _sdpa_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    q, k, v = ins[:3]
    nb = max(t.rank for t in ins[:3]) - 2
    if len(ins) > 3:
        nb = max(nb, ins[3].rank - 2)
    groups: dict[int, set] = {ax: {("out", 0, ax)} for ax in range(nb)}
    groups.update({nb: {("out", 0, nb)}, nb + 1: set()})  # L, S (on the score axes)
    e, ev = {("in", 0, q.rank - 1), ("in", 1, k.rank - 1)}, {("in", 2, v.rank - 1),
                                                             ("out", 0, nb + 1)}
    for i, t in enumerate(ins):
        is_mask = i == 3
        last = t.rank if is_mask else t.rank - 1  # q/k/v: the last axis is E/Ev
        for a in range(last):
            ax = a + (nb + 2 - t.rank)
            if t.shape[a] == 1:
                continue
            if not is_mask and ax == nb and i > 0:
                ax = nb + 1  # k and v: axis -2 is S
            groups[ax].add(("in", i, a))
    return [frozenset(g) for g in groups.values() if g] + [frozenset(e), frozenset(ev)]


op("scaled_dot_product_attention", ["q", "k", "v", "mask?"], _sdpa_infer, _sdpa_ref,
   attrs={"scale": Attr("float", 0.0), "causal": Attr("bool", False)},
   traits=[OPAQUE], channels=_sdpa_channels, cost=attention_cost,
   doc="softmax(q @ k^T * scale + mask) @ v over [..., L, E], [..., S, E], [..., S, Ev] "
       "(torch SDPA; scale 0 = 1/sqrt(E); a bool mask keeps where true, a float mask adds; "
       "causal masks j > i and combines with mask; a fully masked row gives zeros, as in torch)")


# -- multi-head attention over [..., S, H*D] activations ---------------------------------------


def _head_dim(d, heads: int, what: str):
    """``d / heads``: the per-head size of a [..., S, H*D] axis, which must split evenly."""
    if isinstance(d, int):
        if d % heads:
            raise IRError(f"{what} of size {d} does not split into {heads} heads")
        return d // heads
    e = sympy.expand(d / heads)
    if not all(c.is_integer for c in e.as_coefficients_dict().values()):
        raise IRError(f"{what} of size {d} does not split into {heads} heads")
    return make_dim(e)


def _heads(t: TensorType, heads: int, what: str) -> TensorType:
    """[..., S, H*D] -> [..., H, S, D], the per-head view the SDPA core sees."""
    if t.rank < 2:
        raise IRError(f"{what} [..., S, H*D] must have rank >= 2, got {t}")
    d = _head_dim(t.shape[-1], heads, what)
    return TensorType(t.dtype, t.shape[:-2] + (heads, t.shape[-2], d), t.quant)


def _mha_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    h = attrs["num_heads"]
    if h < 1:
        raise IRError(f"num_heads must be >= 1, got {h}")
    q, k, v = (_heads(t, h, w) for t, w in zip(ins[:3], ("q", "k", "v"), strict=True))
    out = _sdpa_infer([q, k, v, *ins[3:]], attrs)  # [..., H, L, Dv]
    return TensorType(out.dtype, out.shape[:-3] + (out.shape[-2], v.shape[-3] * v.shape[-1]))


def _split_heads(a: np.ndarray, heads: int) -> np.ndarray:
    return np.swapaxes(a.reshape(a.shape[:-1] + (heads, a.shape[-1] // heads)), -3, -2)


def _mha_ref(q, k, v, mask, num_heads: int, scale: float, causal: bool) -> np.ndarray:
    o = _sdpa_ref(*(_split_heads(t, num_heads) for t in (q, k, v)), mask, scale, causal)
    o = np.swapaxes(o, -3, -2)  # [..., L, H, Dv]
    return np.ascontiguousarray(o).reshape(o.shape[:-2] + (-1,))


def _mha_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    # Heads live inside the last axes: channel c = h * D + d of q pairs with channel c of k
    # (one dot product per head), channel c of v with channel c of the output. Pruning must keep
    # the head structure (whole heads, or the same d in every head) for num_heads to stay valid.
    nb = max(t.rank for t in ins[:3]) - 2
    groups: dict[str, set] = {f"b{ax}": {("out", 0, ax)} for ax in range(nb)}
    groups.update({"L": {("out", 0, nb)}, "S": set(), "H": set(),
                   "E": set(), "Ev": {("out", 0, nb + 1)}})
    for i, t in enumerate(ins[:3]):
        groups["E" if i < 2 else "Ev"].add(("in", i, t.rank - 1))
        for a in range(t.rank - 1):
            if t.shape[a] == 1:
                continue
            ax = a + (nb + 2 - t.rank)
            key = ("L" if i == 0 else "S") if ax == nb else f"b{ax}"
            groups[key].add(("in", i, a))
    if len(ins) > 3:  # the mask broadcasts to [..., H, L, S]
        m = ins[3]
        for a in range(m.rank):
            if m.shape[a] == 1:
                continue
            ax = a + (nb + 3 - m.rank)
            key = {nb: "H", nb + 1: "L", nb + 2: "S"}.get(ax, f"b{ax}")
            groups[key].add(("in", 3, a))
    return [frozenset(g) for g in groups.values() if g]


op("multi_head_attention", ["q", "k", "v", "mask?"], _mha_infer, _mha_ref,
   attrs={"num_heads": Attr("int"), "scale": Attr("float", 0.0), "causal": Attr("bool", False)},
   traits=[OPAQUE], channels=_mha_channels, cost=attention_cost,
   prune=channel_maps.MULTI_HEAD_ATTENTION,
   doc="scaled_dot_product_attention over heads packed in the last axis: q [..., L, H*E], "
       "k [..., S, H*E], v [..., S, H*Ev] are split into H = num_heads heads "
       "([..., L, H*E] -> [..., H, L, E]), attended per head (scale 0 = 1/sqrt(E); the mask "
       "broadcasts to the per-head scores [..., H, L, S]) and merged back to [..., L, H*Ev]")
