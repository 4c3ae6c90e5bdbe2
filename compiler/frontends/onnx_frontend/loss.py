"""ONNX -> IR rules: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss."""

from __future__ import annotations

import numpy as np

from rtinfer.frontends.onnx_frontend.context import rule
from rtinfer.ir.graph import Value
from rtinfer.ir.types import DType


def _nll(cx, logp: Value, target: Value, weight: Value | None) -> Value:
    """loss[n, d..] = -logp[n, target[n, d..], d..] * weight[target], 0 where ignored;
    reduced by 'none', 'sum' or 'mean' (sum / the sum of the weights used)."""
    t = target if target.type.dtype == DType.i64 else cx.op("cast", target, dtype=DType.i64)
    ignore = cx.attrs.get("ignore_index")
    valid = None
    if ignore is not None:
        valid = cx.op("not_equal", t, cx.const(np.int64(ignore)))
        t = cx.op("where", valid, t, cx.const(np.int64(0)))
    picked = cx.op("gather_elements", logp, cx.op("unsqueeze", t, axes=[1]), axis=1)
    loss = cx.op("neg", cx.op("squeeze", picked, axes=[1]))
    w = cx.op("gather", weight, t, axis=0) if weight is not None else None
    if valid is not None:
        mask = cx.op("cast", valid, dtype=logp.type.dtype)
        w = mask if w is None else cx.op("mul", w, mask)
    if w is not None:
        loss = cx.op("mul", loss, w)
    reduction = cx.attr("reduction", "mean")
    if reduction == "none":
        return loss
    total = cx.op("reduce_sum", loss)
    if reduction == "sum":
        return total
    if w is None:
        return cx.op("reduce_mean", loss)
    return cx.op("div", total, cx.op("reduce_sum", w))


@rule("NegativeLogLikelihoodLoss")
def _nll_loss(cx, ins):
    return _nll(cx, ins[0], ins[1], ins[2] if len(ins) > 2 else None)


@rule("SoftmaxCrossEntropyLoss")
def _sce_loss(cx, ins):
    logp = cx.op("log_softmax", ins[0], axis=1)
    loss = _nll(cx, logp, ins[1], ins[2] if len(ins) > 2 else None)
    return [loss, logp] if cx.wants(1) else loss
