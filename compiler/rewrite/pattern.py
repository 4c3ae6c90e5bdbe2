"""The pattern DSL: patterns over ops, variables and constants, and the matcher.

    x = P.var("x")
    x * 1.0                                   # mul(x, const 1.0 splat), either operand order
    P.op("reshape", P.op("reshape", x), name="r")
    P.op("conv2d", x, P.const("w"), ..., attrs={"groups": 1})   # ``...``: any further inputs
    P.trace(gelu, ["x"])                      # a pattern written by example (see ``trace``)

Matching is anchored at a root node, never mutates, and returns the captures (name -> ``Value``
for variables and constants, name -> ``Node`` for ``name=`` on an op) or None. A name used twice
must bind the same value, and so must one pattern object reached along two paths (traced
patterns share subpatterns the way the traced function shared intermediate results). Operand
order is free for ops with the ``commutative`` trait in the op table, and nowhere else.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.graph import Node, Value
from rtinfer.ir.ops import COMMUTATIVE, OPS, get_op

Capture = Value | Node
Number = int | float | bool | np.number


# -- patterns ---------------------------------------------------------------------------------


class Pattern:
    """Base of all patterns. Arithmetic operators build op patterns; numbers become splat
    constants (``x * 1.0`` is ``mul(x, <every element == 1.0>)``)."""

    def __add__(self, other: PatternLike) -> OpPattern:
        return _binary("add", self, other)

    def __radd__(self, other: PatternLike) -> OpPattern:
        return _binary("add", other, self)

    def __sub__(self, other: PatternLike) -> OpPattern:
        return _binary("sub", self, other)

    def __rsub__(self, other: PatternLike) -> OpPattern:
        return _binary("sub", other, self)

    def __mul__(self, other: PatternLike) -> OpPattern:
        return _binary("mul", self, other)

    def __rmul__(self, other: PatternLike) -> OpPattern:
        return _binary("mul", other, self)

    def __truediv__(self, other: PatternLike) -> OpPattern:
        return _binary("div", self, other)

    def __rtruediv__(self, other: PatternLike) -> OpPattern:
        return _binary("div", other, self)

    def __matmul__(self, other: PatternLike) -> OpPattern:
        return _binary("matmul", self, other)

    def __rmatmul__(self, other: PatternLike) -> OpPattern:
        return _binary("matmul", other, self)

    def __neg__(self) -> OpPattern:
        return OpPattern(frozenset({"neg"}), (self,))

    def children(self) -> tuple[Pattern, ...]:
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"

    def match(self, node: Node) -> dict[str, Capture] | None:
        """Shorthand for ``match(self, node)``."""
        return match(self, node)


@dataclass(frozen=True, eq=False, repr=False)
class Var(Pattern):
    """Any value, captured as ``name``. ``where``: an extra predicate on the value."""

    name: str
    where: Callable[[Value], bool] | None = None

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False, repr=False)
class AnyValue(Pattern):
    """Any value, not captured."""

    def __str__(self) -> str:
        return "_"


@dataclass(frozen=True, eq=False, repr=False)
class Const(Pattern):
    """A value produced by a ``const`` node, captured as ``name`` (its array is
    ``value.const_data``). ``where``: an extra predicate on the array."""

    name: str | None = None
    where: Callable[[np.ndarray], bool] | None = None

    def __str__(self) -> str:
        return f"const:{self.name}" if self.name else "const"


@dataclass(frozen=True, eq=False, repr=False)
class ConstValue(Pattern):
    """A constant whose every element equals ``value`` (a splat, any shape).

    Equal means equal once ``value`` is rounded to the constant's dtype, or within
    ``rel_tol``/``abs_tol`` (traced patterns use a tolerance: exporters round constants).
    ``implicit`` marks a bare number written in an expression; ``P.trace`` gives those its
    tolerance.
    """

    value: float
    rel_tol: float = 0.0
    abs_tol: float = 0.0
    name: str | None = None
    implicit: bool = False

    def __str__(self) -> str:
        return repr(self.value) + (f":{self.name}" if self.name else "")

    def accepts(self, data: Any) -> bool:
        if not isinstance(data, np.ndarray) or data.size == 0:
            return False
        dt = data.dtype
        if dt.kind in "iub":
            v = float(self.value)
            if not v.is_integer() or (dt.kind == "u" and v < 0):
                return False
            return bool(np.all(data == int(v)))
        if dt.kind != "f" and dt.name != "bfloat16":
            return False
        if np.all(data == np.asarray(self.value, dtype=dt)):
            return True
        if self.rel_tol or self.abs_tol:
            return bool(np.all(np.isclose(data.astype(np.float64), float(self.value),
                                          rtol=self.rel_tol, atol=self.abs_tol)))
        return False


@dataclass(frozen=True, eq=False, repr=False)
class OpPattern(Pattern):
    """A node whose op is one of ``ops``, with inputs matching ``inputs``.

    ``rest``: further inputs are allowed (written as a trailing ``...``). ``attrs``: attribute
    name -> required value, or a predicate on the attribute. ``name``: capture the node.
    ``one_use``: a matched intermediate must have exactly one use (and not be a graph output).
    ``index``: which output of a multi-output node (None: any).
    """

    ops: frozenset[str]
    inputs: tuple[Pattern, ...]
    name: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    rest: bool = False
    one_use: bool = False
    index: int | None = None
    where: Callable[[Node], bool] | None = None

    def children(self) -> tuple[Pattern, ...]:
        return self.inputs

    def __str__(self) -> str:
        op = next(iter(self.ops)) if len(self.ops) == 1 else "{" + "|".join(sorted(self.ops)) + "}"
        args = [str(p) for p in self.inputs] + (["..."] if self.rest else [])
        s = f"{op}({', '.join(args)})"
        if self.attrs:
            s += " {" + ", ".join(f"{k}={_attr_str(v)}" for k, v in self.attrs.items()) + "}"
        return s + (f"@{self.name}" if self.name else "")


PatternLike = Pattern | Number


def _attr_str(v: Any) -> str:
    return getattr(v, "__name__", "<predicate>") if callable(v) else repr(v)


def _wrap(p: PatternLike) -> Pattern:
    if isinstance(p, Pattern):
        return p
    if isinstance(p, (int, float, bool, np.number)):
        return ConstValue(float(p), implicit=True)
    raise TypeError(f"cannot use {p!r} ({type(p).__name__}) in a pattern")


def _binary(op: str, a: PatternLike, b: PatternLike) -> OpPattern:
    return OpPattern(frozenset({op}), (_wrap(a), _wrap(b)))


def _op_pattern(op: str | Sequence[str] | frozenset[str], inputs: Sequence[Any],
                name: str | None = None, attrs: dict[str, Any] | None = None,
                one_use: bool = False, index: int | None = None,
                where: Callable[[Node], bool] | None = None) -> OpPattern:
    names = frozenset({op}) if isinstance(op, str) else frozenset(op)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"P.op needs an op name or a set of op names, got {op!r}")
    ins = list(inputs)
    rest = bool(ins) and ins[-1] is Ellipsis
    if rest:
        ins.pop()
    if any(i is Ellipsis for i in ins):
        raise TypeError("P.op: '...' (any further inputs) may only come last")
    return OpPattern(names, tuple(_wrap(i) for i in ins), name, dict(attrs or {}), rest,
                     one_use, index, where)


# -- constructors -----------------------------------------------------------------------------


class P:
    """Pattern constructors: ``P.var``, ``P.any``, ``P.const``, ``P.consts``, ``P.const_value``,
    ``P.op``, ``P.trace``."""

    @staticmethod
    def var(name: str, where: Callable[[Value], bool] | None = None) -> Var:
        return Var(name, where)

    @staticmethod
    def any() -> AnyValue:
        return AnyValue()

    @staticmethod
    def const(name: str | None = None, where: Callable[[np.ndarray], bool] | None = None) -> Const:
        return Const(name, where)

    @staticmethod
    def consts(*names: str) -> tuple[Const, ...]:
        return tuple(Const(n) for n in names)

    @staticmethod
    def const_value(value: Number, *, rel_tol: float = 0.0, abs_tol: float = 0.0,
                    name: str | None = None) -> ConstValue:
        return ConstValue(float(value), rel_tol, abs_tol, name)

    @staticmethod
    def op(op: str | Sequence[str] | frozenset[str], *inputs: Any, name: str | None = None,
           attrs: dict[str, Any] | None = None, one_use: bool = False, index: int | None = None,
           where: Callable[[Node], bool] | None = None) -> OpPattern:
        return _op_pattern(op, inputs, name, attrs, one_use, index, where)

    @staticmethod
    def trace(fn: Callable[..., Pattern], inputs: int | Sequence[str | Pattern] | None = None,
              *, rel_tol: float = 1e-6, abs_tol: float = 0.0) -> OpPattern:
        return trace(fn, inputs, rel_tol=rel_tol, abs_tol=abs_tol)


# -- patterns by example ----------------------------------------------------------------------


class OpBuilder:
    """Symbolic op builders for traced functions: ``ops.erf(x)``, ``ops.softmax(x, axis=-1)``
    or ``ops("erf", x)`` build ``P.op`` patterns; keyword arguments become attribute
    constraints. Op names are checked against the op table when a ``RuleSet`` is built."""

    def __call__(self, op: str, *inputs: Any, **attrs: Any) -> OpPattern:
        return _op_pattern(op, inputs, attrs=attrs)

    def __getattr__(self, op: str) -> Callable[..., OpPattern]:
        if op.startswith("_"):
            raise AttributeError(op)

        def build(*inputs: Any, **attrs: Any) -> OpPattern:
            return _op_pattern(op, inputs, attrs=attrs)

        build.__name__ = op
        return build


ops = OpBuilder()


def trace(fn: Callable[..., Pattern], inputs: int | Sequence[str | Pattern] | None = None, *,
          rel_tol: float = 1e-6, abs_tol: float = 0.0) -> OpPattern:
    """Trace ``fn`` over symbolic values into a pattern.

    ``inputs``: the arguments, as names (each becomes ``P.var(name)``) or patterns (e.g.
    ``P.const("gamma")``); an int n takes the first n parameter names of ``fn``; None takes all
    of them. Bare numbers in ``fn`` become splat constants matched within ``rel_tol``/``abs_tol``.
    """
    params = [p.name for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if inputs is None:
        inputs = params
    elif isinstance(inputs, int):
        inputs = params[:inputs] if len(params) >= inputs else [f"x{i}" for i in range(inputs)]
    args = [P.var(a) if isinstance(a, str) else a for a in inputs]
    out = fn(*args)
    if not isinstance(out, OpPattern):
        raise TypeError(f"trace({getattr(fn, '__name__', fn)}): the function must return an op "
                        f"pattern, got {out!r}")
    memo: dict[int, Pattern] = {}

    def with_tol(p: Pattern) -> Pattern:
        if id(p) in memo:
            return memo[id(p)]
        q: Pattern = p
        if isinstance(p, ConstValue) and p.implicit:
            q = replace(p, rel_tol=rel_tol, abs_tol=abs_tol)
        elif isinstance(p, OpPattern):
            ins = tuple(with_tol(c) for c in p.inputs)
            if any(a is not b for a, b in zip(ins, p.inputs, strict=True)):
                q = replace(p, inputs=ins)
        memo[id(p)] = q
        return q

    result = with_tol(out)
    assert isinstance(result, OpPattern)
    return result


# -- queries on patterns ----------------------------------------------------------------------


def walk(p: Pattern) -> Iterator[Pattern]:
    """Every pattern node reachable from ``p``, each once."""
    seen: set[int] = set()
    stack = [p]
    while stack:
        q = stack.pop()
        if id(q) in seen:
            continue
        seen.add(id(q))
        yield q
        stack.extend(reversed(q.children()))


def capture_names(p: Pattern) -> set[str]:
    names = set()
    for q in walk(p):
        n = getattr(q, "name", None)
        if n:
            names.add(n)
    return names


def check_pattern(p: Pattern, where: str) -> None:
    """Check op names and attribute names against the op table (a typo would never match)."""
    for q in walk(p):
        if not isinstance(q, OpPattern):
            continue
        for name in q.ops:
            if name not in OPS:
                raise IRError(f"{where}: pattern {q} uses unknown op {name!r}")
            bad = set(q.attrs) - set(get_op(name).attrs)
            if bad:
                raise IRError(f"{where}: pattern {q}: op {name} has no attribute(s) "
                              f"{', '.join(sorted(bad))}")


# -- matching ---------------------------------------------------------------------------------


@dataclass
class Match:
    """A successful match: the captures, and every node the pattern covered (the root first,
    then interior op nodes and the ``const`` nodes matched by constant patterns)."""

    root: Node
    captures: dict[str, Capture]
    nodes: list[Node]


# Bindings map capture names (str) and pattern identities (int) to what they matched.
_Bindings = dict


def match(pattern: Pattern, node: Node) -> dict[str, Capture] | None:
    """Match ``pattern`` with its top op at ``node``. Returns the captures, or None."""
    m = match_node(pattern, node)
    return None if m is None else m.captures


def match_node(pattern: Pattern, node: Node) -> Match | None:
    if not isinstance(pattern, OpPattern):
        raise TypeError(f"a pattern matched at a node must be an op pattern, got {pattern}")
    for b, nodes in _match_op(pattern, node, {}, ()):
        return Match(node, {k: v for k, v in b.items() if isinstance(k, str)}, list(nodes))
    return None


_Result = Iterator[tuple[_Bindings, tuple[Node, ...]]]


def _bind(b: _Bindings, key: str | int, what: Capture) -> _Bindings | None:
    """``b`` plus ``key -> what``, or None if ``key`` is bound to something else."""
    old = b.get(key)
    if old is not None:
        return b if old is what else None
    nb = dict(b)
    nb[key] = what
    return nb


def _match_value(p: Pattern, v: Value, b: _Bindings, nodes: tuple[Node, ...]) -> _Result:
    if isinstance(p, AnyValue):
        yield b, nodes
    elif isinstance(p, Var):
        if p.where is not None and not p.where(v):
            return
        nb = _bind(b, p.name, v)
        if nb is not None:
            yield nb, nodes
    elif isinstance(p, (Const, ConstValue)):
        if not v.is_const:
            return
        if isinstance(p, ConstValue) and not p.accepts(v.const_data):
            return
        if isinstance(p, Const) and p.where is not None and not (
                isinstance(v.const_data, np.ndarray) and p.where(v.const_data)):
            return
        nb = _bind(b, id(p), v)
        if nb is not None and p.name:
            nb = _bind(nb, p.name, v)
        if nb is not None:
            assert v.producer is not None
            yield nb, nodes + (v.producer,)
    elif isinstance(p, OpPattern):
        node = v.producer
        if node is None or (p.index is not None and v.index != p.index):
            return
        if p.one_use and (len(v.uses) != 1 or (node.graph is not None
                                               and node.graph.is_output(v))):
            return
        yield from _match_op(p, node, b, nodes)
    else:
        raise TypeError(f"unknown pattern {p!r}")


def _match_op(p: OpPattern, node: Node, b: _Bindings, nodes: tuple[Node, ...]) -> _Result:
    if node.op not in p.ops:
        return
    n_in = len(p.inputs)
    if len(node.inputs) < n_in or (len(node.inputs) > n_in and not p.rest):
        return
    for k, want in p.attrs.items():
        if k not in node.attrs or not _attr_ok(want, node.attrs[k]):
            return
    if p.where is not None and not p.where(node):
        return
    b1 = _bind(b, id(p), node)
    if b1 is None:
        return
    if p.name:
        b1 = _bind(b1, p.name, node)
        if b1 is None:
            return
    if id(p) in b:  # already matched along another path: its inputs are checked
        yield b1, nodes
        return
    nodes = nodes + (node,)
    orders = [tuple(range(n_in))]
    if n_in == 2 and len(node.inputs) == 2 and get_op(node.op).has(COMMUTATIVE):
        orders.append((1, 0))
    for order in orders:
        yield from _match_inputs(p.inputs, [node.inputs[i] for i in order], b1, nodes)


def _match_inputs(ps: Sequence[Pattern], vs: Sequence[Value], b: _Bindings,
                  nodes: tuple[Node, ...]) -> _Result:
    if not ps:
        yield b, nodes
        return
    for b1, n1 in _match_value(ps[0], vs[0], b, nodes):
        yield from _match_inputs(ps[1:], vs[1:], b1, n1)


def _attr_ok(want: Any, have: Any) -> bool:
    if callable(want) and not isinstance(want, type):
        return bool(want(have))
    return _attr_equal(want, have)


def _attr_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.shape(a) == np.shape(b) and np.array_equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_attr_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


# -- near misses --------------------------------------------------------------------------------


@dataclass
class NearMiss:
    """How far a pattern got at a node: ``depth`` op patterns matched before ``reason``."""

    depth: int
    reason: str
    node: str = ""  # IR text of the root tried


def explain_mismatch(pattern: OpPattern, node: Node,
                     name: Callable[[Value], str] | None = None) -> NearMiss:
    """The deepest partial match of ``pattern`` at ``node`` and what failed there (for the match
    report: "op mul expected, found add at %12"). Greedy: bindings are checked along the path
    tried, commutative operands in both orders."""
    name = name or (lambda v: f"%{v.name or v.uid}")
    depth, reason = _explain_op(pattern, node, {}, name)
    return NearMiss(depth, reason or "matches")


def _where(node: Node, name: Callable[[Value], str]) -> str:
    outs = ", ".join(name(v) for v in node.outputs)
    return f"{node.op} at {outs}" if outs else node.op


def _explain_op(p: OpPattern, node: Node, b: dict, name: Callable[[Value], str]
                ) -> tuple[int, str | None]:
    ops = "|".join(sorted(p.ops))
    if node.op not in p.ops:
        return 0, f"op {ops} expected, found {_where(node, name)}"
    n_in = len(p.inputs)
    if len(node.inputs) < n_in or (len(node.inputs) > n_in and not p.rest):
        return 0, (f"{n_in}{'+' if p.rest else ''} inputs expected, found "
                   f"{len(node.inputs)} at {_where(node, name)}")
    for k, want in p.attrs.items():
        if k not in node.attrs or not _attr_ok(want, node.attrs[k]):
            return 0, (f"attribute {k}={_attr_str(want)} expected, found "
                       f"{k}={node.attrs.get(k)!r} at {_where(node, name)}")
    if p.where is not None and not p.where(node):
        return 0, (f"condition {getattr(p.where, '__name__', '<where>')} failed at "
                   f"{_where(node, name)}")
    if id(p) in b and b[id(p)] is not node:
        return 0, f"the same node as before expected, found {_where(node, name)}"
    b = {**b, id(p): node}
    orders = [tuple(range(n_in))]
    if n_in == 2 and len(node.inputs) == 2 and get_op(node.op).has(COMMUTATIVE):
        orders.append((1, 0))
    best: tuple[int, str | None] = (1, None)
    for order in orders:
        depth, why, bb = 1, None, dict(b)
        for q, i in zip(p.inputs, order, strict=True):
            d, why = _explain_value(q, node.inputs[i], bb, name)
            depth += d
            if why is not None:
                break
        if why is None:
            return depth, None
        if best[1] is None or depth > best[0]:
            best = (depth, why)
    return best


def _explain_value(p: Pattern, v: Value, b: dict, name: Callable[[Value], str]
                   ) -> tuple[int, str | None]:
    where = v.producer and _where(v.producer, name) or f"the input {name(v)}"
    if isinstance(p, AnyValue):
        return 0, None
    if isinstance(p, Var):
        if p.where is not None and not p.where(v):
            return 0, f"condition on {p.name} failed for {name(v)}"
        if p.name in b and b[p.name] is not v:
            return 0, f"{p.name} bound to {name(b[p.name])} and to {name(v)}"
        b[p.name] = v
        return 0, None
    if isinstance(p, (Const, ConstValue)):
        if not v.is_const:
            return 0, f"a constant ({p}) expected, found {where}"
        if isinstance(p, ConstValue) and not p.accepts(v.const_data):
            return 0, f"a constant equal to {p.value!r} expected, found {name(v)}"
        if isinstance(p, Const) and p.where is not None and not (
                isinstance(v.const_data, np.ndarray) and p.where(v.const_data)):
            return 0, f"condition on constant {p} failed for {name(v)}"
        return 0, None
    if isinstance(p, OpPattern):
        if v.producer is None:
            return 0, f"op {'|'.join(sorted(p.ops))} expected, found {where}"
        if p.one_use and (len(v.uses) != 1 or v.producer.graph is not None
                          and v.producer.graph.is_output(v)):
            return 0, f"{name(v)} has other users (the pattern needs its only use)"
        return _explain_op(p, v.producer, b, name)
    return 0, f"unknown pattern {p!r}"
