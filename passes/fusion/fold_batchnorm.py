"""fold-batchnorm: fold inference BatchNorm into the conv or linear layer next to it.

With s = gamma / sqrt(var + eps) and t = beta - mean * s (per channel; gamma = 1, beta = 0 when
absent), batch_norm(y) = y * s + t, so:

    batch_norm(conv(x, w, b))  ->  conv(x, w * s[o], b * s + t)        into the producer
    conv(batch_norm(x), w, b)  ->  conv(x, w * s[c], b + sum_c,k w[o,c,k] * t[c])
                                                                       into the consumer

Into the producer: conv1d and conv2d (weight [O, C/g, *k]: output channel o is weight row o for
any groups), conv_transpose2d (weight [C, O/g, *k]: output channel o = group * O/g + j is column
j of the group's rows) and linear when batch_norm's channel axis 1 is the feature axis (rank-2
output). A bias is created when the layer has none.

Into the consumer (only where the producer fold did not apply, e.g. a BN on a graph input): conv
with no padding and groups = 1, and linear on rank-2 inputs. With padding the conv would pad
batch_norm's output with zeros, which the folded conv cannot reproduce (it pads x, i.e. t at
the border); grouped consumers would need the per-group sum, left for later.

Declines with a reason when the layer's output has other users (they need it unnormalized),
when a weight or BN parameter is not a constant or is elided, or when channels do not line up.
Numerics: equal to fp32 rounding (the new weights are computed in f64). Stats: folded.
"""

from __future__ import annotations

import numpy as np

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops import OPS, get_op
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet


def layers(*, consumer: bool) -> tuple[str, ...]:
    """The layers a batch_norm folds into, from the op table: a weight role and a bias input
    (the fold rewrites both), no epilogue (an activation would sit between). As a consumer, the
    weight's input channels must be axis 1 (x's channels): not the transposed convolutions."""
    return tuple(sorted(o.name for o in OPS if o.weight is not None and "bias?" in o.inputs
                        and "residual" not in o.attrs
                        and (not consumer or o.weight.in_axis == 1)))


PRODUCERS = layers(consumer=False)
CONSUMERS = layers(consumer=True)

x = P.var("x")
BN_AFTER = P.op("batch_norm", P.op(PRODUCERS, x, P.any(), ..., name="layer"), ..., name="bn")
BN_BEFORE = P.op(CONSUMERS, P.op("batch_norm", x, ..., name="bn"), P.any(), ..., name="layer")


def _data(v: Value | None, what: str) -> np.ndarray | str:
    """The constant's array in f64, or why there is none."""
    if v is None:
        return f"{what} is missing"
    if not v.is_const:
        return f"{what} is not a constant"
    data = v.const_data
    if not isinstance(data, np.ndarray):
        return f"{what} is elided (its data was left out of the IR)"
    return np.asarray(data, dtype=np.float64)


def _scale_shift(bn: Node) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t) with batch_norm(y) = y * s + t per channel, or why they are unknown."""
    names = ("mean", "var", "gamma", "beta")
    params = {}
    for i, name in enumerate(names):
        v = bn.inputs[i + 1] if i + 1 < len(bn.inputs) else None
        if v is None and name in ("gamma", "beta"):
            continue
        d = _data(v, f"batch_norm {name}")
        if isinstance(d, str):
            return d
        params[name] = d
    s = 1.0 / np.sqrt(params["var"] + bn.attrs["eps"])
    if "gamma" in params:
        s = s * params["gamma"]
    t = params.get("beta", 0.0) - params["mean"] * s
    return s, np.broadcast_to(t, s.shape)


def _weights(layer: Node) -> tuple[np.ndarray, np.ndarray | None] | str:
    w = _data(layer.inputs[1], f"{layer.op} weight")
    if isinstance(w, str):
        return w
    b = None
    if len(layer.inputs) > 2:
        b = _data(layer.inputs[2], f"{layer.op} bias")
        if isinstance(b, str):
            return b
    return w, b


def _new_layer(rw: Rewriter, layer: Node, x: Value, w: np.ndarray, b: np.ndarray) -> Value:
    dt = layer.inputs[1].type.dtype
    return rw.op(layer.op, x, rw.const(w, dt), rw.const(b, dt), **layer.attrs)


def into_producer(rw: Rewriter, x: Value, layer: Node, bn: Node) -> Value | None:
    out = layer.out
    if len(out.users) > 1 or layer.graph.is_output(out):
        return rw.decline("{} output is also used unnormalized", layer.op)
    if layer.attrs.get("layout", "NCHW") != bn.attrs["layout"]:
        return rw.decline("{} is {} but batch_norm is {}: their channel axes differ", layer.op,
                          layer.attrs.get("layout", "NCHW"), bn.attrs["layout"])
    if layer.op == "linear" and out.type.rank != 2:
        return rw.decline("batch_norm normalizes axis 1 of {}, not the linear's feature axis",
                          out.type)
    st, wb = _scale_shift(bn), _weights(layer)
    if isinstance(st, str) or isinstance(wb, str):
        return rw.decline(st if isinstance(st, str) else wb)
    (s, t), (w, b) = st, wb
    n_out = s.shape[0]
    b = np.zeros(n_out) if b is None else b
    out_axis, _ = get_op(layer.op).weight.axes(w.ndim)
    if out_axis == 1:  # transposed convolutions: w [C, O/groups, k...]
        g = layer.attrs["groups"]
        c_in, per_group = w.shape[0], w.shape[1]
        if c_in % g or per_group * g != n_out:
            return rw.decline("weight {} with groups={} does not map onto {} channels",
                              list(w.shape), g, n_out)
        grouped = w.reshape((g, c_in // g, per_group) + w.shape[2:])
        scale = s.reshape((g, 1, per_group) + (1,) * (w.ndim - 2))
        w = (grouped * scale).reshape(w.shape)
    else:
        w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    return _new_layer(rw, layer, x, w, b * s + t)


def into_consumer(rw: Rewriter, x: Value, layer: Node, bn: Node) -> Value | None:
    if len(bn.out.users) > 1 or bn.graph.is_output(bn.out):
        return rw.decline("batch_norm output has other users")
    if bn.attrs["layout"] != "NCHW" or layer.attrs.get("layout", "NCHW") != "NCHW":
        return rw.decline("folding into a consumer is implemented for NCHW only")
    if layer.op == "linear":
        if x.type.rank != 2:
            return rw.decline("batch_norm normalizes axis 1 of {}, not the linear's input "
                              "features", x.type)
    elif any(layer.attrs["pad"]) or layer.attrs["groups"] != 1:
        return rw.decline("the conv pads or is grouped: padding batch_norm's output with zeros "
                          "is not padding x with zeros")
    st, wb = _scale_shift(bn), _weights(layer)
    if isinstance(st, str) or isinstance(wb, str):
        return rw.decline(st if isinstance(st, str) else wb)
    (s, t), (w, b) = st, wb
    b = np.zeros(w.shape[0]) if b is None else b
    spatial = (1,) * (w.ndim - 2)
    # sum over input channels and kernel taps of w[o, c, k] * t[c]
    shift = (w * t.reshape((1, -1) + spatial)).reshape(w.shape[0], -1).sum(axis=1)
    return _new_layer(rw, layer, x, w * s.reshape((1, -1) + spatial), b + shift)


RULES = RuleSet("fold-batchnorm", [
    # batch_norm(layer(x, w, b)) -> layer(x, w * s[o], b * s + t)
    Rule("into-producer", BN_AFTER, into_producer),
    # layer(batch_norm(x), w, b) -> layer(x, w * s[c], b + sum_c,k w[o,c,k] t[c])
    Rule("into-consumer", BN_BEFORE, into_consumer),
])


@graph_pass("fold-batchnorm", summary="fold inference batch_norm into the conv or linear layer "
                                      "before (or after) it", requires=["fold-constants"])
def fold_batchnorm(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("folded", RULES.apply(graph, ctx))
