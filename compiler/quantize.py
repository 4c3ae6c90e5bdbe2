"""``rtinfer.quantize``: an fp32 IR graph -> its int8 QDQ form (docs/int8.md), calibrated on data.

    qgraph = rtinfer.quantize(graph, calibration=batches, method="entropy", per_channel=True)

``batches`` is an iterable of input tuples like ``example_inputs`` (torch tensors or numpy
arrays; a bare tensor is a one-input batch). The graph should be optimized first (O3: BatchNorm
folded, epilogues fused), as ``rtinfer.compile`` does. The calibration runs run the fp32 graph
through the torch backend, built once; the input graph is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from rtinfer.backends.torch_backend import build_module
from rtinfer.errors import QuantizeError
from rtinfer.ir.graph import Graph
from rtinfer.pass_manager import PipelineContext, run_pipeline
from rtinfer.passes.quant.calibrate import CALIBRATION, calibration_batches
from rtinfer.passes.quant.insert_qdq import LAYER_KINDS, parse_ops
from rtinfer.passes.quant.observers import OBSERVERS


def torch_runner(graph: Graph) -> Callable[..., Sequence[Any]]:
    """A ``GraphRunner`` on the torch backend (oneDNN for conv/linear, no autograd)."""
    module = build_module(graph)

    def run(*xs: torch.Tensor) -> Sequence[Any]:
        with torch.inference_mode():
            return module(*xs)

    return run


def quantize_pipeline(method: str = "entropy", per_channel: bool = True,
                      ops: Sequence[str] = LAYER_KINDS, smooth_quant: float | None = None,
                      bias_correction: bool = False,
                      dynamic: bool | Sequence[int] = False) -> str:
    """The pipeline string ``rtinfer.quantize`` runs for these options."""
    if method not in OBSERVERS:
        raise QuantizeError(f"unknown method {method!r} (choose one of {', '.join(OBSERVERS)})")
    parse_ops(",".join(ops))
    dyn = _dynamic_option(dynamic)
    passes = []
    if smooth_quant is not None:
        passes.append(f"smooth-quant{{alpha={float(smooth_quant)}}}")
    pc = "true" if per_channel else "false"
    passes.append(f'insert-qdq{{method={method}, per-channel={pc}, ops="{",".join(ops)}", '
                  f'dynamic="{dyn}"}}')
    if bias_correction:
        passes.append("bias-correction")
    return ",".join(passes)


def _dynamic_option(dynamic: bool | Sequence[int]) -> str:
    """insert-qdq's ``dynamic`` option for ``quantize(dynamic=...)``."""
    if isinstance(dynamic, bool):
        return "all" if dynamic else "none"
    try:
        given = list(dynamic)
        layers = [-1 if isinstance(i, bool) else int(i) for i in given]
    except (TypeError, ValueError):
        layers = [-1]
    if any(i < 0 for i in layers):
        raise QuantizeError(f"dynamic={dynamic!r}: give True (every linear), False, or the "
                            f"indices of linear layers (0, 1, ... in graph order)")
    return ",".join(map(str, sorted(set(layers)))) or "none"


def quantize(graph: Graph, calibration: Iterable[Any], method: str = "entropy",
             per_channel: bool = True, *, ops: Sequence[str] = LAYER_KINDS,
             smooth_quant: float | None = None, bias_correction: bool = False,
             dynamic: bool | Sequence[int] = False, verify: bool = True) -> Graph:
    """The QDQ form of ``graph`` (a new graph; ``graph`` is untouched).

    ``method``: the activation observer (minmax, percentile, entropy, mse). ``per_channel``:
    weight scales per output channel (else per tensor). ``ops``: the layer kinds made int8.
    ``smooth_quant``: SmoothQuant's alpha (e.g. 0.5) to migrate activation outliers of linears
    fed by a LayerNorm into their weights first; None: off. ``bias_correction``: correct each
    layer's bias by the mean output shift its weight rounding causes on the calibration data.
    ``dynamic``: True makes every linear ``qlinear_dynamic`` (its activation quantized per row
    at run time, not from the calibration ranges), or the indices of the layers (graph order
    among the quantizable ones) to make so; the rest stay static int8.
    Bad data (no batch, a batch of the wrong arity or shape) is a ``QuantizeError`` naming the
    batch and the input.
    """
    if not isinstance(graph, Graph):
        raise QuantizeError(f"quantize takes an IR Graph (rtinfer.capture(model, inputs) makes "
                            f"one), got a {type(graph).__name__}")
    pipeline = quantize_pipeline(method, per_channel, ops, smooth_quant, bias_correction,
                                 dynamic)
    # one check of the data up front, so a bad batch is reported before anything runs; the
    # passes read the materialized list (a one-shot iterator is consumed once)
    batches = calibration_batches(graph, calibration)
    pctx = PipelineContext(data={CALIBRATION: batches}, runner=torch_runner)
    result = run_pipeline(graph.clone(), pipeline, pipeline_ctx=pctx, verify_each=verify,
                          check_requires=False)
    return result.graph


__all__ = ["quantize", "quantize_pipeline", "torch_runner"]
