"""The HTTP bodies of a serving request and its answer, apart from any web framework.

JSON (``application/json``, the default): ``{"inputs": [x, ...]}`` with one entry per model
input as nested lists (or ``{"inputs": {"name": x, ...}}`` by input name), answered with
``{"outputs": [y, ...]}``: the model's output tensors in order, as nested lists.

Binary NumPy, for large tensors: ``application/x-npy`` holds the one input of a one-input model
(``np.save``); ``application/x-npz`` (``np.savez``) holds the inputs by name, or as ``arr_0``,
``arr_1``, ... in order. The answer comes in the same format: ``.npy`` of the output for a
one-output model, else ``.npz`` with ``out_0``, ``out_1``, ... Pickled arrays are refused.

JSON is parsed and written with ``orjson`` where it is installed (the ``serve`` extra installs
it): a ResNet-18 image as JSON (3 MB) parses in about a fifth of the standard library's time,
which is most of a request's cost. The standard library stays the fallback and the authority:
a body orjson refuses (``NaN``/``Infinity`` literals, which Python's ``json`` takes) is parsed
by ``json``, and an answer holding a non-finite number is written by ``json`` (orjson would
write ``null``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

try:  # optional: the serve extra installs it
    import orjson
except ImportError:  # pragma: no cover - the standard library does everything, slower
    orjson = None
import torch.utils._pytree as pytree

from rtinfer.serving.errors import InvalidRequest

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
# a body larger than this is refused before it is parsed
MAX_BODY_BYTES = 256 << 20


@dataclass(frozen=True)
class Decoded:
    """A request body as the batcher's arguments, and the format to answer in."""

    args: tuple[Any, ...]
    named: dict[str, Any]
    fmt: str


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` (no header: JSON)."""
    kind = (content_type or JSON).split(";")[0].strip().lower()
    return {"application/npy": NPY, "application/npz": NPZ}.get(kind, kind)


def decode(body: bytes, content_type: str | None, input_names: list[str]) -> Decoded:
    """The request's inputs; ``InvalidRequest`` says what is wrong with the body."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body of {len(body)} bytes exceeds the limit of "
                             f"{MAX_BODY_BYTES} bytes")
    fmt = media_type(content_type)
    if fmt == JSON:
        return _decode_json(body)
    if fmt == NPY:
        if len(input_names) != 1:
            raise InvalidRequest(f"an {NPY} body holds one array, but the model takes "
                                 f"{len(input_names)} inputs ({', '.join(input_names)}); send "
                                 f"{NPZ} or JSON")
        return Decoded((_load(body, "npy"),), {}, NPY)
    if fmt == NPZ:
        arrays = _load(body, "npz")
        if set(arrays) <= set(input_names):
            return Decoded((), arrays, NPZ)
        positional = [f"arr_{i}" for i in range(len(arrays))]
        if sorted(arrays) == sorted(positional):
            return Decoded(tuple(arrays[k] for k in positional), {}, NPZ)
        raise InvalidRequest(f"the {NPZ} body names arrays {sorted(arrays)}; name them by the "
                             f"model's inputs ({', '.join(input_names)}) or arr_0, arr_1, ...")
    raise InvalidRequest(f"unsupported content type {content_type!r}; send {JSON}, {NPY} or "
                         f"{NPZ}")


def _decode_json(body: bytes) -> Decoded:
    try:
        payload = _loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidRequest('expected a JSON object {"inputs": [...]}, one entry per model '
                             'input (nested lists, one example without the batch axis)')
    inputs = payload["inputs"]
    if isinstance(inputs, dict):
        return Decoded((), dict(inputs), JSON)
    if not isinstance(inputs, list):
        raise InvalidRequest(f'"inputs" should be a list (one entry per model input) or an '
                             f"object by input name, got {type(inputs).__name__}")
    return Decoded(tuple(inputs), {}, JSON)


def _loads(body: bytes) -> Any:
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # NaN literals and the like: json takes them, or names the error
    return json.loads(body)


def _fast_json_ok(leaves: list[Any]) -> bool:
    """Whether orjson writes these outputs exactly as ``json`` would read them back: numeric
    arrays with only finite values (orjson writes NaN and infinities as ``null``)."""
    return orjson is not None and all(
        isinstance(x, np.ndarray) and x.dtype.kind in "biuf" and x.dtype.itemsize in (1, 2, 4, 8)
        and (x.dtype.kind != "f" or bool(np.isfinite(x).all())) for x in leaves)


def _load(body: bytes, kind: str) -> Any:
    try:
        loaded = np.load(io.BytesIO(body), allow_pickle=False)
        if kind == "npy":
            if not isinstance(loaded, np.ndarray):
                raise ValueError("it is an .npz archive, not one .npy array")
            return loaded
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it is one .npy array, not an .npz archive")
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InvalidRequest(f"the body is not a valid .{kind} file: {e}") from None


def output_leaves(outputs: Any) -> list[Any]:
    """The model's output tensors in order (the eager structure flattened)."""
    leaves, _ = pytree.tree_flatten(outputs)
    return [x.numpy() if isinstance(x, torch.Tensor) else x for x in leaves]


def encode(outputs: Any, fmt: str) -> tuple[bytes, str]:
    """The answer body and its content type, in the request's format."""
    leaves = output_leaves(outputs)
    if fmt == JSON:
        if _fast_json_ok(leaves):
            return orjson.dumps({"outputs": [np.ascontiguousarray(x) for x in leaves]},
                                option=orjson.OPT_SERIALIZE_NUMPY), JSON
        body = {"outputs": [x.tolist() if isinstance(x, np.ndarray) else x for x in leaves]}
        return json.dumps(body).encode(), JSON
    buf = io.BytesIO()
    if len(leaves) == 1 and isinstance(leaves[0], np.ndarray):
        np.save(buf, leaves[0], allow_pickle=False)
        return buf.getvalue(), NPY
    np.savez(buf, **{f"out_{i}": np.asarray(x) for i, x in enumerate(leaves)})
    return buf.getvalue(), NPZ


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


__all__ = ["JSON", "MAX_BODY_BYTES", "NPY", "NPZ", "Decoded", "decode", "encode", "error_body",
           "media_type", "output_leaves"]
