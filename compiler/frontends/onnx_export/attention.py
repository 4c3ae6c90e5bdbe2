"""ONNX export rules: attention (the Attention op needs opset 23; the formula runs everywhere)."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs
import sympy

from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site
from rtinfer.ir.types import DType, TensorType


def _sdpa(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # softmax(q @ k^T * scale [+ mask | masked to -inf]) @ v
    q, k, v = x[:3]
    qt, kt, dt = s.in_types[0], s.in_types[1], s.x.dtype
    perm = list(range(kt.rank))
    perm[-2:] = perm[-1], perm[-2]
    scores = e.op("MatMul", [q, e.op("Transpose", [k], {"perm": perm})])
    if s.attrs["scale"]:
        scale = e.scalar(s.attrs["scale"], dt)
    elif isinstance(qt.shape[-1], int):
        scale = e.scalar(1.0 / math.sqrt(qt.shape[-1]), dt)
    else:
        scale = e.op("Reciprocal", [e.op("Sqrt", [e.cast(e.dim(qt.shape[-1]), dt)])])
    scores = e.op("Mul", [scores, scale])
    neg_inf = e.scalar(-np.inf, dt)
    if s.attrs["causal"]:
        n_q, n_k = qt.shape[-2], kt.shape[-2]
        if isinstance(n_q, int) and isinstance(n_k, int):
            keep = e.const(np.tril(np.ones((n_q, n_k), bool)))
        else:
            ones = e.filled([n_q, n_k], 1.0, DType.f32)
            keep = e.cast(e.op("Trilu", [ones], {"upper": 0}), DType.bool)
        scores = e.op("Where", [keep, scores, neg_inf])
    if len(x) > 3:
        if s.in_types[3].dtype is DType.bool:
            scores = e.op("Where", [x[3], scores, neg_inf])
        else:
            scores = e.op("Add", [scores, x[3]])
    return e.op("MatMul", [e.op("Softmax", [scores], {"axis": -1}), v])


def _mha(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # [..., S, H*D] -> Reshape [..., S, H, D] -> Transpose [..., H, S, D], the SDPA formula, and
    # back; Reshape's 0 copies a dim, so symbolic batch and sequence dims need no shape math
    h = s.attrs["num_heads"]
    heads, ins = [], []
    for t, tt in zip(x[:3], s.in_types[:3], strict=True):
        perm = list(range(tt.rank + 1))
        perm[-3:-1] = perm[-2], perm[-3]
        split = e.op("Reshape", [t, e.ints([0] * (tt.rank - 1) + [h, -1])])
        heads.append(e.op("Transpose", [split], {"perm": perm}))
        d = tt.shape[-1]
        d = d // h if isinstance(d, int) else sympy.expand(d / h)
        ins.append(TensorType(tt.dtype, tt.shape[:-2] + (h, tt.shape[-2], d)))
    core = Site(s.node, s.name, ins + s.in_types[3:], s.out_types,
                {"scale": s.attrs["scale"], "causal": s.attrs["causal"]})
    o = _sdpa(e, core, heads + x[3:])
    perm = list(range(s.out.rank + 1))
    perm[-3:-1] = perm[-2], perm[-3]
    merged = e.op("Transpose", [o], {"perm": perm})
    return e.op("Reshape", [merged, e.ints([0] * (s.out.rank - 1) + [-1])])


RULES: dict[str, Rule] = {
    "scaled_dot_product_attention": _sdpa,
    "multi_head_attention": _mha,
}
