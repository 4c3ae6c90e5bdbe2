"""The exporter's building blocks: opsets and dtypes, the emitter that builds ONNX nodes
(``Emitter``: names, constants, symbolic dims as Shape arithmetic), the node being exported as a
rule sees it (``Site``), the simplest rules (``simple``, ``chain``) and what rules of several
families share (``channels_last``, ``axis_attr``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import sympy

from rtinfer.errors import Unsupported
from rtinfer.ir.graph import Node
from rtinfer.ir.ops.layouts import permute_type, to_channels_first, to_channels_last
from rtinfer.ir.types import Dim, DType, TensorType, dim_str

DEFAULT_OPSET = 21  # ONNX Runtime 1.32 runs opsets up to 25; TensorRT 10 parses 21
MIN_OPSET = 18  # reductions take axes as an input, Resize takes axes, Mish exists
CUSTOM_DOMAIN = "ai.rtinfer"
CUSTOM_DOMAIN_VERSION = 1
# Initializers above this many bytes in total go to an external data file (protobuf's 2 GiB
# limit, less headroom for the graph itself).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26

# Ops of the op table with no standard ONNX form, and why. They export only through the custom
# domain (allow_custom=True). tests/frontends/test_onnx_export.py checks that this list is
# exactly the set of ops without a rule, so a new op without an exporter shows up there.
NO_ONNX_FORM: dict[str, str] = {
    "aten_call": "an opaque call of a torch ATen op the op table lacks (rtinfer.ir.ops.aten); "
                 "it has no ONNX form in general",
}

_ONNX_DTYPE = {
    DType.f64: onnx.TensorProto.DOUBLE, DType.f32: onnx.TensorProto.FLOAT,
    DType.f16: onnx.TensorProto.FLOAT16, DType.bf16: onnx.TensorProto.BFLOAT16,
    DType.i64: onnx.TensorProto.INT64, DType.i32: onnx.TensorProto.INT32,
    DType.i16: onnx.TensorProto.INT16, DType.i8: onnx.TensorProto.INT8,
    DType.u8: onnx.TensorProto.UINT8, DType.u16: onnx.TensorProto.UINT16,
    DType.u32: onnx.TensorProto.UINT32, DType.u64: onnx.TensorProto.UINT64,
    DType.bool: onnx.TensorProto.BOOL,
}
HALF_DTYPES = (DType.f16, DType.bf16)


def gs_dtype(dt: DType):
    # graphsurgeon maps numpy dtypes; bfloat16 goes by its ONNX enum
    return onnx.TensorProto.BFLOAT16 if dt is DType.bf16 else dt.np


def gs_shape(t: TensorType) -> list[int | str]:
    return [d if isinstance(d, int) else dim_str(d) for d in t.shape]


class Names:
    """Unique, sanitized ONNX names."""

    def __init__(self) -> None:
        self.used: set[str] = {""}

    def unique(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.\-/:]", "_", hint) or "t"
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


@dataclass
class Site:
    """The node being exported, as its rule sees it. With ``full_precision`` the types of a
    half-precision node read f32 (the driver casts around it)."""

    node: Node
    name: str
    in_types: list[TensorType]
    out_types: list[TensorType]
    attrs: dict[str, Any]

    @property
    def x(self) -> TensorType:
        return self.in_types[0]

    @property
    def out(self) -> TensorType:
        return self.out_types[0]


class Emitter:
    """Builds the graphsurgeon graph: nodes, constants, and shape tensors for symbolic dims."""

    def __init__(self, opset: int, names: Names):
        self.opset = opset
        self.names = names  # tensor names
        self.node_names = Names()
        self.nodes: list[gs.Node] = []
        self.prefix = "export"
        self._consts: dict[tuple, gs.Constant] = {}
        self._sym_src: dict[str, tuple[gs.Variable, int]] = {}
        self._dims: dict[str, gs.Tensor] = {}

    # -- nodes and constants ------------------------------------------------------------------

    def op(self, op_type: str, inputs: Sequence[gs.Tensor | None],
           attrs: dict[str, Any] | None = None, *, n_out: int = 1,
           domain: str | None = None) -> Any:
        """Append one ONNX node; returns its output (or outputs when ``n_out > 1``)."""
        ins = list(inputs)
        while ins and ins[-1] is None:  # trailing optional inputs are left out
            ins.pop()
        ins = [gs.Variable.empty() if t is None else t for t in ins]
        outs = [gs.Variable(self.names.unique(f"{self.prefix}/{op_type}_out"))
                for _ in range(n_out)]
        self.nodes.append(gs.Node(op_type, self.node_names.unique(f"{self.prefix}/{op_type}"),
                                  attrs=dict(attrs or {}), inputs=ins, outputs=outs,
                                  domain=domain))
        return outs[0] if n_out == 1 else outs

    def const(self, array: Any, dtype: np.dtype | type | None = None,
              name: str | None = None) -> gs.Constant:
        """An initializer; small constants with equal contents are shared."""
        a = np.asarray(array, dtype=dtype)
        key = None
        if name is None and a.size <= 64:
            key = (a.dtype.str, a.shape, a.tobytes())
            if key in self._consts:
                return self._consts[key]
        c = gs.Constant(self.names.unique(name or f"{self.prefix}/const"), a)
        if key is not None:
            self._consts[key] = c
        return c

    def ints(self, values: Sequence[int]) -> gs.Constant:
        return self.const(np.asarray(list(values), np.int64).reshape(-1))

    def scalar(self, value: float | int | bool, dt: DType) -> gs.Constant:
        return self.const(np.asarray(value).astype(dt.np))

    def cast(self, x: gs.Tensor, dt: DType) -> gs.Variable:
        return self.op("Cast", [x], {"to": _ONNX_DTYPE[dt]})

    def filled(self, dims: Sequence[Dim], value: float, dt: DType) -> gs.Tensor:
        """A tensor of ``dims`` (static or symbolic) filled with ``value``."""
        if all(isinstance(d, int) for d in dims):
            return self.const(np.full(tuple(dims), value, dt.np))
        fill = gs.Constant("", np.asarray([value]).astype(dt.np))
        return self.op("ConstantOfShape", [self.shape(dims)], {"value": fill})

    # -- symbolic dims as int64 tensors --------------------------------------------------------

    def add_symbol_source(self, var: gs.Variable, t: TensorType) -> None:
        for axis, d in enumerate(t.shape):
            if isinstance(d, sympy.Symbol):
                self._sym_src.setdefault(d.name, (var, axis))

    def shape(self, dims: Sequence[Dim]) -> gs.Tensor:
        """A 1-d int64 tensor holding ``dims``: an initializer when they are all static, else
        a Concat of static runs and dims computed from the graph inputs' shapes."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(dims)
        parts: list[gs.Tensor] = []
        run: list[int] = []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                parts.append(self.ints(run))
                run = []
            parts.append(self.dim(d))
        if run:
            parts.append(self.ints(run))
        return parts[0] if len(parts) == 1 else self.op("Concat", parts, {"axis": 0})

    def dim(self, d: Dim) -> gs.Tensor:
        """One dim as a ``[1]`` int64 tensor."""
        if isinstance(d, int):
            return self.ints([d])
        key = dim_str(d)
        if key not in self._dims:
            prefix, self.prefix = self.prefix, f"dim/{key}"
            try:
                self._dims[key] = self._eval_dim(d)
            finally:
                self.prefix = prefix
        return self._dims[key]

    def _eval_dim(self, e: sympy.Expr) -> gs.Tensor:
        # sizes are non-negative, so integer Div (truncating) is floor division here
        if e.is_Integer:
            return self.ints([int(e)])
        if isinstance(e, sympy.Symbol):
            if e.name not in self._sym_src:
                raise Unsupported("symbolic dim",
                                  f"symbolic dim {e} is not a dim of any graph input")
            var, axis = self._sym_src[e.name]
            return self.op("Shape", [var], {"start": axis, "end": axis + 1})
        if isinstance(e, (sympy.floor, sympy.ceiling)):
            num, den = e.args[0].as_numer_denom()
            n, dd = self.dim(num), self.dim(den)
            if isinstance(e, sympy.ceiling):  # ceil(n / d) = (n + d - 1) / d
                n = self.op("Sub", [self.op("Add", [n, dd]), self.ints([1])])
            return self.op("Div", [n, dd])
        if isinstance(e, sympy.Mul):
            num, den = e.as_numer_denom()
            if den != 1:
                return self.op("Div", [self.dim(num), self.dim(den)])
            return self._fold("Mul", e.args)
        if isinstance(e, sympy.Add):
            return self._fold("Add", e.args)
        if isinstance(e, sympy.Pow) and e.exp.is_Integer and e.exp > 0:
            return self._fold("Mul", [e.base] * int(e.exp))
        raise Unsupported("symbolic dim", f"cannot compute the symbolic dim {e} in ONNX")

    def _fold(self, op_type: str, args: Sequence[sympy.Expr]) -> gs.Tensor:
        acc = self.dim(args[0])
        for a in args[1:]:
            acc = self.op(op_type, [acc, self.dim(a)])
        return acc


# -- rules --------------------------------------------------------------------------------------
# A rule gets the emitter, the site and the ONNX tensors of the node's inputs, and returns the
# tensor (or list of tensors) of the node's outputs.

Rule = Callable[[Emitter, Site, list[gs.Tensor]], Any]


def simple(op_type: str, attrs: Callable[[dict], dict] | None = None) -> Rule:
    """One ONNX node with the same inputs; ``attrs`` maps IR attributes to ONNX ones."""
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        return e.op(op_type, x, attrs(s.attrs) if attrs else None)
    return rule


def chain(*op_types: str) -> Rule:
    """Unary ONNX ops applied in turn: ``chain("Sqrt", "Reciprocal")`` is 1 / sqrt(x)."""
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        y = x[0]
        for t in op_types:
            y = e.op(t, [y])
        return y
    return rule


def channels_last(rule: Rule) -> Rule:
    """An op with ``layout="NHWC"``: Transpose to NCHW, the NCHW rule, Transpose back."""
    def wrapped(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        if s.attrs.get("layout", "NCHW") != "NHWC":
            return rule(e, s, x)
        cf, cl = to_channels_first(s.x.rank), to_channels_last(s.out.rank)
        site = Site(s.node, s.name, [permute_type(s.x, cf)] + s.in_types[1:],
                    [permute_type(s.out, to_channels_first(s.out.rank))] + s.out_types[1:],
                    {k: v for k, v in s.attrs.items() if k != "layout"})
        y = rule(e, site, [e.op("Transpose", [x[0]], {"perm": list(cf)})] + x[1:])
        return e.op("Transpose", [y], {"perm": list(cl)})
    return wrapped


def axis_attr(a: dict) -> dict:
    """The ``axis`` attribute alone, as ONNX takes it."""
    return {"axis": a["axis"]}
