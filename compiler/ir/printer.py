"""The IR text form, printing side. ``docs/ir-text.md`` describes the syntax;
``rtinfer.ir.parser`` reads it back, and ``parse(print_graph(g))`` is structurally equal to ``g``.

    func @main(%x: f32[B,8]) -> f32[B,8] {
      %w = const f32[8] dense<[0.5, 1.0, ...]>
      %y = add(%x, %w) : f32[B,8]
      return %y
    }
"""

from __future__ import annotations

import json
import math
import re
import weakref
from typing import Any

import numpy as np
import sympy

from rtinfer.errors import IRError
from rtinfer.ir.constants import ElidedTensor, tensor_digest
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops import get_op
from rtinfer.ir.types import DType, QuantParams, TensorType, dim_str

INDENT = "  "
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


# -- scalars ----------------------------------------------------------------------------------

def format_float(x: float) -> str:
    """A python float that parses back to exactly the same value."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def _format_element(x: Any, dtype: np.dtype) -> str:
    """One array element: shortest text that parses back (through a python float) exactly."""
    if dtype == np.bool_:
        return "true" if x else "false"
    if dtype.kind in "iu":
        return str(int(x))
    f = float(x)
    if math.isnan(f) or math.isinf(f) or dtype == np.float64:
        return format_float(f)
    short = str(x)  # numpy/ml_dtypes print the shortest repr for the element's own precision
    try:
        if dtype.type(float(short)) == x:
            return short
    except (ValueError, OverflowError):
        pass
    return repr(f)


def format_data(array: np.ndarray) -> str:
    """``dense<...>``: a flat C-order list, or a bare value for a 0-d array."""
    a = np.asarray(array)
    if a.ndim == 0:
        return f"dense<{_format_element(a[()], a.dtype)}>"
    flat = a.reshape(-1)
    if a.dtype.kind in "biu":
        items = [_format_element(x, a.dtype) for x in flat.tolist()]
    else:
        items = [_format_element(x, a.dtype) for x in flat]
    return "dense<[" + ", ".join(items) + "]>"


def format_tensor(value: np.ndarray | ElidedTensor, *, full: bool = False,
                  elide_above: int = 16) -> str:
    """``TYPE dense<...>`` or ``TYPE elided<digest>`` (arrays above ``elide_above`` elements
    unless ``full``)."""
    if isinstance(value, ElidedTensor):
        return str(value)
    t = TensorType.of(value)
    if not full and value.size > elide_above:
        return f"{t} elided<{tensor_digest(value)}>"
    return f"{t} {format_data(value)}"


def format_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


# -- names ------------------------------------------------------------------------------------

class Namer:
    """SSA names for one function: name hints (sanitized, deduplicated) or sequential numbers.

    Names are keyed by ``id(value)``. A namer kept while the graph changes (``tracked``: the
    Rewriter's, over a whole rule set) also checks that the value is still the one it named: a
    value erased and freed may leave its id to a new one, which must not inherit its name."""

    def __init__(self, values: list[Value] = (), *, tracked: bool = False):
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.counter = 0
        self._refs: dict[int, weakref.ref] | None = {} if tracked else None
        for v in values:
            self.add(v)

    def _known(self, v: Value) -> str | None:
        name = self.names.get(id(v))
        if name is not None and self._refs is not None and self._refs[id(v)]() is not v:
            return None
        return name

    def add(self, v: Value) -> str:
        known = self._known(v)
        if known is not None:
            return known
        hint = _UNSAFE.sub("_", v.name) if v.name else ""
        if hint and not hint.isdigit():  # numbers are the printer's own: renumbered
            name, k = hint, 1
            while name in self.used:
                name, k = f"{hint}_{k}", k + 1
        else:
            while str(self.counter) in self.used:
                self.counter += 1
            name = str(self.counter)
        self.used.add(name)
        self.names[id(v)] = name
        if self._refs is not None:
            self._refs[id(v)] = weakref.ref(v)
        return name

    def __call__(self, v: Value) -> str:
        name = self._known(v)
        if name is None:  # not defined in this function (a broken graph, printed for an error)
            return f"%?{_UNSAFE.sub('_', v.name) if v.name else v.uid}"
        return "%" + name


def graph_namer(g: Graph) -> Namer:
    return Namer(list(g.values()))


# -- attributes -------------------------------------------------------------------------------

def format_attr(value: Any, indent: str = "", *, full_constants: bool = False,
                elide_above: int = 16, provenance: bool = False) -> str:
    def rec(v: Any) -> str:
        return format_attr(v, indent, full_constants=full_constants, elide_above=elide_above,
                           provenance=provenance)

    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_float(float(value))
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, DType):
        return value.value
    if isinstance(value, sympy.Expr):
        return dim_str(value)
    if isinstance(value, QuantParams):
        return str(value)
    if isinstance(value, (np.ndarray, ElidedTensor)):
        return format_tensor(value, full=full_constants, elide_above=elide_above)
    if isinstance(value, Graph):
        return _print_func(value, indent, full_constants=full_constants,
                           elide_above=elide_above, provenance=provenance)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(rec(x) for x in value) + "]"
    raise IRError(f"cannot print attribute value {value!r} ({type(value).__name__})")


def _ordered_attrs(op: str, attrs: dict[str, Any]) -> list[tuple[str, Any]]:
    """All attributes in the op schema's order (defaults filled in); a node the op table
    rejects prints what it holds."""
    try:
        return list(get_op(op).complete_attrs(attrs, where=op).items())
    except IRError:
        return list(attrs.items())


# -- nodes and functions ----------------------------------------------------------------------

def format_types(types: list[TensorType]) -> str:
    return ", ".join(str(t) for t in types)


def _format_op(op: str, attrs: dict[str, Any], results: list[str], operands: list[str],
               types: list[TensorType], indent: str = "", *, full_constants: bool = False,
               elide_above: int = 16, provenance: bool = False) -> str:
    """``%r = op(%a, %b) {attrs} : types`` from the SSA names of the results and operands."""
    lhs = f"{', '.join(results)} = " if results else ""
    s = f"{lhs}{op}(" + ", ".join(operands) + ")"
    ordered = _ordered_attrs(op, attrs)
    if ordered:
        inner = indent + INDENT
        s += " {" + ", ".join(
            f"{k}=" + format_attr(v, inner, full_constants=full_constants,
                                  elide_above=elide_above, provenance=provenance)
            for k, v in ordered) + "}"
    if types:
        s += " : " + format_types(types)
    return s


def _format_node(node: Node, name: Namer, indent: str = "", *, full_constants: bool = False,
                 elide_above: int = 16, provenance: bool = False) -> str:
    if node.op == "const" and "value" in node.attrs and len(node.outputs) == 1:
        value = node.attrs["value"]
        t = node.outputs[0].type
        if isinstance(value, ElidedTensor):
            data = f"elided<{value.digest}>"
        elif isinstance(value, np.ndarray):
            full = full_constants or value.size <= elide_above
            data = format_data(value) if full else f"elided<{tensor_digest(value)}>"
        else:
            data = f"<{value!r}>"
        s = f"{name(node.out)} = const {t} {data}"
    else:
        s = _format_op(node.op, node.attrs, [name(v) for v in node.outputs],
                       [name(v) for v in node.inputs], [v.type for v in node.outputs], indent,
                       full_constants=full_constants, elide_above=elide_above,
                       provenance=provenance)
    if provenance:
        p = node.provenance
        s += f" loc({format_string(p.origin)}, {format_string(p.created_by)})"
    return s


def format_node(node: Node, namer: Namer | None = None) -> str:
    """One node as it prints in its graph (names from the graph it is in, if any). ``namer``
    keeps SSA names stable across texts taken before and after a change (the Rewriter's
    events); values it has not seen get names."""
    if namer is not None:
        for v in (*node.inputs, *node.outputs):
            namer.add(v)
        name = namer
    else:
        name = graph_namer(node.graph) if node.graph is not None else Namer(
            list(node.inputs) + list(node.outputs))
    try:
        return _format_node(node, name)
    except Exception as e:  # used in error messages: never fail
        return f"{node.op}(<unprintable: {e}>)"


class NodeText:
    """``format_node(node, namer)`` as ``node`` is now, formatted when first read (``str(t)`` or
    ``t()``): most rewrite events and declines are never read, and formatting attributes and
    types is most of their cost.

    The values are named now, in the order ``format_node`` would name them, so texts read
    later, in any order, name them as if read at once. It keeps the names, attributes and types,
    not the values: a weight a rewrite erased is not kept alive by a text nobody reads. For the
    same reason a constant is formatted now (its text is the digest of its data, cached per
    array)."""

    __slots__ = ("_text", "_parts")

    def __init__(self, node: Node, namer: Namer):
        for v in (*node.inputs, *node.outputs):
            namer.add(v)
        self._text: str | None = None
        self._parts: tuple | None = None
        if node.op == "const":
            self._text = format_node(node, namer)
        else:
            self._parts = (node.op, dict(node.attrs), [namer(v) for v in node.outputs],
                           [namer(v) for v in node.inputs], [v.type for v in node.outputs])

    def __call__(self) -> str:
        if self._text is None:
            assert self._parts is not None
            op = self._parts[0]
            try:
                self._text = _format_op(*self._parts)
            except Exception as e:  # read by reports: never fail
                self._text = f"{op}(<unprintable: {e}>)"
            self._parts = None
        return self._text

    def __str__(self) -> str:
        return self()

    def __repr__(self) -> str:
        return f"NodeText({self()!r})"


def _print_func(g: Graph, indent: str, *, full_constants: bool, elide_above: int,
                provenance: bool) -> str:
    name = graph_namer(g)
    params = ", ".join(f"{name(v)}: {v.type}" for v in g.inputs)
    outs = format_types([v.type for v in g.outputs])
    if len(g.outputs) != 1:
        outs = f"({outs})"
    body = indent + INDENT
    lines = [f"func @{_UNSAFE.sub('_', g.name) or 'main'}({params}) -> {outs} {{"]
    for n in g.nodes:
        lines.append(body + _format_node(n, name, body, full_constants=full_constants,
                                         elide_above=elide_above, provenance=provenance))
    ret = ", ".join(name(v) for v in g.outputs)
    lines.append(body + ("return " + ret if ret else "return"))
    lines.append(indent + "}")
    return "\n".join(lines)


def print_graph(g: Graph, *, full_constants: bool = False, provenance: bool = False,
                elide_above: int = 16) -> str:
    """The text form of ``g``. Constants with more than ``elide_above`` elements print as
    ``elided<digest>`` unless ``full_constants``; ``provenance`` appends ``loc(...)``."""
    return _print_func(g, "", full_constants=full_constants, elide_above=elide_above,
                       provenance=provenance) + "\n"
