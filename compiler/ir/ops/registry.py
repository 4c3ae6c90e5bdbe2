"""The op table machinery: ``OpDef``, attribute schemas, traits, channel-flow groups.

Every op is declared once (see the sibling modules) with its signature, traits, shape/dtype
inference, a NumPy/torch reference implementation and, where it has one, how channels flow
through it. The verifier, parser, interpreter, constant folding and fusion all read this table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.types import DType, TensorType, make_dim

# -- traits (TVM's op kinds plus algebraic facts the rewriter uses) ---------------------------

ELEMENTWISE = "elementwise"  # out[i] = f(in[i]), same shape in and out
BROADCAST = "broadcast"  # elementwise after numpy broadcasting of the inputs
INJECTIVE = "injective"  # each output element reads one input element (reshape, transpose)
REDUCE = "reduce"  # reduces over axes
OUT_FUSABLE = "out_fusable"  # heavy op whose output can absorb an elementwise epilogue
OPAQUE = "opaque"  # not fusable
COMMUTATIVE = "commutative"  # binary op with f(a, b) == f(b, a)
# kept as written until lowering: never constant-folded, fused into an elementwise body or moved
# by layout (quantize/dequantize: the int8 lowering reads the pair and its QuantParams)
KEEP = "keep"
TRAITS = frozenset({ELEMENTWISE, BROADCAST, INJECTIVE, REDUCE, OUT_FUSABLE, OPAQUE, COMMUTATIVE,
                    KEEP})

# -- attributes -------------------------------------------------------------------------------

REQUIRED = object()
ATTR_KINDS = ("int", "float", "bool", "str", "ints", "floats", "strs", "dtype", "shape",
              "tensor", "graph", "quant")


@dataclass(frozen=True)
class Attr:
    """An attribute's schema: kind, default (``REQUIRED`` if none), allowed values."""

    kind: str
    default: Any = REQUIRED
    choices: tuple | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTR_KINDS:
            raise ValueError(f"unknown attribute kind {self.kind!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def coerce(self, value: Any, where: str) -> Any:
        """Check ``value`` against the schema and return it in canonical form."""
        from rtinfer.ir.graph import Graph
        from rtinfer.ir.types import QuantParams

        k = self.kind
        if value is None and self.default is None:  # an optional attribute left unset
            return None

        def bad(expected: str):
            return IRError(f"{where}: expected {expected}, got {value!r}")

        if k == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise bad("an int")
            value = int(value)
        elif k == "float":
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                    value, (int, float, np.integer, np.floating)):
                raise bad("a float")
            value = float(value)
        elif k == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise bad("a bool")
            value = bool(value)
        elif k == "str":
            if not isinstance(value, str):
                raise bad("a string")
        elif k in ("ints", "floats", "strs", "shape"):
            if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
                raise bad("a list")
            elem = Attr({"ints": "int", "floats": "float", "strs": "str"}.get(k, "int"))
            if k == "shape":
                value = tuple(make_dim(d) if not isinstance(d, int) or d >= 0 else d
                              for d in value)
            else:
                value = tuple(elem.coerce(v, where) for v in value)
        elif k == "dtype":
            if isinstance(value, str):
                value = DType.parse(value)
            if not isinstance(value, DType):
                raise bad("a dtype")
        elif k == "tensor":
            from rtinfer.ir.constants import ElidedTensor

            # ElidedTensor: data left out of printed IR (types and compares, cannot evaluate)
            if not isinstance(value, (np.ndarray, ElidedTensor)):
                raise bad("a numpy array")
        elif k == "graph":
            if not isinstance(value, Graph):
                raise bad("a graph")
        elif k == "quant":
            if not isinstance(value, QuantParams):
                raise bad("quantization parameters")
        if self.choices is not None and value not in self.choices:
            raise IRError(f"{where}: {value!r} is not one of {', '.join(map(repr, self.choices))}")
        return value


# -- channel flow -----------------------------------------------------------------------------

# A port axis: ("in", input index, axis) or ("out", output index, axis). A channel group is a set
# of port axes that must be pruned together (Torch-Pruning's dependency groups, per op).
PortAxis = tuple[str, int, int]
ChannelFn = Callable[[list[TensorType], dict[str, Any]], list[frozenset[PortAxis]]]


def elementwise_channels(in_types: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    """Every axis flows straight through; inputs broadcast from the right (size-1 dims don't
    carry channels)."""
    rank = max(t.rank for t in in_types)
    groups = []
    for ax in range(rank):
        g = {("out", 0, ax)}
        for i, t in enumerate(in_types):
            a = ax - (rank - t.rank)
            if a >= 0 and t.shape[a] != 1:
                g.add(("in", i, a))
        groups.append(frozenset(g))
    return groups


# -- weights and cost -------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightRole:
    """Which input of a layer is its weight, and which weight axis holds the output channels and
    which the input channels (per group for grouped convolutions; negative axes count from the
    end). One fact for BatchNorm folding, merging parallel layers, per-channel quantization
    scales and channel pruning."""

    input: int
    out_axis: int
    in_axis: int

    def axes(self, rank: int) -> tuple[int, int]:
        """(out_axis, in_axis) as non-negative axes of a weight of ``rank``."""
        return self.out_axis % rank, self.in_axis % rank


# a node's floating-point operations (2 per multiply-add); 0 where its shapes are symbolic
CostFn = Callable[[Any], int]

# -- structured pruning -------------------------------------------------------------------------

# element a_idx[k] of port axis a is the same channel as element b_idx[k] of port axis b; with
# b None the elements a_idx of a are read by no other port (a slice's skipped channels) and
# may go freely
IndexLink = tuple[PortAxis, np.ndarray, "PortAxis | None", "np.ndarray | None"]
LinksFn = Callable[[list[TensorType], list[TensorType], dict[str, Any]], list[IndexLink]]
# the kept (sorted, old) channel indices of each port axis that pruning shrinks -> new attrs
PruneAttrsFn = Callable[[list[TensorType], dict[str, Any], dict[PortAxis, np.ndarray]],
                        dict[str, Any]]


@dataclass(frozen=True)
class PruneHook:
    """What channel pruning needs beyond ``channel_groups`` (whose axes map index to index):
    ``links(in_types, out_types, attrs)`` maps channels between axes that are not one to one
    (a concat's output axis onto offsets of its inputs, a flatten's features onto blocks of
    channels), and ``attrs(in_types, attrs, kept)`` rewrites attributes that hold channel
    counts (reshape shapes, split sizes, conv groups) once channels go. ``reduces(in_types,
    attrs)`` names the port axes the op reduces over (a LayerNorm's hidden size): pruning them
    changes every output, so their groups are pruned only when asked (kind "hidden")."""

    links: LinksFn | None = None
    attrs: PruneAttrsFn | None = None
    reduces: Callable[[list[TensorType], dict[str, Any]], list[PortAxis]] | None = None


# -- the op definition ------------------------------------------------------------------------

InferFn = Callable[[list[TensorType], dict[str, Any]], "TensorType | list[TensorType]"]


@dataclass
class OpDef:
    name: str
    inputs: tuple[str, ...]
    attrs: dict[str, Attr]
    traits: frozenset[str]
    infer: InferFn
    ref: Callable[..., Any]
    channels: ChannelFn | None = None
    doc: str = ""
    ref_types: bool = False  # the reference also takes ``in_types=`` (e.g. to read QuantParams)
    weight: WeightRole | None = None
    cost: CostFn | None = None  # FLOPs of one node (rtinfer.ir.flops); None: not counted
    prune: PruneHook | None = None  # channel pruning beyond channel_groups (passes/pruning)
    n_required: int = field(init=False)
    variadic: bool = field(init=False)

    def __post_init__(self) -> None:
        unknown = set(self.traits) - TRAITS
        if unknown:
            raise ValueError(f"op {self.name}: unknown traits {sorted(unknown)}")
        self.variadic = any(n.startswith("*") for n in self.inputs)
        self.n_required = sum(1 for n in self.inputs if not n.endswith("?")
                              and not n.startswith("*"))
        if self.variadic and self.inputs[-1][0] != "*":
            raise ValueError(f"op {self.name}: only the last input may be variadic")
        if self.weight is not None and not 0 <= self.weight.input < len(self.inputs):
            raise ValueError(f"op {self.name}: weight input {self.weight.input} out of range")

    def has(self, trait: str) -> bool:
        return trait in self.traits

    @property
    def signature(self) -> str:
        attrs = ", ".join(
            f"{k}: {a.kind}" + ("" if a.required else f" = {a.default!r}")
            for k, a in self.attrs.items())
        return f"{self.name}({', '.join(self.inputs)})" + (f" {{{attrs}}}" if attrs else "")

    def check_arity(self, n: int, where: str = "") -> None:
        where = where or self.name
        max_n = None if self.variadic else len(self.inputs)
        if n < self.n_required or (max_n is not None and n > max_n):
            expect = (f"at least {self.n_required}" if max_n is None
                      else str(self.n_required) if max_n == self.n_required
                      else f"{self.n_required} to {max_n}")
            raise IRError(f"{where}: {self.name} takes {expect} inputs "
                          f"({', '.join(self.inputs)}), got {n}")

    def complete_attrs(self, attrs: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Validate attribute names and kinds, and fill in defaults."""
        where = where or self.name
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            valid = ", ".join(self.attrs) or "none"
            raise IRError(f"{where}: unknown attribute(s) {', '.join(sorted(unknown))} for op "
                          f"{self.name} (valid: {valid})")
        out = {}
        for k, schema in self.attrs.items():
            if k in attrs:
                out[k] = schema.coerce(attrs[k], f"{where}: attribute {k}")
            elif schema.required:
                raise IRError(f"{where}: op {self.name} needs attribute {k} ({schema.kind})")
            else:
                out[k] = schema.default
        return out

    def infer_types(self, in_types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        self.check_arity(len(in_types))
        try:
            out = self.infer(list(in_types), attrs)
        except IRError as e:
            raise IRError(f"{self.name}: {e}") from None
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def positional(self, values: list[Any]) -> list[Any]:
        """A node's input values as the op's signature takes them: absent optional inputs
        as None, a variadic tail (``*xs``) as one list (references and backend emitters)."""
        if self.variadic:
            fixed = len(self.inputs) - 1
            return values[:fixed] + [values[fixed:]]
        return values + [None] * (len(self.inputs) - len(values))

    def evaluate(self, arrays: list[np.ndarray], attrs: dict[str, Any],
                 in_types: list[TensorType] | None = None,
                 dims: dict | None = None) -> list[np.ndarray]:
        """Run the reference implementation; optional inputs left out are passed as None.

        ``in_types`` (the inputs' declared types) and ``dims`` (symbol bindings the caller
        already knows, ``{Symbol or name: int}``) are optional for most ops. Symbols in
        ``shape`` attributes are substituted from ``dims`` and from the inputs' dims bound to
        the arrays' sizes, so ``reshape {shape=[B, S, 12, 64]}`` evaluates. Ops declared with
        ``ref_types`` (``dequantize`` reads its input's QuantParams) need ``in_types``.
        """
        if in_types is not None or dims:
            attrs = self._bind_shape_attrs(arrays, attrs, in_types or [], dims or {})
        if self.ref_types:
            if in_types is None:
                raise IRError(f"{self.name}: the reference implementation needs the input "
                              f"types (pass in_types)")
            attrs = {**attrs, "in_types": list(in_types)}
        out = self.ref(*self.positional(list(arrays)), **attrs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in outs]

    def _bind_shape_attrs(self, arrays: list[np.ndarray], attrs: dict[str, Any],
                          in_types: list[TensorType], dims: dict) -> dict[str, Any]:
        import sympy

        from rtinfer.ir.ops.common import subs_dims

        shape_attrs = [k for k, a in self.attrs.items() if a.kind == "shape" and k in attrs]
        if not shape_attrs:
            return attrs
        env: dict[str, int] = {str(k): int(v) for k, v in dims.items()}
        for t, a in zip(in_types, arrays, strict=False):
            if a is not None:
                for d, n in zip(t.shape, np.shape(a), strict=False):
                    if isinstance(d, sympy.Symbol):
                        env.setdefault(d.name, int(n))
        return {**attrs, **{k: subs_dims(attrs[k], env) for k in shape_attrs}}

    def channel_groups(self, in_types: list[TensorType],
                       attrs: dict[str, Any]) -> list[frozenset[PortAxis]] | None:
        """How channels flow through this op, or None if it blocks channel pruning."""
        return None if self.channels is None else self.channels(in_types, attrs)


class OpTable:
    def __init__(self) -> None:
        self._ops: dict[str, OpDef] = {}

    def add(self, opdef: OpDef) -> OpDef:
        if opdef.name in self._ops:
            raise ValueError(f"op {opdef.name!r} is declared twice")
        self._ops[opdef.name] = opdef
        return opdef

    def get(self, name: str) -> OpDef:
        try:
            return self._ops[name]
        except KeyError:
            raise IRError(f"unknown op {name!r} (not in the op table; add one entry in "
                          f"compiler/ir/ops/ to declare it)") from None

    def __contains__(self, name: str) -> bool:
        return name in self._ops

    def __iter__(self):
        return iter(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def names(self) -> list[str]:
        return sorted(self._ops)


OPS = OpTable()


def op(name: str, inputs: Sequence[str], infer: InferFn, ref: Callable[..., Any], *,
       attrs: dict[str, Attr] | None = None, traits: Sequence[str] = (),
       channels: ChannelFn | None = None, doc: str = "", ref_types: bool = False,
       weight: WeightRole | None = None, cost: CostFn | None = None,
       prune: PruneHook | None = None) -> OpDef:
    """Declare one op in the table (the one place an op is defined)."""
    return OPS.add(OpDef(name, tuple(inputs), dict(attrs or {}), frozenset(traits), infer, ref,
                         channels, doc, ref_types, weight, cost, prune))


def get_op(name: str) -> OpDef:
    return OPS.get(name)
