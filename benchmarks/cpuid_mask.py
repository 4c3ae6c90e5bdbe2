"""An AVX2-only CPU for a whole process, peers included: ``cpuid_mask.c`` preloaded.

The cap variables (``RTINFER_CPU_ISA``, ``ONEDNN_MAX_CPU_ISA``, ...) reach only the libraries
that read them. ONNX Runtime's MLAS has none, and OpenVINO's own kernels and its bundled MLAS
(it runs half of MiniLM's linears on ``gemm_mlas_f32``) dispatch on CPUID, so on an AVX-512
host a capped run compared rtinfer at AVX2 with peers at AVX-512. Where Linux offers CPUID
faulting (``cpuid_fault`` in ``/proc/cpuinfo``: Intel CPUs, and guests of KVM on any x86 CPU),
the shim answers every CPUID instruction of the process with the AVX-512, AMX and AVX-VNNI
bits cleared, so every library sees the CPU an AVX2 machine has. What it does not change is the
hardware: on a core with 512-bit FMA units (Zen 5, Intel server cores) AVX2 code still runs at
half the AVX-512 FMA peak, as on a Zen 3 of the same clock.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().with_name("cpuid_mask.c")
# glibc chose its string functions before the shim's constructor ran: this hides AVX-512 from
# that choice too (names glibc does not know are ignored)
GLIBC_HWCAPS = ("glibc.cpu.hwcaps=-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512VL,"
                "-AVX512_VNNI,-AVX512_BF16,-AVX512_FP16,-AVX_VNNI,-AMX_TILE,-AMX_INT8,"
                "-AMX_BF16")
# the /proc/cpuinfo flags the shim hides (leaf 7 of CPUID)
HIDDEN_PREFIXES = ("avx512", "amx", "avx_vnni", "avx_ifma")


class Unavailable(RuntimeError):
    """The mask cannot run here; the message says why."""


def why_unavailable(flags: frozenset[str] | None = None) -> str | None:
    """None where the mask can run here, else the reason (not x86-64 Linux, no CPUID
    faulting, no C compiler); ``flags``: ``/proc/cpuinfo``'s (default: this CPU's)."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"CPUID faulting is x86-64 Linux only (this is {platform.system()} " \
               f"{platform.machine()})"
    if flags is None:
        from rtinfer.kernels.isa import host_features

        flags = host_features()
    if "cpuid_fault" not in flags:
        return "the kernel offers no CPUID faulting on this CPU (no cpuid_fault flag)"
    if not _compiler():
        return "no C compiler (cc, gcc or clang) on PATH to build the shim"
    return None


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def build(cache: Path | None = None) -> Path:
    """The shim, compiled once per source and compiler into ``cache`` (default: rtinfer's
    cache folder); raises ``Unavailable`` with the reason where it cannot run."""
    why = why_unavailable()
    if why:
        raise Unavailable(why)
    cc = _compiler()
    assert cc is not None
    src = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(src + version.encode()).hexdigest()[:16]
    if cache is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = Path(base) / "rtinfer" / "bench"
    out = cache / f"cpuid_mask-{key}.so"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", str(SOURCE), "-o", str(tmp),
                           "-ldl"], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise Unavailable(f"{cc} could not build {SOURCE.name}: {proc.stderr.strip()[-500:]}")
    os.replace(tmp, out)
    return out


def child_env(shim: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a child process needs to start masked (``env``: the base, default ours):
    the shim first in LD_PRELOAD, and glibc told to leave AVX-512 alone."""
    env = dict(os.environ if env is None else env)
    # a shim already there (a run started from a masked process) is not loaded twice: two
    # copies would each interpose sigaction() on the other
    preload = " ".join(p for p in env.get("LD_PRELOAD", "").replace(":", " ").split()
                       if not Path(p).name.startswith("cpuid_mask-"))
    env["LD_PRELOAD"] = f"{shim} {preload}".strip()
    tunables = env.get("GLIBC_TUNABLES", "")
    env["GLIBC_TUNABLES"] = f"{tunables}:{GLIBC_HWCAPS}" if tunables else GLIBC_HWCAPS
    return env


def status() -> dict[str, Any]:
    """In this process: whether the shim is loaded and masking, how many CPUID instructions it
    answered, and whether CPUID shows AVX512F now (it must not, once masked)."""
    try:
        lib = ctypes.CDLL(None)
        active = lib.rtinfer_cpuid_mask_active
    except (OSError, AttributeError):
        return {"loaded": False, "active": False}
    lib.rtinfer_cpuid_mask_traps.restype = ctypes.c_long
    return {"loaded": True, "active": bool(active()),
            "traps": int(lib.rtinfer_cpuid_mask_traps()),
            "avx512f_visible": bool(lib.rtinfer_cpuid_mask_avx512f_visible())}


def hidden_flags(flags: set[str] | frozenset[str]) -> list[str]:
    """Which of the ``/proc/cpuinfo`` ``flags`` the mask hides."""
    return sorted(f for f in flags if f.startswith(HIDDEN_PREFIXES))
