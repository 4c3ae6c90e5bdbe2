"""The compile cache: ``rtinfer.compile`` skips the optimization pipeline for a model it has
compiled before.

An entry is keyed by the sha256 of

- the captured IR's content: its text form, in which every constant larger than 16 elements is
  its digest (``tensor_digest``, cached per read-only array, so a second hash is cheap),
- the target and the backend,
- the pipeline: for each pass, its name, options (defaults filled), version, the function that
  implements it and a hash of the file defining it (so editing a custom pass misses too),
- the rtinfer, torch, TVM and numpy versions, and this cache's format version.

An entry is a saved artifact (``graph.ir``, ``weights.npz``, ``manifest.json`` with checksums)
of the optimized IR, plus what the pipeline reported (``compile_info`` in the manifest). Capture
runs on every compile (the key needs the captured IR); a hit skips the pipeline and reloads the
optimized IR. A corrupted or unreadable entry is a warning and a miss, never a wrong answer.

The cache lives in ``$RTINFER_CACHE_DIR``, else ``~/.cache/rtinfer``; ``compile(cache=False)``
turns it off, ``compile(cache="dir")`` puts it elsewhere.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import uuid
import warnings
from functools import cache as _memo
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtinfer.ir.graph import Graph

CACHE_FORMAT_VERSION = 1


def cache_dir(cache: bool | str | os.PathLike | None) -> Path | None:
    """Where ``compile(cache=...)`` keeps entries; ``None`` when caching is off."""
    if cache is None or cache is False:
        return None
    if cache is True:
        env = os.environ.get("RTINFER_CACHE_DIR")
        return Path(env).expanduser() if env else Path.home() / ".cache" / "rtinfer"
    return Path(cache).expanduser()


def graph_digest(graph: Graph) -> str:
    """sha256 of the graph's text form (large constants stand as their digests)."""
    from rtinfer.ir.printer import print_graph

    return hashlib.sha256(print_graph(graph).encode()).hexdigest()


def versions() -> dict[str, str | None]:
    from rtinfer import __version__

    return {"rtinfer": __version__, "torch": torch.__version__, "tvm": _tvm_version(),
            "numpy": np.__version__, "cache_format": str(CACHE_FORMAT_VERSION)}


@_memo
def _tvm_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("apache-tvm", "tvm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def pipeline_fingerprint(pipeline: str) -> list[dict[str, Any]]:
    """Each pass of ``pipeline`` as the cache key sees it."""
    from rtinfer.pass_manager.pipeline import parse_pipeline

    out = []
    for inv in parse_pipeline(pipeline):
        p = inv.pass_
        out.append({"pass": p.name, "version": p.version, "source": p.source,
                    "code": _source_hash(p.fn),
                    "options": {k: p.options[k].format(v) for k, v in sorted(inv.options.items())}})
    return out


def _source_hash(fn: Any) -> str:
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        path = None
    if path is None:
        return ""
    return _file_hash(path, os.path.getmtime(path) if os.path.exists(path) else 0.0)


@_memo
def _file_hash(path: str, mtime: float) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def cache_key(graph: Graph, target: str, pipeline: str, backend: str) -> str:
    """The cache key of compiling ``graph`` (the captured IR) with these settings."""
    fields = {"graph": graph_digest(graph), "target": target, "backend": backend,
              "pipeline": pipeline_fingerprint(pipeline), "versions": versions()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def lookup(root: Path, key: str) -> tuple[Graph, dict[str, Any]] | None:
    """The optimized graph and the stored compile info of entry ``key``, or None (a miss)."""
    from rtinfer.compile import read_artifact
    from rtinfer.errors import ArtifactError

    entry = root / key
    if not (entry / "manifest.json").is_file():
        return None
    try:
        graph, manifest = read_artifact(entry, check_digests=False)
        stored = manifest.get("compile_info")
        if not isinstance(stored, dict) or manifest.get("cache_key") != key:
            raise ArtifactError(f"{entry} is not a compile-cache entry for this key")
    except ArtifactError as e:
        warnings.warn(f"rtinfer compile cache: ignoring and removing a bad entry ({e})",
                      stacklevel=3)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return graph, stored


def store(root: Path, key: str, graph: Graph, info: Any, names: list[str]) -> bool:
    """Write entry ``key`` atomically (a temporary directory renamed into place), so that
    concurrent compiles never see half an entry. False when it could not be written."""
    from rtinfer.compile import write_artifact

    stored = {"frontend": info.frontend, "pipeline": info.pipeline,
              "passes": [list(p) for p in info.passes], "ops_before": info.ops_before,
              "ops_after": info.ops_after, "cold_timings": info.timings}
    tmp = root / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_artifact(tmp, graph, info, names,
                       extra={"cache_key": key, "compile_info": stored})
        try:
            os.replace(tmp, root / key)
        except OSError:  # another process stored the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        return True
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"rtinfer compile cache: cannot write to {root} ({e})", stacklevel=3)
        return False


__all__ = ["CACHE_FORMAT_VERSION", "cache_dir", "cache_key", "graph_digest", "lookup",
           "pipeline_fingerprint", "store", "versions"]
