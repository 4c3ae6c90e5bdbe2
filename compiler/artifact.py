"""The on-disk form of a compiled model: ``CompiledModel.save`` and the compile cache's entries.

An artifact directory holds ``graph.ir`` (the optimized IR; constants of more than 16 elements
elided to their digests), ``weights.npz`` (the elided constants' bytes, keyed by digest) and
``manifest.json`` (format version, rtinfer/torch versions, compile options, the eager model's
input/output structure and the sha256 of both files). Reading checks all of it.

The eager model's input/output structure (``graph.meta["torch"]``: pytree specs, input names and
kinds) is saved as JSON by ``dump_torch_meta`` and rebuilt by ``load_torch_meta``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from rtinfer.errors import ArtifactError, ParseError, RtinferError
from rtinfer.ir.graph import Graph

FORMAT = "rtinfer.compiled-model"
FORMAT_VERSION = 1


def write_artifact(out: Path, graph: Graph, input_names: list[str], options: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``graph`` as an artifact directory (created if needed) and return its path.
    ``options``: the compile options the manifest records (``backend``, ``pipeline``,
    ``trainable``, ``mkldnn``); ``extra``: further manifest fields (the compile cache's)."""
    from rtinfer.ir.constants import tensor_digest
    from rtinfer.ir.printer import print_graph
    from rtinfer.version import __version__

    out.mkdir(parents=True, exist_ok=True)
    text = print_graph(graph)
    # every constant's bytes by digest; the IR text elides the larger ones to their digest
    arrays = {tensor_digest(n.attrs["value"]): np.frombuffer(
        np.ascontiguousarray(n.attrs["value"]).tobytes(), np.uint8) for n in graph.constants()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    files = {"graph.ir": text.encode(), "weights.npz": buf.getvalue()}
    for name, blob in files.items():
        (out / name).write_bytes(blob)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "rtinfer_version": __version__, "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        **{k: options[k] for k in ("backend", "pipeline", "trainable", "mkldnn")},
        "input_names": input_names,
        "torch_io": dump_torch_meta(graph.meta.get("torch")),
        "files": {k: {"sha256": hashlib.sha256(v).hexdigest(), "bytes": len(v)}
                  for k, v in files.items()},
        **(extra or {}),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def read_artifact(root: Path, check_digests: bool = True) -> tuple[Graph, dict[str, Any]]:
    """The verified graph (weights restored) and the manifest of an artifact directory; a
    missing, corrupted or incompatible one is an ``ArtifactError``. ``check_digests=False``
    trusts weights.npz to match the IR's digests once its sha256 matched the manifest's (the
    compile cache, which wrote both)."""
    from rtinfer.ir.constants import ElidedTensor
    from rtinfer.ir.parser import parse
    from rtinfer.ir.verifier import verify

    manifest = _read_manifest(root)
    blobs = {}
    for name in ("graph.ir", "weights.npz"):
        entry = manifest.get("files", {}).get(name)
        path = root / name
        if entry is None or not path.is_file():
            raise ArtifactError(f"{root}: {name} is missing")
        blob = path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != entry.get("sha256"):
            raise ArtifactError(f"{path} is corrupted: its sha256 is {digest[:16]}..., the "
                                f"manifest records {str(entry.get('sha256'))[:16]}...")
        blobs[name] = blob
    try:
        graph = parse(blobs["graph.ir"].decode(), source=str(root / "graph.ir"))
        with np.load(io.BytesIO(blobs["weights.npz"]), allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
    except (ParseError, ValueError, OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{root} could not be read: {e}") from None
    for node in graph.nodes:
        value = node.attrs["value"] if node.op == "const" else None
        if not isinstance(value, ElidedTensor):
            continue
        raw = weights.get(value.digest)
        if raw is None:
            raise ArtifactError(f"{root}: weights.npz lacks constant {value}")
        # the bytes np.load just read, reinterpreted in place (a copy costs 0.2 s on MiniLM)
        arr = raw.reshape(-1).view(value.dtype.np) if raw.dtype == np.uint8 and \
            raw.nbytes % value.dtype.np.itemsize == 0 else np.frombuffer(raw.tobytes(),
                                                                         value.dtype.np)
        if arr.size != int(np.prod(value.shape)) or (check_digests and not value.matches(
                arr.reshape(value.shape))):
            raise ArtifactError(f"{root}: the data of constant {value} does not match its "
                                f"digest")
        arr = arr.reshape(value.shape)
        arr.setflags(write=False)
        node.attrs["value"] = arr
    try:
        verify(graph)
    except RtinferError as e:
        raise ArtifactError(f"{root}: the saved IR does not verify: {e}") from None
    return graph, manifest


def _read_manifest(root: Path) -> dict[str, Any]:
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise ArtifactError(f"{root} is not a saved rtinfer model (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is corrupted: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath} is not an rtinfer compiled-model manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ArtifactError(f"{root} has artifact format version {version!r} (written by "
                            f"rtinfer {manifest.get('rtinfer_version', '?')}); this rtinfer "
                            f"reads format versions 1 to {FORMAT_VERSION}")
    return manifest


# -- the eager model's input/output structure ---------------------------------------------------


def dump_torch_meta(meta: dict | None) -> dict | None:
    """``graph.meta["torch"]`` as JSON-ready data; None (with a warning: the loaded model then
    returns flat outputs) when its output structure cannot be serialized."""
    if meta is None:
        return None
    try:
        out = {"in_spec": pytree.treespec_dumps(meta["in_spec"]),
               "out_spec": pytree.treespec_dumps(meta["out_spec"]),
               "input_names": list(meta["input_names"]),
               "input_kinds": list(meta["input_kinds"]),
               "outputs": [list(t) for t in meta["outputs"]]}
        json.dumps(out)
        return out
    except Exception as e:  # whatever torch raises for an unserializable output structure
        warnings.warn(f"the eager output structure cannot be saved ({e}); the loaded model "
                      f"returns a flat tuple", stacklevel=3)
        return None


def load_torch_meta(saved: dict | None) -> dict | None:
    """``graph.meta["torch"]`` rebuilt from ``dump_torch_meta`` 's data; None (with a warning)
    when a spec cannot be rebuilt."""
    if not saved:
        return None
    try:
        specs = {k: _treespec_loads(saved[k]) for k in ("in_spec", "out_spec")}
    except Exception as e:  # whatever torch raises for a spec naming an unknown type
        warnings.warn(f"the saved output structure cannot be rebuilt ({e}); returning a flat "
                      f"tuple", stacklevel=3)
        return None
    return {**specs, "input_names": saved["input_names"], "input_kinds": saved["input_kinds"],
            "outputs": [tuple(t) for t in saved["outputs"]]}


def _treespec_loads(text: str) -> pytree.TreeSpec:
    try:
        return pytree.treespec_loads(text)
    except Exception:
        # a type registered by a library not imported yet (transformers' ModelOutput classes):
        # import the modules the spec names from transformers, then retry
        for name in set(_spec_types(json.loads(text))):
            module = name.rpartition(".")[0]
            if module.split(".")[0] == "transformers":
                importlib.import_module(module)
        return pytree.treespec_loads(text)


def _spec_types(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node["type"]
        for child in node.get("children_spec", []):
            yield from _spec_types(child)
    elif isinstance(node, list):
        for child in node:
            yield from _spec_types(child)


__all__ = ["FORMAT", "FORMAT_VERSION", "dump_torch_meta", "load_torch_meta", "read_artifact",
           "write_artifact"]
