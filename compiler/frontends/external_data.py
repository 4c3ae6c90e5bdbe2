"""The one check of an ONNX model's external data, run before any of it is read.

An ONNX tensor may keep its bytes in another file (``external_data``: ``location``, ``offset``,
``length``), which onnx reads relative to the model's folder. A crafted or careless model can
name a file outside that folder (``../x``, ``/etc/passwd``, a symlink out), something that is not
a regular file (a FIFO, which blocks the reader forever; ``/dev/zero``, which never ends) or a
range past the file's end. ``check_external_data`` rejects all of these, before a byte is read,
for everyone who reads external data: the ONNX frontend's loader and the compile cache's model
fingerprint (which hashes the files before capture runs).

Only ``os.stat`` is used to check (it never opens the file, so a FIFO cannot block it).
"""

from __future__ import annotations

import functools
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtinfer.errors import CaptureError


class ExternalDataError(CaptureError):
    """An ONNX tensor's external data is unsafe or inconsistent: the message names the tensor,
    its ``location`` and the model."""


@dataclass(frozen=True)
class ExternalRef:
    """One tensor's checked external data: the file (resolved, inside the model's folder) and
    the byte range it reads (``length`` None: to the end of the file)."""

    tensor: str
    location: str
    path: Path
    offset: int
    length: int | None


def external_tensors(model: Any) -> Iterator[Any]:
    """Every ``TensorProto`` of ``model`` that keeps its data outside: initializers, sparse
    initializers and tensor attributes, in subgraphs too (as onnx's loader walks them)."""
    from onnx import TensorProto

    def graph_tensors(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from graph_tensors(attr.g)
                for g in attr.graphs:
                    yield from graph_tensors(g)

    for tensor in graph_tensors(model.graph):
        if tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL:
            yield tensor
    for fn in model.functions:
        for node in fn.node:
            for attr in node.attribute:
                if attr.HasField("t") and attr.t.data_location == TensorProto.EXTERNAL:
                    yield attr.t


def _int_field(value: str, key: str, tensor: str, where: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ExternalDataError(f"{where}: tensor {tensor!r} has external data {key} "
                                f"{value[:40]!r}; it must be a non-negative integer")
    return n


def _needed_bytes(tensor: Any) -> int | None:
    """The bytes ``tensor`` 's dims and dtype take, or None where they are not fixed (strings,
    4-bit and 2-bit types packed two or four to a byte)."""
    import onnx

    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if dtype.kind in "OSU" or tensor.data_type in _packed_types():
        return None
    return math.prod(tensor.dims) * dtype.itemsize


@functools.cache
def _packed_types() -> frozenset[int]:
    import onnx

    names = ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    return frozenset(getattr(onnx.TensorProto, n) for n in names if hasattr(onnx.TensorProto, n))


def check_external_data(model: Any, folder: str | os.PathLike,
                        where: str = "<model>") -> list[ExternalRef]:
    """Check every external-data reference of ``model`` (an ``onnx.ModelProto``) against the
    model's ``folder`` and return them; the first bad one is an ``ExternalDataError`` naming the
    tensor, its location and ``where`` (the model's file). A reference must be a relative path
    without ``..`` that resolves (symlinks followed) inside ``folder`` to a regular file, and its
    ``offset``/``length`` must lie inside that file and, where the dtype has a fixed size, hold
    exactly the tensor's bytes."""
    base = Path(os.path.realpath(folder))
    refs = []
    for tensor in external_tensors(model):
        info = {e.key: e.value for e in tensor.external_data}
        name = tensor.name or "<unnamed>"
        location = info.get("location", "")
        bad = f"{where}: tensor {name!r} reads external data from {location!r}"
        if not location:
            raise ExternalDataError(f"{where}: tensor {name!r} is marked external but names no "
                                    f"file (no 'location')")
        if "\0" in location or os.path.isabs(location) or location.startswith(("/", "\\")):
            raise ExternalDataError(f"{bad}: an external data file must be given relative to "
                                    f"the model's folder {base}")
        if ".." in Path(location.replace("\\", "/")).parts:
            raise ExternalDataError(f"{bad}: '..' would leave the model's folder {base}")
        path = Path(os.path.realpath(base / location))
        if not path.is_relative_to(base):
            raise ExternalDataError(f"{bad}: it resolves to {path}, outside the model's folder "
                                    f"{base} (a symbolic link out)")
        try:
            st = os.stat(path)
        except OSError as e:
            raise ExternalDataError(f"{bad}: {e.strerror or e} ({path}); external data files "
                                    f"must sit next to the model") from None
        if not stat.S_ISREG(st.st_mode):
            raise ExternalDataError(f"{bad}: {path} is not a regular file")
        offset = _int_field(info.get("offset", "0"), "offset", name, where)
        length = _int_field(info["length"], "length", name, where) if "length" in info else None
        end = offset + (length if length is not None else 0)
        if offset > st.st_size or end > st.st_size:
            span = f"bytes {offset}..{end}" if length is not None else f"offset {offset}"
            raise ExternalDataError(f"{bad}: {span} lie past the end of the file "
                                    f"({st.st_size} bytes)")
        got = length if length is not None else st.st_size - offset
        need = _needed_bytes(tensor)
        if need is not None and got != need:
            raise ExternalDataError(f"{bad}: the range holds {got} bytes, the tensor's shape "
                                    f"{list(tensor.dims)} and dtype need {need}")
        refs.append(ExternalRef(name, location, path, offset, length))
    return refs


__all__ = ["ExternalDataError", "ExternalRef", "check_external_data", "external_tensors"]
