"""The torch frontend's conversion context: the converter table (``CONVERTERS``, filled by
``@converts``), what a converter sees (``Ctx``), the dtype mapping and shared helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch

from rtinfer.errors import CaptureError, IRError
from rtinfer.ir.graph import Graph, Provenance, Value
from rtinfer.ir.types import DType, make_dim

aten = torch.ops.aten


# Ops left undecomposed because the IR has a better (fusable, named) op for them.
KEEP_OPS = (
    aten.layer_norm.default, aten.linear.default, aten.gelu.default, aten.silu.default,
    aten.scaled_dot_product_attention.default, aten.hardswish.default,
    aten.hardsigmoid.default, aten.mish.default, aten.softplus.default, aten.rms_norm.default,
    aten.group_norm.default, aten.matmul.default, aten.pixel_shuffle.default,
)


def ir_dtype(dt: torch.dtype) -> DType:
    """The IR dtype of a torch dtype (``DType.from_torch``), as a ``CaptureError`` if none."""
    try:
        return DType.from_torch(dt)
    except IRError:
        raise CaptureError(f"torch dtype {dt} has no rtinfer dtype") from None


# -- conversion context -----------------------------------------------------------------------


@dataclass
class Ctx:
    """State of one conversion: the graph being built and the current FX node."""

    graph: Graph
    symbols: dict[sympy.Symbol, sympy.Expr]  # torch's s0, s1... -> the user's B, S
    node: torch.fx.Node | None = None
    provenance: Provenance = field(default_factory=Provenance)

    # -- building ---------------------------------------------------------------------------

    def op(self, name: str, *inputs: Value | None, **attrs: Any) -> Value:
        return self.ops(name, *inputs, **attrs)[0]

    def ops(self, name: str, *inputs: Value | None, **attrs: Any) -> list[Value]:
        ins = list(inputs)
        while ins and ins[-1] is None:  # trailing optional inputs left out
            ins.pop()
        n = self.graph.create_node(name, ins, attrs, provenance=self.provenance)
        return n.outputs

    def const(self, array: Any, dtype: DType | None = None) -> Value:
        a = np.asarray(array)
        if dtype is not None:
            a = a.astype(dtype.np)
        return self.graph.add_const(a, provenance=self.provenance)

    def scalar(self, x: Any, dtype: DType) -> Value:
        """A Python scalar (or sympy dim, or value) as a value of ``dtype``."""
        if isinstance(x, Value):
            return self.cast(x, dtype)
        if isinstance(x, sympy.Expr) and not x.is_number:
            raise CaptureError(f"a symbolic scalar ({x}) used as a tensor is not supported")
        return self.const(np.array(x, dtype=dtype.np))

    def cast(self, v: Value, dtype: DType) -> Value:
        return v if v.type.dtype is dtype else self.op("cast", v, dtype=dtype)

    # -- facts about the current node -------------------------------------------------------

    @property
    def out_dtype(self) -> DType:
        val = self.node.meta["val"]
        val = val[0] if isinstance(val, (list, tuple)) else val
        return ir_dtype(val.dtype)

    @property
    def out_shape(self) -> tuple:
        val = self.node.meta["val"]
        val = val[0] if isinstance(val, (list, tuple)) else val
        return tuple(self.dim(d) for d in val.shape)

    def dim(self, d: Any) -> Any:
        """A torch size (int or SymInt) as an IR dim in the user's symbols."""
        if isinstance(d, torch.SymInt):
            d = d.node.expr
        if isinstance(d, sympy.Expr):
            return make_dim(sympy.sympify(d).xreplace(self.symbols))
        return int(d)


Converter = Callable[..., Any]
CONVERTERS: dict[str, Converter] = {}


def converts(*names: str) -> Callable[[Converter], Converter]:
    """Register a converter for ATen overloads (``"aten.add.Tensor"``)."""

    def deco(fn: Converter) -> Converter:
        for n in names:
            if n in CONVERTERS:
                raise ValueError(f"two converters for {n}")
            CONVERTERS[n] = fn
        return fn

    return deco


def norm_axis(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def norm_axes(dims: Any, rank: int) -> list[int]:
    if dims is None:
        return list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return [norm_axis(d, rank) for d in dims]
