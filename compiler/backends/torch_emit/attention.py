"""Emitters of the attention ops: scaled dot-product attention and multi-head attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rtinfer.backends.torch_emit.context import EmitContext, emits


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
          scale: float, causal: bool) -> torch.Tensor:
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (t.expand(batch + t.shape[-2:]) for t in (q, k, v))
    if causal and mask is not None:  # torch takes one or the other: combine them
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        mask = mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, -math.inf)
        causal = False
    return F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal, scale=scale or None)


@emits("scaled_dot_product_attention")
def _sdpa_emit(cx: EmitContext, q, k, v, mask, scale, causal):
    ts = cx.in_types
    if ts[0].rank == ts[1].rank == ts[2].rank and ts[1].shape[:-2] == ts[0].shape[:-2] == \
            ts[2].shape[:-2] and not (causal and mask is not None):
        return F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal,
                                              scale=scale or None)
    return cx.call(_sdpa, q, k, v, mask, scale, causal)


@emits("multi_head_attention")
def _mha_emit(cx: EmitContext, q, k, v, mask, num_heads, scale, causal):
    # [..., S, H*D] -> [..., H, S, D], the SDPA core, and back to [..., L, H*Dv]
    q4, k4, v4 = (t.unflatten(-1, (num_heads, -1)).transpose(-3, -2) for t in (q, k, v))
    ts = cx.in_types
    if ts[0].rank == ts[1].rank == ts[2].rank and ts[1].shape[:-2] == ts[0].shape[:-2] == \
            ts[2].shape[:-2] and not (causal and mask is not None):
        o = F.scaled_dot_product_attention(q4, k4, v4, mask, is_causal=causal,
                                           scale=scale or None)
    else:
        o = cx.call(_sdpa, q4, k4, v4, mask, scale, causal)
    return o.transpose(-3, -2).flatten(-2)
