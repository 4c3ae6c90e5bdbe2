"""``aten_call``: one ATen op the op table lacks, kept whole and run through torch.

    %v, %i = aten_call(%x) {target="aten.kthvalue.default", args="[{\\"in\\": 0}, 2, -1, false]",
                            in_types=["f32[4,5]"], out_types=["f32[4]", "i64[4]"]}

The torch frontend captures an ATen overload that has no converter as this opaque node instead of
refusing the whole model (as TorchInductor falls back to ATen for what it does not lower). The
node is its own reference: the interpreter, constant folding and the torch backend all call the
overload itself. Its attributes hold everything the call needs as plain data, so the text form
and artifacts carry it and nothing is executed on load:

- ``target``: the overload's qualified name; it must resolve to a ``torch.ops.aten`` overload
  (``resolve_target``), so a crafted artifact cannot name any other callable.
- ``args``: JSON of ``[positional args, keyword args]`` with each tensor argument written
  ``{"in": i}`` (the node's i-th input) and non-JSON values tagged: ``{"dtype": "float32"}``,
  ``{"memory_format": ...}``, ``{"layout": "strided"}``, ``{"device": "cpu"}``.
- ``in_types`` / ``out_types``: the types torch.export recorded. Shape inference cannot see
  inside the op, so the verifier checks the inputs against ``in_types`` and the outputs are
  ``out_types``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import torch

from rtinfer.errors import IRError
from rtinfer.ir.ops.common import to_numpy, to_torch
from rtinfer.ir.ops.registry import OPAQUE, Attr, op
from rtinfer.ir.types import DType, TensorType, dim_str, dims_equal, parse_dim

ATEN_CALL = "aten_call"

_TARGET_RE = re.compile(r"aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_TYPE_RE = re.compile(r"([a-z0-9]+)\[([^\[\]]*)\]")

# the non-JSON argument values a call may carry, by tag: name -> torch object
_TAGGED: dict[str, dict[str, Any]] = {
    "dtype": {str(d).removeprefix("torch."): d for d in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
        torch.bool)},
    "memory_format": {"contiguous_format": torch.contiguous_format,
                      "preserve_format": torch.preserve_format,
                      "channels_last": torch.channels_last,
                      "channels_last_3d": torch.channels_last_3d},
    "layout": {"strided": torch.strided},
    "device": {"cpu": torch.device("cpu")},
}


def resolve_target(target: str) -> torch._ops.OpOverload:
    """The ``torch.ops.aten`` overload named ``target`` (``aten.kthvalue.default``); anything
    else is an ``IRError``, so an artifact can name ATen ops only."""
    m = _TARGET_RE.fullmatch(target)
    if m is None:
        raise IRError(f"aten_call target {target!r} is not an ATen overload name "
                      f"(aten.<op>.<overload>)")
    try:
        overload = getattr(getattr(torch.ops.aten, m.group(1)), m.group(2))
    except (AttributeError, RuntimeError):
        raise IRError(f"aten_call target {target!r}: this torch has no such ATen op") from None
    if not isinstance(overload, torch._ops.OpOverload):
        raise IRError(f"aten_call target {target!r} is not an ATen overload")
    if overload._schema.is_mutable:
        raise IRError(f"aten_call target {target!r} writes to its inputs (only functional "
                      f"ops can be called)")
    return overload


# -- arguments as JSON ----------------------------------------------------------------------


def encode_arg(x: Any, tensor_index: Any) -> Any:
    """One call argument as JSON data; ``tensor_index(x)`` gives the input index of a tensor
    argument, or None when ``x`` is not one. Raises ``IRError`` for a value it cannot carry."""
    i = tensor_index(x)
    if i is not None:
        return {"in": i}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, (list, tuple)):
        return [encode_arg(y, tensor_index) for y in x]
    for tag, table in _TAGGED.items():
        for name, obj in table.items():
            if type(x) is type(obj) and x == obj:
                return {tag: name}
    raise IRError(f"an argument of type {type(x).__name__} ({x!r}) cannot be stored")


def decode_args(text: str, n_inputs: int) -> tuple[list[Any], dict[str, Any]]:
    """``args`` back as (positional, keyword) with ``{"in": i}`` kept for the caller to fill."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise IRError(f"aten_call args are not valid JSON: {e}") from None
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], list)
            and isinstance(data[1], dict)):
        raise IRError("aten_call args must be [positional list, keyword object]")
    _check_data(data, n_inputs, seen := set())
    if seen != set(range(n_inputs)):
        raise IRError(f"aten_call args refer to inputs {sorted(seen)}, but the node has "
                      f"{n_inputs} input(s)")
    return data[0], data[1]


def _is_tag(x: Any) -> bool:
    """Whether ``x`` is an ``{"in": i}`` reference or a tagged value (``{"dtype": "float32"}``)
    rather than a keyword-argument object: a tag's value is a number or a name, so keyword
    arguments ``{"dtype": {"dtype": "float32"}}`` (one keyword, named like a tag) stay plain."""
    if not (isinstance(x, dict) and len(x) == 1):
        return False
    (tag, v), = x.items()
    return tag == "in" or (tag in _TAGGED and isinstance(v, str))


def _check_data(x: Any, n_inputs: int, seen: set[int]) -> None:
    if isinstance(x, list):
        for y in x:
            _check_data(y, n_inputs, seen)
    elif _is_tag(x):
        (tag, v), = x.items()
        if tag == "in":
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_inputs:
                raise IRError(f"aten_call args: input reference {v!r} out of range "
                              f"(the node has {n_inputs} input(s))")
            seen.add(v)
        elif v not in _TAGGED[tag]:
            raise IRError(f"aten_call args: unknown {tag} {v!r}")
    elif isinstance(x, dict):
        for v in x.values():
            _check_data(v, n_inputs, seen)
    elif not (x is None or isinstance(x, (bool, int, float, str))):
        raise IRError(f"aten_call args: unexpected value {x!r}")


def fill_args(data: Any, inputs: list[Any]) -> Any:
    """Decoded arguments with ``{"in": i}`` replaced by ``inputs[i]`` and tags by torch
    objects (``inputs`` may be tensors or fx proxies)."""
    if isinstance(data, list):
        return [fill_args(y, inputs) for y in data]
    if isinstance(data, dict):
        if _is_tag(data):
            (tag, v), = data.items()
            if tag == "in":
                return inputs[v]
            return _TAGGED[tag][v]
        return {k: fill_args(v, inputs) for k, v in data.items()}
    return data


# -- types as text --------------------------------------------------------------------------


def type_str(t: TensorType) -> str:
    return f"{t.dtype}[{','.join(dim_str(d) for d in t.shape)}]"


def parse_type_str(text: str) -> TensorType:
    m = _TYPE_RE.fullmatch(text.strip())
    if m is None:
        raise IRError(f"aten_call: {text!r} is not a type like f32[2,B]")
    dims = m.group(2).strip()
    return TensorType(DType.parse(m.group(1)),
                      tuple(parse_dim(d) for d in dims.split(",")) if dims else ())


# -- the op ---------------------------------------------------------------------------------


def _infer(ins: list[TensorType], attrs: dict) -> list[TensorType]:
    resolve_target(attrs["target"])
    decode_args(attrs["args"], len(ins))
    declared = [parse_type_str(s) for s in attrs["in_types"]]
    if len(declared) != len(ins):
        raise IRError(f"{attrs['target']} was captured with {len(declared)} input(s), "
                      f"got {len(ins)}")
    for i, (want, got) in enumerate(zip(declared, ins, strict=True)):
        if want.dtype is not got.dtype or want.rank != got.rank or not all(
                dims_equal(a, b) for a, b in zip(want.shape, got.shape, strict=True)):
            raise IRError(f"{attrs['target']} input {i}: expected {type_str(want)}, got "
                          f"{type_str(got)}")
    if not attrs["out_types"]:
        raise IRError(f"{attrs['target']}: an aten_call needs at least one output")
    return [parse_type_str(s) for s in attrs["out_types"]]


def call_aten(target: str, args: str, inputs: list[Any]) -> list[Any]:
    """Call the overload on ``inputs`` (tensors or fx proxies); its results as a flat list."""
    pos, kw = decode_args(args, len(inputs))
    out = resolve_target(target)(*fill_args(pos, inputs), **fill_args(kw, inputs))
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _ref(*xs: Any, target: str, args: str, in_types: tuple, out_types: tuple) -> list:
    tensors = [to_torch(np.asarray(x)) for x in (xs[0] if xs else [])]
    with torch.no_grad():
        outs = call_aten(target, args, tensors)
    if len(outs) != len(out_types):
        raise IRError(f"{target} returned {len(outs)} value(s), the node declares "
                      f"{len(out_types)}")
    return [to_numpy(o) for o in outs]


op(ATEN_CALL, ["*xs"], _infer, _ref,
   attrs={"target": Attr("str"), "args": Attr("str"), "in_types": Attr("strs"),
          "out_types": Attr("strs")},
   traits=[OPAQUE],
   doc="An ATen overload the op table lacks, captured whole by the torch frontend and run "
       "through torch everywhere (its own reference). Backends list it as a fallback; "
       "compile(strict=True) refuses it. `target` must name a torch.ops.aten overload.")


def fallback_name(node: Any) -> str:
    """How reports and errors name a node that runs outside a backend's own code: an
    ``aten_call`` by the ATen op it calls (``aten_call(aten.kthvalue.default)``)."""
    if node.op == ATEN_CALL:
        return f"{ATEN_CALL}({node.attrs['target']})"
    return node.op
