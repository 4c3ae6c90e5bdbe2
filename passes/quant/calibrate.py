"""calibrate: run the fp32 graph once over the calibration batches and collect, for every value
a quantized op reads, its min/max and a histogram (``observers.Histogram``), plus what
smooth-quant and bias-correction need (per-channel |max| of linear inputs, batch means of layer
inputs).

Which values (docs/int8.md): the activation input and the residual of every quantizable layer
(``conv2d``, ``linear``, ``matmul`` with a constant float weight, and their ``fused_*`` forms),
and, through pass-through ops computed exactly on integers (``max_pool2d``, ``reshape``,
``flatten``, ``transpose``, ``concat``), the inputs of those ops: a pass-through op's inputs
share one set of quantization parameters with its output (``QuantPlan.groups``), so lower-int8
can run it on the integers.

How: the graph is cloned with the observed values appended as extra outputs (the caller's graph
is never touched) and built once by the pipeline's runner (``PipelineContext.runner``;
``rtinfer.quantize`` gives the torch backend, the default is the reference interpreter); each
batch then runs once and its observed tensors are reduced with torch ops (``min``/``max``,
``histc``, ``amax``, ``sum``). ``calibration_stats(ctx, graph)`` is the cached analysis
"calibration"; the data it reads is the pipeline input "calibration" (an iterable of input
tuples, as ``example_inputs``), whose digest is part of the compile cache key. Stats of the
``calibrate`` pass: values, batches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rtinfer.errors import QuantizeError
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.interpreter import bind_dims, interpret
from rtinfer.ir.ops.quant import LAYER_BASE
from rtinfer.ir.types import TensorType
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.pass_manager.analysis import GraphRunner
from rtinfer.passes.quant.observers import Histogram

CALIBRATION = "calibration"  # the pipeline data input and the analysis
# the layers lower-int8 has quantized forms of (qconv2d, qlinear, qmatmul: docs/int8.md)
QUANTIZABLE = frozenset(LAYER_BASE)
# ops that compute exactly on the integers of their input: insert-qdq wraps them and
# lower-int8 runs them on int8 (one table for both passes)
PASS_THROUGH = frozenset({"max_pool2d", "reshape", "flatten", "transpose", "concat"})
# layers whose input's per-channel |max| smooth-quant reads (the channels are the last axis)
LINEAR_LIKE = frozenset({"linear", "fused_linear", "matmul", "fused_matmul"})


def is_quantizable(node: Node) -> bool:
    """A layer insert-qdq quantizes: a quantizable op whose weight is a float constant (not
    already quantized) and whose activation is float."""
    if node.op not in QUANTIZABLE:
        return False
    role = node.opdef.weight
    w = node.inputs[role.input]
    return (w.is_const and w.type.dtype.is_float and w.type.quant is None
            and node.inputs[0].type.dtype.is_float)


def residual_index(node: Node) -> int | None:
    """The input index of a fused layer's residual, None without one."""
    if node.attrs.get("residual", "none") == "none":
        return None
    return len(node.inputs) - 1


def activation_inputs(node: Node) -> list[int]:
    """The input indices of ``node`` that insert-qdq reads through dequantize(quantize(.)):
    the activation, and the residual where int8 costs it nothing: when a quantizable layer or
    a pass-through op makes it (ResNet's shortcut is the last block's int8 output). Any other
    residual stays f32: a transformer's residual stream (a LayerNorm's output, with outlier
    channels) loses most of its precision to one per-tensor scale, added straight into the
    output."""
    r = residual_index(node)
    if r is None:
        return [0]
    p = node.inputs[r].producer
    quantized_source = p is not None and (p.op in PASS_THROUGH or is_quantizable(p))
    return [0, r] if quantized_source else [0]


@dataclass
class QuantPlan:
    """Which values are quantized and which share parameters.

    ``layers``: the quantizable layers. ``groups``: one list per set of values quantized with
    the same parameters (a pass-through op's inputs with its output), in graph order.
    ``passthrough``: the pass-through nodes whose inputs are read quantized."""

    layers: list[Node]
    groups: list[list[Value]]
    passthrough: list[Node]

    @property
    def values(self) -> list[Value]:
        return [v for g in self.groups for v in g]


def plan(graph: Graph, ops: Collection[str] | None = None,
         only: Collection[int] | None = None) -> QuantPlan:
    """The quantization plan of ``graph``: its quantizable layers (only those whose base op,
    ``fused_`` removed, is in ``ops`` when given; of those, only the ``only``-th in graph
    order when given: mixed precision) and their activation inputs, closed over the
    pass-through ops that produce them."""
    layers = [n for n in graph.nodes if is_quantizable(n)
              and (ops is None or n.op.removeprefix("fused_") in ops)]
    if only is not None:
        layers = [n for i, n in enumerate(layers) if i in only]
    parent: dict[Value, Value] = {}

    def find(v: Value) -> Value:
        while parent[v] is not v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    work = [n.inputs[i] for n in layers for i in activation_inputs(n)]
    for v in work:
        parent.setdefault(v, v)
    passthrough: list[Node] = []
    while work:
        v = work.pop()
        p = v.producer
        if p is None or p.op not in PASS_THROUGH or p in passthrough:
            continue
        # wrapped only when every input is a float activation (a constant would need its own
        # quantize, and integer data is not quantized)
        if not all(u.type.dtype.is_float and not u.is_const for u in p.inputs):
            continue
        passthrough.append(p)
        for u in p.inputs:
            if u not in parent:
                parent[u] = u
                work.append(u)
            parent[find(u)] = find(v)
    order = {id(v): k for k, v in enumerate(graph.values())}
    members: dict[Value, list[Value]] = {}
    for v in sorted(parent, key=lambda v: order[id(v)]):
        members.setdefault(find(v), []).append(v)
    groups = sorted(members.values(), key=lambda g: order[id(g[0])])
    passthrough.sort(key=lambda n: order[id(n.outputs[0])])
    return QuantPlan(layers, groups, passthrough)


# -- the data ---------------------------------------------------------------------------------


def _input_name(graph: Graph, i: int) -> str:
    v = graph.inputs[i]
    return f"input {i} ({v.name!r}: {v.type})" if v.name else f"input {i} ({v.type})"


def _as_tensor(x: Any, t: TensorType, where: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        out = x.detach()
    else:
        try:
            out = torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
        except (TypeError, ValueError) as e:
            raise QuantizeError(f"{where}: expected a tensor or array, got "
                                f"{type(x).__name__} ({e})") from None
    if out.is_floating_point() != t.dtype.is_float:
        raise QuantizeError(f"{where}: expected {t.dtype} data, got {out.dtype}")
    return out.to(t.dtype.torch)


def calibration_batches(graph: Graph, data: Any) -> list[list[torch.Tensor]]:
    """The calibration data as one list of input tensors per batch, checked against the graph's
    inputs: a ``QuantizeError`` names the batch and the input that do not fit."""
    if isinstance(data, (torch.Tensor, np.ndarray)) or not isinstance(data, Iterable):
        raise QuantizeError(f"calibration must be an iterable of input tuples (like "
                            f"example_inputs), got a {type(data).__name__}; wrap one batch "
                            f"as [(x,)]")
    out = []
    n = len(graph.inputs)
    for b, batch in enumerate(data):
        items = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        if len(items) != n:
            raise QuantizeError(f"calibration batch {b} has {len(items)} inputs; the graph takes "
                                f"{n}: " + ", ".join(_input_name(graph, i) for i in range(n)))
        tensors = [_as_tensor(x, v.type, f"calibration batch {b}, {_input_name(graph, i)}")
                   for i, (x, v) in enumerate(zip(items, graph.inputs, strict=True))]
        for i, (x, v) in enumerate(zip(tensors, graph.inputs, strict=True)):
            static = [d if isinstance(d, int) else None for d in v.type.shape]
            if x.dim() != v.type.rank or any(
                    d is not None and d != n for d, n in zip(static, x.shape, strict=True)):
                raise QuantizeError(f"calibration batch {b}, {_input_name(graph, i)}: got "
                                    f"shape {list(x.shape)}")
        try:
            bind_dims([v.type for v in graph.inputs], [tuple(x.shape) for x in tensors])
        except ValueError as e:
            i = getattr(e, "index", 0)
            raise QuantizeError(f"calibration batch {b}, {_input_name(graph, i)}: got shape "
                                f"{list(tensors[i].shape)} ({e})") from None
        out.append(tensors)
    if not out:
        raise QuantizeError("calibration is empty: give at least one batch of inputs")
    return out


# -- collecting -------------------------------------------------------------------------------


@dataclass
class TensorStats:
    """What calibration collected about one value."""

    hist: Histogram = field(default_factory=Histogram)
    channel_absmax: np.ndarray | None = None  # max |x| per index of the last axis
    mean_sum: np.ndarray | None = None  # sum over batches of the mean over axis 0
    batches: int = 0

    @property
    def mean(self) -> np.ndarray | None:
        """E[x] over the data's batch axis (the other axes kept), or None if not collected."""
        return None if self.mean_sum is None else self.mean_sum / max(self.batches, 1)


@dataclass(frozen=True)
class Want:
    hist: bool = True
    channel_absmax: bool = False
    mean: bool = False


@dataclass
class CalibrationStats:
    """Statistics of the observed values of one graph (keyed by the graph's own ``Value``s)."""

    stats: dict[Value, TensorStats]
    batches: int

    def __getitem__(self, v: Value) -> TensorStats:
        return self.stats[v]

    def __contains__(self, v: Value) -> bool:
        return v in self.stats


def interpreter_runner(graph: Graph) -> Callable[..., Sequence[Any]]:
    """The default ``GraphRunner``: the reference interpreter (correct; slow on big models)."""

    def run(*xs: torch.Tensor) -> Sequence[Any]:
        out = interpret(graph, *xs)
        return out if isinstance(out, tuple) else (out,)

    return run


def _progress(items: list, desc: str) -> Iterable:
    # a bar on a terminal only: logs and CI output stay clean
    return tqdm(items, desc=desc, unit="batch", disable=not sys.stderr.isatty(), leave=False)


def collect(graph: Graph, batches: list[list[torch.Tensor]], wants: dict[Value, Want],
            runner: GraphRunner | None = None, desc: str = "calibrating") -> CalibrationStats:
    """Run ``graph`` (a clone with the ``wants`` values as extra outputs) once per batch and
    reduce each wanted value as asked."""
    probe = graph.clone()
    vmap = {id(a): b for a, b in zip(graph.values(), probe.values(), strict=True)}
    observed = list(wants)
    probe.set_outputs(list(probe.outputs) + [vmap[id(v)] for v in observed])
    run = (runner or interpreter_runner)(probe)
    first = len(graph.outputs)
    stats = {v: TensorStats() for v in observed}
    for tensors in _progress(batches, desc):
        with torch.no_grad():
            outs = run(*tensors)
        for v, t in zip(observed, outs[first:], strict=True):
            t = t if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t))
            s, want = stats[v], wants[v]
            s.batches += 1
            where = f"value %{v.name or v.uid} ({v.type})"
            if want.hist:
                s.hist.add(t, where)
            if want.channel_absmax and t.dim() >= 1:
                m = t.detach().abs().reshape(-1, t.shape[-1]).amax(0).double().numpy()
                s.channel_absmax = m if s.channel_absmax is None else np.maximum(
                    s.channel_absmax, m)
            if want.mean:
                m = t.detach().double().mean(0).numpy() if t.dim() >= 1 else t.double().numpy()
                s.mean_sum = m if s.mean_sum is None else s.mean_sum + m
    return CalibrationStats(stats, len(batches))


def calibration_wants(graph: Graph) -> dict[Value, Want]:
    """Histograms of the plan's values; per-channel |max| of linear-like layers' inputs."""
    p = plan(graph)
    wants = {v: Want() for v in p.values}
    for n in p.layers:
        if n.op in LINEAR_LIKE:
            wants[n.inputs[0]] = Want(channel_absmax=True)
    return wants


def calibration_stats(ctx: PassContext, graph: Graph) -> CalibrationStats:
    """The analysis "calibration" of ``graph``: computed once per graph state from the pipeline
    input "calibration" and kept until a pass changes the graph."""

    def compute(g: Graph) -> CalibrationStats:
        batches = calibration_batches(g, ctx.pipeline.input(CALIBRATION))
        return collect(g, batches, calibration_wants(g), ctx.pipeline.runner)

    return ctx.pipeline.analysis(CALIBRATION, compute, graph)


@graph_pass("calibrate", summary="collect calibration statistics of the values int8 layers read",
            preserves=(CALIBRATION,))
def calibrate(graph: Graph, ctx: PassContext) -> None:
    """Computes the "calibration" analysis now (later passes reuse it); the graph is unchanged."""
    stats = calibration_stats(ctx, graph)
    ctx.stat("values", len(stats.stats))
    ctx.stat("batches", stats.batches)
