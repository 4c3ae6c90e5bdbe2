"""fuse-elementwise: chains and trees of elementwise/broadcast ops become one node.

    c(..., p(a, b), ...)  ->  fused_elementwise(a, b, ...) {body = func { p; c }}

Which ops fuse is read from the op table, TVM-style: every op with the ``elementwise`` or
``broadcast`` trait (``fused_elementwise`` itself included, its body is inlined), except
``quantize``/``dequantize`` (int8 lowering matches those pairs) and nodes on quantized types.
Injective ops (reshape, transpose) change the iteration space, so they end a group, as do
``out_fusable``, ``reduce`` and ``opaque`` ops: a group never crosses them.

The rule merges one producer into its consumer, so a group grows one op at a time (each
merge is one rule application: bisection can stop at any of them). Constants stay inputs of the
fused node. Work is never duplicated: a producer's result that is also used outside the group
(or is a graph output) becomes a further result of the fused node (results: the consumer's,
then the producer's that are still needed).

Declines: the body would exceed ``max-size`` ops; another path leads from the producer to the
consumer outside the group (fusing would make a cycle); a user of the producer's result comes
before an input of the consumer is defined (the fused node would need a reorder). Stats:
groups (fused nodes made), fused-ops (ops inside them).
"""

from __future__ import annotations

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops import BROADCAST, ELEMENTWISE, KEEP, OPS
from rtinfer.ir.printer import NodeText
from rtinfer.pass_manager import Option, PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet

FUSED = "fused_elementwise"
# Producer positions tried in a consumer (the rule is one pattern per input position).
MAX_POSITION = 8


def fusible_ops() -> frozenset[str]:
    """Ops of the table with the elementwise or broadcast trait and not kept for lowering (Q/DQ
    pairs are what int8 lowering matches: they stay visible); read when the pass runs, so ops
    declared later fuse too."""
    return frozenset(o.name for o in OPS if (o.has(ELEMENTWISE) or o.has(BROADCAST))
                     and not o.has(KEEP) and o.name != "const")


def _fusible(node: Node) -> bool:
    return all(v.type.quant is None for v in (*node.inputs, *node.outputs))


def body_size(node: Node) -> int:
    """Ops a node contributes to a body (a fused node: its body's ops, constants excluded)."""
    if node.op == FUSED:
        return sum(1 for n in node.attrs["body"].nodes if n.op != "const")
    return 1


def _kept(p: Node, c: Node) -> list[Value]:
    """The producer's results still needed once it joins the consumer."""
    g = p.graph
    return [o for o in p.outputs if g.is_output(o) or any(u is not c for u in o.users)]


def _obstacle(p: Node, c: Node, kept: list[Value], rw: Rewriter) -> tuple[str, NodeText] | None:
    """Why ``p`` cannot join ``c`` (a cycle, or no place for the fused node), as a decline
    template and the node in the way, or None."""
    g = c.graph
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    at_c = pos[id(c)]
    outside = [u for o in kept for u in o.users if u is not c]
    for first in outside:
        stack, seen = [first], set()
        while stack:
            n = stack.pop()
            if n is c:
                return ("{} uses the producer's result and leads to the consumer: fusing would "
                        "make a cycle", rw.lazy_text(first))
            if id(n) in seen or pos[id(n)] > at_c:
                continue
            seen.add(id(n))
            stack.extend(u for o in n.outputs for u in o.users)
    if outside:
        first_user = min(pos[id(u)] for u in outside)
        if first_user < at_c:
            inputs = [v for n in (p, c) for v in n.inputs if v.producer is not p]
            last_def = max((pos[id(v.producer)] for v in inputs if v.producer is not None),
                           default=-1)
            if last_def >= first_user:
                return ("{} uses the producer's result before an input of the group is defined: "
                        "the fused node would need a reorder", rw.lazy_text(g.nodes[first_user]))
    return None


def merge_bodies(p: Node, c: Node, kept: list[Value]) -> tuple[Graph, list[Value]]:
    """The body of ``c`` after ``p`` (plain ops or fused nodes, whose bodies are inlined), and
    the outer values it takes as inputs. Results: ``c``'s, then ``kept``."""
    body = Graph("fused")
    params: list[Value] = []
    env: dict[int, Value] = {}  # outer (or inlined body) value -> value of the new body

    def arg(v: Value) -> Value:
        if id(v) not in env:
            env[id(v)] = body.add_input(v.type)
            params.append(v)
        return env[id(v)]

    def emit(node: Node) -> None:
        ins = [arg(v) for v in node.inputs]
        if node.op != FUSED:
            made = body.create_node(node.op, ins, node.attrs, [v.type for v in node.outputs],
                                    node.provenance)
            env.update((id(o), m) for o, m in zip(node.outputs, made.outputs, strict=True))
            return
        sub = node.attrs["body"]
        local = {id(s): b for s, b in zip(sub.inputs, ins, strict=True)}
        for n in sub.nodes:
            made = body.create_node(n.op, [local[id(v)] for v in n.inputs], n.attrs,
                                    [v.type for v in n.outputs], n.provenance)
            local.update((id(o), m) for o, m in zip(n.outputs, made.outputs, strict=True))
        env.update((id(o), local[id(s)]) for o, s in zip(node.outputs, sub.outputs,
                                                          strict=True))

    emit(p)
    emit(c)
    body.set_outputs([env[id(v)] for v in (*c.outputs, *kept)])
    return body, params


def _fuse(max_size: int):
    def fuse(rw: Rewriter, p: Node, c: Node) -> list[Value] | None:
        size = body_size(p) + body_size(c)
        if size > max_size:
            return rw.decline("the fused body would have {} ops (max-size={})", size, max_size)
        kept = _kept(p, c)
        why = _obstacle(p, c, kept, rw)
        if why is not None:
            return rw.decline(*why)
        body, params = merge_bodies(p, c, kept)
        node = rw.node(FUSED, *params, body=body)
        outside = [u for o in kept for u in o.users if u is not c]
        if outside:
            first = min(outside, key=c.graph.nodes.index)
            if c.graph.nodes.index(first) < c.graph.nodes.index(node):
                rw.move_before(node, first)
        n_c = len(c.outputs)
        for o, new in zip((*c.outputs, *kept), node.outputs, strict=True):
            new.name = o.name  # keep the name hints of the values the node now computes
        for o, new in zip(kept, node.outputs[n_c:], strict=True):
            rw.replace(o, new)
        return node.outputs[:n_c]

    return fuse


def rules(max_size: int) -> RuleSet:
    ops = fusible_ops()
    action = _fuse(max_size)
    producer = P.op(ops, ..., name="p", where=_fusible)
    return RuleSet("fuse-elementwise", [
        # c(.., p(..), ..) -> fused_elementwise {p; c}   (p at input i of c)
        Rule("fuse", P.op(ops, *[P.any()] * i, producer, ..., name="c", where=_fusible), action)
        for i in range(MAX_POSITION)
    ])


@graph_pass("fuse-elementwise",
            summary="fuse chains and trees of elementwise/broadcast ops into fused_elementwise",
            options={"max-size": Option(int, 16, "most ops in one fused body")},
            expects=["fuse"])
def fuse_elementwise(graph: Graph, ctx: PassContext) -> None:
    before = {id(n) for n in graph.nodes if n.op == FUSED}
    rules(ctx.options["max-size"]).apply(graph, ctx)
    made = [n for n in graph.nodes if n.op == FUSED and id(n) not in before]
    ctx.stat("groups", len(made))
    ctx.stat("fused-ops", sum(body_size(n) for n in made))
