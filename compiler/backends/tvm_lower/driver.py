"""Lowering a graph into a Relax module: constants, the table's lowerings (a ``grouped`` op
inside a Primitive function of its own), and the torch fallback for a node without a lowering
or whose lowering declines."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rtinfer.backends.torch_backend import build_module
from rtinfer.backends.tvm_lower.context import (
    LOWERINGS,
    TVM_DTYPES,
    UNSUPPORTED,
    LowerContext,
)
from rtinfer.errors import BackendError, RtinferError, Unsupported
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Graph, Node
from rtinfer.ir.ops.aten import fallback_name
from rtinfer.ir.printer import format_node


def _const_expr(cx: LowerContext, node: Node) -> Any:
    value = node.attrs["value"]
    if isinstance(value, ElidedTensor):
        raise BackendError(f"constant {value} has no data (it was elided from the IR text); "
                           f"load the graph with its weights")
    return cx.const(np.array(value), node.out.type.dtype)


def _node_args(node: Node, env: dict[int, Any]) -> list[Any]:
    return node.opdef.positional([env[id(v)] for v in node.inputs])


def lower_node(cx: LowerContext, node: Node, env: dict[int, Any]) -> None:
    """Lower one node into ``cx.bb``, binding its outputs in ``env``; checks the results'
    dtypes and ranks against the IR's."""
    if node.op == "const":
        env[id(node.out)] = _const_expr(cx, node)
        return
    cx.node = node
    out = LOWERINGS[node.op](cx, *_node_args(node, env), **node.attrs)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(outs) != len(node.outputs):
        raise cx.unsupported(f"the lowering gave {len(outs)} results for {len(node.outputs)}")
    for v, o in zip(node.outputs, outs, strict=True):
        o = cx.emit(o)
        ty = o.ty
        want = TVM_DTYPES[v.type.dtype]
        if str(ty.dtype) != want or ty.ndim != v.type.rank:
            raise cx.unsupported(f"the lowering gave {ty.dtype}[{ty.ndim} dims] for {v.type}")
        env[id(v)] = o


def _lower_grouped(cx: LowerContext, node: Node, env: dict[int, Any], name: str) -> Any:
    """Lower ``node`` inside a Relax function of its own marked Primitive (one kernel after
    FuseTIR); returns the call."""
    from tvm import relax

    sub = relax.BlockBuilder()
    args, params, inner_env = [], [], {}
    for i, v in enumerate(node.inputs):
        p = relax.Var(f"p{i}", cx.tensor_type(v.type))
        params.append(p)
        args.append(env[id(v)])
        inner_env[id(v)] = p
    inner = LowerContext(sub, cx.symbols)
    with sub.function(name, params, attrs={"Primitive": True}, private=True):
        with sub.dataflow():
            lower_node(inner, node, inner_env)
            outs = [inner_env[id(v)] for v in node.outputs]
            result = sub.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        sub.emit_func_output(result)
    gv = cx.bb.add_func(sub.get()[name], name)
    return relax.Call(gv, args)


class Fallback:
    """A node run by the torch backend, called by the VM in destination-passing style."""

    def __init__(self, node: Node):
        g = Graph(node.op)
        ins = [g.add_input(v.type, f"x{i}") for i, v in enumerate(node.inputs)]
        m = g.create_node(node.op, ins, node.attrs, [v.type for v in node.outputs])
        g.set_outputs(m.outputs)
        self.module = build_module(g)
        self.n_in = len(node.inputs)

    def __call__(self, *args: Any) -> None:
        ins = [torch.from_dlpack(a) for a in args[:self.n_in]]
        try:
            with torch.no_grad():
                outs = self.module(*ins)
        except RtinferError as e:
            # TVM's FFI turns it into its own error on the way out: keep it for the caller
            _raised.error = e
            raise
        for dst, src in zip(args[self.n_in:], outs, strict=True):
            torch.from_dlpack(dst).copy_(src)


_fallback_ids = itertools.count()
_raised = threading.local()


def take_raised() -> RtinferError | None:
    """The rtinfer error a fallback raised during this thread's last VM call, once."""
    err = getattr(_raised, "error", None)
    _raised.error = None
    return err


def _lower_fallback(cx: LowerContext, node: Node, env: dict[int, Any],
                    registry: dict[str, Fallback]) -> None:
    import tvm_ffi
    from tvm import relax

    for v in node.outputs:
        for s in v.type.symbols():
            if s not in cx.symbols:
                raise BackendError(f"TVM backend: {node.op} has the output {v.type}, whose dim "
                                   f"{s} no input determines; it cannot run as a fallback")
    fn = Fallback(node)
    name = f"rtinfer.tvm_fallback.{next(_fallback_ids)}.{node.op}"
    tvm_ffi.register_global_func(name, fn, override=True)
    registry[name] = fn
    out_types = [cx.tensor_type(v.type) for v in node.outputs]
    call = cx.emit(relax.call_dps_packed(
        name, relax.Tuple([env[id(v)] for v in node.inputs]),
        out_types[0] if len(out_types) == 1 else out_types))
    if len(out_types) == 1:
        env[id(node.out)] = call
    else:
        for i, v in enumerate(node.outputs):
            env[id(v)] = cx.emit(relax.TupleGetItem(call, i))


def _reason(e: Exception) -> str:
    """Why a node fell back: a decline's reason, or the first line of what TVM raised."""
    if isinstance(e, Unsupported):
        return e.reason
    return str(e).splitlines()[0] if str(e) else type(e).__name__


@dataclass
class Lowered:
    """A graph as a Relax module (before the build), with what fell back and why."""

    mod: Any  # tvm.IRModule
    fallbacks: dict[str, str]  # op -> why (the first reason seen)
    callbacks: dict[str, Fallback]
    n_kernels_fused: int


def lower_graph(graph: Graph, *, strict: bool = False) -> Lowered:
    """The Relax module of ``graph`` (its function ``main``)."""
    from tvm import relax, tirx

    bb = relax.BlockBuilder()
    cx = LowerContext(bb)
    for v in graph.inputs:
        for s in sorted(v.type.symbols(), key=str):
            cx.symbols.setdefault(s, tirx.Var(str(s), "int64"))
    params = [relax.Var(v.name or f"input_{i}", cx.tensor_type(v.type))
              for i, v in enumerate(graph.inputs)]
    env: dict[int, Any] = {id(v): p for v, p in zip(graph.inputs, params, strict=True)}
    fallbacks: dict[str, str] = {}
    callbacks: dict[str, Fallback] = {}
    grouped = 0
    with bb.function("main", params):
        with bb.dataflow():
            for node in graph.nodes:
                cx.node = node
                try:
                    lowering = LOWERINGS.get(node.op)
                    if node.op != "const" and lowering is None:
                        raise cx.unsupported(UNSUPPORTED.get(node.op, "no lowering"))
                    if lowering is not None and lowering.grouped:
                        call = cx.emit(_lower_grouped(cx, node, env,
                                                      f"{node.op}_{grouped}"))
                        grouped += 1
                        if len(node.outputs) == 1:
                            env[id(node.out)] = call
                        else:
                            for i, v in enumerate(node.outputs):
                                env[id(v)] = cx.emit(relax.TupleGetItem(call, i))
                    else:
                        lower_node(cx, node, env)
                except Exception as e:  # a declined (or failed) lowering falls back
                    if isinstance(e, BackendError):
                        raise
                    if strict:
                        raise BackendError(
                            f"TVM backend: cannot lower {fallback_name(node)} ({_reason(e)})"
                            f"\n  at: "
                            f"{format_node(node)}\n(strict=False runs it in the torch "
                            f"backend instead)") from None
                    fallbacks.setdefault(fallback_name(node), _reason(e))
                    _lower_fallback(cx, node, env, callbacks)
            outs = [env[id(v)] for v in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return Lowered(bb.get(), fallbacks, callbacks, grouped)


__all__ = ["Fallback", "Lowered", "lower_graph", "lower_node"]
