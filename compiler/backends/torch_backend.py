"""The torch backend: an IR graph becomes a ``torch.fx.GraphModule`` that calls ATen.

    build_module(graph, trainable=False, mkldnn=None) -> TorchModule

``EMITTERS`` is one table, op name -> emitter, filled by the family modules of
``rtinfer.backends.torch_emit`` (``elementwise``, ``nn``, ``reduce``, ``shape``, ``attention``,
``quant``, ``fused``; the context every emitter receives is ``torch_emit.context``). An emitter
receives the conversion context and the node's inputs as ``torch.fx.Proxy`` objects (``None``
for a missing optional input; variadic inputs as one list, as the op table's references take
them) and the node's attributes by name, and returns the proxy (or proxies) of its results.
Most emitters are plain torch code over the proxies; ops whose geometry depends on run-time
sizes call a helper at run time (``cx.call``), so the generated module accepts any size the
IR's symbolic dims allow.

Constants become buffers of the generated module, or parameters (float ones) with
``trainable=True``, so gradients flow to them. With ``trainable=False`` the fused ops
(``fused_conv1d/2d``, ``fused_linear``) lower to oneDNN's fused primitives
(``torch.ops.mkldnn._convolution_pointwise`` / ``_linear_pointwise``), which have no autograd
kernel; with ``trainable=True`` they lower to ATen conv/linear plus the epilogue. For inference,
constant conv2d/linear weights are also prepacked once for oneDNN and conv activations kept
channels-last (``torch_emit.mkldnn``).

An op with no emitter runs its op-table reference (NumPy) at run time: correct, but neither
differentiable nor fast. ``fallback_ops(graph)`` names those ops; ``UNSUPPORTED`` gives the
reason for each op that knowingly has no emitter.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.fx.proxy import GraphAppendingTracer, Proxy

from rtinfer.backends import torch_emit  # noqa: F401  (fills EMITTERS)
from rtinfer.backends.torch_emit.context import (
    EMITTERS,
    IDENT,
    UNSUPPORTED,
    EmitContext,
    Emitter,
    attr_name,
    emits,
)
from rtinfer.backends.torch_emit.driver import ReferenceOp, emit_nodes, note_symbols
from rtinfer.backends.torch_emit.mkldnn import (
    MKLDNN_ACTIVATIONS,
    MKLDNN_BINARY_ACTIVATIONS,
    mkldnn_available,
)
from rtinfer.errors import BackendError
from rtinfer.ir.graph import Graph
from rtinfer.ir.ops import OPS
from rtinfer.ir.ops.aten import ATEN_CALL, fallback_name


class TorchModule(torch.fx.GraphModule):
    """The generated module: ``forward(*inputs)`` returns a tuple of the graph's outputs."""


def fallback_ops(graph: Graph) -> list[str]:
    """The ops of ``graph`` that have no emitter (they run their NumPy reference), and the ATen
    ops that ``aten_call`` nodes hand to torch as they are (``aten_call(aten.i0.default)``)."""
    return sorted({fallback_name(n) for n in graph.nodes if n.op != "const"
                   and (n.op not in EMITTERS or n.op == ATEN_CALL)})


def coverage() -> tuple[int, int, list[str]]:
    """(ops with an emitter, ops in the table, ops without one); ``const`` counts as emitted."""
    names = OPS.names()
    missing = [n for n in names if n != "const" and n not in EMITTERS]
    return len(names) - len(missing), len(names), missing


def build_module(graph: Graph, *, trainable: bool = False, mkldnn: bool | None = None,
                 strict: bool = False) -> TorchModule:
    """Generate a ``torch.fx.GraphModule`` computing ``graph``.

    ``trainable``: float constants become ``nn.Parameter`` s and the fused ops take the
    differentiable ATen path. ``mkldnn``: use oneDNN's fused primitives for inference (default:
    when available and not ``trainable``). ``strict``: an op without an emitter is a
    ``BackendError`` instead of a call of its NumPy reference.
    """
    missing = fallback_ops(graph)
    if strict and missing:
        raise BackendError(
            f"torch backend: no emitter for {', '.join(missing)}"
            + "".join(f"\n  {m}: {UNSUPPORTED[m]}" for m in missing if m in UNSUPPORTED)
            + "\n(strict=False runs these ops' NumPy reference, and an aten_call's ATen op, "
              "instead)")
    fx_graph = torch.fx.Graph()
    tracer = GraphAppendingTracer(fx_graph)
    cx = EmitContext(fx_graph, tracer, trainable, mkldnn_available() if mkldnn is None
                     else bool(mkldnn))
    env: dict[int, Any] = {}
    for i, v in enumerate(graph.inputs):
        name = attr_name(v.name, cx.taken, f"input_{i}")
        p = Proxy(fx_graph.placeholder(name), tracer)
        env[id(v)] = p
        note_symbols(cx, v.type, p)
    emit_nodes(cx, graph, env)
    outs = [env[id(v)] for v in graph.outputs]
    if cx.channels_last:  # NCHW results, as the eager model gives
        outs = [o.contiguous() if isinstance(o, Proxy) and v.type.rank == 4 else o
                for o, v in zip(outs, graph.outputs, strict=True)]
    fx_graph.output(tuple(o.node for o in outs))
    module = TorchModule(cx.root, fx_graph,
                         class_name=f"rtinfer_{IDENT.sub('_', graph.name)}")
    if module.graph.eliminate_dead_code():  # e.g. sizes read for a symbol and not used
        module.recompile()
    for name in cx.packed.values():  # GraphModule made them buffers: plain attributes again
        packed = getattr(module, name)
        delattr(module, name)
        setattr(module, name, packed)
    module.rtinfer_fallback_ops = missing
    module.rtinfer_constants = cx.const_names
    module.rtinfer_mkldnn = cx.mkldnn and not trainable
    return module


__all__ = ["EMITTERS", "MKLDNN_ACTIVATIONS", "MKLDNN_BINARY_ACTIVATIONS", "UNSUPPORTED",
           "EmitContext", "Emitter", "ReferenceOp", "TorchModule", "build_module", "coverage",
           "emit_nodes", "emits", "fallback_ops", "mkldnn_available"]
