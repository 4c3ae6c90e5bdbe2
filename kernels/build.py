"""Build and load rtinfer's native extension (``cpp/native``) through
``torch.utils.cpp_extension``, once per CPU level (``rtinfer.kernels.isa``) and
compiler/flags/torch fingerprint, cached under ``$RTINFER_NATIVE_CACHE`` (else
``~/.cache/rtinfer/native``); ninja rebuilds changed sources.

Each level is its own extension (``rtinfer_native_avx2``, ``rtinfer_native_avx512``, ...) in
its own folder, named by the level, with a ``cpu.json`` stamp of the features it needs: a
folder built on another CPU is never loaded where those features are missing, it is rebuilt.
A fresh build prints each file as it finishes and the time taken (``build_seconds()`` sums
the time this process spent building, for reports that keep it apart from a model's compile).

Builds of one folder take turns through ``rtinfer.lock`` in it, an ``fcntl.flock`` lock that
the kernel releases when its holder ends however it ends (kill -9, OOM, Ctrl-C), with the
holder's pid and host written in it for the message of whoever waits. A wait is bounded
(``$RTINFER_BUILD_LOCK_TIMEOUT`` seconds, default 1800) and ends in an error naming the lock and
its holder. Holding it, a build knows no other build runs in the folder, so torch's own
``lock`` file found there (``cpp_extension``'s FileBaton, which a killed build leaves behind and
on which every later build would wait forever) is stale and is removed.

oneDNN comes from the PyPI packages ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` (headers in
``<prefix>/include``, ``libdnnl.so`` in ``<prefix>/lib``); it uses GNU OpenMP, the runtime torch
ships, so oneDNN, torch and rtinfer's own kernels share one thread pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from rtinfer.errors import BackendError, CacheDirError
from rtinfer.kernels import isa
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
SOURCES = ("executor.cpp", "dnnl_ops.cpp", "dnnl_int8.cpp", "cpu_norm.cpp", "cpu_attention.cpp",
           "cpu_pool.cpp", "cpu_copy.cpp", "cpu_conv_stem.cpp", "cpu_conv_winograd.cpp",
           "dnnl_winograd.cpp", "cpu_gemv.cpp", "int8_dynamic.cpp", "dnnl_bf16.cpp",
           "int8_pool.cpp")
# -fno-trapping-math: rtinfer never reads the FP exception flags, and without it GCC keeps a
# comparison-select (a NaN test, a clamp) as a branch, so loops such as int8 quantize ran scalar
# in the AVX2 build (6x slower); values are unchanged (NaN still propagates)
CFLAGS = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast", "-fno-trapping-math",
          "-Wno-unused-function"]
STAMP = "cpu.json"
LOCK = "rtinfer.lock"
TORCH_BATON = "lock"  # torch.utils.cpp_extension's FileBaton in the build folder
LOCK_TIMEOUT_ENV = "RTINFER_BUILD_LOCK_TIMEOUT"
# a fresh build of one CPU level takes a minute or two; a wait past half an hour is a hung
# holder, not a slow build
DEFAULT_LOCK_TIMEOUT = 1800.0

_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_build_seconds = 0.0


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


def build_seconds() -> float:
    """Seconds this process has spent building native code (the extension and generated
    code) so far."""
    return _build_seconds


def add_build_seconds(seconds: float) -> None:
    global _build_seconds
    _build_seconds += seconds


def compiler() -> str:
    cxx = os.environ.get("CXX", "c++")
    path = shutil.which(cxx) or shutil.which("g++")
    if path is None:
        raise NativeUnavailable(
            f"the native backend needs a C++ compiler and none was found ({cxx!r} or g++ on "
            f"PATH); install one (e.g. apt install g++) or use backend='torch'")
    return path


def cflags(level: str) -> list[str]:
    """The flags that build the extension for CPU level ``level``."""
    return [*CFLAGS, *isa.march_flags(level)]


def fingerprint(extra: str = "", level: str | None = None) -> str:
    """The build directory's key: the CPU level, flags, torch, the compiler (and its version)
    and oneDNN (not the sources: ninja rebuilds what changed in place, one file at a time)."""
    import torch

    lv = level or isa.level()
    h = hashlib.sha256()
    h.update("\0".join([" ".join(cflags(lv)), torch.__version__, extra]).encode())
    return f"{isa.cpu_key(lv)}-{h.hexdigest()[:16]}"


def stamp_ok(out: Path, features: frozenset[str] | None = None) -> bool:
    """Whether the build in ``out`` may run on a CPU with ``features`` (default: this one's):
    its stamp says which features the code needs. A build with no stamp is not trusted."""
    try:
        need = json.loads((out / STAMP).read_text())["needs"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    have = isa.host_features() if features is None else features
    return isinstance(need, list) and set(need) <= have


def build_dir(key: str) -> Path:
    """Where the extension is built (``rtinfer.paths.native_build_dir``); a folder that cannot
    be created or written is ``NativeUnavailable`` saying so (a read-only cache is not
    silently moved: a rebuild elsewhere costs a minute or two in every process)."""
    try:
        return native_build_dir(key)
    except CacheDirError as e:
        raise NativeUnavailable(f"{e}; or use backend='torch'") from None


def lock_timeout_seconds() -> float:
    """Seconds a build waits for another build of its folder: ``$RTINFER_BUILD_LOCK_TIMEOUT``,
    else 1800."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "")
    try:
        return float(raw) if raw.strip() else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise BackendError(f"${LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


@contextlib.contextmanager
def build_lock(out: Path, error: type[BackendError] = BackendError,
               timeout: float | None = None) -> Iterator[None]:
    """Hold ``out/rtinfer.lock`` while building in ``out``, waiting at most ``timeout`` seconds
    (default ``lock_timeout_seconds()``) for another holder, then raising ``error`` naming the lock,
    its holder and how to clear it. Once held, a torch ``lock`` file in ``out`` is left over
    from a killed build and is removed."""
    limit = lock_timeout_seconds() if timeout is None else timeout
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise error(f"cannot create the build lock {path}: {e.strerror or e}; set "
                    f"$RTINFER_NATIVE_CACHE to a writable folder or use backend='torch'") from None
    try:
        deadline = time.monotonic() + limit
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            holder = _lock_holder(path)
            if time.monotonic() >= deadline:
                raise error(f"waited {limit:.0f} s for the native build lock {path}, held by "
                            f"{holder}; if that build is stuck, end it (the lock is freed when "
                            f"its process ends), or raise ${LOCK_TIMEOUT_ENV} to wait longer")
            if not told:
                print(f"rtinfer: waiting for another build in {out} ({holder}) to finish",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.time()}).encode())
        baton = out / TORCH_BATON
        if baton.exists():
            # only a build holding rtinfer.lock makes it: with the lock held here, its maker
            # is gone and torch would wait on it forever
            baton.unlink(missing_ok=True)
            print(f"rtinfer: removed {baton}, left by a build that was killed part way",
                  file=sys.stderr, flush=True)
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays (unlinking it would race a waiter)


def _lock_holder(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"process {int(owner['pid'])} on {owner['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class _Progress:
    """Prints each object file of a fresh build as it appears in the build folder (which file,
    how long since the build began), from a background thread, until stopped."""

    def __init__(self, out: Path, sources: list[str], what: str):
        self.out, self.what = out, what
        self.names = [Path(src).stem for src in sources]
        self.start = time.perf_counter()
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if exc[0] is None:
            self._scan()  # the last files, done since the last look

    def _scan(self) -> None:
        for name in self.names:
            if name not in self._seen and (self.out / f"{name}.o").is_file():
                self._seen.add(name)
                print(f"rtinfer:   [{len(self._seen)}/{len(self.names)}] {name}.cpp compiled "
                      f"({time.perf_counter() - self.start:.0f} s)", file=sys.stderr,
                      flush=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            self._scan()


def build_extension(name: str, what: str, out: Path, error: type[BackendError],
                    verbose: bool = False, lock_timeout: float | None = None,
                    **options) -> ModuleType:
    """``cpp_extension.load(name, **options)`` into ``out`` under ``build_lock`` (waiting at most
    ``lock_timeout`` seconds for another build there), showing progress on stderr while a
    fresh build runs (each file as it compiles, the elapsed time); a failed build (a compile
    error, no ninja, a toolkit torch cannot find) is an ``error`` naming the build directory,
    never a traceback from inside torch."""
    with build_lock(out, error, lock_timeout):
        return _build_locked(name, what, out, error, verbose, **options)


def _build_locked(name: str, what: str, out: Path, error: type[BackendError], verbose: bool,
                  **options) -> ModuleType:
    import subprocess

    from torch.utils import cpp_extension

    fresh = not any(out.glob(f"{name}*.so"))
    sources = list(options.get("sources", []))
    start = time.perf_counter()
    if fresh:
        print(f"rtinfer: building the {what} once for this CPU ({len(sources)} files, a minute "
              f"or two) in {out}", file=sys.stderr, flush=True)
    try:
        if fresh and not verbose:
            with _Progress(out, sources, what):
                module = cpp_extension.load(name=name, build_directory=str(out),
                                            verbose=verbose, **options)
        else:
            module = cpp_extension.load(name=name, build_directory=str(out), verbose=verbose,
                                        **options)
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as e:
        raise error(f"building the {what} failed ({e}); the build log is in {out}; use "
                    f"backend='torch' meanwhile") from None
    finally:
        add_build_seconds(time.perf_counter() - start)
    if fresh:
        print(f"rtinfer: {what} built in {time.perf_counter() - start:.0f} s", file=sys.stderr,
              flush=True)
    return module


def load(verbose: bool = False, level: str | None = None) -> ModuleType:
    """The native extension for CPU level ``level`` (default ``isa.level()``: the best this CPU
    runs, capped by ``$RTINFER_CPU_ISA``), built on first use (a minute or two) and cached.
    The first extension a process loads sets oneDNN's ISA cap to its level when the level is
    capped (oneDNN reads it once)."""
    lv = level or isa.level()
    if lv not in isa.supported():
        raise isa.CpuIsaError(f"the native extension for {lv} cannot run on this CPU (it runs "
                              f"{', '.join(isa.supported())})")
    module = _modules.get(lv)
    if module is not None:
        return module
    with _lock:
        module = _modules.get(lv)
        if module is None:
            cxx = compiler()
            prefix = onednn_prefix()
            lib = prefix / "lib"
            out = build_dir(fingerprint(f"{cxx}|{isa.compiler_id(cxx)}|{prefix}|{NATIVE_DIR}",
                                        lv))
            if any(out.glob("rtinfer_native*.so")) and not stamp_ok(out):
                shutil.rmtree(out, ignore_errors=True)  # built for another CPU: rebuild
                out = build_dir(out.name)
            module = build_extension(
                f"rtinfer_native_{lv}", f"native kernels ({lv})", out, NativeUnavailable,
                verbose, sources=[str(NATIVE_DIR / s) for s in SOURCES],
                extra_cflags=cflags(lv), extra_include_paths=[str(prefix / "include")],
                extra_ldflags=[f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"])
            (out / STAMP).write_text(json.dumps(
                {"level": lv, "needs": sorted(isa.NEEDS[lv]), "flags": cflags(lv),
                 "compiler": isa.compiler_id(cxx)}))
            if not _modules and isa.cap() is not None:
                module.set_max_cpu_isa(isa.ONEDNN_ISA[lv])
            _modules[lv] = module
        return module


__all__ = ["LOCK_TIMEOUT_ENV", "NativeUnavailable", "add_build_seconds", "build_dir",
           "build_extension", "build_lock", "build_seconds", "cflags", "load",
           "lock_timeout_seconds", "onednn_prefix", "stamp_ok"]
