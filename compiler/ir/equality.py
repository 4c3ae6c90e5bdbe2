"""Structural equality of graphs: equal up to SSA names and node order.

Two graphs are equal when their input types agree in order and, walking back from the outputs,
each pair of values is produced the same way: same op, attributes (floats bit-exact, arrays by
dtype/shape/bytes, an ``ElidedTensor`` by digest), output index, types and inputs, recursively;
and they hold the same number of nodes of each op (dead nodes are compared by count only).
Provenance and names are ignored. The value pairing is a bijection, so a shared subexpression
does not equal two copies of it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import sympy

from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.types import DType, QuantParams, dims_equal


def attr_diff(a: Any, b: Any) -> str | None:
    """Why two attribute values differ, or None if they are equal."""
    if isinstance(a, Graph) or isinstance(b, Graph):
        if not (isinstance(a, Graph) and isinstance(b, Graph)):
            return "graph vs non-graph"
        d = structural_diff(a, b)
        return None if d is None else f"nested graph: {d}"
    if isinstance(a, (np.ndarray, ElidedTensor)) or isinstance(b, (np.ndarray, ElidedTensor)):
        return _tensor_diff(a, b)
    if isinstance(a, QuantParams) or isinstance(b, QuantParams):
        return None if a == b else f"{a} vs {b}"
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        ok = isinstance(a, (bool, np.bool_)) and isinstance(b, (bool, np.bool_)) and a == b
        return None if ok else f"{a!r} vs {b!r}"
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        if not isinstance(a, (float, np.floating)) or not isinstance(b, (float, np.floating)):
            return f"{a!r} vs {b!r} ({type(a).__name__} vs {type(b).__name__})"
        fa, fb = float(a), float(b)
        same = (math.isnan(fa) and math.isnan(fb)) or fa.hex() == fb.hex()
        return None if same else f"{fa!r} vs {fb!r}"
    if isinstance(a, sympy.Expr) or isinstance(b, sympy.Expr):
        ok = isinstance(a, (int, sympy.Expr)) and isinstance(b, (int, sympy.Expr)) \
            and dims_equal(a, b)
        return None if ok else f"{a} vs {b}"
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
            return f"{a!r} vs {b!r}"
        if len(a) != len(b):
            return f"{len(a)} vs {len(b)} elements"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = attr_diff(x, y)
            if d is not None:
                return f"element {i}: {d}"
        return None
    if isinstance(a, DType) or isinstance(b, DType):
        return None if a is b else f"{a} vs {b}"
    if type(a) is not type(b) and not (isinstance(a, int) and isinstance(b, int)):
        return f"{a!r} vs {b!r}"
    return None if a == b else f"{a!r} vs {b!r}"


def _tensor_diff(a: Any, b: Any) -> str | None:
    from rtinfer.ir.constants import tensor_digest

    if not isinstance(a, (np.ndarray, ElidedTensor)) or not isinstance(
            b, (np.ndarray, ElidedTensor)):
        return "tensor vs non-tensor"
    ta, tb = _desc(a), _desc(b)
    if ta != tb:
        return f"{ta} vs {tb}"
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return None if a.tobytes() == np.ascontiguousarray(b).tobytes() else \
            f"{ta} data differs"
    da = a.digest if isinstance(a, ElidedTensor) else tensor_digest(a)
    db = b.digest if isinstance(b, ElidedTensor) else tensor_digest(b)
    return None if da == db else f"{ta} data digest {da} vs {db}"


def _desc(t: np.ndarray | ElidedTensor) -> str:
    if isinstance(t, ElidedTensor):
        return str(t.type)
    return f"{DType.from_numpy(t.dtype)}[{','.join(str(d) for d in t.shape)}]"


def _value_desc(v: Value, g: Graph) -> str:
    from rtinfer.ir.printer import format_node

    if v.producer is None:
        return f"input {v.index} of @{g.name}"
    return f"result {v.index} of `{format_node(v.producer)}`"


def structural_diff(a: Graph, b: Graph) -> str | None:
    """The first difference between two graphs, human readable, or None if structurally
    equal."""
    if len(a.inputs) != len(b.inputs):
        return f"{len(a.inputs)} vs {len(b.inputs)} inputs"
    for i, (x, y) in enumerate(zip(a.inputs, b.inputs, strict=True)):
        if x.type != y.type:
            return f"input {i}: type {x.type} vs {y.type}"
    if len(a.outputs) != len(b.outputs):
        return f"{len(a.outputs)} vs {len(b.outputs)} outputs"

    vmap: dict[int, Value] = {}
    vrev: dict[int, Value] = {}
    nmap: dict[int, Node] = {}
    nrev: dict[int, Node] = {}
    # (value in a, value in b, how it was reached) -- an explicit stack: graphs can be deep
    pairs = list(enumerate(zip(a.outputs, b.outputs, strict=True)))
    work: list[tuple[Value, Value, str]] = [(x, y, f"output {i}") for i, (x, y) in reversed(pairs)]
    while work:
        x, y, path = work.pop()
        if id(x) in vmap or id(y) in vrev:
            if vmap.get(id(x)) is not y:
                return (f"{path}: {_value_desc(x, a)} is matched against "
                        f"{_value_desc(y, b)}, but the values are shared differently")
            continue
        vmap[id(x)], vrev[id(y)] = y, x
        if x.type != y.type:
            return f"{path}: type {x.type} vs {y.type} ({_value_desc(x, a)})"
        if (x.producer is None) != (y.producer is None):
            return f"{path}: {_value_desc(x, a)} vs {_value_desc(y, b)}"
        if x.producer is None:
            if x.index != y.index:
                return f"{path}: graph input {x.index} vs {y.index}"
            continue
        if x.index != y.index:
            return f"{path}: result {x.index} vs {y.index} of {x.producer.op}"
        na, nb = x.producer, y.producer
        if id(na) in nmap or id(nb) in nrev:
            if nmap.get(id(na)) is not nb:
                return f"{path}: `{_value_desc(x, a)}` matched against two different nodes"
            continue
        nmap[id(na)], nrev[id(nb)] = nb, na
        d = _node_diff(na, nb)
        if d is not None:
            return f"{path}: {d}\n  left:  {_value_desc(x, a)}\n  right: {_value_desc(y, b)}"
        for i in reversed(range(len(na.inputs))):
            work.append((na.inputs[i], nb.inputs[i], f"{path} <- {na.op} input {i}"))

    if len(a.nodes) != len(b.nodes):
        return f"{len(a.nodes)} vs {len(b.nodes)} nodes (dead nodes differ)"
    ca, cb = a.op_counts(), b.op_counts()
    if ca != cb:
        diff = sorted(k for k in set(ca) | set(cb) if ca.get(k, 0) != cb.get(k, 0))
        return "op counts differ (dead nodes): " + ", ".join(
            f"{k} {ca.get(k, 0)} vs {cb.get(k, 0)}" for k in diff)
    return None


def _node_diff(na: Node, nb: Node) -> str | None:
    if na.op != nb.op:
        return f"op {na.op} vs {nb.op}"
    if len(na.inputs) != len(nb.inputs):
        return f"{na.op} has {len(na.inputs)} vs {len(nb.inputs)} inputs"
    if len(na.outputs) != len(nb.outputs):
        return f"{na.op} has {len(na.outputs)} vs {len(nb.outputs)} outputs"
    for i, (u, v) in enumerate(zip(na.outputs, nb.outputs, strict=True)):
        if u.type != v.type:
            return f"{na.op} result {i}: type {u.type} vs {v.type}"
    keys = set(na.attrs) | set(nb.attrs)
    for k in sorted(keys):
        if k not in na.attrs or k not in nb.attrs:
            return f"{na.op} attribute {k} only on one side"
        d = attr_diff(na.attrs[k], nb.attrs[k])
        if d is not None:
            return f"{na.op} attribute {k}: {d}"
    return None


def structural_equal(a: Graph, b: Graph) -> bool:
    """Whether two graphs are equal up to SSA names, node order and provenance."""
    return structural_diff(a, b) is None
