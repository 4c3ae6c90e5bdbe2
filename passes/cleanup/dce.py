"""dce: dead-code elimination.

    a node none of whose outputs is used (by a node or as a graph output) -> removed

One sweep in reverse topological order removes whole dead chains: every user of a node comes
after it, so by the time the sweep reaches a node, its dead users are already gone. Graph inputs
are the function's signature and stay. Stats: removed.
"""

from __future__ import annotations

from rtinfer.ir.graph import Graph
from rtinfer.pass_manager import PassContext, RewriteEvent, graph_pass
from rtinfer.rewrite.rewriter import Rewriter


@graph_pass("dce", summary="remove nodes whose outputs are unused and not graph outputs")
def dce(graph: Graph, ctx: PassContext) -> None:
    rw = Rewriter(graph, ctx)
    removed = 0
    for node in reversed(list(graph.nodes)):
        if any(graph.has_uses(v) for v in node.outputs):
            continue
        if not ctx.allow_rewrite():  # bisection's budget
            break
        rw.begin(node, "dead-node")
        before = rw.before
        rw.erase(node)
        ctx.record_rewrite(RewriteEvent(ctx.pass_name, "dead-node", before, "", removed))
        removed += 1
    ctx.stat("removed", removed)
