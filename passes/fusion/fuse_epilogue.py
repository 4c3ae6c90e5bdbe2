"""fuse-epilogue: a heavy op and its elementwise epilogue become one node.

    add(op(x, w), c)        ->  op(x, w, c')                          c per channel: the bias
    act(op(x, w, b))        ->  fused_op(x, w, b) {activation}
    add(op(x, w, b), r)     ->  fused_op(x, w, b, r) {residual=pre}   act(y + r) once act joins
    add(act(op(...)), r)    ->  fused_op(x, w, b, r) {activation, residual=post}

op is conv1d, conv2d, linear or matmul; the fused ops and their attributes are declared in
``compiler/ir/ops/fused.py``. Each rule grows the node by one step (a ``fused_*`` node is matched
again as the heavy op), so ``relu(conv(x) + b + shortcut)`` takes three steps:

- bias: an add of a constant that is one value per output channel (shape ``[C, 1, 1]``,
  ``[1, C, 1, 1]`` or a scalar for conv; ``[C]`` or ``[1, C]`` for linear and matmul) is summed
  into the bias, while no activation has been fused yet (the bias goes before it). A conv or
  linear without epilogue stays a plain conv or linear with the new bias;
- activation: relu, clip (relu6), leaky_relu, gelu (erf or tanh), silu, sigmoid, hardswish,
  tanh; only one, and not after a post-activation residual;
- residual: an add of a tensor of exactly the output's type; before the activation if none is
  fused yet (``pre``), after it otherwise (``post``). A zero bias is created if needed (the
  residual's position follows the bias).

Declines: the heavy op's (or the fused node's) output has other users (they need the value
without the epilogue), the add is neither per channel nor of the output's type, the bias is not
a constant or is elided, the output is not float. Stats: fused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops.fused import EPILOGUE_ATTRS, FUSED_OPS, activation_ops, fused_activation
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet

BASE_OF = {fused: base for base, fused in FUSED_OPS.items()}
HEAVY = frozenset(FUSED_OPS) | frozenset(BASE_OF)
ACTIVATION_OPS = tuple(sorted(activation_ops()))  # the fused ops' activation table, inverted


def _is_heavy(v: Value) -> bool:
    return v.producer is not None and v.producer.op in HEAVY


class Epilogue:
    """A heavy node seen as base op + epilogue (a plain op has the empty epilogue)."""

    def __init__(self, node: Node):
        self.node = node
        self.base = BASE_OF.get(node.op, node.op)
        self.n_base = 2
        self.bias: Value | None = node.inputs[2] if len(node.inputs) > 2 else None
        self.residual: Value | None = node.inputs[3] if len(node.inputs) > 3 else None
        attrs = node.attrs
        self.epilogue = {k: attrs.get(k, a.default) for k, a in EPILOGUE_ATTRS.items()}
        self.base_attrs = {k: v for k, v in attrs.items() if k not in EPILOGUE_ATTRS}

    @property
    def out(self) -> Value:
        return self.node.out

    @property
    def channel_axis(self) -> int:
        channels_first = self.base_attrs.get("layout", "NCHW") == "NCHW"
        return 1 if self.base.startswith("conv") and channels_first else self.out.type.rank - 1

    def why_not(self) -> str | None:
        """Why the node cannot take more epilogue, if it cannot."""
        out = self.out
        if len(out.users) > 1 or self.node.graph.is_output(out):
            return f"{self.node.op} output has other users (they need it without the epilogue)"
        if not out.type.dtype.is_float:
            return f"{self.node.op} output is {out.type.dtype}, not float"
        return None

    def build(self, rw: Rewriter, bias: Value | None, shortcut: Value | None,
              **epilogue: Any) -> Value:
        """The node with ``bias``, the residual input ``shortcut`` and ``epilogue`` attrs."""
        ep = {**self.epilogue, **epilogue}
        x, w = self.node.inputs[:2]
        plain = ep == {k: a.default for k, a in EPILOGUE_ATTRS.items()}
        if plain and self.base != "matmul":
            ins = [x, w] + ([bias] if bias is not None else [])
            return rw.op(self.base, *ins, **self.base_attrs)
        if shortcut is not None and bias is None:
            c = self.out.type.shape[self.channel_axis]
            bias = rw.const(np.zeros(c, self.out.type.dtype.np))
        ins = [x, w] + [v for v in (bias, shortcut) if v is not None]
        return rw.op(FUSED_OPS[self.base], *ins, **self.base_attrs, **ep)


def _per_channel(c: np.ndarray, out_rank: int, axis: int, n: Any) -> np.ndarray | None:
    """``c`` as a [n] bias vector if it holds one value per channel along ``axis``."""
    if c.ndim > out_rank:
        return None
    lead = out_rank - c.ndim
    for i, d in enumerate(c.shape):
        if d != 1 and not (i + lead == axis and d == n):
            return None
    if not isinstance(n, int):
        return None
    return np.broadcast_to(c.reshape(-1) if c.size == n else c.reshape(()), (n,)).copy()


def fuse_add(rw: Rewriter, add: Node) -> Value | None:
    a, b = add.inputs
    candidates = [(h, o) for h, o in ((a, b), (b, a)) if _is_heavy(h)]
    reasons = []
    for h, other in candidates:
        ep = Epilogue(h.producer)
        why = ep.why_not()
        if why is None:
            result = _fuse_add_into(rw, ep, other)
            if isinstance(result, Value):
                return result
            why = result
        reasons.append(why)
    return rw.decline("; ".join(reasons))


def _fuse_add_into(rw: Rewriter, ep: Epilogue, other: Value) -> Value | str:
    out = ep.out.type
    data = other.const_data if other.is_const else None
    if isinstance(data, np.ndarray) and ep.epilogue["activation"] == "none" \
            and ep.epilogue["residual"] != "post":
        vec = _per_channel(data, out.rank, ep.channel_axis, out.shape[ep.channel_axis])
        if vec is not None:
            if ep.bias is not None:
                old = ep.bias.const_data if ep.bias.is_const else None
                if not isinstance(old, np.ndarray):
                    return "the layer's bias is not a constant (or is elided)"
                vec = (old.astype(np.float64) + vec).astype(old.dtype)
            return ep.build(rw, rw.const(vec.astype(out.dtype.np)), ep.residual)
    if other.type != out:
        return (f"the add of {other.type} to {out} is neither a per-channel constant nor a "
                f"residual of the output's type")
    if ep.epilogue["residual"] != "none":
        return f"{ep.node.op} already adds a residual"
    mode = "pre" if ep.epilogue["activation"] == "none" else "post"
    return ep.build(rw, ep.bias, other, residual=mode)


def fuse_activation(rw: Rewriter, h: Node, act: Node) -> Value | None:
    ep = Epilogue(h)
    why = ep.why_not()
    if why is not None:
        return rw.decline(why)
    if ep.epilogue["activation"] != "none":
        return rw.decline("{} already has activation {}", h.op, ep.epilogue["activation"])
    if ep.epilogue["residual"] == "post":
        return rw.decline("{} adds its residual after the activation", h.op)
    fused = fused_activation(act.op, act.attrs)
    if fused is None:
        return rw.decline("{} with {} has no fused form", act.op, act.attrs)
    activation, alpha, beta = fused
    return ep.build(rw, ep.bias, ep.residual, activation=activation, alpha=alpha, beta=beta)


RULES = RuleSet("fuse-epilogue", [
    # add(op(x, w, b), c | r) -> op(x, w, b + c) | fused_op(x, w, b, r) {residual}
    Rule("add", P.op("add", P.any(), P.any(), name="add",
                     where=lambda n: any(_is_heavy(v) for v in n.inputs)), fuse_add),
    # act(op(x, w, b)) -> fused_op(x, w, b) {activation}
    Rule("activation", P.op(ACTIVATION_OPS, P.op(HEAVY, ..., name="h"), name="act"),
         fuse_activation),
])


@graph_pass("fuse-epilogue", summary="fuse bias, activation and residual adds into the conv, "
                                     "linear or matmul before them")
def fuse_epilogue(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("fused", RULES.apply(graph, ctx))
