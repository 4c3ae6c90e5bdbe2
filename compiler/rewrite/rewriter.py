"""``Rewriter``: the one door through which passes mutate a graph.

It inserts new nodes before the node being rewritten (so the graph stays topologically
ordered), infers their types from the op table, stamps their provenance with the pass and rule
that made them, counts changes, and remembers which nodes a change touched so the rule driver
can revisit them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtinfer.errors import PassError
from rtinfer.ir.graph import NO_PROVENANCE, Graph, Node, Provenance, Value
from rtinfer.ir.printer import Namer, NodeText
from rtinfer.ir.types import DType, QuantParams
from rtinfer.rewrite.events import Decline, RewriteLog, Text


class Rewriter:
    """Mutations of ``graph`` on behalf of ``pass_name`` (rule driver: also of one rule at one
    root node).

    New nodes go before ``root`` (at the end of the graph when there is none) and get
    ``root.provenance.derive("pass/rule")``.
    """

    def __init__(self, graph: Graph, ctx: RewriteLog | None = None, pass_name: str | None = None):
        self.graph = graph
        self.ctx = ctx if ctx is not None else RewriteLog(pass_name or "<none>")
        self.pass_name = pass_name or self.ctx.pass_name
        self.root: Node | None = None
        self.rule: str = ""
        self.changes = 0  # every mutation, over the rewriter's life
        self.created: list[Node] = []  # nodes made since the last ``begin``
        self.touched: list[Node] = []  # nodes to revisit after a change
        self._declined: Decline | None = None
        self._edits = 0  # mutations other than creating nodes, since the last ``begin``
        self._before: Text | None = None
        self._before_nodes: list[Node] = []
        self._namer: Namer | None = None  # one naming for every text this rewriter takes

    # -- the rule driver's hooks ---------------------------------------------------------------

    def begin(self, root: Node | None, rule: str = "", before: list[Node] | None = None) -> None:
        """Start rewriting at ``root`` for ``rule``; ``before``: the matched nodes, whose text
        is taken before the first mutation."""
        self.root, self.rule = root, rule
        self.created, self._declined, self._edits = [], None, 0
        self._before_nodes = before if before is not None else ([root] if root else [])
        self._before = None

    @property
    def before(self) -> Text:
        """The IR text of the matched nodes as they were before the first mutation since
        ``begin`` (taken then, formatted when read)."""
        if self._before is None:
            self._before = self.lazy_texts(self._before_nodes)
        return self._before

    @property
    def namer(self) -> Namer:
        """One naming for every text this rewriter takes: SSA names stay the same before and
        after a change (made when first needed, from the graph as it is then)."""
        if self._namer is None:
            self._namer = Namer(list(self.graph.values()), tracked=True)
        return self._namer

    def text(self, node: Node) -> str:
        """``node``'s IR text now, with SSA names that stay the same over this rewriter's life."""
        return self.lazy_text(node)()

    def lazy_text(self, node: Node) -> NodeText:
        """``node``'s IR text as it is now, formatted when read (``str()`` of it, or a
        ``decline`` argument)."""
        return NodeText(node, self.namer)

    def lazy_texts(self, nodes: list[Node]) -> Text:
        """The lines of the nodes of ``nodes`` still in the graph, producers first, as they are
        now; formatted when read."""
        texts = [self.lazy_text(n) for n in self.ordered(nodes)]
        return lambda: "\n".join(t() for t in texts)

    def value_text(self, v: Value) -> str:
        self.namer.add(v)
        return self.namer(v)

    @property
    def edited(self) -> bool:
        """Whether anything beyond creating nodes happened since ``begin``."""
        return self._edits > 0

    @property
    def provenance(self) -> Provenance:
        base = self.root.provenance if self.root is not None else NO_PROVENANCE
        tag = f"{self.pass_name}/{self.rule}" if self.rule else self.pass_name
        return base.derive(tag)

    def ordered(self, nodes: list[Node]) -> list[Node]:
        """The nodes of ``nodes`` still in the graph, producers before users (a local
        topological sort: the rewrite touches few nodes, the graph may have many)."""
        members = {id(n): n for n in nodes if n.graph is self.graph}
        out: list[Node] = []
        done: set[int] = set()
        for start in members.values():
            stack: list[tuple[Node, bool]] = [(start, False)]
            while stack:
                n, expanded = stack.pop()
                if id(n) in done:
                    continue
                if expanded:
                    done.add(id(n))
                    out.append(n)
                    continue
                stack.append((n, True))
                for v in reversed(n.inputs):
                    p = v.producer
                    if p is not None and id(p) in members and id(p) not in done:
                        stack.append((p, False))
        return out

    def _will_mutate(self) -> None:
        if self._before is None and self._before_nodes:
            _ = self.before
        self.changes += 1

    # -- creating nodes --------------------------------------------------------------------------

    def node(self, op: str, *inputs: Value, **attrs: Any) -> Node:
        """Insert ``op(inputs) {attrs}`` before the root, types inferred; return the node."""
        self._will_mutate()
        node = self.graph.create_node(op, inputs, attrs, provenance=self.provenance,
                                      before=self.root)
        self.created.append(node)
        self.touched.append(node)
        return node

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Insert a single-output ``op(inputs) {attrs}`` before the root; return its output."""
        return self.node(op, *inputs, **attrs).out

    def const(self, array: Any, dtype: DType | np.dtype | type | str | None = None,
              quant: QuantParams | None = None) -> Value:
        """Insert a ``const`` node holding ``array`` (cast to ``dtype`` if given; pass the
        dtype for python scalars, which numpy would otherwise make 64-bit); ``quant``: the
        QuantParams of an integer constant (an int8 weight)."""
        if isinstance(dtype, DType):
            dtype = dtype.np
        elif isinstance(dtype, str):
            dtype = DType.parse(dtype).np
        self._will_mutate()
        arr = np.array(array, dtype=dtype)
        v = self.graph.add_const(arr, before=self.root, provenance=self.provenance, quant=quant)
        assert v.producer is not None
        self.created.append(v.producer)
        return v

    # -- editing ---------------------------------------------------------------------------------

    def replace(self, old: Value, new: Value) -> None:
        """Make every use of ``old`` (graph outputs included) use ``new``."""
        if old is new:
            return
        if old.type != new.type:
            raise PassError(f"{self._where()}: replacing {self.value_text(old)}: {old.type} with "
                            f"{self.value_text(new)}: {new.type} would change its type")
        self._will_mutate()
        self._edits += 1
        users = old.users
        self.graph.replace_all_uses(old, new)
        self.touched.extend(users)
        self.touched.extend(v.producer for v in (old, new) if v.producer is not None)

    def set_input(self, node: Node, i: int, value: Value) -> None:
        old = node.inputs[i]
        if old is value:
            return
        self._will_mutate()
        self._edits += 1
        self.graph.set_input(node, i, value)
        self.touched.append(node)
        if old.producer is not None:
            self.touched.append(old.producer)

    def move_before(self, node: Node, before: Node) -> None:
        """Move ``node`` to just before ``before`` (the caller keeps the order topological)."""
        self._will_mutate()
        self._edits += 1
        self.graph.move_before(node, before)

    def erase(self, node: Node) -> None:
        """Remove ``node``; its outputs must be unused."""
        self._will_mutate()
        self._edits += 1
        self.graph.remove_node(node)
        self.touched.extend(v.producer for v in node.inputs if v.producer is not None)

    def erase_if_dead(self, node: Node) -> bool:
        if node.graph is not self.graph or any(self.graph.has_uses(v) for v in node.outputs):
            return False
        self.erase(node)
        return True

    # -- declining -------------------------------------------------------------------------------

    def decline(self, reason: Text, *args: Any) -> None:
        """Record that the rule matched but refused, and why. Returns None, so a rule can end
        with ``return rw.decline("...")``. With ``args``, ``reason`` is a ``str.format``
        template filled in only when a report reads it, and ``reason`` may be a callable that
        makes the text: ``rw.decline("{} has {} users", rw.lazy_text(conv), len(users))``."""
        d = Decline(self.pass_name, self.rule, reason,
                    self.lazy_text(self.root) if self.root is not None else "", args)
        self._declined = d
        self.ctx.record_decline(d)
        return None

    @property
    def declined(self) -> str | None:
        """The reason of the last decline of the rule being applied, or None."""
        return None if self._declined is None else self._declined.reason

    def _where(self) -> str:
        return f"{self.pass_name}/{self.rule}" if self.rule else self.pass_name
