"""layout: convert spatial ops to channels-last (NHWC) or back, with as few transposes as possible.

    op(x) {layout=NCHW}         ->  T_cf(op(T_cl(x)) {layout=NHWC})    convert (every op whose
                                    op-table entry has a ``layout`` attribute: conv2d,
                                    fused_conv2d, pooling, batch_norm)
    T_q(T_p(x)), p∘q = id       ->  x                                   cancel
    f(T_p(a), T_p(b), c)        ->  T_p(f(a, b, c'))                    sink (f elementwise or
                                    broadcast; c' = T_p^-1(c) for a constant c, broadcast to the
                                    rank first, so per-channel constants follow the channels)

T_cl = transpose {perm=[0, 2, 3, 1]} (NCHW -> NHWC), T_cf = transpose {perm=[0, 3, 1, 2]}. Each
converted op is wrapped in transposes; the transposes between two converted ops then meet and
cancel, after sinking through the elementwise ops between them. A transposed operand next to one
that is not transposed reuses an existing ``T_p^-1`` of that operand (a residual shortcut read by
the first conv), and a fused conv's residual input is transposed the same way. On a ResNet-style
block the net effect is one transpose in and one out.

``to=nchw`` runs the same rules the other way. Only rank-4 float activations convert; sinking
moves only layout transposes (other transposes, e.g. attention's head split, stay put). Opt-in:
it pays on conv-heavy graphs (channels-last kernels), so it is not in O3.

Declines: an operand of a sunk op is neither transposed, constant, nor already transposed the
other way (a new transpose would be needed), or the sunk transpose has other users. Stats:
converted, transposes (left in the graph).
"""

from __future__ import annotations

import numpy as np

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops import BROADCAST, ELEMENTWISE, KEEP, OPS
from rtinfer.ir.ops.layouts import to_channels_first, to_channels_last
from rtinfer.pass_manager import Option, PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet

CL, CF = to_channels_last(4), to_channels_first(4)
LAYOUT_PERMS = (CL, CF)


def _perm(node: Node) -> tuple[int, ...]:
    rank = node.inputs[0].type.rank
    perm = node.attrs["perm"]
    return tuple(p % rank for p in perm) if perm else tuple(reversed(range(rank)))


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for j, p in enumerate(perm):
        inv[p] = j
    return tuple(inv)


def _is_transpose(v: Value, perm: tuple[int, ...] | None = None) -> bool:
    n = v.producer
    return n is not None and n.op == "transpose" and (perm is None or _perm(n) == perm)


def _existing_transpose(rw: Rewriter, v: Value, perm: tuple[int, ...]) -> Value | None:
    """A transpose of ``v`` by ``perm`` already in the graph, defined before the rewrite's root
    (reused instead of making a second one)."""
    nodes = rw.graph.nodes
    root = rw.root
    limit = nodes.index(root) if root is not None else len(nodes)
    for u in v.users:
        if u.op == "transpose" and u.inputs[0] is v and _perm(u) == perm \
                and nodes.index(u) < limit:
            return u.out
    return None


def _transpose(rw: Rewriter, v: Value, perm: tuple[int, ...]) -> Value:
    return _existing_transpose(rw, v, perm) or rw.op("transpose", v, perm=list(perm))


# -- convert ------------------------------------------------------------------------------------


def layout_ops() -> frozenset[str]:
    """Ops whose op-table entry has a ``layout`` attribute."""
    return frozenset(o.name for o in OPS if "layout" in o.attrs)


def _convert(target: str):
    to, back = (CL, CF) if target == "NHWC" else (CF, CL)

    def convert(rw: Rewriter, n: Node) -> Value | None:
        x = n.inputs[0]
        if x.type.rank != 4 or not x.type.dtype.is_float or n.out.type.rank != 4:
            return rw.decline("{} on {}: only rank-4 float activations convert", n.op, x.type)
        ins = [_transpose(rw, x, to), *n.inputs[1:]]
        if n.op.startswith("fused_") and n.attrs.get("residual", "none") != "none":
            ins[3] = _transpose(rw, ins[3], to)  # the residual has the output's layout
        y = rw.op(n.op, *ins, **{**n.attrs, "layout": target})
        return rw.op("transpose", y, perm=list(back))

    return convert


# -- cancel and sink ----------------------------------------------------------------------------


def cancel(rw: Rewriter, x: Value, inner: Node, outer: Node) -> Value | None:
    if tuple(_perm(inner)[p] for p in _perm(outer)) != tuple(range(x.type.rank)):
        return None  # not inverse: canonicalize composes other pairs
    return x


def _sinkable(node: Node) -> bool:
    return all(v.type.quant is None for v in (*node.inputs, *node.outputs))


def _sink(left: list[Node]):
    """The sink action; ``left`` collects the transposes and constants it stops using (the
    pass erases those left dead: they are outside the match, which the driver never erases)."""

    def sink(rw: Rewriter, f: Node) -> Value | None:
        result = _sink_one(rw, f)
        if result is not None:
            left.extend(v.producer for v in f.inputs if v.producer is not None
                        and v.producer.op in ("transpose", "const"))
        return result

    return sink


def _sink_one(rw: Rewriter, f: Node) -> Value | None:
    out = f.out.type
    lead = next((v for v in f.inputs if _is_transpose(v) and _perm(v.producer) in LAYOUT_PERMS
                 and v.type == out and len(v.uses) == 1 and not f.graph.is_output(v)), None)
    if lead is None:
        if any(_is_transpose(v) and _perm(v.producer) in LAYOUT_PERMS for v in f.inputs):
            return rw.decline("the transposed operand has other users or is broadcast")
        return None
    p = _perm(lead.producer)
    inv = _inverse(p)
    ins: list[Value] = []
    for v in f.inputs:
        if _is_transpose(v, p):
            ins.append(v.producer.inputs[0])
        elif v.is_const and isinstance(v.const_data, np.ndarray) and v.type.rank <= out.rank:
            c = v.const_data
            if c.ndim == 0 or c.size == 1:
                ins.append(v)
            else:
                c4 = c.reshape((1,) * (out.rank - c.ndim) + c.shape)
                ins.append(rw.const(np.ascontiguousarray(np.transpose(c4, inv))))
        else:
            t = _existing_transpose(rw, v, inv) if v.type.rank == out.rank else None
            if t is None:
                return rw.decline("operand {} of {} is not transposed: sinking would need a new "
                                  "transpose", rw.value_text(v), f.op)
            ins.append(t)
    y = rw.op(f.op, *ins, **f.attrs)
    return rw.op("transpose", y, perm=list(p))


def rules(target: str, left: list[Node]) -> RuleSet:
    sinkable = frozenset(o.name for o in OPS if (o.has(ELEMENTWISE) or o.has(BROADCAST))
                         and not o.has(KEEP) and o.name not in ("const", "fused_elementwise"))
    x = P.var("x")
    return RuleSet("layout", [
        # op(x) {layout=L} -> T_back(op(T_to(x)) {layout=target})
        Rule("convert", P.op(layout_ops(), ..., name="n",
                             where=lambda n: n.attrs["layout"] != target), _convert(target)),
        # T_q(T_p(x)) -> x   when p∘q is the identity
        Rule("cancel", P.op("transpose", P.op("transpose", x, name="inner"), name="outer"),
             cancel),
        # f(T_p(a), ...) -> T_p(f(a, ...))
        Rule("sink", P.op(sinkable, ..., name="f",
                          where=lambda n: _sinkable(n) and any(_is_transpose(v)
                                                                for v in n.inputs)),
             _sink(left)),
    ])


@graph_pass("layout", summary="convert conv/pool/batch_norm to NHWC (or back), cancelling the "
                              "transposes between them",
            options={"to": Option(str, "nhwc", "the activation layout to convert to",
                                  choices=("nhwc", "nchw"))},
            expects=["convert"])
def layout(graph: Graph, ctx: PassContext) -> None:
    left: list[Node] = []
    rules(ctx.options["to"].upper(), left).apply(graph, ctx)
    rw = Rewriter(graph, ctx)
    for n in reversed(rw.ordered(left)):
        rw.erase_if_dead(n)
    ctx.stat("converted", ctx.applications["convert"])
    ctx.stat("transposes", sum(1 for n in graph.nodes if n.op == "transpose"))
