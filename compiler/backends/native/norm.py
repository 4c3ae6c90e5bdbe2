"""LayerNorm / RMSNorm and softmax over the last axes: rtinfer's own row kernels."""

from __future__ import annotations

import math

from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.ir.graph import Node


@lowers("layer_norm", "rms_norm")
def _layer_norm(cx: Lowerer, node: Node) -> None:
    x = cx.plain(node.inputs[0])
    cx.need_f32(x)
    axis = node.attrs["axis"] % len(x.shape)
    cols = math.prod(x.shape[axis:])
    rows = x.numel // max(cols, 1)
    gamma = cx.const_tensor(node.inputs[1]) if len(node.inputs) > 1 else None
    beta = cx.const_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    if (len(node.inputs) > 1 and gamma is None) or (len(node.inputs) > 2 and beta is None):
        raise cx.unsupported("gamma/beta are not constants")
    y = cx.new_value(node.out)
    rms = node.op == "rms_norm"
    args = (x.buf, y.buf, rows, cols, None if gamma is None else gamma.reshape(-1),
            None if beta is None else beta.reshape(-1), float(node.attrs["eps"]), rms)
    cx.step("rms_norm" if rms else "layer_norm",
            lambda ext, plan, name: ext.add_layer_norm(plan, name, *args), [x.buf], [y.buf])


@lowers("softmax", "log_softmax")
def _softmax(cx: Lowerer, node: Node) -> None:
    x = cx.plain(node.inputs[0])
    cx.need_f32(x)
    if node.attrs["axis"] % len(x.shape) != len(x.shape) - 1:
        raise cx.unsupported("softmax over an axis other than the last")
    cols = x.shape[-1]
    y = cx.new_value(node.out)
    args = (x.buf, y.buf, x.numel // max(cols, 1), cols, node.op == "log_softmax")
    cx.step(node.op, lambda ext, plan, name: ext.add_softmax(plan, name, *args), [x.buf],
            [y.buf])
