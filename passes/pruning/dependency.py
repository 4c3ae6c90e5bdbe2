"""The channel dependency graph: which channels of which tensors must be pruned together.

Every (value, axis) of static size is a row of elements, one per channel. The op table links
them: ``channel_groups`` couples port axes index to index (a residual add, a BatchNorm's
parameters, a conv's weight and bias with its output), and an op's ``PruneHook.links`` maps
indices between axes that are not one to one (a concat's output onto offsets of its inputs, a
flatten's features onto blocks of channels). The connected components of those links are the
prunable units (a *channel*: every element that goes when it goes); channels touching the same
set of (value, axis) rows form a *group* (Torch-Pruning's dependency group): the output
channels of a conv together with the BatchNorm, the residual adds and the next layers' input
channels they feed. A group's kind (conv ``channels``, ``ffn`` neurons, attention ``heads``,
the ``hidden`` size a norm reduces over) lets a ratio differ per kind.

A channel is blocked (kept whole) when it reaches a graph input or output (the model's
interface stays), or an op that does not say how the element flows: an op without
``channel_groups``, or a port axis its groups and links leave out (a grouped transposed
convolution's channels, a reshape that regroups axes both ways). A grouped convolution's
channel is one index of every group (its ``PruneHook.links``), so groups shrink alike. The
group records which op blocked it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops.registry import PortAxis

Dim = tuple[int, int]  # (value uid, axis)
INTERFACE = ("graph input", "graph output")  # blocks by design, not an op


def layer_name(node: Node) -> str:
    """The name a report gives a node: its frontend location (``layer1.0.conv1``) or its op."""
    origin = node.provenance.origin.split(" (")[0]  # "torch:fc (aten.linear.default)"
    return origin.split(":", 1)[1] if ":" in origin else origin or node.op


@dataclass
class WeightMember:
    """One layer's weight axis in a group: its output (``role="out"``) or input channels."""

    node: Node
    weight: Value
    axis: int
    role: str

    @property
    def name(self) -> str:
        return layer_name(self.node)


@dataclass
class ChannelGroup:
    """Channels that are pruned together, index by index, and what they touch."""

    id: int
    channels: np.ndarray  # component labels: one per prunable channel
    dims: list[tuple[Value, int]]
    weights: list[WeightMember]
    blocked_by: list[str] = field(default_factory=list)
    # features per channel in the producing layers' weights: 1 for a conv channel or an FFN
    # neuron, the head size for attention heads (a reshape splits the features into heads),
    # the number of groups around a grouped convolution (an index of every group)
    width: int = 1
    reduced_by: list[str] = field(default_factory=list)  # ops normalizing over the channels

    @property
    def kind(self) -> str:
        """What the channels are: ``"hidden"`` (an op reduces over them: a LayerNorm's hidden
        size, the residual stream of a transformer; pruning them is never exact),
        ``"heads"`` (each a block of several features of the layers producing it: attention
        heads of fully connected layers), ``"ffn"`` (single neurons of fully connected layers,
        rank-2 weights) or ``"channels"`` (convolution channels; around a grouped convolution
        each is one index of every group)."""
        if self.reduced_by:
            return "hidden"
        outs = [w for w in self.weights if w.role == "out"] or self.weights
        if not all(w.weight.type.rank == 2 for w in outs):
            return "channels"  # of a convolution: an index of every group of a grouped one
        return "heads" if self.width > 1 else "ffn"

    @property
    def size(self) -> int:
        return len(self.channels)

    @property
    def prunable(self) -> bool:
        return not self.blocked_by and self.size > 1

    def describe(self) -> str:
        outs = sorted({w.name for w in self.weights if w.role == "out"})
        ins = sorted({w.name for w in self.weights if w.role == "in"})
        text = f"out of {', '.join(outs) or '-'}"
        return text + (f" -> into {', '.join(ins)}" if ins else "")


def connected_components(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A component label per element of ``range(n)`` joined by the edges ``rows[k]-cols[k]``
    (the smallest element of each component labels it). Vectorized hooking and pointer
    jumping (Shiloach-Vishkin): roots hook onto the smaller root across each edge, then every
    element jumps to its root; pointers only go down, so no cycle forms."""
    parent = np.arange(n)
    while True:
        pr, pc = parent[rows], parent[cols]
        if (pr == pc).all():
            return parent
        lo = np.minimum(pr, pc)
        np.minimum.at(parent, pr, lo)
        np.minimum.at(parent, pc, lo)
        while True:
            nxt = parent[parent]
            if (nxt == parent).all():
                break
            parent = nxt


class ChannelDependency:
    """The channel dependency graph of ``graph`` (read-only: pruning builds a new graph)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.values: dict[int, Value] = {}
        self.offsets: dict[Dim, int] = {}
        self.sizes: dict[Dim, int] = {}
        total = 0
        for v in graph.values():
            self.values[v.uid] = v
            for ax, d in enumerate(v.type.shape):
                if isinstance(d, int):
                    self.offsets[(v.uid, ax)] = total
                    self.sizes[(v.uid, ax)] = d
                    total += d
        self.n_elements = total
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        # element index arrays and why they are blocked
        self._blocked: list[tuple[np.ndarray, str]] = []
        # element index arrays an op reduces over (a norm's hidden size) and which op
        self._reduced: list[tuple[np.ndarray, str]] = []
        for v in graph.inputs:
            self._block_value(v, f"graph input {v.name or v.uid}")
        for v in graph.outputs:
            self._block_value(v, "graph output")
        for node in graph.nodes:
            if node.op != "const":
                self._link_node(node)
        self._components()

    # -- building ---------------------------------------------------------------------------

    def elements(self, v: Value, axis: int) -> np.ndarray | None:
        """The element indices of ``v``'s ``axis`` (None when that dim is symbolic)."""
        key = (v.uid, axis)
        if key not in self.offsets:
            return None
        return self.offsets[key] + np.arange(self.sizes[key])

    def _block_value(self, v: Value, why: str) -> None:
        for ax in range(v.type.rank):
            e = self.elements(v, ax)
            if e is not None:
                self._blocked.append((e, why))

    def _port(self, node: Node, port: PortAxis) -> tuple[Value, int] | None:
        side, i, ax = port
        vals = node.inputs if side == "in" else node.outputs
        if not 0 <= i < len(vals) or not 0 <= ax < vals[i].type.rank:
            return None
        return vals[i], ax

    def _link_node(self, node: Node) -> None:
        opdef = node.opdef
        why = f"{node.op} ({layer_name(node)})" if node.provenance.origin else node.op
        in_types = [v.type for v in node.inputs]
        try:
            groups = opdef.channel_groups(in_types, node.attrs)
            hook = opdef.prune
            links = (hook.links(in_types, [v.type for v in node.outputs], node.attrs)
                     if hook is not None and hook.links is not None else [])
            reduced = (hook.reduces(in_types, node.attrs)
                       if hook is not None and hook.reduces is not None else [])
        except (IRError, ValueError, KeyError, IndexError, TypeError):
            # hooks that cannot read this node: it blocks pruning
            groups, links, reduced = None, [], []
        # per port axis, which of its elements the op says how to prune
        covered: dict[tuple[Value, int], np.ndarray] = {}
        for vals in (node.inputs, node.outputs):
            for v in vals:
                for ax in range(v.type.rank):
                    if (v.uid, ax) in self.offsets:
                        covered[(v, ax)] = np.zeros(self.sizes[(v.uid, ax)], bool)
        if groups is None:
            for (v, ax), _ in covered.items():
                self._blocked.append((self.elements(v, ax), why))
            return
        for group in groups:
            ports = [p for p in (self._port(node, p) for p in sorted(group)) if p is not None]
            if any((v.uid, ax) not in self.offsets for v, ax in ports):
                continue  # a symbolic axis (the batch): never pruned, nothing to link
            sizes = {self.sizes[(v.uid, ax)] for v, ax in ports}
            if len(sizes) != 1:
                continue
            first = self.elements(*ports[0])
            for v, ax in ports:
                self._rows.append(first)
                self._cols.append(self.elements(v, ax))
                covered[(v, ax)][:] = True
        for port in reduced:
            pa = self._port(node, port)
            if pa is not None and (pa[0].uid, pa[1]) in self.offsets:
                self._reduced.append((self.elements(*pa), why))
        for a, a_idx, b, b_idx in links:
            pa = self._port(node, a)
            if pa is None or (pa[0].uid, pa[1]) not in self.offsets:
                continue
            covered[pa][a_idx] = True
            if b is None:
                continue
            pb = self._port(node, b)
            if pb is None or (pb[0].uid, pb[1]) not in self.offsets:
                continue
            covered[pb][b_idx] = True
            self._rows.append(self.elements(*pa)[a_idx])
            self._cols.append(self.elements(*pb)[b_idx])
        for (v, ax), mask in covered.items():
            if not mask.all():
                self._blocked.append((self.elements(v, ax)[~mask], why))

    def _components(self) -> None:
        n = self.n_elements
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        cols = np.concatenate(self._cols) if self._cols else np.zeros(0, np.int64)
        self.labels = connected_components(n, rows, cols)
        blocked: dict[int, set[str]] = defaultdict(set)
        for idx, why in self._blocked:
            for label in np.unique(self.labels[idx]):
                blocked[int(label)].add(why)
        reduced: dict[int, set[str]] = defaultdict(set)
        for idx, why in self._reduced:
            for label in np.unique(self.labels[idx]):
                reduced[int(label)].add(why)
        # which (value, axis) rows each channel touches: its group's signature
        dim_of = np.empty(n, np.int64)
        dims = list(self.offsets)
        for k, key in enumerate(dims):
            o = self.offsets[key]
            dim_of[o:o + self.sizes[key]] = k
        pairs = np.unique(np.stack([self.labels, dim_of], axis=1), axis=0)
        touches: dict[int, list[int]] = defaultdict(list)
        for label, d in pairs.tolist():
            touches[label].append(d)
        by_signature: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for label, ds in touches.items():
            by_signature[tuple(ds)].append(label)
        weight_dims = self._weight_dims()
        self.groups: list[ChannelGroup] = []
        for sig, labels in by_signature.items():
            members = [w for d in sig for w in weight_dims.get(dims[d], [])]
            if not members:
                continue  # no layer owns these channels (spatial axes, the batch)
            why = sorted(set().union(*(blocked.get(label, set()) for label in labels)))
            channels = np.array(sorted(labels))
            self.groups.append(ChannelGroup(
                len(self.groups), channels,
                [(self.values[dims[d][0]], dims[d][1]) for d in sig], members, why,
                self._width(members, channels),
                sorted(set().union(*(reduced.get(label, set()) for label in labels)))))

    def _width(self, members: list[WeightMember], channels: np.ndarray) -> int:
        """Elements per channel on the producing layers' output axes (the fewest over them;
        the consuming layers' input axes where no layer produces the channels)."""
        outs = [w for w in members if w.role == "out"] or members
        counts = [int(np.isin(self.label_of(w.weight, w.axis), channels).sum()) for w in outs]
        return max(1, min(counts) // len(channels))

    def _weight_dims(self) -> dict[Dim, list[WeightMember]]:
        out: dict[Dim, list[WeightMember]] = defaultdict(list)
        for node in self.graph.nodes:
            role = node.opdef.weight
            if role is None or role.input >= len(node.inputs):
                continue
            w = node.inputs[role.input]
            if not w.is_const or w.type.rank < 2:
                continue
            o, i = role.axes(w.type.rank)
            out[(w.uid, o)].append(WeightMember(node, w, o, "out"))
            out[(w.uid, i)].append(WeightMember(node, w, i, "in"))
        return out

    # -- reading ------------------------------------------------------------------------------

    def label_of(self, v: Value, axis: int) -> np.ndarray | None:
        """The channel (component label) of each element of ``v``'s ``axis``."""
        e = self.elements(v, axis)
        return None if e is None else self.labels[e]

    def blocked_ops(self) -> list[str]:
        """The ops that keep some layer's channels whole, each once (the model's interface,
        kept by design, is not one)."""
        return sorted({w for g in self.groups if g.size > 1 for w in g.blocked_by
                       if not w.startswith(INTERFACE)})


def channel_dependency(graph: Graph) -> ChannelDependency:
    """The channel dependency graph of ``graph``."""
    return ChannelDependency(graph)


__all__ = ["ChannelDependency", "ChannelGroup", "WeightMember", "channel_dependency",
           "layer_name"]
