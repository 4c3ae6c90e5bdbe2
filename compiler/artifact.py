"""The on-disk form of a compiled model: ``CompiledModel.save`` and the compile cache's entries.

An artifact directory holds ``graph.ir`` (the optimized IR; constants of more than 16 elements
elided to their digests), ``weights.npz`` (the elided constants' bytes, keyed by digest) and
``manifest.json`` (format version, rtinfer/torch versions, compile options, the eager model's
input/output structure and the sha256 of both files). Reading checks all of it: a manifest field
of the wrong type, missing or inconsistent with the graph is an ``ArtifactError`` naming it.

Writing is atomic: the artifact is written whole into a temporary sibling folder
(``.<name>.tmp-<host>-<pid>-<random>``); an existing artifact is renamed aside
(``.<name>.old-...``), the new one renamed into place, then the old one deleted. A save killed
part way leaves the old artifact loadable (or, killed between the two renames, set aside: the
next save or load of that path puts it back), and its leftovers are removed by the next save.

The eager model's input/output structure (``graph.meta["torch"]``: pytree specs, input names and
kinds) is saved as JSON by ``dump_torch_meta`` and rebuilt by ``load_torch_meta``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from rtinfer.errors import ArtifactError, ParseError, RtinferError
from rtinfer.ir.graph import Graph
from rtinfer.paths import TAG_RE, owner_gone, remove_stale_temps, temp_tag

FORMAT = "rtinfer.compiled-model"
FORMAT_VERSION = 1
FILES = ("graph.ir", "weights.npz", "manifest.json")


def write_artifact(out: Path, graph: Graph, input_names: list[str], options: dict[str, Any],
                   extra: dict[str, Any] | None = None, atomic: bool = True) -> Path:
    """Write ``graph`` as an artifact directory, atomically (see the module's docstring), and
    return its path. ``out`` may exist as an artifact or an empty folder; a folder holding
    other files is an ``ArtifactError`` (replacing it would delete them). ``options``: the
    compile options the manifest records (``backend``, ``pipeline``, ``trainable``,
    ``mkldnn``); ``extra``: further manifest fields (the compile cache's). ``atomic=False``:
    write straight into ``out``, a fresh folder the caller renames into place itself (the
    compile cache's temporaries)."""
    out = Path(out)
    if not atomic:
        out.mkdir(parents=True, exist_ok=True)
        _write_files(out, graph, input_names, options, extra)
        return out
    given = out
    # the swap renames folders by name: "." or "x/.." have none, a link is kept and its
    # target replaced
    out = out.resolve() if out.is_symlink() else Path(os.path.abspath(out))
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create the folder {parent}: {e.strerror or e}") from None
    _recover(out)
    if out.exists():
        if not out.is_dir():
            raise ArtifactError(f"cannot save to {out}: it exists and is not a folder")
        other = sorted(p.name for p in out.iterdir() if p.name not in FILES)
        if other:
            raise ArtifactError(f"cannot save to {out}: it holds files that are not part of an "
                                f"rtinfer artifact ({', '.join(other[:5])}); save to a new or "
                                f"empty folder")
    remove_stale_temps(parent, rf"\.{re.escape(out.name)}\.(tmp|old)-{TAG_RE}")
    tmp = parent / f".{out.name}.tmp-{temp_tag()}"
    try:
        tmp.mkdir()
        _write_files(tmp, graph, input_names, options, extra)
        _swap(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"cannot save to {out}: {e.strerror or e}") from None
    except BaseException:  # an error or Ctrl-C part way: the old artifact stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return given


def _swap(new: Path, out: Path) -> None:
    """Put the complete folder ``new`` at ``out``, replacing an artifact there."""
    if not out.exists():
        os.rename(new, out)
        return
    if not any(out.iterdir()):
        # an empty folder (perhaps the working directory) stays: nothing old can be lost, so
        # the files move in, the manifest last (without it the folder is no artifact)
        for name in FILES:
            os.replace(new / name, out / name)
        new.rmdir()
        return
    old = out.parent / f".{out.name}.old-{temp_tag()}"
    try:
        in_it = os.path.samefile(out, os.getcwd())
    except OSError:
        in_it = False
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    if in_it:  # the process stood in the folder set aside: it stands in the new one
        os.chdir(out)
    shutil.rmtree(old, ignore_errors=True)


def _recover(out: Path) -> None:
    """Put back an artifact a save set aside and was killed before replacing: ``out`` is
    missing and a ``.<name>.old-...`` sibling of a writer that has ended holds it."""
    if out.exists() or not out.parent.is_dir():
        return
    regex = re.compile(rf"\.{re.escape(out.name)}\.old-{TAG_RE}")
    for entry in sorted(out.parent.iterdir(), key=lambda p: p.name):
        m = regex.fullmatch(entry.name)
        try:
            if m and entry.is_dir() and (entry / "manifest.json").is_file() and owner_gone(
                    m["host"], int(m["pid"]), entry.stat().st_mtime):
                os.rename(entry, out)
                return
        except OSError:
            continue


def _write_files(out: Path, graph: Graph, input_names: list[str], options: dict[str, Any],
                 extra: dict[str, Any] | None) -> None:
    from rtinfer.ir.constants import tensor_digest
    from rtinfer.ir.printer import print_graph
    from rtinfer.version import __version__

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


def read_artifact(root: Path, check_digests: bool = True) -> tuple[Graph, dict[str, Any]]:
    """The verified graph (weights restored) and the manifest of an artifact directory; a
    missing, corrupted or incompatible one is an ``ArtifactError``. ``check_digests=False``
    trusts weights.npz to match the IR's digests once its sha256 matched the manifest's (the
    compile cache, which wrote both)."""
    from rtinfer.ir.constants import ElidedTensor
    from rtinfer.ir.parser import parse
    from rtinfer.ir.verifier import verify

    root = Path(root)
    _recover(root)
    manifest = _read_manifest(root)
    blobs = {}
    for name in ("graph.ir", "weights.npz"):
        entry = manifest["files"][name]
        path = root / name
        if not path.is_file():  # also a FIFO or device in its place: never opened
            raise ArtifactError(f"{root}: {name} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:  # checked before reading: a huge file is never read
            raise ArtifactError(f"{path} is corrupted: it has {size} bytes, the manifest "
                                f"records {entry['bytes']}")
        blob = path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != entry["sha256"]:
            raise ArtifactError(f"{path} is corrupted: its sha256 is {digest[:16]}..., the "
                                f"manifest records {entry['sha256'][:16]}...")
        blobs[name] = blob
    _check_npz(blobs["weights.npz"], root / "weights.npz")
    try:
        graph = parse(blobs["graph.ir"].decode(), source=str(root / "graph.ir"))
        with np.load(io.BytesIO(blobs["weights.npz"]), allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
    except (ParseError, ValueError, OSError, UnicodeDecodeError, EOFError, KeyError,
            zipfile.BadZipFile, OverflowError, RecursionError, MemoryError) as e:
        raise ArtifactError(f"{root} could not be read: {e}") from None
    for node in graph.nodes:
        value = node.attrs["value"] if node.op == "const" else None
        if not isinstance(value, ElidedTensor):
            continue
        raw = weights.get(value.digest)
        if raw is None:
            raise ArtifactError(f"{root}: weights.npz lacks constant {value}")
        bad = ArtifactError(f"{root}: the data of constant {value} does not match its digest")
        if raw.dtype != np.uint8 or raw.nbytes % value.dtype.np.itemsize:
            raise bad  # the writer stores every constant as its raw bytes
        # the bytes np.load just read, reinterpreted in place (a copy costs 0.2 s on MiniLM)
        arr = raw.reshape(-1).view(value.dtype.np)
        if arr.size != int(np.prod(value.shape)) or (check_digests and not value.matches(
                arr.reshape(value.shape))):
            raise bad
        arr = arr.reshape(value.shape)
        arr.setflags(write=False)
        node.attrs["value"] = arr
    try:
        verify(graph)
    except RtinferError as e:
        raise ArtifactError(f"{root}: the saved IR does not verify: {e}") from None
    _check_torch_io(manifest.get("torch_io"), graph, root / "manifest.json")
    return graph, manifest


def _check_npz(blob: bytes, path: Path) -> None:
    """weights.npz is a zip of stored (uncompressed, unencrypted) members, as ``np.savez``
    writes it: anything else (a compression method, a zip bomb, encryption) is refused before
    numpy's reader meets it."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as e:
        raise ArtifactError(f"{path} is corrupted: not a readable .npz ({e})") from None
    for info in infos:
        # flag bits beyond "sizes follow the data" (0x08) and "UTF-8 name" (0x800) mean
        # encryption, patch data and other features numpy's reader does not handle
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & ~0x808 or \
                info.file_size > len(blob):
            raise ArtifactError(f"{path} is corrupted: member {info.filename[:60]!r} is "
                                f"compressed, encrypted or larger than the file (rtinfer "
                                f"stores members whole)")


# A manifest is a few kilobytes; one far larger is not rtinfer's, and is not read whole.
MAX_MANIFEST_BYTES = 16 << 20


def _read_manifest(root: Path) -> dict[str, Any]:
    mpath = root / "manifest.json"
    if not root.exists():
        raise ArtifactError(f"{root} does not exist")
    if not mpath.is_file():
        raise ArtifactError(f"{root} is not a saved rtinfer model (no manifest.json)")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{mpath} is not an rtinfer manifest (larger than "
                            f"{MAX_MANIFEST_BYTES >> 20} MiB)")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"{mpath} is corrupted: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath} is not an rtinfer compiled-model manifest")
    version = manifest.get("format_version")
    if type(version) is not int or version > FORMAT_VERSION or version < 1:
        raise ArtifactError(f"{root} has artifact format version {version!r} (written by "
                            f"rtinfer {str(manifest.get('rtinfer_version', '?'))[:40]}); this "
                            f"rtinfer reads format versions 1 to {FORMAT_VERSION}")
    _check_manifest(manifest, mpath)
    return manifest


def _field_error(mpath: Path, field: str, want: str, got: Any) -> ArtifactError:
    shown = repr(got)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ArtifactError(f"{mpath} is corrupted: field {field!r} should be {want}, got {shown}")


def _check_manifest(manifest: dict[str, Any], mpath: Path) -> None:
    """Every field a reader uses has the type the writer gives it (``ArtifactError`` naming the
    first that does not): loading never trips on a malformed manifest."""

    def need(value: Any, ok: bool, field: str, want: str) -> None:
        if not ok:
            raise _field_error(mpath, field, want, value)

    files = manifest.get("files")
    need(files, isinstance(files, dict), "files", "an object")
    for name in ("graph.ir", "weights.npz"):
        entry = files.get(name)
        need(entry, isinstance(entry, dict), f"files.{name}", "an object")
        digest, size = entry.get("sha256"), entry.get("bytes")
        need(digest, isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
             is not None, f"files.{name}.sha256", "64 hex digits")
        need(size, type(size) is int and size >= 0, f"files.{name}.bytes",
             "a byte count")
    for key in ("backend", "pipeline", "rtinfer_version", "torch_version", "numpy_version"):
        if key in manifest:
            need(manifest[key], isinstance(manifest[key], str), key, "a string")
    for key in ("trainable", "mkldnn"):
        if key in manifest:
            need(manifest[key], manifest[key] is None or isinstance(manifest[key], bool), key,
                 "true, false or null")
    names = manifest.get("input_names")
    need(names, names is None or (isinstance(names, list) and all(
        isinstance(n, str) for n in names)), "input_names", "a list of strings")
    io_ = manifest.get("torch_io")
    if io_ is None:
        return
    need(io_, isinstance(io_, dict), "torch_io", "an object or null")
    for key in ("in_spec", "out_spec"):
        need(io_.get(key), isinstance(io_.get(key), str), f"torch_io.{key}", "a string")
    for key in ("input_names", "input_kinds"):
        v = io_.get(key)
        need(v, isinstance(v, list) and all(isinstance(x, str) for x in v), f"torch_io.{key}",
             "a list of strings")
    kinds = io_["input_kinds"]
    for i, kind in enumerate(kinds):
        need(kind, kind in ("tensor", "literal"), f"torch_io.input_kinds[{i}]",
             "'tensor' or 'literal'")
    outputs = io_.get("outputs")
    need(outputs, isinstance(outputs, list), "torch_io.outputs", "a list")
    for i, out in enumerate(outputs):
        need(out, isinstance(out, list) and len(out) == 2 and out[0] in ("out", "literal"),
             f"torch_io.outputs[{i}]", "['out', index] or ['literal', value]")
        if out[0] == "out":
            need(out[1], type(out[1]) is int and out[1] >= 0, f"torch_io.outputs[{i}][1]",
                 "an output index")


def _check_torch_io(saved: dict | None, graph: Graph, mpath: Path) -> None:
    """The eager structure fits the graph: as many tensor inputs as graph inputs, output
    indices in range and, where the specs can be rebuilt, as many leaves as entries."""
    if saved is None:
        return
    n_in = sum(k == "tensor" for k in saved["input_kinds"])
    if n_in != len(graph.inputs):
        raise _field_error(mpath, "torch_io.input_kinds", f"{len(graph.inputs)} 'tensor' "
                           f"entries (the graph's inputs)", saved["input_kinds"])
    if len(saved["input_names"]) != len(graph.inputs):
        raise _field_error(mpath, "torch_io.input_names", f"{len(graph.inputs)} names",
                           saved["input_names"])
    for i, (kind, index) in enumerate(saved["outputs"]):
        if kind == "out" and index >= len(graph.outputs):
            raise _field_error(mpath, f"torch_io.outputs[{i}][1]", f"an index below "
                               f"{len(graph.outputs)} (the graph's outputs)", index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            in_spec, out_spec = (_treespec_loads(saved[k]) for k in ("in_spec", "out_spec"))
        except Exception:  # whatever torch raises: load_torch_meta warns and drops the specs
            return
    # the eager call is ``(args, kwargs)``: a tuple of two whose second child is a dict
    if not (in_spec.type is tuple and in_spec.num_children == 2
            and in_spec.child(1).type is dict):
        raise _field_error(mpath, "torch_io.in_spec", "the spec of an (args, kwargs) pair",
                           saved["in_spec"])
    if in_spec.num_leaves != len(saved["input_kinds"]):
        raise _field_error(mpath, "torch_io.in_spec", f"{len(saved['input_kinds'])} leaves "
                           f"(one per input_kinds entry)", saved["in_spec"])
    if out_spec.num_leaves != len(saved["outputs"]):
        raise _field_error(mpath, "torch_io.out_spec", f"{len(saved['outputs'])} leaves "
                           f"(one per outputs entry)", saved["out_spec"])


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
