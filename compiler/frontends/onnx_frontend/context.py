"""What an ONNX conversion rule sees, and the table the rules fill.

``CONVERTERS`` maps an ONNX op_type to its rule; the family modules of this package declare the
rules with ``@rule("Conv")``. A rule gets a ``NodeContext`` (the node's attributes, helpers
that add and fold IR nodes) and the node's inputs as IR values (None for an omitted optional
input), and returns the node's outputs. A node the IR cannot express raises
``rtinfer.errors.Unsupported`` (``cx.unsupported(reason)``); an input the IR needs as a constant
(a shape, pads, axes) that is computed at run time raises ``NotConstant``, a kind of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtinfer.errors import IRError, ModelError, Unsupported
from rtinfer.frontends.onnx_dtypes import dtype_problem, from_onnx
from rtinfer.ir.graph import Graph, Provenance, Value
from rtinfer.ir.types import Dim, DType


class NotConstant(Unsupported):
    """An input the IR needs as a constant (a shape, pads, axes) is computed at run time.
    ``input_name`` names it, so that a caller can freeze it and try again; ``value`` is the IR
    value, whose producers lead to the graph inputs it is computed from (capture specializes
    those on example inputs)."""

    def __init__(self, op: str, input_name: str, what: str, node: str | None = None,
                 value: Value | None = None):
        self.input_name = input_name
        self.value = value
        super().__init__(op, f"{what} must be a constant (input {input_name!r} is computed at "
                             "run time)", node)


@dataclass
class Converter:
    """State of one capture: the IR graph under construction and the ONNX name -> Value map."""

    graph: Graph
    opset: int
    values: dict[str, Value] = field(default_factory=dict)
    dims: dict[Value, tuple[Dim, ...]] = field(default_factory=dict)  # known shape vectors


class NodeContext:
    """What a rule sees: the node's attributes and helpers that build (and fold) IR nodes."""

    def __init__(self, conv: Converter, node, index: int):
        from onnx import helper

        self.conv = conv
        self.node = node
        self.graph = conv.graph
        self.opset = conv.opset
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.name = node.name or f"{node.op_type}_{index}"
        self.origin = Provenance(f"onnx:{self.name}")

    def attr(self, name: str, default: Any = None) -> Any:
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    @property
    def n_outputs(self) -> int:
        return len([o for o in self.node.output if o])

    def wants(self, i: int) -> bool:
        return i < len(self.node.output) and bool(self.node.output[i])

    def unsupported(self, reason: str) -> Unsupported:
        """The error for this node as given (``raise cx.unsupported("dilated LpPool")``)."""
        return Unsupported(self.node.op_type, reason, self.name)

    def invalid(self, reason: str) -> ModelError:
        """The error for a node that breaks ONNX's rules, which no runtime would run
        (``raise cx.invalid("kernel_shape [5, 5] disagrees with ...")``)."""
        return ModelError(f"{self.node.op_type} node {self.name}: {reason}")

    def int_list(self, name: str, length: int, default: int) -> list[int]:
        """An INTS attribute that has one entry per spatial axis (``length`` of them; pads have
        two per axis): ``default`` for each when absent."""
        v = self.attrs.get(name)
        if v is None:
            return [default] * length
        if len(v) != length:
            raise self.invalid(f"{name} has {len(v)} entries, expected {length} for this "
                               "input's rank")
        return [int(x) for x in v]

    def dtype(self, elem_type: int, where: str = "") -> DType:
        """rtinfer's dtype for an ONNX element type read by this node (an attribute, a
        constant); ``Unsupported`` for one rtinfer has none for."""
        dt = from_onnx(elem_type)
        if dt is None:
            raise self.unsupported(dtype_problem(elem_type, where))
        return dt

    def op(self, name: str, *inputs: Value, **attrs: Any) -> Value:
        outs = self.ops(name, *inputs, **attrs)
        if len(outs) != 1:
            raise IRError(f"{name} has {len(outs)} results")
        return outs[0]

    def ops(self, name: str, *inputs: Value, **attrs: Any) -> list[Value]:
        """Add ``name(inputs) {attrs}``; folded to constants when every input is one."""
        if inputs and all(v.is_const for v in inputs):
            from rtinfer.ir.ops import get_op

            opdef = get_op(name)
            full = opdef.complete_attrs(attrs, where=name)
            types = opdef.infer_types([v.type for v in inputs], full)
            arrays = opdef.evaluate([v.const_data for v in inputs], full,
                                    [v.type for v in inputs])
            return [self.const(np.asarray(a).astype(t.dtype.np, copy=False))
                    for a, t in zip(arrays, types, strict=True)]
        return self.graph.create_node(name, list(inputs), attrs, provenance=self.origin).outputs

    def const(self, array: Any, dtype: DType | None = None) -> Value:
        a = np.asarray(array)
        if dtype is not None:
            a = a.astype(dtype.np)
        elif a.dtype == np.float64 and not isinstance(array, np.ndarray):
            a = a.astype(np.float32)
        DType.from_numpy(a.dtype)
        return self.graph.add_const(a, provenance=self.origin)

    def scalar(self, value: float, like: Value) -> Value:
        return self.const(np.asarray(value, dtype=like.type.dtype.np))

    def array(self, v: Value | None, what: str) -> np.ndarray:
        if v is None:
            raise self.unsupported(f"{what} is missing")
        if not v.is_const:
            raise NotConstant(self.node.op_type, v.name or "?", what, self.name, v)
        return v.const_data

    def ints(self, v: Value | None, what: str) -> list[int]:
        """A constant integer input (a shape, axes, pads, k) as a list; ONNX types these int64
        (a float would be truncated silently, or fail on NaN)."""
        a = np.asarray(self.array(v, what))
        if a.dtype.kind not in "iu":
            raise self.invalid(f"{what or 'this input'} must be an integer tensor, got "
                               f"{v.type}")
        return [int(x) for x in a.reshape(-1)]

    def shape_vector(self, v: Value, what: str) -> list[Dim]:
        """A 1-d shape value as dims: a constant, or one built from ``Shape`` of symbolic dims."""
        if v.is_const:
            return self.ints(v, what)
        if v in self.conv.dims:
            return list(self.conv.dims[v])
        raise NotConstant(self.node.op_type, v.name or "?", what, self.name, v)

    def static_shape(self, v: Value, what: str = "input") -> tuple[int, ...]:
        if not v.type.is_static:
            raise self.unsupported(f"{what} needs a static shape, got {v.type}")
        return tuple(int(d) for d in v.type.shape)


Rule = Callable[[NodeContext, list], "Value | list[Value | None]"]
CONVERTERS: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Register a rule for ONNX op_types (``@rule("Softmax", "LogSoftmax")``)."""

    def deco(fn: Rule) -> Rule:
        for n in names:
            if n in CONVERTERS:
                raise ValueError(f"two ONNX rules for {n}")
            CONVERTERS[n] = fn
        return fn

    return deco


# -- helpers the families share -------------------------------------------------------------------


def pos_axis(a: int, rank: int, *, end_ok: bool = False, check: bool = True) -> int:
    """An ONNX axis (negative counts from the end) as a non-negative one. ``check``: an
    ``IRError`` (reported at the node) for one outside ``[-rank, rank)``, or ``[-rank, rank]``
    with ``end_ok`` (Flatten's axis); a huge axis would otherwise become a huge range."""
    if check and not -rank <= a < rank + end_ok:
        raise IRError(f"axis {a} is out of range for a rank-{rank} input")
    return a + rank if a < 0 else a


def to_float(cx: NodeContext, v: Value, like: Value) -> Value:
    """``v`` in ``like``'s dtype (a cast only where they differ)."""
    return v if v.type.dtype == like.type.dtype else cx.op("cast", v, dtype=like.type.dtype)


def scalar_op(cx: NodeContext, op: str, x: Value, value: float) -> Value:
    """``op(x, value)`` with the scalar in ``x``'s dtype."""
    return cx.op(op, x, cx.scalar(value, x))


__all__ = ["CONVERTERS", "Converter", "NodeContext", "NotConstant", "Rule", "pos_axis", "rule",
           "scalar_op", "to_float"]
