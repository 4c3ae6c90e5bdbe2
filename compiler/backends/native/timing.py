"""Per-layer speed for mixed precision: one fp32 layer (conv2d, linear, matmul with a constant
weight, or their fused forms) and its int8 counterpart (qconv2d / qlinear / qmatmul: u8 codes
in, u8 codes out, per-channel s8 weights) each built as a one-node native plan at the layer's
shape, and timed on this CPU in interleaved rounds.

    fp32_ms, int8_ms = time_layer(node)           # medians, milliseconds

The int8 plan reads and writes codes, as a layer inside an int8 chain does (no quantize or
dequantize step is timed); the numbers are speed only (the weights are the layer's own,
quantized, the activations random codes: int8 kernels take the same time for any data).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from rtinfer.backends.native.lowerer import Lowerer
from rtinfer.backends.native.quant import weight_max
from rtinfer.errors import Unsupported
from rtinfer.ir.graph import Graph, Node
from rtinfer.ir.ops.quant import LAYER_BASE, QUANTIZED_OPS
from rtinfer.ir.types import DType, QuantParams, TensorType
from rtinfer.kernels import build

# codes of a typical activation: scale and zero point do not change an int8 kernel's time
_ACT = QuantParams(np.float32(0.05), np.int64(128))
_OUT = {"out_dtype": DType.u8, "out_scale": 0.1, "out_zero_point": 128}


def _layer_graphs(node: Node, level: str | None) -> tuple[Graph, Graph, list[tuple[int, ...]]]:
    """(the fp32 layer, its int8 counterpart, the input shapes) as one-node graphs."""
    base = LAYER_BASE.get(node.op)
    if base is None:
        raise Unsupported(node.op, "time_layer takes conv2d, linear or matmul (or their fused "
                          "forms) with a constant weight", node.name)
    qop, w_axis = QUANTIZED_OPS[base]
    x, w = node.inputs[0], node.inputs[1]
    wdata = w.const_data
    if wdata is None or wdata.dtype != np.float32:
        raise Unsupported(node.op, "time_layer needs a constant f32 weight", node.name)
    if not all(v.type.is_static for v in node.inputs):
        raise Unsupported(node.op, f"time_layer needs static shapes, got {x.type}", node.name)
    residual = node.attrs.get("residual", "none") != "none"
    bias = node.inputs[2].const_data if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and bias is None:
        raise Unsupported(node.op, "time_layer needs a constant bias", node.name)
    shapes = [tuple(int(d) for d in x.type.shape)]
    if residual:
        shapes.append(tuple(int(d) for d in node.out.type.shape))

    fp = Graph(f"time_{node.op}_fp32")
    ins = [fp.add_input(TensorType(DType.f32, s), f"in{i}") for i, s in enumerate(shapes)]
    args = [ins[0], fp.add_const(wdata)] + ([fp.add_const(bias)] if bias is not None else [])
    fp.set_outputs([fp.add_op(node.op, *args, *ins[1:], **node.attrs)])

    # per-channel symmetric weights in the range this level's kernels run exactly
    axis = w_axis % wdata.ndim
    red = tuple(i for i in range(wdata.ndim) if i != axis)
    qmax = weight_max(level)
    scale = np.maximum(np.abs(wdata).max(axis=red), 1e-12).astype(np.float32) / qmax
    shape = [1] * wdata.ndim
    shape[axis] = -1
    wq = np.clip(np.rint(wdata / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    q = Graph(f"time_{node.op}_int8")
    qins = [q.add_input(TensorType(DType.u8, s, _ACT), f"in{i}") for i, s in enumerate(shapes)]
    qargs = [qins[0], q.add_const(wq, quant=QuantParams(scale, np.zeros_like(scale, np.int64),
                                                        axis))]
    if bias is not None:
        qargs.append(q.add_const(bias))
    q.set_outputs([q.add_op(qop, *qargs, *qins[1:], **node.attrs, **_OUT)])
    return fp, q, shapes


def _plan(graph: Graph, shapes: list[tuple[int, ...]], ext, threads: int):
    lw = Lowerer(graph, shapes, strict=True, threads=threads, ext=ext)
    lw.lower()
    return lw.build(ext)


def _interleaved(calls: dict[str, Callable[[], object]], rounds: int,
                 budget_s: float) -> dict[str, float]:
    for fn in calls.values():
        fn()  # warm: first touch of the arena, oneDNN's caches
    t0 = time.perf_counter()
    for fn in calls.values():
        fn()
    per = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, min(50, int(budget_s / rounds / per)))
    samples: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            for _ in range(reps):
                calls[k]()
            samples[k].append((time.perf_counter() - t) / reps)
    return {k: statistics.median(v) for k, v in samples.items()}


def time_layer(node: Node, level: str | None = None, budget_s: float = 0.2,
               rounds: int = 9) -> tuple[float, float]:
    """(fp32 ms, int8 ms): the medians of ``node`` and its int8 counterpart, each a one-node
    native plan at ``node``'s shapes on this CPU (``level``: the native extension's CPU level,
    default the one in use), at torch's thread count, timed in ``rounds`` interleaved rounds
    within about ``budget_s`` (plus building the two plans). ``node`` is not changed.
    ``Unsupported`` names a node that is not a conv2d / linear / matmul layer with constant
    weights and static shapes."""
    fp, q, shapes = _layer_graphs(node, level)
    ext = build.load(level=level)
    threads = torch.get_num_threads()
    plans = {"fp32": _plan(fp, shapes, ext, threads), "int8": _plan(q, shapes, ext, threads)}
    gen = torch.Generator().manual_seed(0)
    inputs = {"fp32": [torch.randn(s, generator=gen) for s in shapes],
              "int8": [torch.randint(0, 256, s, generator=gen, dtype=torch.uint8)
                       for s in shapes]}
    secs = _interleaved({k: (lambda k=k: plans[k].run(inputs[k], threads)) for k in plans},
                        rounds, budget_s)
    return secs["fp32"] * 1e3, secs["int8"] * 1e3


__all__ = ["time_layer"]
