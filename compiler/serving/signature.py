"""What one request to a batched model must look like, read off the compiled model's IR.

Every input and output of the model has the batch axis first: one symbol shared by all
inputs (``f32[B,16]``, compiled with ``dynamic_dims``), so any bucket size runs, or one static
size shared by all (``f32[8,16]``), which is then the only bucket. A request is one example:
each input without the batch axis. ``Signature.check`` turns a request into arrays of the
model's dtypes or raises ``InvalidRequest`` naming the input and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy
import torch

from rtinfer.ir.graph import Graph
from rtinfer.ir.types import TensorType
from rtinfer.serving.errors import InvalidRequest, ServingError

NAN_POLICIES = ("allow", "reject")


@dataclass(frozen=True)
class Request:
    """A checked request: one array per model input (a private copy, never the caller's
    buffer), the shapes it is grouped by (only requests of equal shapes share a batch) and
    whether the caller passed torch tensors (answered with torch tensors)."""

    arrays: tuple[np.ndarray, ...]
    key: tuple[tuple[int, ...], ...]
    as_torch: bool


class Signature:
    """The per-example input types of a model whose inputs and outputs share a batch axis."""

    def __init__(self, graph: Graph, input_names: list[str], nan_policy: str = "allow"):
        if nan_policy not in NAN_POLICIES:
            raise ServingError(f"nan_policy={nan_policy!r}: expected one of "
                               f"{', '.join(map(repr, NAN_POLICIES))}")
        if not graph.inputs:
            raise ServingError("the model takes no inputs: there is nothing to batch")
        self.names = list(input_names)
        self.types: list[TensorType] = [v.type for v in graph.inputs]
        self.nan_policy = nan_policy
        leads = []
        for name, t in zip(self.names, self.types, strict=True):
            if not t.shape:
                raise ServingError(f"input {name!r} is a scalar ({t}): the batcher stacks "
                                   f"requests along a leading batch axis every input must have")
            leads.append(t.shape[0])
        first = leads[0]
        if any(d != first for d in leads):
            raise ServingError(
                "the inputs do not share a leading batch axis ("
                + ", ".join(f"{n}: {t}" for n, t in zip(self.names, self.types, strict=True))
                + "); compile with dynamic_dims={input: {0: 'B'}} for every input")
        if not isinstance(first, int | sympy.Symbol):
            raise ServingError(f"the leading dim {first} of the inputs is an expression; the "
                               f"batch axis must be one symbol or a static size")
        # the batch symbol (any size runs) or the one static batch size
        self.batch: sympy.Symbol | int = first
        for i, v in enumerate(graph.outputs):
            if not v.type.shape or v.type.shape[0] != self.batch:
                raise ServingError(f"output {i} ({v.type}) does not have the batch axis "
                                   f"{self.batch} first: its rows cannot be split back to the "
                                   f"requests of a batch")
        for name, t in zip(self.names, self.types, strict=True):
            if any(isinstance(d, sympy.Expr) and self.batch in getattr(d, "free_symbols", ())
                   for d in t.shape[1:]):
                raise ServingError(f"input {name!r} ({t}) uses the batch symbol outside its "
                                   f"leading axis")

    @property
    def static_batch(self) -> int | None:
        return self.batch if isinstance(self.batch, int) else None

    def describe(self) -> str:
        """``x: f32[16], mask: bool[8]``: one example of each input."""
        return ", ".join(f"{n}: {_example_type(t)}" for n, t in zip(self.names, self.types,
                                                                     strict=True))

    def check(self, args: tuple, named: dict[str, Any]) -> Request:
        """The request as private arrays of the model's dtypes; ``InvalidRequest`` names the
        first input that does not fit."""
        given = self._bind(args, named)
        arrays = []
        as_torch = bool(given) and all(isinstance(x, torch.Tensor) for x in given)
        env: dict[sympy.Symbol, int] = {}
        for name, t, x in zip(self.names, self.types, given, strict=True):
            arrays.append(self._check_one(name, t, x, env))
        return Request(tuple(arrays), tuple(a.shape for a in arrays), as_torch)

    def _bind(self, args: tuple, named: dict[str, Any]) -> list[Any]:
        n = len(self.names)
        unknown = sorted(set(named) - set(self.names))
        if unknown:
            raise InvalidRequest(f"unknown input(s) {', '.join(map(repr, unknown))}; the model "
                                 f"takes {self.describe()}")
        if len(args) > n:
            raise InvalidRequest(f"expected {n} input(s) ({self.describe()}), got {len(args)}")
        given: dict[str, Any] = dict(zip(self.names, args, strict=False))
        for k, v in named.items():
            if k in given:
                raise InvalidRequest(f"input {k!r} given twice (by position and by name)")
            given[k] = v
        missing = [k for k in self.names if k not in given]
        if missing:
            raise InvalidRequest(f"missing input(s) {', '.join(map(repr, missing))}; the model "
                                 f"takes {self.describe()}")
        return [given[k] for k in self.names]

    def _check_one(self, name: str, t: TensorType, x: Any,
                   env: dict[sympy.Symbol, int]) -> np.ndarray:
        want = t.dtype.np
        example = _example_type(t)
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            a = x.numpy() if x.dtype != torch.bfloat16 else x.float().numpy()
        else:
            try:
                a = np.asarray(x)
            except (ValueError, TypeError) as e:  # ragged nested lists
                raise InvalidRequest(f"input {name!r} is not a tensor ({e})") from None
        if a.dtype == object or a.dtype.kind in "USV":
            raise InvalidRequest(f"input {name!r} should be {example}, got {_what(a)} (ragged "
                                 f"lists or non-numbers)")
        if a.ndim != len(t.shape) - 1:
            raise InvalidRequest(f"input {name!r} should have rank {len(t.shape) - 1} ({example}:"
                                 f" one example, without the batch axis), got rank {a.ndim} "
                                 f"shape {list(a.shape)}")
        for axis, (d, n) in enumerate(zip(t.shape[1:], a.shape, strict=True)):
            if isinstance(d, int):
                if d != n:
                    raise InvalidRequest(f"input {name!r} should have shape {example}, got "
                                         f"{list(a.shape)} (axis {axis} is {n}, not {d})")
            elif isinstance(d, sympy.Symbol):
                if env.setdefault(d, n) != n:
                    raise InvalidRequest(f"input {name!r}: {d} is {env[d]} in another input "
                                         f"but {n} here (axis {axis})")
        if a.dtype != want:
            if not (np.can_cast(a.dtype, want, "same_kind") and (a.dtype == np.bool_) == (
                    want == np.bool_)):
                raise InvalidRequest(f"input {name!r} should be {example}, got {_what(a)}; "
                                     f"{a.dtype} does not convert to {want} without losing "
                                     f"its kind")
        # a private copy in the model's dtype: the caller may reuse its buffer at once
        a = np.array(a, dtype=want, copy=True, order="C")
        if self.nan_policy == "reject" and a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int(np.size(a) - np.isfinite(a).sum())
            raise InvalidRequest(f"input {name!r} holds {bad} NaN or infinite value(s) "
                                 f"(nan_policy='reject')")
        return a


def _example_type(t: TensorType) -> str:
    """``f32[16]``: the type of one example (the batch axis dropped)."""
    return str(TensorType(t.dtype, tuple(t.shape[1:])))


def _what(a: np.ndarray) -> str:
    return f"{a.dtype} of shape {list(a.shape)}"


__all__ = ["NAN_POLICIES", "Request", "Signature"]
