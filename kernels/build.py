"""Build and load rtinfer's native extension (``cpp/native``) through
``torch.utils.cpp_extension``, once per compiler/flags/torch fingerprint, cached under
``$RTINFER_NATIVE_CACHE`` (else ``~/.cache/rtinfer/native``); ninja rebuilds changed sources.

oneDNN comes from the PyPI packages ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` (headers in
``<prefix>/include``, ``libdnnl.so`` in ``<prefix>/lib``); it uses GNU OpenMP, the runtime torch
ships, so oneDNN, torch and rtinfer's own kernels share one thread pool.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType

from rtinfer.errors import BackendError
from rtinfer.paths import native_build_dir


def _cpp_dir() -> Path:
    """``cpp/``: beside the package in a checkout (and an editable install), or the
    ``rtinfer._cpp`` package data of an installed wheel."""
    here = Path(__file__).resolve().parent.parent / "cpp"
    if (here / "native").is_dir():
        return here
    spec = importlib.util.find_spec("rtinfer._cpp")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "native").is_dir():
            return Path(loc)
    return here


CPP_DIR = _cpp_dir()
# $RTINFER_NATIVE_SRC: build another copy of cpp/native (kernel development)
NATIVE_DIR = Path(os.environ.get("RTINFER_NATIVE_SRC") or CPP_DIR / "native").resolve()
SOURCES = ("executor.cpp", "dnnl_ops.cpp", "cpu_norm.cpp", "cpu_attention.cpp", "cpu_pool.cpp",
           "cpu_copy.cpp")
CFLAGS = ["-O3", "-std=c++17", "-fopenmp", "-march=native", "-ffp-contract=fast",
          "-Wno-unused-function"]

_lock = threading.Lock()
_module: ModuleType | None = None


class NativeUnavailable(BackendError):
    """The native backend cannot be built here (no compiler, no oneDNN, a build error)."""


def _prefixes() -> list[Path]:
    seen: list[Path] = []
    for p in (sys.prefix, sys.base_prefix, sysconfig.get_config_var("prefix") or "", "/usr",
              "/usr/local"):
        if p and Path(p) not in seen:
            seen.append(Path(p))
    return seen


def onednn_prefix() -> Path:
    """The prefix whose include/ has oneDNN's dnnl.hpp and lib/ libdnnl.so."""
    for p in _prefixes():
        if (p / "include" / "dnnl.hpp").is_file() and any((p / "lib").glob("libdnnl.so*")):
            return p
    raise NativeUnavailable(
        "the native backend needs oneDNN: pip install onednn-cpu-gomp onednn-devel-cpu-gomp "
        "(installed with rtinfer); use backend='torch' meanwhile")


def compiler() -> str:
    cxx = os.environ.get("CXX", "c++")
    path = shutil.which(cxx) or shutil.which("g++")
    if path is None:
        raise NativeUnavailable(
            f"the native backend needs a C++ compiler and none was found ({cxx!r} or g++ on "
            f"PATH); install one (e.g. apt install g++) or use backend='torch'")
    return path


def fingerprint(extra: str = "") -> str:
    """The build directory's key: flags, torch, compiler and oneDNN (not the sources: ninja
    rebuilds what changed in place, one file at a time)."""
    import torch

    h = hashlib.sha256()
    h.update(" ".join(CFLAGS).encode() + torch.__version__.encode() + extra.encode())
    return h.hexdigest()[:16]


def build_dir(key: str) -> Path:
    """Where the extension is built (``rtinfer.paths.native_build_dir``)."""
    return native_build_dir(key)


def build_extension(name: str, what: str, out: Path, error: type[BackendError],
                    verbose: bool = False, **options) -> ModuleType:
    """``cpp_extension.load(name, **options)`` into ``out``, saying so on stderr while a fresh
    build runs; a failed build (a compile error, no ninja, a toolkit torch cannot find) is an
    ``error`` naming the build directory, never a traceback from inside torch."""
    import subprocess

    from torch.utils import cpp_extension

    fresh = not any(out.glob(f"{name}*.so"))
    if fresh:
        print(f"rtinfer: building the {what} (once, about a minute) in {out} ...",
              file=sys.stderr, flush=True)
    try:
        module = cpp_extension.load(name=name, build_directory=str(out), verbose=verbose,
                                    **options)
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as e:
        raise error(f"building the {what} failed ({e}); the build log is in {out}; use "
                    f"backend='torch' meanwhile") from None
    if fresh:
        print(f"rtinfer: {what} built", file=sys.stderr, flush=True)
    return module


def load(verbose: bool = False) -> ModuleType:
    """The native extension, built on first use (about a minute) and cached."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            cxx = compiler()
            prefix = onednn_prefix()
            lib = prefix / "lib"
            _module = build_extension(
                "rtinfer_native", "native kernels",
                build_dir(fingerprint(f"{cxx}|{prefix}|{NATIVE_DIR}")), NativeUnavailable,
                verbose, sources=[str(NATIVE_DIR / s) for s in SOURCES], extra_cflags=CFLAGS,
                extra_include_paths=[str(prefix / "include")],
                extra_ldflags=[f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"])
        return _module


__all__ = ["NativeUnavailable", "build_dir", "build_extension", "load", "onednn_prefix"]
