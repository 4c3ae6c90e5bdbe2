"""The plan description the lowering builds: slots (``Buf``), values as strided views of them
(``View``) and steps (``StepRec``), before the C++ plan is made from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rtinfer.errors import Unsupported
from rtinfer.ir.types import DType

# slot kinds, as the C++ plan numbers them
INPUT, OUTPUT, CONST, ARENA, ALIAS = range(5)

# torch's uint16/32/64 are storage types most torch kernels do not take (the steps a node
# falls back to run torch code), so the executor's tensors are of the other dtypes only
NATIVE_DTYPES = frozenset(DType) - {DType.u16, DType.u32, DType.u64}


@dataclass
class Buf:
    """A Python-side slot (the C++ plan's slots are created in the same order)."""

    kind: int
    nbytes: int = 0
    base: int = -1  # INPUT/OUTPUT: the input/output index; ALIAS: the aliased buffer
    offset: int = 0  # ALIAS: byte offset in base; ARENA: set by the memory planner
    tensor: torch.Tensor | None = None  # CONST
    first: int = 1 << 60  # step index of the first write/read (liveness)
    last: int = -1


@dataclass
class View:
    """A value's data: ``buf``'s elements at ``offset + sum(i * stride)`` (strides in elements);
    ``nhwc``: a logical [N, C, H, W] stored as [N, H, W, C] (contiguous in that order)."""

    buf: int
    shape: tuple[int, ...]
    dtype: DType
    strides: tuple[int, ...]
    offset: int = 0
    nhwc: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def contiguous(self) -> bool:
        return not self.nhwc and self.offset == 0 and self.strides == contiguous_strides(
            self.shape)


@dataclass
class StepRec:
    name: str
    kernel: str
    make: Callable[[Any, Any], None]  # (extension module, plan) -> adds the step
    reads: list[int]
    writes: list[int]


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


def nhwc_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Strides of logical [N, C, H, W] stored as [N, H, W, C]."""
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def nhwc_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The physical [N, H, W, C] order of a logical [N, C, H, W] shape."""
    n, c, h, w = shape
    return (n, h, w, c)


def torch_dtype(dt: DType, op: str) -> torch.dtype:
    """The torch dtype of the executor's tensors of ``dt`` (``op`` names the node asking)."""
    if dt not in NATIVE_DTYPES:
        raise Unsupported(op, f"dtype {dt} has no torch equivalent in the native executor")
    return dt.torch


def squeeze_dims(shape, a, b):
    """Drop size-1 axes, order the rest by the destination's strides (the writes then run
    sequentially: NCHW -> NHWC of a 3-channel image 36 us instead of 83 us) and merge axes
    that are contiguous in both stride sets (fewer loop levels for the copy kernel)."""
    dims = sorted(((n, s, t) for n, s, t in zip(shape, a, b, strict=True) if n != 1),
                  key=lambda d: -d[2])
    if not dims:
        return (1,), (1,), (1,)
    merged = [list(dims[0])]
    for n, s, t in dims[1:]:
        pn, ps, pt = merged[-1]
        if ps == s * n and pt == t * n:
            merged[-1] = [pn * n, s, t]
        else:
            merged.append([n, s, t])
    return (tuple(m[0] for m in merged), tuple(m[1] for m in merged),
            tuple(m[2] for m in merged))


__all__ = ["ALIAS", "ARENA", "CONST", "INPUT", "NATIVE_DTYPES", "OUTPUT", "Buf", "StepRec",
           "View", "contiguous_strides", "nhwc_shape", "nhwc_strides", "squeeze_dims",
           "torch_dtype"]
