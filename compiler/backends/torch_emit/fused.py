"""Emitters of the fused ops: oneDNN's fused primitives for inference, ATen + the epilogue
otherwise; a fused elementwise body is emitted inline."""

from __future__ import annotations

import torch

from rtinfer.backends.torch_emit.context import EMITTERS, EmitContext, Emitter, emits
from rtinfer.backends.torch_emit.driver import emit_nodes
from rtinfer.backends.torch_emit.mkldnn import (
    MKLDNN_ACTIVATIONS,
    MKLDNN_BINARY_ACTIVATIONS,
    few_rows,
    mkldnn_conv,
    mkldnn_keeps_nan,
    packed_linear_weight,
    use_mkldnn,
)
from rtinfer.ir.graph import Graph
from rtinfer.ir.ops import get_op
from rtinfer.ir.ops.common import expand_ints, expand_pads
from rtinfer.ir.ops.fused import activation_op


def add_epilogue(cx: EmitContext, y, residual, attrs: dict, *, done_pre: bool, done_act: bool):
    """The rest of the epilogue in ATen: (y + r), the activation (the op table's own op), + r."""
    if attrs["residual"] == "pre" and not done_pre:
        y = y + residual
    act = activation_op(attrs["activation"], attrs["alpha"], attrs["beta"])
    if act is not None and not done_act:
        name, act_attrs = act
        y = EMITTERS[name](cx, y, **get_op(name).complete_attrs(act_attrs))
    if attrs["residual"] == "post":
        y = y + residual
    return y


def _fused_emitter(base: str) -> Emitter:
    base_def = get_op(base)
    base_attr_names = tuple(base_def.attrs)
    conv_nd = {"conv1d": 1, "conv2d": 2}.get(base)

    def emit(cx: EmitContext, x, w, bias, residual, /, **attrs):
        base_attrs = {k: attrs[k] for k in base_attr_names if k in attrs}
        act, alpha, beta = attrs["activation"], attrs["alpha"], attrs["beta"]
        # an activation oneDNN would get wrong for NaN runs in ATen after the primitive
        in_onednn = mkldnn_keeps_nan(act, alpha)
        mk_attr, mk_scalars, mk_alg = MKLDNN_ACTIVATIONS[act if in_onednn else "none"]
        mkl = use_mkldnn(cx)
        pre = attrs["residual"] == "pre"
        if mkl and conv_nd is not None:
            nd = conv_nd
            pads = expand_pads(attrs["pad"], nd)
            if pads[:nd] == pads[nd:]:
                geo = (list(pads[:nd]), list(expand_ints(attrs["stride"], nd, "stride")),
                       list(expand_ints(attrs["dilation"], nd, "dilation")), attrs["groups"])
                if pre:
                    unary = MKLDNN_BINARY_ACTIVATIONS.get(act)
                    y = mkldnn_conv(cx, x, w, bias, geo, residual, unary, [], None,
                                    packed_only=False)
                    return add_epilogue(cx, y, residual, attrs, done_pre=True,
                                    done_act=act in MKLDNN_BINARY_ACTIVATIONS)
                y = mkldnn_conv(cx, x, w, bias, geo, None, mk_attr, mk_scalars(alpha, beta),
                                mk_alg, packed_only=False)
                return add_epilogue(cx, y, residual, attrs, done_pre=True, done_act=in_onednn)
        if mkl and base == "linear" and not few_rows(cx):
            ops = torch.ops.mkldnn
            w = packed_linear_weight(cx, x, w)
            if pre:
                y = cx.call(ops._linear_pointwise.binary, x, residual, w, bias, "add")
                return add_epilogue(cx, y, residual, attrs, done_pre=True, done_act=False)
            y = cx.call(ops._linear_pointwise.default, x, w, bias, mk_attr,
                        mk_scalars(alpha, beta), mk_alg)
            return add_epilogue(cx, y, residual, attrs, done_pre=True, done_act=in_onednn)
        y = base_op(cx, base, x, w, bias, base_attrs)
        return add_epilogue(cx, y, residual, attrs, done_pre=False, done_act=False)
    return emit


def base_op(cx: EmitContext, base: str, x, w, bias, attrs: dict):
    """The base op with its bias, in ATen (matmul takes no bias input: added after)."""
    if base != "matmul":
        return EMITTERS[base](cx, x, w, bias, **attrs)
    y = EMITTERS[base](cx, x, w, **attrs)
    return y if bias is None else y + bias


for _base in ("conv1d", "conv2d", "linear", "matmul"):
    EMITTERS[f"fused_{_base}"] = _fused_emitter(_base)


@emits("fused_elementwise")
def _fused_elementwise(cx: EmitContext, xs, body: Graph):
    """The body's ops, inline."""
    node = cx.node
    env = {id(v): x for v, x in zip(body.inputs, xs, strict=True)}
    emit_nodes(cx, body, env)
    cx.node = node
    return [env[id(v)] for v in body.outputs]

