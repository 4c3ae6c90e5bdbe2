"""The torch backend's emitter table and the context every emitter receives.

``EMITTERS`` is one table, op name -> emitter (filled by this package's family modules). An
emitter receives the context and the node's inputs as ``torch.fx.Proxy`` objects (``None`` for
a missing optional input; variadic inputs as one list, as the op table's references take them)
and the node's attributes by name, and returns the proxy (or proxies) of its results.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch
import torch.fx
from torch.fx.proxy import GraphAppendingTracer, Proxy

from rtinfer.backends.registry import registrar
from rtinfer.errors import BackendError
from rtinfer.ir.graph import Node
from rtinfer.ir.types import Dim, TensorType

Emitter = Callable[..., Any]
EMITTERS: dict[str, Emitter] = {}
# op -> why it has no emitter (it then runs its NumPy reference at run time)
UNSUPPORTED: dict[str, str] = {}

emits = registrar(EMITTERS, "emitter")


@dataclass
class EmitContext:
    """What an emitter can see: the IR node, its types, options, and run-time dims."""

    graph: torch.fx.Graph
    tracer: GraphAppendingTracer
    trainable: bool
    mkldnn: bool
    root: torch.nn.Module = field(default_factory=torch.nn.Module)
    node: Node | None = None
    # the node's input/output types as the emitter sees them (channels-first for NHWC nodes)
    types: tuple[list[TensorType], list[TensorType]] | None = None
    taken: set[str] = field(default_factory=set)
    const_names: dict[int, str] = field(default_factory=dict)  # id(const Value) -> attribute
    # symbol -> (proxy of a tensor, axis) whose size is the symbol's value at run time
    sym_sources: dict[sympy.Symbol, tuple[Proxy, int]] = field(default_factory=dict)
    sym_cache: dict[sympy.Symbol, Proxy] = field(default_factory=dict)
    # (constant attribute, packing key) -> attribute of its weight prepacked for oneDNN
    packed: dict[tuple, str] = field(default_factory=dict)
    # fx nodes whose run-time value is known to be channels-last (NHWC strides)
    channels_last: set[torch.fx.Node] = field(default_factory=set)

    @property
    def in_types(self) -> list[TensorType]:
        return self.types[0] if self.types else [v.type for v in self.node.inputs]

    @property
    def out_types(self) -> list[TensorType]:
        return self.types[1] if self.types else [v.type for v in self.node.outputs]

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Proxy:
        """A call of ``fn`` at run time (not while emitting)."""
        return self.tracer.create_proxy("call_function", fn, args, kwargs)

    def dim(self, d: Dim) -> int | Proxy:
        """A dim's value: an int, or a proxy computing it from the run-time sizes."""
        if isinstance(d, (int, np.integer)):
            return int(d)
        return _sym_value(self, d)

    def shape(self, dims: Sequence[Dim]) -> list[int | Proxy]:
        return [self.dim(d) for d in dims]


def _sym_value(cx: EmitContext, e: sympy.Expr) -> int | Proxy:
    if e.is_Integer:
        return int(e)
    if e.is_Symbol:
        if e not in cx.sym_cache:
            if e not in cx.sym_sources:
                raise BackendError(f"symbolic dim {e} is not the size of any input axis, so its "
                                   f"value is unknown at run time")
            src, axis = cx.sym_sources[e]
            cx.sym_cache[e] = src.size(axis)
        return cx.sym_cache[e]
    if e.is_Add or e.is_Mul:
        parts = [_sym_value(cx, a) for a in e.args]
        return functools.reduce(operator.add if e.is_Add else operator.mul, parts)
    if e.is_Pow and e.exp.is_Integer and e.exp > 0:
        return functools.reduce(operator.mul, [_sym_value(cx, e.base)] * int(e.exp))
    if isinstance(e, sympy.floor):
        return _floor_value(cx, e.args[0])
    raise BackendError(f"cannot compute the symbolic dim {e} at run time")


def _floor_value(cx: EmitContext, e: sympy.Expr) -> int | Proxy:
    num, den = sympy.fraction(sympy.together(e))
    if den.is_Integer:
        return operator.floordiv(_sym_value(cx, sympy.expand(num)), int(den))
    raise BackendError(f"cannot compute floor({e}) at run time")


IDENT = re.compile(r"[^A-Za-z0-9_]")


def attr_name(name: str | None, taken: set[str], default: str) -> str:
    """A fresh Python identifier for an attribute of the generated module, based on ``name``."""
    base = IDENT.sub("_", name or default)
    if not base or base[0].isdigit() or base.startswith("_"):
        base = f"c_{base.lstrip('_')}"
    out, i = base, 1
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


def torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX-layout pads [b0, .., bn-1, e0, .., en-1] as F.pad's list (last axis first)."""
    nd = len(pads) // 2
    return [p for i in reversed(range(nd)) for p in (pads[i], pads[nd + i])]


__all__ = ["EMITTERS", "IDENT", "UNSUPPORTED", "EmitContext", "Emitter", "attr_name", "emits",
           "torch_pads"]
