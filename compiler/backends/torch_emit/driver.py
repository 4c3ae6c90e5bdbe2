"""Emitting a graph's nodes into a ``torch.fx.Graph``: constants, the table's emitters, NHWC
nodes between two transposes, and the reference fallback for an op without an emitter."""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy
import torch
from torch.fx.proxy import Proxy

from rtinfer.backends.torch_emit.context import EMITTERS, EmitContext, attr_name
from rtinfer.errors import BackendError
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Graph, Node
from rtinfer.ir.ops import get_op
from rtinfer.ir.ops.common import to_numpy, to_torch
from rtinfer.ir.ops.layouts import permute_type, to_channels_first, to_channels_last
from rtinfer.ir.printer import format_node
from rtinfer.ir.types import TensorType


class ReferenceOp(torch.nn.Module):
    """Runs one node's NumPy reference on torch tensors (no autograd, no speed)."""

    def __init__(self, op: str, attrs: dict, in_types: list[TensorType], n_outputs: int):
        super().__init__()
        self.op, self.attrs, self.in_types, self.n_outputs = op, attrs, in_types, n_outputs

    def forward(self, *tensors: Any) -> Any:
        opdef = get_op(self.op)
        flat = list(tensors[:-1]) + list(tensors[-1]) if opdef.variadic else list(tensors)
        arrays = [to_numpy(t.detach()) for t in flat if t is not None]
        outs = [to_torch(np.array(o)) for o in opdef.evaluate(arrays, self.attrs, self.in_types)]
        return outs[0] if self.n_outputs == 1 else tuple(outs)

    def extra_repr(self) -> str:
        return self.op


def _reference_emitter(cx: EmitContext, *inputs: Any, **attrs: Any) -> Any:
    node = cx.node
    name = attr_name(f"reference_{node.op}", cx.taken, "reference")
    cx.root.add_module(name, ReferenceOp(node.op, attrs, [v.type for v in node.inputs],
                                         len(node.outputs)))
    out = cx.tracer.create_proxy("call_module", name, inputs, {})
    n = len(node.outputs)
    return out if n == 1 else [out[i] for i in range(n)]


def emit_nodes(cx: EmitContext, graph: Graph, env: dict[int, Any]) -> None:
    """Emit every node of ``graph``, reading and extending ``env`` (id(Value) -> Proxy)."""
    for node in graph.nodes:
        cx.node, cx.types = node, None
        if node.op == "const":
            env[id(node.out)] = _emit_const(cx, node)
            continue
        try:
            outs = _emit_node(cx, node, _node_args(node, env))
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"torch backend: emitting {node.op} failed: "
                               f"{type(e).__name__}: {e}\n  at: {format_node(node)}") from e
        if len(outs) != len(node.outputs):
            raise BackendError(f"the emitter of {node.op} gave {len(outs)} results for "
                               f"{len(node.outputs)}\n  at: {format_node(node)}")
        for v, o in zip(node.outputs, outs, strict=True):
            env[id(v)] = o
            note_symbols(cx, v.type, o)


def _emit_node(cx: EmitContext, node: Node, args: list[Any]) -> list[Any]:
    """One node; an NHWC node runs its NCHW emitter between two transposes (which torch turns
    into channels-last strides rather than copies)."""
    emitter = EMITTERS.get(node.op)
    if emitter is None:  # the reference takes every attribute, layout included
        return _as_list(_reference_emitter(cx, *args, **node.attrs))
    attrs = dict(node.attrs)
    if attrs.pop("layout", "NCHW") == "NCHW":
        return _as_list(emitter(cx, *args, **attrs))
    ins, outs = [v.type for v in node.inputs], [v.type for v in node.outputs]
    moved = [0] + [i for i, n in enumerate(node.opdef.inputs) if n == "residual?"
                   and i < len(ins)]
    for i in moved:
        args[i] = args[i].permute(to_channels_first(ins[i].rank))
        ins[i] = permute_type(ins[i], to_channels_first(ins[i].rank))
    outs[0] = permute_type(outs[0], to_channels_first(outs[0].rank))
    cx.types = (ins, outs)
    out = _as_list(emitter(cx, *args, **attrs))
    out[0] = out[0].permute(to_channels_last(outs[0].rank))
    return out


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _node_args(node: Node, env: dict[int, Any]) -> list[Any]:
    return node.opdef.positional([env[id(v)] for v in node.inputs])


def note_symbols(cx: EmitContext, t: TensorType, proxy: Any) -> None:
    """Remember ``proxy``'s axes whose sizes are symbols of ``t`` (the first source wins)."""
    if not isinstance(proxy, Proxy):
        return
    for axis, d in enumerate(t.shape):
        if isinstance(d, sympy.Symbol) and d not in cx.sym_sources:
            cx.sym_sources[d] = (proxy, axis)


def _emit_const(cx: EmitContext, node: Node) -> Proxy:
    value = node.attrs["value"]
    if isinstance(value, ElidedTensor):
        raise BackendError(f"constant {value} has no data (it was elided from the IR text); "
                           f"load the graph with its weights")
    t = to_torch(np.array(value))
    name = attr_name(node.out.name, cx.taken, "const")
    cx.const_names[id(node.out)] = name
    if cx.trainable and t.is_floating_point():
        cx.root.register_parameter(name, torch.nn.Parameter(t))
    else:
        cx.root.register_buffer(name, t)
    return Proxy(cx.graph.get_attr(name), cx.tracer)


__all__ = ["ReferenceOp", "emit_nodes", "note_symbols"]
