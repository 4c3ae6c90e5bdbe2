"""The graph IR: SSA values, nodes and a function-level graph.

A ``Graph`` is one function: typed inputs, a list of nodes in topological order, and outputs.
Each ``Value`` has one producer (a node, or none for a graph input) and a use list. Constants
are ``const`` nodes whose ``value`` attribute holds a numpy array (arrays are treated as
immutable and shared between clones).

Low-level mutation lives here; passes mutate through ``rtinfer.rewrite.Rewriter``, which wraps
these methods to record provenance and count changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.types import QuantParams, TensorType


@dataclass(frozen=True)
class Provenance:
    """Where a node came from.

    ``origin``: the frontend location it derives from (``torch:layer1.0.conv1``, ``onnx:Conv_3``)
    or ``""``. ``created_by``: ``pass/rule`` for nodes made by a rewrite, ``""`` otherwise.
    """

    origin: str = ""
    created_by: str = ""

    def __str__(self) -> str:
        if self.created_by and self.origin:
            return f"{self.origin} via {self.created_by}"
        return self.origin or self.created_by

    def derive(self, created_by: str) -> Provenance:
        return Provenance(self.origin, created_by)


NO_PROVENANCE = Provenance()
_ids = itertools.count()


class Value:
    """An SSA value: produced once (by ``producer`` at output ``index``, or a graph input)."""

    __slots__ = ("type", "producer", "index", "uses", "name", "uid", "__weakref__")

    def __init__(self, type: TensorType, producer: Node | None = None, index: int = 0,
                 name: str | None = None):
        if not isinstance(type, TensorType):
            raise IRError(f"a value's type must be a TensorType, got {type!r}")
        self.type = type
        self.producer = producer
        self.index = index
        self.uses: list[tuple[Node, int]] = []
        self.name = name
        self.uid = next(_ids)  # unique per process: names a value in messages when it has no name

    @property
    def users(self) -> list[Node]:
        seen: dict[int, Node] = {}
        for n, _ in self.uses:
            seen.setdefault(id(n), n)
        return list(seen.values())

    @property
    def is_const(self) -> bool:
        return self.producer is not None and self.producer.op == "const"

    @property
    def const_data(self) -> np.ndarray | None:
        """The array of a constant value (None if not a constant or printed elided)."""
        return self.producer.attrs["value"] if self.is_const else None

    def __repr__(self) -> str:
        return f"<Value %{self.name or self.uid}: {self.type}>"


class Node:
    """One operation: ``outputs = op(inputs) {attrs}``."""

    __slots__ = ("op", "inputs", "attrs", "outputs", "provenance", "graph", "name")

    def __init__(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
                 out_types: Sequence[TensorType], provenance: Provenance = NO_PROVENANCE,
                 name: str | None = None):
        self.op = op
        self.inputs: list[Value] = list(inputs)
        self.attrs = dict(attrs)
        self.outputs = [Value(t, self, i) for i, t in enumerate(out_types)]
        self.provenance = provenance
        self.graph: Graph | None = None
        self.name = name

    @property
    def out(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"node {self.op} has {len(self.outputs)} outputs; use .outputs")
        return self.outputs[0]

    @property
    def opdef(self):
        from rtinfer.ir.ops import get_op

        return get_op(self.op)

    def __repr__(self) -> str:
        from rtinfer.ir.printer import format_node

        return f"<Node {format_node(self)}>"


class Graph:
    """A function: inputs, nodes in topological order, outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        # Facts about the graph that are not IR (not printed, not compared): e.g. a frontend's
        # record of the original input/output structure. Copied (shallowly) by clone().
        self.meta: dict[str, Any] = {}

    # -- construction -------------------------------------------------------------------------

    def add_input(self, type: TensorType, name: str | None = None) -> Value:
        v = Value(type, None, len(self.inputs), name)
        self.inputs.append(v)
        return v

    def create_node(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None,
                    out_types: Sequence[TensorType] | None = None,
                    provenance: Provenance = NO_PROVENANCE, name: str | None = None,
                    before: Node | None = None) -> Node:
        """Create a node (types inferred by the op table unless given) and insert it."""
        from rtinfer.ir.ops import get_op

        opdef = get_op(op)
        full_attrs = opdef.complete_attrs(attrs or {}, where=op)
        if out_types is None:
            out_types = opdef.infer_types([v.type for v in inputs], full_attrs)
        node = Node(op, inputs, full_attrs, out_types, provenance, name)
        self.insert(node, before)
        return node

    def add_op(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Append ``op(inputs) {attrs}`` and return its single output."""
        return self.create_node(op, inputs, attrs).out

    def add_const(self, array: Any, name: str | None = None, before: Node | None = None,
                  provenance: Provenance = NO_PROVENANCE, quant: QuantParams | None = None
                  ) -> Value:
        """A ``const`` node holding a frozen copy of ``array``; ``quant``: the QuantParams of
        an integer constant (an int8 weight)."""
        array = np.asarray(array)
        if array.flags.writeable:  # never freeze (or alias) the caller's own array
            array = array.copy()
            array.setflags(write=False)
        node = self.create_node("const", [], {"value": array, "quant": quant},
                                provenance=provenance, before=before)
        node.out.name = name
        return node.out

    def set_outputs(self, values: Iterable[Value]) -> None:
        self.outputs = list(values)

    # -- low-level mutation (used by builders and the Rewriter) --------------------------------

    def insert(self, node: Node, before: Node | None = None) -> None:
        if node.graph is not None:
            raise IRError(f"node {node.op} is already in a graph")
        node.graph = self
        for i, v in enumerate(node.inputs):
            v.uses.append((node, i))
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self._index(before), node)

    def _index(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise IRError(f"node {node.op} is not in graph @{self.name}")

    def set_input(self, node: Node, i: int, value: Value) -> None:
        old = node.inputs[i]
        old.uses.remove((node, i))
        node.inputs[i] = value
        value.uses.append((node, i))

    def replace_all_uses(self, old: Value, new: Value) -> None:
        if old is new:
            return
        for node, i in list(old.uses):
            self.set_input(node, i, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_node(self, node: Node) -> None:
        for v in node.outputs:
            if v.uses or any(o is v for o in self.outputs):
                raise IRError(f"cannot remove {node.op}: its output is still used")
        for i, v in enumerate(node.inputs):
            v.uses.remove((node, i))
        self.nodes.remove(node)
        node.graph = None

    def move_before(self, node: Node, before: Node) -> None:
        self.nodes.remove(node)
        self.nodes.insert(self._index(before), node)

    # -- queries ------------------------------------------------------------------------------

    def is_output(self, v: Value) -> bool:
        return any(o is v for o in self.outputs)

    def has_uses(self, v: Value) -> bool:
        return bool(v.uses) or self.is_output(v)

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        for n in self.nodes:
            yield from n.outputs

    def constants(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "const"]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    # -- copies, text, equality ----------------------------------------------------------------

    def clone(self) -> Graph:
        """A deep copy of the structure; constant arrays (immutable) are shared."""
        g = Graph(self.name)
        g.meta = dict(self.meta)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            vmap[id(v)] = g.add_input(v.type, v.name)
        for n in self.nodes:
            attrs = {k: (a.clone() if isinstance(a, Graph) else a) for k, a in n.attrs.items()}
            m = Node(n.op, [vmap[id(v)] for v in n.inputs], attrs,
                     [v.type for v in n.outputs], n.provenance, n.name)
            for old, new in zip(n.outputs, m.outputs, strict=True):
                new.name = old.name
                vmap[id(old)] = new
            g.insert(m)
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g

    def __str__(self) -> str:
        from rtinfer.ir.printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes>"
