"""prune-channels: structured pruning over the channel dependency graph.

For each prunable group (``dependency.py``) the channels with the lowest importance go, from
every member at once: the producing layers' output channels (weight rows, biases), the
BatchNorm parameters, the residual adds and concats they reach, the next layers' input
channels (a flatten's blocks of features included). ``ratio`` of each group's channels go,
the count kept rounded up to a multiple of ``round-to`` (never below ``round-to``, or all of
them when a group has fewer; a group whose channels are blocks of features, attention heads,
rounds its features: 32-wide heads are multiples of 8 whatever their count); a layer named in
``ignore`` keeps its output channels. ``rtinfer.prune`` also takes a ratio per group kind
(``ChannelGroup.kind``: conv ``channels``, ``ffn`` neurons, attention ``heads``, and the
``hidden`` size a LayerNorm normalizes, which a plain ratio leaves whole).

Importance of a channel combines every member weight of its group:

    l1:        sum |w| over the channel's slices of every member weight
    l2:        sqrt(sum w^2) over the same slices
    bn-scale:  sum |gamma| of the group's normalizations (their input named gamma); a group
               without one falls back to l2
    taylor:    sum |w * dL/dw| (first-order Taylor estimate of the loss change when the
               channel goes; needs data: ``rtinfer.prune(importance="taylor", data=...)``)
    activation: sum |w_ij| * ||x_j||_2 over the input columns j of the layers reading the
               channel (Wanda's output-contribution score, structured: how much the channel
               adds to the next layers' outputs on data; needs data, and no labels or
               logits, so it serves encoders: ``rtinfer.prune(importance="activation")``)

The graph is rebuilt through the Rewriter: sliced constants (``rw.const``, names kept), and
every node a pruned channel touches re-created with its attributes updated by its op's
``PruneHook.attrs`` (reshape shapes, split sizes, slice bounds, depthwise groups). Numerics:
pruning channels whose weights are all zero leaves the outputs exactly as they were.
Stats: groups, pruned-groups, channels-removed, blocked-groups.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rtinfer.errors import IRError, PassError, PruneError
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager import Option, PassContext, graph_pass
from rtinfer.passes.pruning.dependency import ChannelDependency, ChannelGroup, layer_name
from rtinfer.rewrite import Rewriter
from rtinfer.rewrite.events import RewriteLog

IMPORTANCE = ("l1", "l2", "bn-scale", "taylor", "activation")
DATA_IMPORTANCE = ("taylor", "activation")  # measured on data by rtinfer.prune
KINDS = ("channels", "ffn", "heads", "hidden")  # ChannelGroup.kind: keys of a per-kind ratio
# a weight's data-driven saliency per element, by the weight's value uid, measured by
# rtinfer.prune: |w * dL/dw| summed over the data ("taylor"), or |w_ij| * ||x_j|| with x the
# layer's input on the data ("activation", only on the weights' input axes)
Saliency = dict[int, np.ndarray]


@dataclass
class GroupResult:
    """What pruning did to one group."""

    group: str
    channels_before: int
    channels_after: int
    blocked_by: list[str] = field(default_factory=list)
    ignored: bool = False
    params_before: int = 0
    params_after: int = 0
    kind: str = "channels"  # ChannelGroup.kind: "channels", "ffn", "heads" or "hidden"


@dataclass
class PruneResult:
    groups: list[GroupResult]
    blocked_ops: list[str]

    @property
    def removed(self) -> int:
        return sum(g.channels_before - g.channels_after for g in self.groups)


def _norms(data: np.ndarray, axis: int, importance: str) -> np.ndarray:
    """Per-index sum |w| (l1) or sum w^2 (l2, rooted later) of ``data`` along ``axis``."""
    moved = np.moveaxis(np.asarray(data, np.float64), axis, 0).reshape(data.shape[axis], -1)
    return np.abs(moved).sum(1) if importance == "l1" else (moved ** 2).sum(1)


def group_importance(dep: ChannelDependency, group: ChannelGroup, importance: str,
                     saliency: Saliency | None = None) -> np.ndarray:
    """One score per channel of ``group`` (in ``group.channels`` order), higher = keep."""
    if importance not in IMPORTANCE:
        raise PruneError(f"unknown importance {importance!r} (choose one of "
                         f"{', '.join(IMPORTANCE)})")
    if importance in DATA_IMPORTANCE and saliency is None:
        raise PruneError(f"{importance} importance needs data: rtinfer.prune(model, ..., "
                         f"importance={importance!r}, data=batches) measures it")
    index = {int(label): k for k, label in enumerate(group.channels)}
    score = np.zeros(group.size)

    def add(v: Value, axis: int, per_index: np.ndarray) -> None:
        # a row may hold channels of several groups (a concat's output): take this group's
        pos = np.array([index.get(int(lb), -1) for lb in dep.label_of(v, axis)])
        mine = pos >= 0
        np.add.at(score, pos[mine], per_index[mine])

    if importance == "bn-scale":
        for v, axis in group.dims:
            for node, i in v.uses:
                names = node.opdef.inputs
                gamma = next((k for k, n in enumerate(names) if n.rstrip("?") == "gamma"), None)
                if gamma is not None and i == gamma and v.is_const:
                    add(v, axis, np.abs(np.asarray(v.const_data, np.float64)))
        if score.any():
            return score
        importance = "l2"
    seen: set[tuple[int, int]] = set()
    for w in group.weights:
        if (w.weight.uid, w.axis) in seen or w.weight.const_data is None:
            continue
        seen.add((w.weight.uid, w.axis))
        if importance in DATA_IMPORTANCE:
            # activation scores the layers reading the channel: what it adds to their outputs
            if saliency is not None and w.weight.uid in saliency and (
                    importance == "taylor" or w.role == "in"):
                add(w.weight, w.axis, _norms(saliency[w.weight.uid], w.axis, "l1"))
            continue
        add(w.weight, w.axis, _norms(w.weight.const_data, w.axis, importance))
    if importance == "activation" and not score.any():  # no layer read it on the data
        return group_importance(dep, group, "l2")
    return np.sqrt(score) if importance == "l2" else score


def kept_count(n: int, ratio: float, round_to: int) -> int:
    """Channels a group of ``n`` keeps: n * (1 - ratio), rounded up to a multiple of
    ``round_to`` and at least ``round_to`` (all n when n is smaller)."""
    keep = n - int(np.floor(n * ratio + 1e-9))
    keep = -(-keep // round_to) * round_to
    return min(n, max(keep, round_to, 1))


def _ignored(group: ChannelGroup, ignore: Collection[str]) -> bool:
    return any(w.role == "out" and any(w.name == i or w.name.startswith(i + ".")
                                       for i in ignore) for w in group.weights)


def group_ratios(ratio: float | Mapping[str, float]) -> dict[str, float]:
    """The fraction removed per group kind (``ChannelGroup.kind``): one float for every kind
    but "hidden" (a normalization's hidden size stays whole unless named: pruning it is never
    exact), or a mapping such as ``{"ffn": 0.5, "heads": 0.34}`` whose missing kinds stay
    whole."""
    if isinstance(ratio, Mapping):
        unknown = sorted(set(ratio) - set(KINDS))
        if unknown:
            raise PruneError(f"ratio: unknown group kind(s) {', '.join(map(repr, unknown))} "
                             f"(kinds: {', '.join(KINDS)})")
        ratios = {k: ratio.get(k, 0.0) for k in KINDS}
    else:
        ratios = {**dict.fromkeys(KINDS, ratio), "hidden": 0.0}
    for kind, r in ratios.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            raise PruneError(f"ratio must be in [0, 1), got {r!r}"
                             + (f" for {kind!r}" if isinstance(ratio, Mapping) else ""))
    return {k: float(r) for k, r in ratios.items()}


def select_channels(dep: ChannelDependency, ratio: float | Mapping[str, float], round_to: int,
                    importance: str, ignore: Collection[str] = (),
                    saliency: Saliency | None = None
                    ) -> tuple[np.ndarray, list[GroupResult]]:
    """The channels (component labels) to remove, and what happens per group."""
    ratios = group_ratios(ratio)
    if round_to < 1:
        raise PruneError(f"round_to must be at least 1, got {round_to!r}")
    removed: list[np.ndarray] = []
    results = []
    for g in dep.groups:
        if g.size <= 1:
            continue
        res = GroupResult(g.describe(), g.size, g.size, list(g.blocked_by), kind=g.kind)
        results.append(res)
        if not g.prunable or ratios[g.kind] == 0.0:
            continue
        if _ignored(g, ignore):
            res.ignored = True
            continue
        # round_to counts features: a head of 32 features is a multiple of 8 by itself
        keep = kept_count(g.size, ratios[g.kind], round_to // math.gcd(round_to, g.width))
        order = np.argsort(-group_importance(dep, g, importance, saliency), kind="stable")
        drop = g.channels[order[keep:]]
        removed.append(drop)
        res.channels_after = g.size - len(drop)
    return (np.concatenate(removed) if removed else np.zeros(0, np.int64)), results


def kept_indices(graph: Graph, dep: ChannelDependency, removed: np.ndarray
                 ) -> dict[tuple[int, int], np.ndarray]:
    """(value uid, axis) -> the indices that stay, for every row the removal shrinks."""
    gone = np.zeros(dep.labels.max() + 1 if dep.labels.size else 0, bool)
    gone[removed] = True
    kept: dict[tuple[int, int], np.ndarray] = {}
    for v in graph.values():
        for ax in range(v.type.rank):
            labels = dep.label_of(v, ax)
            if labels is not None and gone[labels].any():
                kept[(v.uid, ax)] = np.flatnonzero(~gone[labels])
    return kept


def group_params(group: ChannelGroup, kept: dict[tuple[int, int], np.ndarray]
                 ) -> tuple[int, int]:
    """(before, after) parameters of the constants a group's channels run through (a weight
    between two groups counts in both)."""
    before = after = 0
    seen: set[int] = set()
    for v, _ in group.dims:
        if not v.is_const or v.uid in seen:
            continue
        seen.add(v.uid)
        shape = [d if isinstance(d, int) else 0 for d in v.type.shape]
        before += int(np.prod(shape))
        after += int(np.prod([len(kept[(v.uid, ax)]) if (v.uid, ax) in kept else d
                              for ax, d in enumerate(shape)]))
    return before, after


def apply_pruning(graph: Graph, dep: ChannelDependency, removed: np.ndarray,
                  rw: Rewriter) -> int:
    """Remove the channels ``removed`` (component labels of ``dep``) from every tensor they
    touch; returns the number of nodes rebuilt. The graph verifies afterwards."""
    if removed.size == 0:
        return 0
    kept = kept_indices(graph, dep, removed)
    new: dict[int, Value] = {}  # old value uid -> its pruned replacement
    rebuilt: list[Node] = []
    for node in list(graph.nodes):
        ports = {(side, i, ax): kept[(v.uid, ax)]
                 for side, vals in (("in", node.inputs), ("out", node.outputs))
                 for i, v in enumerate(vals) for ax in range(v.type.rank)
                 if (v.uid, ax) in kept}
        if not ports:
            continue
        rw.begin(node, "slice-channels")
        if node.op == "const":
            data = node.out.const_data
            for (_, _, ax), idx in ports.items():
                data = np.take(data, idx, axis=ax)
            out = rw.const(data, data.dtype)
            out.name = node.out.name
            outs = [out]
        else:
            hook = node.opdef.prune
            attrs = dict(node.attrs)
            if hook is not None and hook.attrs is not None:
                attrs = hook.attrs([v.type for v in node.inputs], attrs, ports)
            inputs = [new.get(v.uid, v) for v in node.inputs]
            try:
                outs = rw.node(node.op, *inputs, **attrs).outputs
            except IRError as e:
                raise PassError(f"prune-channels: {node.op} ({layer_name(node)}) does not "
                                f"take its pruned inputs ({e}); its op-table channel facts or "
                                f"prune hook disagree with its type inference") from None
        for old, nv in zip(node.outputs, outs, strict=True):
            expect = tuple(len(kept[(old.uid, ax)]) if (old.uid, ax) in kept else d
                           for ax, d in enumerate(old.type.shape))
            if nv.type.shape != expect:
                raise PassError(f"prune-channels: {node.op} ({layer_name(node)}) gives "
                                f"{nv.type} after pruning, expected shape {list(expect)}: "
                                f"its op-table channel facts disagree")
            nv.name = nv.name or old.name
            new[old.uid] = nv
            if nv.type == old.type:
                rw.replace(old, nv)
        rebuilt.append(node)
    rw.begin(None, "slice-channels")
    for node in reversed(rebuilt):
        rw.erase(node)
    verify(graph)
    return len(rebuilt)


def prune_graph(graph: Graph, *, ratio: float | Mapping[str, float], round_to: int = 1,
                importance: str = "l2", ignore: Sequence[str] = (), log: RewriteLog | None = None,
                pass_name: str = "prune-channels",
                saliency: Saliency | None = None) -> PruneResult:
    """Prune ``graph`` in place; what each group kept and which ops blocked pruning."""
    dep = ChannelDependency(graph)
    removed, results = select_channels(dep, ratio, round_to, importance, ignore,
                                       saliency=saliency)
    kept = kept_indices(graph, dep, removed)
    for res, g in zip(results, [g for g in dep.groups if g.size > 1], strict=True):
        res.params_before, res.params_after = group_params(g, kept)
    apply_pruning(graph, dep, removed, Rewriter(graph, log, pass_name))
    return PruneResult(results, dep.blocked_ops())


@graph_pass(
    "prune-channels",
    summary="structured channel pruning over the channel dependency graph (lowest importance "
            "first, every member of a group sliced alike)",
    options={"ratio": Option(float, 0.5, "fraction of each group's channels removed"),
             "round-to": Option(int, 1, "channel counts kept as multiples of this"),
             "importance": Option(str, "l2", "channel score (taylor needs data: use "
                                  "rtinfer.prune)", choices=IMPORTANCE[:3]),
             "ignore": Option(str, "", "comma-separated layers whose output channels stay")})
def prune_channels(graph: Graph, ctx: PassContext) -> None:
    o = ctx.options
    ignore = [s.strip() for s in o["ignore"].split(",") if s.strip()]
    result = prune_graph(graph, ratio=o["ratio"], round_to=o["round-to"],
                         importance=o["importance"], ignore=ignore, log=ctx)
    ctx.stat("groups", len(result.groups))
    ctx.stat("pruned-groups", sum(g.channels_after < g.channels_before for g in result.groups))
    ctx.stat("channels-removed", result.removed)
    ctx.stat("blocked-groups", sum(bool(g.blocked_by) for g in result.groups))


__all__ = ["DATA_IMPORTANCE", "IMPORTANCE", "KINDS", "GroupResult", "PruneResult", "Saliency",
           "apply_pruning",
           "group_importance", "group_params", "group_ratios", "kept_count", "kept_indices",
           "prune_channels", "prune_graph", "select_channels"]
