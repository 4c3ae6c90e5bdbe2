"""The reference interpreter: runs a graph node by node with the op table's NumPy references.

It checks its inputs against the graph's input types (binding symbolic dims across inputs) and
every node's results against the node's declared types, so a reference implementation that
disagrees with its own shape inference is caught at the node that shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sympy

from rtinfer.errors import InterpretError
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.printer import format_node
from rtinfer.ir.types import Dim, TensorType

Bindings = dict[sympy.Symbol, int]


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        from rtinfer.ir.ops.common import to_numpy

        return to_numpy(x.detach().cpu())
    return np.asarray(x)


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def eval_dim(d: Dim, env: Bindings) -> int | None:
    """A dim's size under the bindings (None if a symbol in it is unbound)."""
    if isinstance(d, int):
        return d
    if not d.free_symbols <= set(env):
        return None
    return int(d.subs(env))


def bind_dims(types: Sequence[TensorType], shapes: Sequence[tuple[int, ...]],
              env: Bindings | None = None) -> Bindings:
    """Bind the symbols of ``types`` to the sizes in ``shapes``; raise ``ValueError`` naming the
    input (``_Mismatch.index``) on a mismatch."""
    env = dict(env or {})
    # plain symbols first, then expressions (B*S) once their symbols are known
    for i, (t, shape) in enumerate(zip(types, shapes, strict=True)):
        for d, n in zip(t.shape, shape, strict=True):
            if isinstance(d, sympy.Symbol):
                if d in env and env[d] != n:
                    raise _Mismatch(i, f"{d} is {env[d]} elsewhere but {n} here")
                env[d] = n
    for i, (t, shape) in enumerate(zip(types, shapes, strict=True)):
        for d, n in zip(t.shape, shape, strict=True):
            if isinstance(d, int) or isinstance(d, sympy.Symbol):
                continue
            unbound = d.free_symbols - set(env)
            if len(unbound) == 1:
                (s,) = unbound
                sols = [x for x in sympy.solve(sympy.Eq(d, n), s)
                        if x.is_integer and x.is_positive]
                if len(sols) != 1:
                    raise _Mismatch(i, f"no positive integer {s} makes {d} equal {n}")
                env[s] = int(sols[0])
            elif unbound:
                raise _Mismatch(i, f"cannot bind {', '.join(map(str, sorted(unbound, key=str)))}"
                                   f" from {d} alone")
            if eval_dim(d, env) != n:
                raise _Mismatch(i, f"{d} is {eval_dim(d, env)} but the size is {n}")
    return env


class _Mismatch(ValueError):
    def __init__(self, index: int, message: str):
        self.index = index
        super().__init__(message)


def _check_inputs(graph: Graph, arrays: list[np.ndarray]) -> Bindings:
    if len(arrays) != len(graph.inputs):
        raise InterpretError(f"@{graph.name} takes {len(graph.inputs)} inputs, got "
                             f"{len(arrays)}")
    for v, a in zip(graph.inputs, arrays, strict=True):
        t = v.type
        if a.dtype != t.dtype.np or a.ndim != t.rank:
            raise InterpretError(f"input {_input_name(graph, v)}: expected {t}, got "
                                 f"{a.dtype} array of shape {_shape_str(a.shape)}")
        for d, n in zip(t.shape, a.shape, strict=True):
            if isinstance(d, int) and d != n:
                raise InterpretError(f"input {_input_name(graph, v)}: expected {t}, got shape "
                                     f"{_shape_str(a.shape)}")
    try:
        return bind_dims([v.type for v in graph.inputs], [a.shape for a in arrays])
    except _Mismatch as e:
        v = graph.inputs[e.index]
        raise InterpretError(f"input {_input_name(graph, v)}: expected {v.type}, got shape "
                             f"{_shape_str(arrays[e.index].shape)} ({e})") from None


def _input_name(graph: Graph, v: Value) -> str:
    return f"%{v.name}" if v.name else f"#{v.index}"


def _check_result(node: Node, i: int, a: np.ndarray, env: Bindings) -> None:
    t = node.outputs[i].type

    def fail(why: str) -> InterpretError:
        return InterpretError(
            f"the reference of {node.op} disagrees with the node's type: result {i} is a "
            f"{a.dtype} array of shape {_shape_str(a.shape)}, declared {t} ({why})\n"
            f"  at: {format_node(node)}")

    if a.dtype != t.dtype.np:
        raise fail("dtype")
    if a.ndim != t.rank:
        raise fail("rank")
    for d, n in zip(t.shape, a.shape, strict=True):
        if isinstance(d, sympy.Symbol) and d not in env:
            env[d] = n  # a symbol first seen in a result (a data-dependent size)
        size = eval_dim(d, env)
        if size is not None and size != n:
            raise fail(f"dim {d} is {size}")


def interpret_values(graph: Graph, inputs: Sequence[Any]) -> dict[Value, np.ndarray]:
    """Run ``graph`` on ``inputs`` and return the array of every value it computes."""
    arrays = [_to_numpy(x) for x in inputs]
    env = _check_inputs(graph, arrays)
    vals: dict[Value, np.ndarray] = dict(zip(graph.inputs, arrays, strict=True))
    for node in graph.nodes:
        if node.op == "const" and isinstance(node.attrs.get("value"), ElidedTensor):
            raise InterpretError(
                "a constant's data was elided from the IR text, so it cannot be evaluated; "
                "print the graph with full_constants=True (rtinfer: --full-constants)\n"
                f"  at: {format_node(node)}")
        try:
            args = [vals[v] for v in node.inputs]
        except KeyError:
            raise InterpretError(f"{node.op} reads a value that is not computed before it "
                                 f"(run the verifier)\n  at: {format_node(node)}") from None
        try:
            outs = node.opdef.evaluate(args, node.attrs, [v.type for v in node.inputs], env)
        except Exception as e:  # a reference failure, reported at its node
            raise InterpretError(f"the reference of {node.op} failed: "
                                 f"{type(e).__name__}: {e}\n  at: {format_node(node)}") from e
        if len(outs) != len(node.outputs):
            raise InterpretError(f"the reference of {node.op} returned {len(outs)} arrays for "
                                 f"{len(node.outputs)} results\n  at: {format_node(node)}")
        for i, (v, a) in enumerate(zip(node.outputs, outs, strict=True)):
            _check_result(node, i, a, env)
            vals[v] = a
    for v in graph.outputs:
        if v not in vals:
            raise InterpretError(f"output {_input_name(graph, v)} is not computed by "
                                 f"@{graph.name}")
    return vals


def interpret(graph: Graph, *inputs: Any) -> np.ndarray | tuple[np.ndarray, ...]:
    """Run ``graph``: a single array if it has one output, else a tuple."""
    vals = interpret_values(graph, inputs)
    outs = tuple(vals[v] for v in graph.outputs)
    return outs[0] if len(outs) == 1 else outs


def random_inputs(graph: Graph, seed: int = 0, dims: dict[str, int] | None = None
                  ) -> list[np.ndarray]:
    """Seeded inputs for ``graph``: floats standard normal, ints in [0, 2), bools; symbolic
    dims bound from ``dims`` (name -> size), 2 by default."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    out = []
    for v in graph.inputs:
        t = v.type
        env = {s: dims.get(s.name, 2) for s in t.symbols()}
        shape = tuple(eval_dim(d, env) for d in t.shape)
        if t.dtype.is_float:
            a = rng.standard_normal(shape).astype(t.dtype.np)
        elif t.dtype.is_int:
            a = rng.integers(0, 2, shape).astype(t.dtype.np)
        else:
            a = rng.random(shape) < 0.5
        out.append(a)
    return out
