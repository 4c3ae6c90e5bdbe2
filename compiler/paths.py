"""Every place rtinfer keeps files on disk, in one leaf module that any layer may import.

- the cache root: ``$RTINFER_CACHE_DIR``, else ``~/.cache/rtinfer``. Under it: the compile
  cache's entries (``rtinfer.cache``), the generated elementwise code (``codegen/``) and the
  MetaSchedule tuning databases (``tvm-tune/``);
- the native build root: ``$RTINFER_NATIVE_CACHE``, else ``~/.cache/rtinfer/native``. The C++
  extension and the CUDA kernels are built there, one folder per build fingerprint. It is kept
  apart from the cache root on purpose: tests point ``$RTINFER_CACHE_DIR`` at a fresh temporary
  folder, and a rebuild of the extension costs a minute.

Nothing here imports rtinfer: this module sits below the IR.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RTINFER_CACHE_DIR"
NATIVE_CACHE_ENV = "RTINFER_NATIVE_CACHE"


def cache_root() -> Path:
    """``$RTINFER_CACHE_DIR``, else ``~/.cache/rtinfer`` (not created)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rtinfer"


def compile_cache_dir(cache: bool | str | os.PathLike | None) -> Path | None:
    """Where ``compile(cache=...)`` keeps entries: the cache root for ``True``, the folder
    given, or ``None`` when caching is off (``False``/``None``)."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return cache_root()
    return Path(cache).expanduser()


def codegen_dir() -> Path:
    """The generated elementwise code's shared objects, keyed by content (created)."""
    d = cache_root() / "codegen"
    d.mkdir(parents=True, exist_ok=True)
    return d


def tuning_root(root: str | os.PathLike | None = None) -> Path:
    """The MetaSchedule tuning databases (one folder per target below it): under ``root`` when
    given (``compile(tune_root=...)``), else under the cache root."""
    return (Path(root).expanduser() if root is not None else cache_root()) / "tvm-tune"


def native_root() -> Path:
    """``$RTINFER_NATIVE_CACHE``, else ``~/.cache/rtinfer/native`` (not created)."""
    env = os.environ.get(NATIVE_CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rtinfer" / "native"


def native_build_dir(key: str) -> Path:
    """The build folder of one native build fingerprint ``key`` (created): the CPU extension's,
    or ``cuda-<key>`` for the CUDA kernels."""
    d = native_root() / key
    d.mkdir(parents=True, exist_ok=True)
    return d


__all__ = ["CACHE_ENV", "NATIVE_CACHE_ENV", "cache_root", "codegen_dir", "compile_cache_dir",
           "native_build_dir", "native_root", "tuning_root"]
