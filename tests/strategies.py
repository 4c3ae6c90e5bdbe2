"""Hypothesis strategies for random well-typed graphs drawn from the op table.

``graphs()`` builds f32 graphs from the ops whose signatures are easy to satisfy generically:
every unary elementwise and binary broadcasting op in ``OPS`` that maps f32 to f32 (found by
trait and by trying its inference, so new ops join automatically), constants with small random
data, and, when the table has them, transpose, reshape, reduce_sum, softmax, concat and matmul.
A choice the op table rejects (``IRError``) is skipped. Some nodes are exact duplicates (work
for CSE), some results are never used (work for DCE), and inputs sometimes carry a symbolic
batch dim ``B``.

    @given(graphs())
    def test_something(g):
        out = interpret(g, *graph_inputs(g, seed=0))
"""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import strategies as st

from rtinfer.errors import IRError
from rtinfer.ir.graph import Graph, Value
from rtinfer.ir.interpreter import random_inputs
from rtinfer.ir.ops import BROADCAST, ELEMENTWISE, OPS
from rtinfer.ir.types import DType, TensorType, sym

# Not total on random normal inputs (NaN or inf for negative, zero or large values). Excluded so
# that numeric checks on generated graphs compare finite numbers.
PARTIAL_OPS = frozenset({
    "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal", "div", "pow", "mod",
    "acos", "asin", "atanh", "acosh", "erfinv", "tan", "exp", "expm1",
})

_PROBE = TensorType(DType.f32, (2, 3))
SYMBOLIC_BATCH = sym("B")
NAME_HINTS = (None, None, None, "x", "y", "w.0", "7", "t-1", "t_1")
MAX_RANK = 4
MAX_STATIC_ELEMENTS = 256


def _usable(opdef) -> bool:
    if opdef.name.startswith(("test", "_")) or opdef.name in PARTIAL_OPS:
        return False
    try:
        opdef.complete_attrs({})
    except IRError:
        return False
    return True


def _maps_f32(opdef, n: int) -> bool:
    try:
        return opdef.infer_types([_PROBE] * n, opdef.complete_attrs({})) == [_PROBE]
    except IRError:
        return False


@functools.cache
def _elementwise_ops(table_size: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    unary, binary = [], []
    for opdef in OPS:
        if not _usable(opdef) or opdef.variadic:
            continue
        if opdef.has(BROADCAST) and opdef.n_required == 2 and _maps_f32(opdef, 2):
            binary.append(opdef.name)
        elif opdef.has(ELEMENTWISE) and opdef.n_required == 1 and _maps_f32(opdef, 1):
            unary.append(opdef.name)
    return tuple(sorted(unary)), tuple(sorted(binary))


def elementwise_ops() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(unary, binary) f32 -> f32 elementwise op names in the current op table."""
    return _elementwise_ops(len(OPS))


SPECIAL_OPS = ("transpose", "reshape", "reduce_sum", "softmax", "concat", "matmul")


def _try(g: Graph, op: str, inputs: list[Value], attrs: dict) -> Value | None:
    """Add ``op`` if the op table accepts it with the attributes its schema knows."""
    opdef = OPS.get(op)
    attrs = {k: v for k, v in attrs.items() if k in opdef.attrs}
    try:
        node = g.create_node(op, inputs, attrs)
    except IRError:
        return None
    t = node.outputs[0].type if len(node.outputs) == 1 else None
    if t is None or t.dtype is not DType.f32 or t.rank > MAX_RANK or math.prod(
            _static_suffix(t)) > MAX_STATIC_ELEMENTS:
        g.remove_node(node)  # keep chains of concat/reshape/matmul from growing tensors
        return None
    return node.out


def _static_suffix(t: TensorType) -> tuple[int, ...]:
    out: list[int] = []
    for d in reversed(t.shape):
        if not isinstance(d, int):
            break
        out.append(d)
    return tuple(reversed(out))


@st.composite
def graphs(draw, max_nodes: int = 12) -> Graph:
    """A random well-typed f32 graph of at most ``max_nodes`` nodes and 1-3 outputs."""
    unary, binary = elementwise_ops()
    rank = draw(st.integers(1, 3))
    base: tuple = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    if draw(st.integers(0, 3)) == 0:
        base = (SYMBOLIC_BATCH,) + base
    g = Graph("main")
    pool: list[Value] = []
    for _ in range(draw(st.integers(1, 3))):
        shape = list(base)
        if draw(st.booleans()):  # a broadcastable variant: a suffix with some dims set to 1
            shape = shape[draw(st.integers(0, len(shape) - 1)):]
            shape = [1 if isinstance(d, int) and draw(st.booleans()) else d for d in shape]
        pool.append(g.add_input(TensorType(DType.f32, tuple(shape)), draw(st.sampled_from(
            NAME_HINTS))))

    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)

    def const(shape: tuple[int, ...]) -> Value:
        v = g.add_const(rng.standard_normal(shape).astype(np.float32))
        v.name = draw(st.sampled_from(NAME_HINTS))
        return v

    kinds = ["unary", "unary", "binary", "binary", "binary", "const", "dup"]
    kinds += [k for k in SPECIAL_OPS if k in OPS]
    if not unary:
        kinds.remove("unary")
    if not binary:
        kinds = [k for k in kinds if k != "binary"]
    for _ in range(draw(st.integers(1, max_nodes))):
        if len(g.nodes) >= max_nodes:
            break
        kind = draw(st.sampled_from(kinds))
        x = draw(st.sampled_from(pool))
        t = x.type
        out: Value | None = None
        if kind == "unary":
            out = _try(g, draw(st.sampled_from(unary)), [x], {})
        elif kind == "binary":
            out = _try(g, draw(st.sampled_from(binary)), [x, draw(st.sampled_from(pool))], {})
        elif kind == "const":
            shape = _static_suffix(t)
            shape = shape[draw(st.integers(0, len(shape))):]
            out = const(shape)
        elif kind == "dup":
            nodes = [n for n in g.nodes if n.op != "const" and len(n.outputs) == 1]
            if nodes:
                n = draw(st.sampled_from(nodes))
                out = _try(g, n.op, list(n.inputs), dict(n.attrs))
        elif kind == "transpose" and t.rank >= 2:
            perm = draw(st.permutations(range(t.rank)))
            out = _try(g, "transpose", [x], {"perm": perm, "axes": perm})
        elif kind == "reshape":
            if t.is_static:
                n = math.prod(t.shape)
                shape = draw(st.sampled_from([(n,), tuple(reversed(t.shape)), (1, *t.shape)]))
            elif t.shape[0] == SYMBOLIC_BATCH and len(_static_suffix(t)) == t.rank - 1:
                shape = (SYMBOLIC_BATCH, math.prod(t.shape[1:]))
            else:
                shape = None
            if shape is not None:
                out = _try(g, "reshape", [x], {"shape": shape})
        elif kind in ("reduce_sum", "softmax") and t.rank >= 1:
            axis = draw(st.integers(-t.rank, t.rank - 1))
            out = _try(g, kind, [x], {"axis": axis, "axes": [axis],
                                      "keepdims": draw(st.booleans())})
        elif kind == "concat":
            same = [v for v in pool if v.type == t]
            ys = draw(st.lists(st.sampled_from(same), min_size=1, max_size=2))
            axis = draw(st.integers(-t.rank, t.rank - 1)) if t.rank else 0
            out = _try(g, "concat", [x, *ys], {"axis": axis})
        elif kind == "matmul" and t.rank >= 1 and isinstance(t.shape[-1], int):
            w = const((t.shape[-1], draw(st.integers(1, 4))))
            out = _try(g, "matmul", [x, w], {})
        if out is not None:
            pool.append(out)

    computed = [v for v in pool if v.producer is not None and not v.is_const]
    candidates = computed or pool
    outs = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique_by=id))
    g.set_outputs(outs)
    return g


def graph_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Seeded inputs for a generated graph (symbolic dims bound to 2)."""
    return random_inputs(graph, seed=seed)
