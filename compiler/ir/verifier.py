"""The IR verifier: SSA, topological order, use lists, attributes and types against the op table.

``verify(graph)`` collects every problem it finds and raises one ``VerifyError`` listing the
first few; ``.node`` is the first offending node's text.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtinfer.errors import IRError, VerifyError
from rtinfer.ir.equality import attr_diff
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.printer import format_node, graph_namer

MAX_REPORTED = 5


@dataclass
class Problem:
    message: str
    node: str | None


def verify(graph: Graph) -> None:
    """Raise ``VerifyError`` if ``graph`` breaks an IR invariant."""
    problems = find_problems(graph)
    if not problems:
        return
    first = problems[0]
    msg = first.message
    if len(problems) > 1:
        msg = f"{len(problems)} problems in @{graph.name}; first: {msg}"
        for p in problems[1:MAX_REPORTED]:
            msg += f"\n  also: {p.message}" + (f"  [at: {p.node}]" if p.node else "")
        if len(problems) > MAX_REPORTED:
            msg += f"\n  ... and {len(problems) - MAX_REPORTED} more"
    raise VerifyError(msg, first.node)


def find_problems(graph: Graph, where: str = "") -> list[Problem]:
    """Every invariant ``graph`` breaks, in graph order (empty if it is well formed)."""
    return _Checker(graph, where).run()


class _Checker:
    def __init__(self, graph: Graph, where: str):
        self.g = graph
        self.where = where
        self.problems: list[Problem] = []
        self.name = graph_namer(graph)
        self.node_ids = {id(n) for n in graph.nodes}
        # every value this graph owns: its inputs and the outputs of its nodes
        self.owned = {id(v) for v in graph.values()}

    def report(self, message: str, node: Node | None = None) -> None:
        text = format_node(node) if node is not None else None
        self.problems.append(Problem(self.where + message, text))

    def run(self) -> list[Problem]:
        g = self.g
        defined: set[int] = set()
        for i, v in enumerate(g.inputs):
            if v.producer is not None or v.index != i:
                self.report(f"graph input {i} ({self.name(v)}) is not a graph input "
                            f"(producer {v.producer and v.producer.op}, index {v.index})")
            if id(v) in defined:
                self.report(f"graph input {self.name(v)} is listed twice")
            defined.add(id(v))
            self.check_uses(v)
        seen_nodes: set[int] = set()
        for node in g.nodes:
            if id(node) in seen_nodes:
                self.report(f"node {node.op} appears twice in the node list", node)
                continue
            seen_nodes.add(id(node))
            self.check_node(node, defined)
        for i, v in enumerate(g.outputs):
            if id(v) not in self.owned:
                self.report(f"graph output {i} ({self.name(v)}) is not defined in @{g.name}")
        return self.problems

    def check_uses(self, v: Value) -> None:
        for user, j in v.uses:
            if id(user) not in self.node_ids or user.graph is not self.g:
                self.report(f"{self.name(v)} has a dangling use by {user.op} (a node not in "
                            f"@{self.g.name}, e.g. removed without dropping its uses)", user)
            elif j >= len(user.inputs) or user.inputs[j] is not v:
                self.report(f"{self.name(v)} records a use as input {j} of {user.op}, but "
                            "that input is another value", user)

    def check_node(self, node: Node, defined: set[int]) -> None:
        if node.graph is not self.g:
            self.report(f"node {node.op} is in the node list of @{self.g.name} but its .graph "
                        "is another graph", node)
        try:
            opdef = node.opdef
        except IRError as e:
            self.report(str(e), node)
            opdef = None

        inputs_ok = True
        for i, v in enumerate(node.inputs):
            if id(v) not in self.owned:
                self.report(f"input {i} of {node.op} ({self.name(v)}) is not defined in "
                            f"@{self.g.name}", node)
                inputs_ok = False
            elif id(v) not in defined:
                self.report(f"input {i} of {node.op} ({self.name(v)}) is used before its "
                            "definition (nodes are not in topological order)", node)
            if sum(1 for u, j in v.uses if u is node and j == i) != 1:
                self.report(f"the use list of {self.name(v)} does not record input {i} of "
                            f"{node.op} exactly once", node)

        for i, v in enumerate(node.outputs):
            if v.producer is not node or v.index != i:
                self.report(f"result {i} of {node.op} ({self.name(v)}) has another producer",
                            node)
            if id(v) in defined:
                self.report(f"{self.name(v)} is produced twice", node)
            defined.add(id(v))
            self.check_uses(v)

        if opdef is None:
            return
        try:
            opdef.check_arity(len(node.inputs))
        except IRError as e:
            self.report(str(e), node)
            return
        try:
            full = opdef.complete_attrs(node.attrs, where=node.op)
        except IRError as e:
            self.report(str(e), node)
            return
        for k, v in full.items():
            if k not in node.attrs:
                self.report(f"{node.op}: attribute {k} is missing (create nodes through "
                            "Graph.create_node, which fills defaults)", node)
            else:
                d = attr_diff(node.attrs[k], v)
                if d is not None:
                    self.report(f"{node.op}: attribute {k} is not in canonical form ({d})",
                                node)
        for k, v in node.attrs.items():
            if isinstance(v, Graph):
                for p in find_problems(v, f"{self.where}{node.op} attribute {k}: "):
                    self.problems.append(p)
        if not inputs_ok:
            return
        try:
            expected = opdef.infer_types([v.type for v in node.inputs], node.attrs)
        except IRError as e:
            self.report(f"type inference failed: {e}", node)
            return
        found = [v.type for v in node.outputs]
        if len(expected) != len(found):
            self.report(f"{node.op} has {len(found)} results but the op table infers "
                        f"{len(expected)}", node)
            return
        for i, (t, u) in enumerate(zip(expected, found, strict=True)):
            if t != u:
                self.report(f"result {i} of {node.op} ({self.name(node.outputs[i])}) has "
                            f"type {u} but the op table infers {t} (expected {t}, found {u})",
                            node)
