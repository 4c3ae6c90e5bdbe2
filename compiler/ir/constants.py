"""Constant payloads: digests of constant arrays and ``ElidedTensor``, the stand-in for data left
out of printed IR.

IR text printed without ``full_constants`` replaces large arrays by ``elided<digest>``. Parsing
it back gives a ``const`` whose ``value`` is an ``ElidedTensor``: enough to type-check, verify and
compare structurally (by digest), but not to evaluate.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from dataclasses import dataclass

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.types import DType, TensorType

DIGEST_CHARS = 12  # 48 bits of sha256: plenty to tell two weights of one shape apart

# The largest constant that IR text may create (dense<> splats and random() build their data
# from a few characters, so without a bound one line could ask for terabytes). 4 GiB is above
# any single weight of the models rtinfer compiles and far below what would exhaust a machine
# by surprise.
MAX_CONSTANT_BYTES = 4 * 2**30


# Constant arrays in the IR are read-only, so a digest can be cached per array object (printing
# a model with 100 MB of weights after every pass would otherwise hash them every time).
_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}


def tensor_digest(array: np.ndarray) -> str:
    """Short hex sha256 of an array's dtype, shape and C-order bytes."""
    cacheable = not array.flags.writeable
    if cacheable:
        hit = _DIGESTS.get(id(array))
        if hit is not None and hit[0]() is array:
            return hit[1]
    digest = _digest(array)
    if cacheable:
        key = id(array)
        _DIGESTS[key] = (weakref.ref(array, lambda _, key=key: _DIGESTS.pop(key, None)), digest)
    return digest


def _digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(f"{a.dtype.name}{list(a.shape)}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True)
class ElidedTensor:
    """A constant whose data was elided from the text: dtype, static shape and digest only."""

    dtype: DType
    shape: tuple[int, ...]
    digest: str

    def __post_init__(self) -> None:
        if not all(isinstance(d, int) and d >= 0 for d in self.shape):
            raise IRError(f"an elided constant needs a static shape, got {list(self.shape)}")

    @property
    def type(self) -> TensorType:
        return TensorType(self.dtype, self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def matches(self, array: np.ndarray) -> bool:
        """Whether ``array`` is the data this stands for (same dtype, shape and digest)."""
        return (np.dtype(array.dtype) == self.dtype.np and tuple(array.shape) == self.shape
                and tensor_digest(array) == self.digest)

    def __str__(self) -> str:
        return f"{self.type} elided<{self.digest}>"


def check_constant_size(dtype: DType, shape: tuple[int, ...], where: str = "constant") -> int:
    """The element count of a ``dtype[shape]`` constant, checked before any data is built: an
    ``IRError`` when it is over ``MAX_CONSTANT_BYTES``. Python ints, so no overflow."""
    numel = math.prod(shape)
    nbytes = numel * dtype.np.itemsize
    if nbytes > MAX_CONSTANT_BYTES:
        raise IRError(f"{where} of type {TensorType(dtype, tuple(shape))} would take "
                      f"{nbytes:,} bytes, over the limit of {MAX_CONSTANT_BYTES:,} bytes for a "
                      "constant built from text")
    return numel


def tensor_type(value: np.ndarray | ElidedTensor) -> TensorType:
    """The type of a constant payload, elided or not."""
    if isinstance(value, ElidedTensor):
        return value.type
    return TensorType.of(value)
