"""Every place rtinfer keeps files on disk, in one leaf module that any layer may import.

- the cache root: ``$RTINFER_CACHE_DIR``, else ``~/.cache/rtinfer``. Under it: the compile
  cache's entries (``rtinfer.cache``), the generated elementwise code (``codegen/``) and the
  MetaSchedule tuning databases (``tvm-tune/``);
- the native build root: ``$RTINFER_NATIVE_CACHE``, else ``~/.cache/rtinfer/native``. The C++
  extension and the CUDA kernels are built there, one folder per build fingerprint. It is kept
  apart from the cache root on purpose: tests point ``$RTINFER_CACHE_DIR`` at a fresh temporary
  folder, and a rebuild of the extension costs a minute.

The generated code and the native builds are shared objects that every process using the cache
loads and runs, so whoever can write these folders can run code as their users: the folders
rtinfer creates are owner-only (0o700, ``private_dir``). A folder that already exists keeps its
mode (sharing a cache with a group is the owner's choice).

A file is written under a temporary name and renamed into place. A temporary's name carries its
writer's host and process id (``temp_tag``), so a later process can tell the leftovers of a
killed writer from a write in progress and remove them (``remove_stale_temps``).

Nothing here imports rtinfer beyond its errors: this module sits below the IR.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

from rtinfer.errors import CacheDirError

CACHE_ENV = "RTINFER_CACHE_DIR"
NATIVE_CACHE_ENV = "RTINFER_NATIVE_CACHE"

# A temporary of another host (a cache on a network file system, a container with its own pid
# namespace) cannot be checked for a live owner; it is removed only once it is this old.
FOREIGN_TEMP_SECONDS = 24 * 3600


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


def private_dir(path: Path, what: str = "cache folder", env: str | None = None) -> Path:
    """``path``, created (with any missing parents) owner-only, 0o700; a folder that exists
    is left as it is. A folder that cannot be created or written is a ``CacheDirError`` naming
    it, the reason and ``env``, the variable that moves it."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    move = f"; set ${env} to a writable folder" if env else ""
    try:
        for d in reversed(missing):
            try:
                # mkdir's mode is masked by the umask, which only ever removes bits: 0o700 holds
                d.mkdir(mode=0o700)
            except FileExistsError:  # another process made it first
                pass
    except OSError as e:
        raise CacheDirError(f"cannot create the {what} {path}: {e.strerror or e}{move}") from None
    if not path.is_dir():
        raise CacheDirError(f"the {what} {path} is not a folder{move}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise CacheDirError(f"the {what} {path} is not writable by this user{move}")
    return path


def codegen_dir() -> Path:
    """The generated elementwise code's shared objects, keyed by content (created, owner-only
    when rtinfer creates it), the temporaries of killed builds removed once per process: a
    build writes ``ew_<key>.<temp_tag()>.cpp`` / ``.so`` and renames them into place."""
    d = private_dir(cache_root() / "codegen", "generated-code cache", CACHE_ENV)
    if str(d) not in _TIDIED:
        _TIDIED.add(str(d))
        remove_stale_temps(d, CODEGEN_TEMP_RE)
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
    """The build folder of one native build fingerprint ``key`` (created, owner-only when
    rtinfer creates it): the CPU extension's, or ``cuda-<key>`` for the CUDA kernels."""
    return private_dir(native_root() / key, "native build cache", NATIVE_CACHE_ENV)


# -- temporaries ---------------------------------------------------------------------------------


def _host() -> str:
    # a hostname may hold dashes and dots; its digest keeps temporary names parseable
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_tag() -> str:
    """``<host>-<pid>-<random>``: the tail of a temporary's name, naming its writer."""
    return f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


TAG_RE = r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}"
CODEGEN_TEMP_RE = rf"ew_[0-9a-f]+\.{TAG_RE}\.(cpp|so)"
_TIDIED: set[str] = set()  # the folders whose stale temporaries this process removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep its files
    return True


def owner_gone(host: str, pid: int, mtime: float) -> bool:
    """Whether the writer of a temporary tagged ``host``/``pid`` has ended: a process of this
    host that no longer exists, or one of another host whose file is a day old."""
    if host == _host():
        return pid != os.getpid() and not pid_alive(pid)
    return time.time() - mtime > FOREIGN_TEMP_SECONDS


def remove_stale_temps(folder: Path, pattern: str) -> list[Path]:
    """Remove the entries of ``folder`` whose names match ``pattern`` (a regex holding
    ``TAG_RE``'s ``host`` and ``pid`` groups) and whose writer has ended (``owner_gone``);
    return what was removed. Errors (a file another process removes first, a read-only folder)
    leave the entry: it is tidying, never a failure."""
    regex = re.compile(pattern)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = regex.fullmatch(entry.name)
        if m is None:
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if not owner_gone(m["host"], int(m["pid"]), mtime):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


__all__ = ["CACHE_ENV", "CODEGEN_TEMP_RE", "FOREIGN_TEMP_SECONDS", "NATIVE_CACHE_ENV", "TAG_RE",
           "cache_root", "codegen_dir", "compile_cache_dir", "native_build_dir", "native_root",
           "owner_gone", "pid_alive", "private_dir", "remove_stale_temps", "temp_tag",
           "tuning_root"]
