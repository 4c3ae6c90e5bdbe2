"""``rtinfer.prune`` and ``rtinfer.distill``: a smaller model, then its accuracy back.

    pruned = rtinfer.prune(model, example_inputs=x, ratio=0.5, importance="l2", round_to=8)
    print(pruned.report())                       # MACs, parameters, per group, blocked ops
    student = rtinfer.distill(pruned, teacher=model, data=batches, steps=600)
    fast = rtinfer.compile(student, example_inputs=x)

``prune`` captures the model into the IR, runs the ``prune-channels`` pass (the channel
dependency graph of ``passes/pruning/``: one generic slicer for every op the frontends
capture) and builds the result with the torch backend with ``trainable=True``: a
``torch.fx.GraphModule`` whose constants are parameters, wrapped in ``PrunedModel`` (an
``nn.Module``: eager-runnable, trainable, and captured again by ``rtinfer.compile``). BatchNorm
keeps its inference form; its running statistics are frozen (not trained).

``distill`` trains the student on the user's batches with Hinton's logit distillation,
``KL(softmax(t / T) || softmax(s / T)) * T^2``, or on hidden states (``loss="hidden"``: the
MSE between the student's and the teacher's ``last_hidden_state``, or every layer's
``hidden_states``, MiniLM-style), mixed with cross-entropy when the batches carry labels, with
Adam and a progress bar.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rtinfer.backends.torch_backend import build_module
from rtinfer.errors import CaptureError, PruneError
from rtinfer.frontends import capture
from rtinfer.frontends.torch_frontend import unflatten_outputs
from rtinfer.ir.graph import Graph
from rtinfer.ir.interpreter import bind_dims, eval_dim
from rtinfer.ir.types import TensorType
from rtinfer.passes.pruning.dependency import ChannelDependency
from rtinfer.passes.pruning.prune_channels import (
    DATA_IMPORTANCE,
    IMPORTANCE,
    GroupResult,
    group_ratios,
    prune_graph,
)
from rtinfer.passes.pruning.prune_depth import (
    DepthResult,
    block_influence,
    depth_count,
    find_blocks,
    prune_depth_graph,
)
from rtinfer.rewrite import Rewriter

# -- the report -------------------------------------------------------------------------------


def _macs(graph: Graph, args: tuple) -> int:
    """Multiply-adds of ``graph`` at the sizes of ``args`` (the op table's cost hooks read a
    view of each node whose symbolic dims are bound to them)."""
    try:
        env = bind_dims([v.type for v in graph.inputs],
                        [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)])
    except ValueError:
        env = {}

    def view(v: Any) -> SimpleNamespace:
        t = v.type
        return SimpleNamespace(type=TensorType(t.dtype, tuple(
            d if isinstance(d, int) else eval_dim(d, env) or 0 for d in t.shape)))

    total = 0
    for n in graph.nodes:
        cost = n.opdef.cost
        if cost is not None:
            outs = [view(v) for v in n.outputs]
            total += cost(SimpleNamespace(op=n.op, attrs=n.attrs, outputs=outs, out=outs[0],
                                          inputs=[view(v) for v in n.inputs]))
    return total // 2


def _params(graph: Graph) -> int:
    return sum(int(np.prod(n.out.type.shape)) for n in graph.nodes
               if n.op == "const" and n.out.type.dtype.is_float)


@dataclass
class PruneReport:
    """What ``prune`` did: MACs (at the example inputs' sizes) and parameters before and
    after, per group, and the ops that kept some layer's channels whole."""

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    ratio: float | dict[str, float]
    importance: str
    groups: list[GroupResult] = field(default_factory=list)
    blocked_ops: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # residual blocks found (depth=...)
    blocks_removed: list[str] = field(default_factory=list)  # those dropped, graph order

    def __str__(self) -> str:
        def pct(a: int, b: int) -> str:
            return f"{100 * a / b:.1f}%" if b else "-"

        what = (", ".join(f"{r:g} of {k}" for k, r in self.ratio.items())
                if isinstance(self.ratio, Mapping) else f"{self.ratio:g} of each group's channels")
        lines = [f"pruned {what} by {self.importance}",
                 f"MACs:       {self.macs_before:,} -> {self.macs_after:,} "
                 f"({pct(self.macs_after, self.macs_before)})",
                 f"parameters: {self.params_before:,} -> {self.params_after:,} "
                 f"({pct(self.params_after, self.params_before)})",
                 "groups (kind, channels, parameters they run through):"]
        for g in self.groups:
            note = (" ignored" if g.ignored else
                    f" kept whole: {', '.join(g.blocked_by)}" if g.blocked_by else "")
            lines.append(f"  {g.kind:<8} {g.channels_before:>5} -> {g.channels_after:<5} "
                         f"{g.params_before:>10,} -> {g.params_after:<10,} {g.group}{note}")
        if self.blocked_ops:
            lines.append(f"blocked by: {', '.join(self.blocked_ops)}")
        if self.blocks_removed:
            lines.append(f"residual blocks removed ({len(self.blocks_removed)} of "
                         f"{len(self.blocks)}): {', '.join(self.blocks_removed)}")
        return "\n".join(lines)


# -- the pruned module ------------------------------------------------------------------------


def trainable_module(graph: Graph) -> torch.nn.Module:
    """The torch backend's trainable module of ``graph``, BatchNorm running statistics frozen:
    they are data, not weights (torch's batch_norm takes no gradient for them, and a trained
    variance could go negative), so they stay as the dense model measured them."""
    net = build_module(graph, trainable=True)
    names = net.rtinfer_constants
    for node in graph.nodes:
        if node.op == "batch_norm":
            for v in node.inputs[1:3]:
                p = getattr(net, names.get(id(v), ""), None)
                if isinstance(p, torch.nn.Parameter):
                    p.requires_grad_(False)
    return net


class PrunedModel(torch.nn.Module):
    """A pruned model: the IR it was built from (``ir``), the trainable module computing it
    (``net``, parameters named after the original weights) and what pruning did
    (``report()``). Call it like the original model: its tensors positionally or by the
    names of the model's inputs (``input_ids=..., attention_mask=...``)."""

    def __init__(self, graph: Graph, report: PruneReport):
        super().__init__()
        self.ir = graph
        self.net = trainable_module(graph)
        self._report = report

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        if kwargs:
            args = self._bind(args, kwargs)
        if len(args) != len(self.ir.inputs):
            raise PruneError(f"the pruned model takes {len(self.ir.inputs)} tensor input(s) "
                             f"positionally, got {len(args)}")
        for k, (a, v) in enumerate(zip(args, self.ir.inputs, strict=True)):
            shape = getattr(a, "shape", None)
            if shape is None or len(shape) != v.type.rank or any(
                    isinstance(d, int) and d != n for d, n in zip(v.type.shape, shape,
                                                                   strict=True)):
                raise PruneError(f"input {k} ({v.name or k}): expected {v.type}, got "
                                 f"{_describe(a)}")
        outs = self.net(*args)
        if "torch" in self.ir.meta:
            return unflatten_outputs(self.ir, list(outs))
        return outs[0] if len(outs) == 1 else outs

    def _bind(self, args: tuple, kwargs: dict[str, Any]) -> tuple:
        """The inputs in the IR's order from positional and named tensors."""
        names = [v.name for v in self.ir.inputs]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise PruneError(f"the pruned model has no input named {', '.join(unknown)} "
                             f"(its inputs: {', '.join(map(str, names))})")
        out = list(args)
        for name in names[len(args):]:
            if name not in kwargs:
                raise PruneError(f"the pruned model's input {name!r} is missing")
            out.append(kwargs.pop(name))
        if kwargs:
            raise PruneError(f"input(s) {', '.join(kwargs)} given both positionally and by "
                             f"name")
        return tuple(out)

    def report(self) -> PruneReport:
        return self._report

    def __deepcopy__(self, memo: dict) -> PrunedModel:
        # the IR's use lists make a deep recursion for copy.deepcopy (rtinfer.compile copies
        # the model it captures): clone it instead and re-key the module's constant names
        out = PrunedModel.__new__(PrunedModel)
        torch.nn.Module.__init__(out)
        out.ir = self.ir.clone()
        out.net = copy.deepcopy(self.net, memo)
        names = self.net.rtinfer_constants
        out.net.rtinfer_constants = {
            id(new): names[id(old)] for old, new in zip(self.ir.values(), out.ir.values(),
                                                        strict=True) if id(old) in names}
        out._report = copy.deepcopy(self._report, memo)
        out.train(self.training)
        return out

    def to_ir(self) -> Graph:
        """The pruned IR with the module's current (trained) weights as its constants."""
        graph = self.ir.clone()
        names = self.net.rtinfer_constants
        rw = Rewriter(graph, pass_name="prune")
        for old, node in zip(self.ir.nodes, list(graph.nodes), strict=True):
            name = names.get(id(old.out)) if old.op == "const" else None
            if name is None:
                continue
            rw.begin(node, "trained-weights")
            t = getattr(self.net, name).detach().cpu().numpy()
            new = rw.const(t, t.dtype)
            new.name = node.out.name
            rw.replace(node.out, new)
            rw.erase(node)
        return graph


def _describe(a: Any) -> str:
    if isinstance(a, torch.Tensor):
        return f"a tensor of shape {list(a.shape)} ({a.dtype})"
    return f"a {type(a).__name__}"


# -- prune ------------------------------------------------------------------------------------


def _as_tuple(example_inputs: Any) -> tuple | dict[str, Any]:
    """The example as positional inputs, or a dict of named ones (kept a dict: capture binds
    it to the model's forward by name)."""
    if example_inputs is None:
        raise PruneError("prune needs example_inputs (a tensor, a tuple of tensors or a dict "
                         "of named tensors) to capture the model")
    if isinstance(example_inputs, dict):
        return dict(example_inputs)
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _example_tensors(graph: Graph, args: tuple | dict[str, Any]) -> tuple:
    """The example's tensors in the order of the graph's inputs (named inputs by name)."""
    if not isinstance(args, dict):
        return args
    return tuple(args[v.name] for v in graph.inputs if v.name in args)


def _capture(model: Any, args: tuple | dict[str, Any], dynamic_dims: Any) -> Graph:
    """The model's IR; the batch axis of every tensor input symbolic where the model allows
    (so the pruned module takes any batch size), else the example's sizes."""
    if dynamic_dims is not None or not isinstance(model, torch.nn.Module):
        return capture(model, args, dynamic_dims=dynamic_dims)
    named = isinstance(args, dict)
    try:
        sig = inspect.signature(model.forward)
        bound = (sig.bind_partial(**args) if named else sig.bind_partial(*args)).arguments
    except (TypeError, ValueError):
        return capture(model, args)
    batch = {name: {0: "B"} for name, a in bound.items()
             if isinstance(a, torch.Tensor) and a.dim() > 0}

    def widen(a: Any) -> Any:
        # torch.export specializes a dim of size 1: a batch of one is captured as a batch of 2
        if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1:
            return a.expand(2, *a.shape[1:]).contiguous()
        return a

    wide = {k: widen(a) for k, a in args.items()} if named else tuple(map(widen, args))
    try:
        return capture(model, wide, dynamic_dims=batch or None)
    except CaptureError:
        return capture(model, args)  # the model fixes its batch size (x.view(2, -1), ...)


def _taylor_saliency(graph: Graph, data: Iterable[Any] | None) -> dict[int, np.ndarray]:
    """|w * dL/dw| per weight element (by the index of its const node in ``graph``), the
    gradients summed over ``data``; L is the cross-entropy of the first output against the
    batch's labels, or against the model's own predictions where a batch has none."""
    net = trainable_module(graph)
    names = net.rtinfer_constants
    seen = 0
    for batch in data or ():
        seen += 1
        inputs, labels = _split_batch(batch, len(graph.inputs), f"data batch {seen}")
        logits = net(*inputs)[0]
        if logits.dim() != 2:
            raise PruneError(f"taylor importance reads the model's first output as logits "
                             f"[N, classes]; it is {list(logits.shape)}")
        target = labels.long() if labels is not None else logits.detach().argmax(-1)
        F.cross_entropy(logits, target).backward()
    if seen == 0:
        raise PruneError("taylor importance needs data: pass data=[(inputs..., [labels]), ...]")
    out = {}
    for k, node in enumerate(graph.nodes):
        p = getattr(net, names.get(id(node.out), ""), None) if node.op == "const" else None
        if isinstance(p, torch.nn.Parameter) and p.grad is not None:
            out[k] = (p.detach() * p.grad).abs().numpy()
    return out


def _data_inputs(graph: Graph, batch: Any, where: str) -> tuple:
    """A data batch's input tensors in the order of the graph's inputs (a dict batch by name,
    its "labels" left out; a tuple's trailing labels left out)."""
    if isinstance(batch, dict):
        named, _ = _split_named(batch, where)
        missing = [v.name for v in graph.inputs if v.name not in named]
        if missing:
            raise PruneError(f"{where}: the model's input(s) {', '.join(map(str, missing))} "
                             f"are missing from the batch dict")
        return tuple(named[v.name] for v in graph.inputs)
    return _split_batch(batch, len(graph.inputs), where)[0]


def probe_values(graph: Graph, values: Sequence[Any], data: Iterable[Any]
                 ) -> Iterator[list[torch.Tensor]]:
    """Per data batch, the tensors of ``values`` (values of ``graph``): the outputs of a
    copy of the graph, built by the torch backend."""
    probe = graph.clone()
    twin = dict(zip(graph.values(), probe.values(), strict=True))
    probe.set_outputs([twin[v] for v in values])
    net = build_module(probe) if values else None
    for k, batch in enumerate(data):
        inputs = _data_inputs(graph, batch, f"data batch {k + 1}")
        if net is None:
            yield []
            continue
        with torch.no_grad():
            yield list(net(*inputs))


def _activation_saliency(graph: Graph, data: Iterable[Any] | None) -> dict[int, np.ndarray]:
    """(w_ij * ||x_j||_2)^2 per weight element (by the index of its const node in ``graph``),
    x_j the layer's input along the weight's input axis j over every position of ``data``
    (Wanda's score, squared: the group sums it over each channel's slices, which makes a
    channel's score the squared Frobenius norm ||W[:, j]||^2 ||x_j||^2 of exactly what it adds
    to the outputs of the layers reading it; summing |w_ij| ||x_j|| instead, an L1 norm of the
    column, kept an all-MiniLM-L6-v2 with half its FFN neurons at 0.765 held-out embedding
    cosine against 0.786). Positions a dict batch's ``attention_mask`` [N, S] zeroes, padding,
    are left out of x where x is [N, S, ...]. Layers whose input axis does not map one to one
    onto the weight's (a grouped convolution's) are left out."""
    dep = ChannelDependency(graph)
    index = {id(node): k for k, node in enumerate(graph.nodes)}
    readers = []  # (const node index, weight, its in-axis, the data input, its channel axis)
    for node in graph.nodes:
        role = node.opdef.weight
        if role is None or role.input >= len(node.inputs) or not node.inputs:
            continue
        w, x = node.inputs[role.input], node.inputs[0]
        if not w.is_const or x.is_const or w.type.rank < 2 or role.input == 0:
            continue
        w_in = dep.label_of(w, role.axes(w.type.rank)[1])
        axis = next((ax for ax in range(x.type.rank)
                     if np.array_equal(dep.label_of(x, ax), w_in)), None)
        if axis is not None:
            readers.append((index[id(w.producer)], w, role.axes(w.type.rank)[1], x, axis))
    sq: dict[int, np.ndarray] = {}
    batches = list(data or ())
    for batch, outs in zip(batches, probe_values(graph, [x for _, _, _, x, _ in readers],
                                                 batches), strict=True):
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        for (k, _, _, _, axis), a in zip(readers, outs, strict=True):
            a = a.detach().double()
            if isinstance(mask, torch.Tensor) and a.dim() > 2 and axis >= 2 \
                    and tuple(a.shape[:2]) == tuple(mask.shape):
                # padding tokens' states are not what the model computes on real text
                a = a * mask.to(a.dtype).reshape(*mask.shape, *(1,) * (a.dim() - 2))
            a = a.movedim(axis, 0)
            sq[k] = sq.get(k, 0.0) + (a.reshape(a.shape[0], -1) ** 2).sum(1).numpy()
    if not batches:
        raise PruneError("activation importance needs data: pass data=[inputs, ...] (tuples "
                         "of tensors or dicts of named tensors)")
    out = {}
    for k, w, in_axis, _, _ in readers:
        shape = [1] * w.type.rank
        shape[in_axis] = -1
        out[k] = np.asarray(w.const_data, np.float64) ** 2 * sq[k].reshape(shape)
    return out


def _prune_depth(dense: Graph, depth: int | float, data: Iterable[Any] | None, args: tuple
                 ) -> tuple[Graph, DepthResult]:
    """A copy of ``dense`` without its ``depth`` least influential residual blocks, their
    influence measured on ``data`` (else the example inputs) by the torch backend."""
    graph = dense.clone()
    blocks = find_blocks(graph)
    n = depth_count(len(blocks), depth)
    batches = list(data) if data is not None else [args]

    def values(vs: list[Any]) -> list[list[np.ndarray]]:
        return [[t.double().numpy() for t in outs]
                for outs in probe_values(graph, vs, batches)]

    influence = block_influence(blocks, values) if blocks and n else np.zeros(len(blocks))
    return graph, prune_depth_graph(graph, n, influence, pass_name="prune")


def _prune_once(graph: Graph, args: tuple, ratio: float | dict[str, float], importance: str,
                ignore: Sequence[str], round_to: int, saliency: dict[int, np.ndarray] | None,
                dense: Graph, depth: DepthResult | None) -> tuple[Graph, PruneReport]:
    """Prune the channels of a copy of ``graph`` (``dense`` with ``depth``'s blocks gone)."""
    pruned = graph.clone()
    by_uid = None if saliency is None else {
        node.out.uid: saliency[k] for k, node in enumerate(pruned.nodes) if k in saliency}
    result = prune_graph(pruned, ratio=ratio, round_to=round_to, importance=importance,
                         ignore=ignore, pass_name="prune", saliency=by_uid)
    report = PruneReport(_macs(dense, args), _macs(pruned, args), _params(dense),
                         _params(pruned), ratio, importance, result.groups, result.blocked_ops,
                         depth.blocks if depth else [], depth.removed if depth else [])
    return pruned, report


def _ignore_names(model: Any, ignore: Any) -> list[str]:
    """Layer names from names or from the model's own submodules."""
    if ignore is None:
        return []
    items = [ignore] if isinstance(ignore, (str, torch.nn.Module)) else list(ignore)
    modules = {id(m): n for n, m in model.named_modules()} \
        if isinstance(model, torch.nn.Module) else {}
    names = []
    for it in items:
        if isinstance(it, str):
            names.append(it)
        elif isinstance(it, torch.nn.Module) and id(it) in modules:
            names.append(modules[id(it)])
        else:
            raise PruneError(f"ignore: {it!r} is neither a layer name nor a submodule of the "
                             f"model")
    return names


def prune(model: Any, example_inputs: Any = None, ratio: float | Mapping[str, float] = 0.5,
          importance: str = "l2",
          ignore: Any = None, round_to: int = 8, target_macs: float | None = None,
          data: Iterable[Any] | None = None, dynamic_dims: Any = None,
          depth: int | float | None = None) -> PrunedModel:
    """Prune ``model``'s channels and return a trainable ``PrunedModel`` (``.report()``).

    ``ratio``: fraction of each group's channels removed (the count kept rounded up to a
    multiple of ``round_to`` features: a head of 32 features counts as 32), or a fraction per
    group kind, such as ``{"ffn": 0.5, "heads": 0.34}`` (kinds: "channels" of convolutions,
    "ffn" neurons of fully connected layers, attention "heads", the "hidden" size a LayerNorm
    normalizes; a kind left out stays whole, and a plain ratio leaves "hidden" whole: pruning
    it is never exact); or ``target_macs``: the
    fraction of the dense MACs (at the example's sizes) to keep (the least uniform ratio that
    stays within it, by bisection).
    ``importance``: "l1", "l2" (weight magnitude over every member of a group), "bn-scale"
    (|gamma| of the group's BatchNorms), "taylor" (|w * dL/dw| summed over ``data``: batches
    of inputs, optionally followed by labels; without labels the model's own predictions) or
    "activation" (|w_ij| * ||x_j|| of the layers reading each channel, their inputs x measured
    on ``data``: what the channel adds to their outputs; no labels or logits needed, so it
    serves encoders; batches may be dicts of named inputs).
    ``depth``: residual blocks to drop (an int) or the fraction of them (a float): a CNN's
    residual blocks, a transformer's attention and FFN sublayers (``prune-depth``); those that
    turn their input least on ``data`` (else the example inputs) go, their residual path
    becoming the identity, before the channels are pruned (``ratio=0`` drops blocks alone);
    ``report().blocks_removed`` names them.
    ``ignore``: layers (names such as ``"fc"`` or the submodules themselves) whose output
    channels stay. ``example_inputs``: a tensor, a tuple, or a dict of named tensors (the
    pruned model then also takes them by name). ``dynamic_dims`` as for ``rtinfer.capture``
    (default: the batch axis symbolic where the model allows). The model is not modified.
    """
    if importance not in IMPORTANCE:
        raise PruneError(f"unknown importance {importance!r} (choose one of "
                         f"{', '.join(IMPORTANCE)})")
    if not isinstance(round_to, int) or round_to < 1:
        raise PruneError(f"round_to must be a positive int, got {round_to!r}")
    if target_macs is None:
        group_ratios(ratio)  # a bad ratio fails before the capture
        if isinstance(ratio, Mapping):
            ratio = {k: float(r) for k, r in ratio.items()}
    if importance in DATA_IMPORTANCE and data is None:
        raise PruneError(f"importance={importance!r} needs data=batches (inputs, then "
                         f"optional labels) to measure it on")
    if depth is not None:  # its type and range fail before the capture; its count after
        depth_count(depth if isinstance(depth, int) and depth > 0 else 0, depth)
    names = _ignore_names(model, ignore)
    args = _as_tuple(example_inputs)
    dense = _capture(model, args, dynamic_dims)
    args = _example_tensors(dense, args)
    graph, depth_result = dense, None
    if depth is not None:
        graph, depth_result = _prune_depth(dense, depth, data, args)
    saliency = (_taylor_saliency(graph, data) if importance == "taylor" else
                _activation_saliency(graph, data) if importance == "activation" else None)

    def once(r: float | dict[str, float]) -> tuple[Graph, PruneReport]:
        return _prune_once(graph, args, r, importance, names, round_to, saliency, dense,
                           depth_result)

    if target_macs is None:
        pruned, report = once(ratio)
    else:
        if not 0.0 < target_macs <= 1.0:
            raise PruneError(f"target_macs is the fraction of MACs to keep, in (0, 1]; got "
                             f"{target_macs!r}")
        pruned, report = once(0.0)
        if not report.macs_before:
            raise PruneError("target_macs: the model has no counted MACs (its shapes are "
                             "symbolic or it has no conv/linear/matmul)")
        # MACs fall as the ratio grows: find the least ratio that meets the target
        lo, hi = 0.0, 0.99
        for _ in range(12 if report.macs_after > target_macs * report.macs_before else 0):
            mid = (lo + hi) / 2
            cand = once(mid)
            if cand[1].macs_after <= target_macs * report.macs_before:
                hi, pruned, report = mid, *cand
            else:
                lo = mid
        if report.macs_after > target_macs * report.macs_before:  # not reachable: the most
            pruned, report = once(hi)
    return PrunedModel(pruned, report)


# -- distill ----------------------------------------------------------------------------------

LOSSES = ("logits", "hidden", "embedding")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Recipe:
    """The optimizer settings ``distill`` uses for a loss where the caller gives none."""

    lr: float
    schedule: str
    warmup: float
    weight_decay: float
    steps: int = 600


# logits: a small CNN distilled from scratch-like pruned weights takes a high constant rate.
# hidden / embedding: pretrained transformer weights want a gentler rate that warms up and
# decays (BERT fine-tuning practice); measured on all-MiniLM-L6-v2 in docs/pruning.md.
# embedding: 1500 steps (batches of 16) brought a pruned all-MiniLM-L6-v2 to 0.952 held-out
# embedding cosine, where 1000 steps ended at 0.940 (docs/pruning.md)
RECIPES = {"logits": Recipe(1e-3, "constant", 0.0, 0.0),
           "hidden": Recipe(5e-4, "cosine", 0.05, 0.01),
           "embedding": Recipe(5e-4, "cosine", 0.05, 0.01, steps=1500)}
# 1 - cosine of the sentence embedding, weighted against the hidden-state MSE. Weight 10 did
# not beat 1 on MiniLM (held-out cosine 0.921 against 0.926 after 300 steps, docs/pruning.md)
EMBEDDING_WEIGHT = 1.0


def _split_batch(batch: Any, n_inputs: int, where: str) -> tuple[tuple, torch.Tensor | None]:
    """(inputs, labels or None): a batch is the inputs, optionally followed by labels."""
    items = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    if not all(isinstance(t, torch.Tensor) for t in items):
        raise PruneError(f"{where}: a batch must be tensors (inputs, then optional labels), "
                         f"got {[type(t).__name__ for t in items]}")
    if len(items) == n_inputs:
        return items, None
    if len(items) == n_inputs + 1:
        return items[:-1], items[-1]
    raise PruneError(f"{where}: the student takes {n_inputs} input(s); a batch holds them "
                     f"and optionally labels, got {len(items)} tensors")


def _split_named(batch: dict, where: str) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(named inputs, labels or None) of a dict batch; its labels, if any, under "labels"."""
    bad = [k for k, t in batch.items() if not isinstance(t, torch.Tensor)]
    if bad:
        raise PruneError(f"{where}: a batch dict must hold tensors; {', '.join(map(str, bad))} "
                         f"is not one")
    inputs = {k: t for k, t in batch.items() if k != "labels"}
    return inputs, batch.get("labels")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's logit distillation: KL(softmax(t / T) || softmax(s / T)) * T^2 (the T^2
    keeps the gradient's scale as T changes)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                    reduction="batchmean", log_target=True) * t * t


def hidden_states(out: Any) -> list[torch.Tensor]:
    """The hidden states a model returns: every layer's (a transformer output's
    ``hidden_states``, when the model was asked for them: ``output_hidden_states=True``), else
    its ``last_hidden_state``, else the output itself or its first tensor (a tuple's)."""
    if isinstance(out, torch.Tensor):
        return [out]
    layers = getattr(out, "hidden_states", None)
    if isinstance(layers, (tuple, list)) and layers and all(
            isinstance(h, torch.Tensor) for h in layers):
        return list(layers)
    h = getattr(out, "last_hidden_state", None)
    if isinstance(h, torch.Tensor):
        return [h]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return [out[0]]
    return []


def _masked_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the tokens ``mask`` keeps ([N, S] against [N, S, ...] hidden
    states; every element without a mask of that shape)."""
    if mask is None or mask.shape != s.shape[:2]:
        return F.mse_loss(s, t)
    w = mask.to(s.dtype).reshape(*mask.shape, *(1,) * (s.dim() - 2))
    n = w.sum() * (s[0, 0].numel())
    return ((s - t) ** 2 * w).sum() / n.clamp(min=1)


def pooled_embedding(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of the token states ``h`` [N, S, H] over the tokens ``mask`` [N, S] keeps
    (every token without one): a sentence-transformers sentence embedding, before its L2
    normalization."""
    if mask is None or mask.shape != h.shape[:2]:
        return h.mean(1)
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _loss(loss: str, s_out: Any, t_out: Any, labels: torch.Tensor | None, temperature: float,
          alpha: float, mask: torch.Tensor | None = None,
          embedding_weight: float = EMBEDDING_WEIGHT) -> torch.Tensor:
    """The distillation loss of one batch, mixed with cross-entropy where labels are given;
    ``mask``: the batch's attention_mask (padding is not distilled)."""
    if loss in ("hidden", "embedding"):
        ss, ts = hidden_states(s_out), hidden_states(t_out)
        if not ss or [h.shape for h in ss] != [h.shape for h in ts]:
            raise PruneError(
                "hidden-state distillation needs the student and the teacher to return hidden "
                "states of the same shapes (a tensor, a tuple starting with one, or an output "
                f"with last_hidden_state or hidden_states); got "
                f"{[list(h.shape) for h in ss] or _describe(s_out)} and "
                f"{[list(h.shape) for h in ts] or _describe(t_out)}")
        # each layer's hidden states pulled to the teacher's (MiniLM / TinyBERT style)
        value = sum(_masked_mse(s, t, mask) for s, t in zip(ss, ts, strict=True)) / len(ss)
        s = ss[-1]
        if loss == "embedding":
            if s.dim() != 3:
                raise PruneError(f"embedding distillation mean-pools token states [N, S, H]; "
                                 f"the last hidden state is {list(s.shape)}")
            # the sentence embedding's direction is what a user compares: 1 - cosine on it
            cos = F.cosine_similarity(pooled_embedding(s, mask),
                                      pooled_embedding(ts[-1], mask), dim=-1)
            value = value + embedding_weight * (1 - cos).mean()
    else:
        s = s_out
        if not isinstance(s_out, torch.Tensor) or not isinstance(t_out, torch.Tensor) \
                or s_out.shape != t_out.shape:
            raise PruneError("logit distillation needs the student and the teacher to return "
                             "one tensor of logits of the same shape (loss='hidden' matches "
                             "hidden states)")
        value = kd_loss(s_out, t_out, temperature)
    if labels is None:
        return value
    if s.dim() != 2:
        raise PruneError(f"labels need the student's output to be logits [N, classes]; it is "
                         f"{list(s.shape)} (leave the labels out to distill alone)")
    return alpha * value + (1 - alpha) * F.cross_entropy(s, labels.long())


def distill(student: torch.nn.Module, teacher: Any, data: Iterable[Any], steps: int | None = None,
            loss: str = "logits", temperature: float = 4.0, lr: float | None = None,
            alpha: float = 0.5, progress: bool = True, schedule: str | None = None,
            warmup: float | None = None, weight_decay: float | None = None,
            embedding_weight: float = EMBEDDING_WEIGHT) -> torch.nn.Module:
    """Train ``student`` (in place; returned) to match ``teacher`` on ``data``.

    ``data``: an iterable of batches, each the model's input tensors optionally followed by
    integer class labels, or a dict of named inputs (labels under ``"labels"``); it is gone
    through again until ``steps`` optimizer steps are made. ``loss``: ``"logits"``, Hinton's
    KD with temperature ``temperature`` on the (single tensor) outputs, or ``"hidden"``, the
    mean squared error between the student's and the teacher's hidden states (a
    transformer's ``last_hidden_state``, or every layer's ``hidden_states`` where the model
    returns them, else the output or its first tensor: MiniLM / TinyBERT-style feature
    distillation, which pulls the mean-pooled sentence embedding along; with dict batches the
    tokens their ``attention_mask`` zeroes, padding, are left out), or ``"embedding"``: the
    hidden-state loss plus ``1 - cosine`` between the student's and the teacher's mean-pooled
    last hidden states (the sentence embedding of sentence-transformers). With
    labels the loss is ``alpha * distillation + (1 - alpha) * cross-entropy`` of the
    student's logits, without them the distillation loss alone. AdamW at ``lr`` (decoupled
    ``weight_decay``, 0: Adam) over the student's trainable parameters; ``schedule``
    ``"constant"`` or ``"cosine"`` (the rate decays to 0 at ``steps`` along a half cosine),
    either after a linear ``warmup`` over that fraction of the steps; a tqdm progress bar
    shows the loss. Settings left None come from ``RECIPES[loss]``: for ``"logits"`` lr 1e-3,
    constant, no warmup or decay; for ``"hidden"`` and ``"embedding"`` (pretrained
    transformers) lr 5e-4, cosine, 5% warmup, weight decay 0.01; ``steps`` 600, and 1500
    for ``"embedding"``. ``embedding_weight``
    scales the ``1 - cosine`` term of ``"embedding"`` against the hidden-state MSE.
    """
    from tqdm.auto import tqdm

    if loss not in LOSSES:
        raise PruneError(f"unknown distillation loss {loss!r} (available: "
                         f"{', '.join(LOSSES)})")
    recipe = RECIPES[loss]
    steps = recipe.steps if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise PruneError(f"steps must be a positive int, got {steps!r}")
    lr = recipe.lr if lr is None else lr
    schedule = recipe.schedule if schedule is None else schedule
    warmup = recipe.warmup if warmup is None else warmup
    weight_decay = recipe.weight_decay if weight_decay is None else weight_decay
    if not lr > 0 or not embedding_weight >= 0:
        raise PruneError(f"lr must be > 0 and embedding_weight >= 0, got {lr!r} and "
                         f"{embedding_weight!r}")
    if schedule not in SCHEDULES:
        raise PruneError(f"unknown schedule {schedule!r} (available: {', '.join(SCHEDULES)})")
    if not 0.0 <= warmup < 1.0 or not weight_decay >= 0.0:
        raise PruneError(f"warmup must be a fraction of the steps in [0, 1) and weight_decay "
                         f">= 0, got {warmup!r} and {weight_decay!r}")
    if not temperature > 0 or not 0.0 <= alpha <= 1.0:
        raise PruneError(f"temperature must be > 0 and alpha in [0, 1], got {temperature!r} "
                         f"and {alpha!r}")
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise PruneError("the student has no trainable parameters")
    n_inputs = len(student.ir.inputs) if isinstance(student, PrunedModel) else 1
    if isinstance(teacher, torch.nn.Module):
        teacher_was_training = teacher.training
        teacher.eval()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    ramp = round(warmup * steps)

    def rate(step: int) -> float:  # the multiplier of lr at ``step``
        if step < ramp:
            return (step + 1) / ramp
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, steps - ramp))))
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    student.train()
    step = 0
    bar = tqdm(total=steps, desc="distill", disable=not progress, leave=False)
    try:
        while step < steps:
            seen = 0
            for batch in data:
                seen += 1
                if isinstance(batch, dict):
                    named, labels = _split_named(batch, f"batch {seen}")
                    inputs: tuple = ()
                else:
                    (inputs, labels), named = _split_batch(batch, n_inputs, f"batch {seen}"), {}
                with torch.no_grad():
                    t_out = teacher(*inputs, **named)
                s_out = student(*inputs, **named)
                loss_value = _loss(loss, s_out, t_out, labels, temperature, alpha,
                                   named.get("attention_mask"), embedding_weight)
                value = loss_value.item()
                if not math.isfinite(value):
                    raise PruneError(f"distillation diverged at step {step} (loss {value}); "
                                     f"try a smaller lr")
                opt.zero_grad(set_to_none=True)
                loss_value.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4g}")
                if step >= steps:
                    break
            if seen == 0:
                raise PruneError("distill: data gave no batches (pass a list or a loader that "
                                 "can be iterated again)")
    finally:
        bar.close()
        if isinstance(teacher, torch.nn.Module):
            teacher.train(teacher_was_training)
    student.eval()
    return student


__all__ = ["EMBEDDING_WEIGHT", "LOSSES", "RECIPES", "SCHEDULES", "PruneReport", "PrunedModel",
           "Recipe", "distill", "hidden_states", "kd_loss", "pooled_embedding", "prune"]
