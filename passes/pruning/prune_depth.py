"""prune-depth: drop whole residual blocks (a CNN's blocks, a transformer's sublayers).

A residual block is a region of the graph from an entry value ``a`` to an exit value ``b`` of
the same type, ``b = post(a + branch(a))``, where ``post`` is a chain of weightless ops over
the stream (the ReLU after a ResNet block, the LayerNorm of a post-LN transformer):

    every node of the region reads only ``a``, constants, values made inside the region, or
    side values computed without ``a`` (a transformer's attention mask); nothing made inside
    it but ``b`` is read outside; and it holds an ``add`` that reads ``a`` itself (the skip)

Dropping the block makes its residual path the identity: every use of ``b`` reads ``a``.
Where the branch is exactly zero and ``post`` leaves ``a`` as it is (a ReLU after a ReLU),
the outputs stay exactly as they were. A post-LN transformer layer is two blocks (attention,
then the FFN), each with its LayerNorm.

Importance: Block Influence (ShortGPT, Men et al. 2024), ``1 - cos(a, b)`` per sample, mean
over the data: a block that barely turns its input goes first. The pass measures it with the
reference interpreter on seeded random inputs; ``rtinfer.prune(depth=...)`` on the user's
data (or the example inputs). Stats: blocks, blocks-removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rtinfer.errors import PruneError
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.interpreter import interpret_values, random_inputs
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager import Option, PassContext, graph_pass
from rtinfer.passes.pruning.dependency import layer_name
from rtinfer.rewrite import Rewriter
from rtinfer.rewrite.events import RewriteLog


@dataclass
class ResidualBlock:
    """One residual block: entry ``a``, exit ``b`` and the nodes between (graph order)."""

    entry: Value
    exit: Value
    nodes: list[Node]

    @property
    def name(self) -> str:
        """The common prefix of its layers' names (``layer2.1``, ``encoder.layer.3``)."""
        names = [layer_name(n).split(".") for n in self.nodes if n.opdef.weight is not None]
        names = names or [layer_name(n).split(".") for n in self.nodes]
        common: list[str] = []
        for parts in zip(*names, strict=False):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        return ".".join(common) or layer_name(self.nodes[-1])


def _forward(v: Value) -> set[int]:
    """The ids of the nodes that read ``v``, directly or not."""
    seen: set[int] = set()
    stack = list(v.users)
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        for out in n.outputs:
            stack.extend(out.users)
    return seen


def _exit_of(add: Node, graph: Graph) -> Value:
    """The add's output, extended along single-use weightless ops over the stream that keep
    its type (a ReLU, a post-LN LayerNorm): the block ends where the stream forks."""
    b = add.out
    outputs = {id(v) for v in graph.outputs}
    while id(b) not in outputs and len(b.users) == 1:
        n = b.users[0]
        others = [v for v in n.inputs if v is not b]
        if (n.opdef.weight is not None or len(n.outputs) != 1 or n.out.type != b.type
                or not all(v.is_const for v in others)):
            break
        b = n.out
    return b


def _region(graph: Graph, a: Value, b: Value, after_a: set[int]) -> list[Node] | None:
    """The nodes from ``a`` to ``b`` when they form a block, else None."""
    before_b: set[int] = set()
    stack = [b.producer]
    while stack:
        n = stack.pop()
        if n is None or id(n) in before_b or id(n) not in after_a:
            continue
        before_b.add(id(n))
        stack.extend(v.producer for v in n.inputs)
    nodes = [n for n in graph.nodes if id(n) in before_b]
    outputs = {id(v) for v in graph.outputs}
    for n in nodes:
        for v in n.inputs:
            made_after_a = v.producer is not None and id(v.producer) in after_a
            if made_after_a and id(v.producer) not in before_b:
                return None  # reads a value of a parallel path from a: not one block
        for v in n.outputs:
            if v is not b and (id(v) in outputs or any(id(u) not in before_b
                                                         for u in v.users)):
                return None  # an inner value escapes
    return nodes


def find_blocks(graph: Graph) -> list[ResidualBlock]:
    """The graph's residual blocks in graph order (non-overlapping: the innermost where they
    nest)."""
    blocks: list[ResidualBlock] = []
    taken: set[int] = set()
    for node in graph.nodes:
        if node.op != "add" or len(node.inputs) != 2 or id(node) in taken:
            continue
        for a in node.inputs:
            other = node.inputs[1] if a is node.inputs[0] else node.inputs[0]
            if a.is_const or other.producer is None or a.type != node.out.type:
                continue
            after_a = _forward(a)
            if id(other.producer) not in after_a:
                continue  # the other input does not come from a: no branch
            b = _exit_of(node, graph)
            nodes = _region(graph, a, b, after_a)
            if nodes and not taken & {id(n) for n in nodes}:
                blocks.append(ResidualBlock(a, b, nodes))
                taken |= {id(n) for n in nodes}
                break
    return blocks


def block_influence(blocks: Sequence[ResidualBlock],
                    values: Callable[[list[Value]], list[list[np.ndarray]]]) -> np.ndarray:
    """``1 - cos(entry, exit)`` per block, each sample flattened, mean over samples and
    batches; ``values(vs)`` gives, per batch, the arrays of ``vs``."""
    vs = [v for blk in blocks for v in (blk.entry, blk.exit)]
    total, count = np.zeros(len(blocks)), 0
    for arrays in values(vs):
        for k in range(len(blocks)):
            a, b = (np.asarray(t, np.float64) for t in arrays[2 * k:2 * k + 2])
            a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
            na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
            cos = (a * b).sum(1) / np.maximum(na * nb, 1e-30)
            total[k] += (1 - cos).sum()
        count += len(arrays[0]) if arrays else 0
    if count == 0:
        raise PruneError("depth pruning measures its blocks on data, and got no batches")
    return total / count


def depth_count(n_blocks: int, depth: int | float) -> int:
    """Blocks to drop of ``n_blocks``: ``depth`` itself (an int), or that fraction (a float
    in (0, 1), rounded down)."""
    if isinstance(depth, bool) or not isinstance(depth, (int, float)):
        raise PruneError(f"depth must be a number of blocks or a fraction, got {depth!r}")
    if isinstance(depth, float):
        if not 0.0 <= depth < 1.0:
            raise PruneError(f"depth as a fraction of the blocks must be in [0, 1), got "
                             f"{depth!r}")
        return int(np.floor(n_blocks * depth + 1e-9))
    if depth < 0:
        raise PruneError(f"depth must be >= 0 blocks, got {depth}")
    if depth > n_blocks:
        raise PruneError(f"depth={depth}: the model has {n_blocks} residual block(s)")
    return depth


def remove_blocks(graph: Graph, blocks: Sequence[ResidualBlock], rw: Rewriter) -> None:
    """Make each block's residual path the identity and erase its nodes (and the constants
    only they read). Last block first: a later block's entry is an earlier one's exit."""
    for blk in sorted(blocks, key=lambda b: -graph.nodes.index(b.nodes[-1])):
        rw.begin(blk.exit.producer, "drop-block")
        rw.replace(blk.exit, blk.entry)
        consts = {id(v.producer): v.producer for n in blk.nodes for v in n.inputs
                  if v.is_const}
        for n in reversed(blk.nodes):
            rw.erase(n)
        for c in consts.values():
            rw.erase_if_dead(c)
    verify(graph)


@dataclass
class DepthResult:
    blocks: list[str]  # every block, in graph order
    influence: list[float]
    removed: list[str]


def prune_depth_graph(graph: Graph, depth: int | float, influence: np.ndarray | None = None,
                      log: RewriteLog | None = None, pass_name: str = "prune-depth"
                      ) -> DepthResult:
    """Drop the ``depth`` least influential blocks of ``graph`` in place (``influence``: one
    score per ``find_blocks`` block; default measured on seeded random inputs)."""
    blocks = find_blocks(graph)
    n = depth_count(len(blocks), depth)
    if influence is None:
        inputs = random_inputs(graph)

        def values(vs: list[Value]) -> list[list[np.ndarray]]:
            got = interpret_values(graph, inputs)
            return [[got[v] for v in vs]]

        influence = block_influence(blocks, values) if blocks and n else np.zeros(len(blocks))
    order = np.argsort(influence, kind="stable")[:n]
    gone = [blocks[k] for k in sorted(order)]
    names = [b.name for b in blocks]
    remove_blocks(graph, gone, Rewriter(graph, log, pass_name))
    return DepthResult(names, [float(s) for s in influence], [b.name for b in gone])


@graph_pass(
    "prune-depth",
    summary="drop the residual blocks that turn their input least (block influence on "
            "seeded random inputs): their residual path becomes the identity",
    options={"depth": Option(int, 1, "number of residual blocks removed")})
def prune_depth(graph: Graph, ctx: PassContext) -> None:
    result = prune_depth_graph(graph, ctx.options["depth"], log=ctx)
    ctx.stat("blocks", len(result.blocks))
    ctx.stat("blocks-removed", len(result.removed))


__all__ = ["DepthResult", "ResidualBlock", "block_influence", "depth_count", "find_blocks",
           "prune_depth", "prune_depth_graph", "remove_blocks"]
