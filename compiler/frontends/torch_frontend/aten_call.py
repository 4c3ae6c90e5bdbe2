"""ATen ops with no converter, captured whole as one opaque ``aten_call`` node.

A model that needs an op the converter table lacks still captures: the node calls the ATen
overload itself in every backend (the torch backend directly, native and TVM through their
torch fallback) and is listed as a fallback in the compile report; ``compile(strict=True)``
refuses it. Only functional, deterministic overloads whose results are tensors of rtinfer
dtypes qualify (``opaque_reason`` says why another does not).
"""

from __future__ import annotations

import json
from typing import Any

import sympy
import torch

from rtinfer.errors import IRError, UnsupportedOpsError
from rtinfer.frontends.torch_frontend.context import Ctx, ir_dtype
from rtinfer.ir.graph import Value
from rtinfer.ir.ops.aten import ATEN_CALL, encode_arg, type_str
from rtinfer.ir.types import DType, TensorType


def _out_vals(n: torch.fx.Node) -> list[Any] | None:
    val = n.meta.get("val")
    if isinstance(val, torch.Tensor):
        return [val]
    if isinstance(val, (list, tuple)) and val:
        return list(val)
    return None


def opaque_reason(n: torch.fx.Node) -> str | None:
    """Why FX node ``n`` cannot become an ``aten_call`` (None: it can)."""
    t = n.target
    if not isinstance(t, torch._ops.OpOverload) or t.namespace != "aten":
        return "not an ATen overload"
    if t._schema.is_mutable:
        return "writes to its inputs"
    if torch.Tag.nondeterministic_seeded in t.tags:
        # a random op: constant folding or caching its result would freeze the randomness
        return "random"
    outs = _out_vals(n)
    if outs is None or not all(isinstance(v, torch.Tensor) for v in outs):
        return "returns a non-tensor"
    for v in outs:
        try:
            DType.from_torch(v.dtype)
        except IRError:
            return f"returns {v.dtype}"
    try:
        for x in (*n.args, *n.kwargs.values()):
            encode_arg(x, lambda y: 0 if isinstance(y, torch.fx.Node) else None)
    except IRError as e:
        return str(e)
    return None


def convert_aten_call(cx: Ctx, args: tuple, kwargs: dict) -> Value | list[Value]:
    """The current FX node as one ``aten_call`` (``args``/``kwargs``: IR values resolved)."""
    n = cx.node
    inputs: list[Value] = []

    def index(x: Any) -> int | None:
        if not isinstance(x, Value):
            return None
        for i, v in enumerate(inputs):
            if v is x:
                return i
        inputs.append(x)
        return len(inputs) - 1

    try:
        data = [encode_arg(_plain(x), index) for x in args], \
            {k: encode_arg(_plain(x), index) for k, x in kwargs.items()}
    except IRError as e:
        raise UnsupportedOpsError("torch", [(str(n.target), n.name, str(e))]) from None
    outs = [TensorType(ir_dtype(v.dtype), tuple(cx.dim(d) for d in v.shape))
            for v in _out_vals(n)]
    values = cx.ops(ATEN_CALL, *inputs, target=str(n.target),
                    args=json.dumps(list(data), allow_nan=True),
                    in_types=[type_str(v.type) for v in inputs],
                    out_types=[type_str(t) for t in outs])
    return values if isinstance(n.meta["val"], (list, tuple)) else values[0]


def _plain(x: Any) -> Any:
    """A resolved argument with numeric sympy values as Python numbers (a symbolic one has no
    stored form: the dims of an ``aten_call`` are fixed by its declared types)."""
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(y) for y in x)
    if isinstance(x, sympy.Expr):
        if x.is_Integer:
            return int(x)
        if x.is_number:
            return float(x)
        raise IRError(f"a symbolic argument ({x})")
    return x
