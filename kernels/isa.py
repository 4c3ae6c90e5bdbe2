"""Which CPU instruction-set level rtinfer's own C++ is built for, and the cap a user sets.

rtinfer builds its native extension (``cpp/native``) and the generated elementwise code for
one *level* at a time, each a fixed set of CPU features, never ``-march=native``:

==========  ======================================================  ===========================
level       needs (``/proc/cpuinfo`` flags)                          g++ flags
==========  ======================================================  ===========================
``avx512``  x86-64-v4: avx512f/bw/cd/dq/vl + the avx2 set            ``-march=x86-64-v4``
``avx2``    x86-64-v3: avx2, fma, f16c, bmi1/2, movbe                ``-march=x86-64-v3``
``generic`` nothing beyond the architecture's baseline (ARM, old x86)  none
==========  ======================================================  ===========================

The level used is the highest the host has, capped by ``$RTINFER_CPU_ISA`` (``avx2``,
``avx512``, ``generic``; as ``ONEDNN_MAX_CPU_ISA`` caps oneDNN). Capping is how the AVX2 path
runs, is tested and is benchmarked on an AVX-512 host; the native extension sets oneDNN's own
cap from it (``ONEDNN_MAX_CPU_ISA=AVX2`` for ``avx2``), so the matmuls and convolutions run
the same level as rtinfer's kernels. Torch's own kernels (the torch backend) read
``ATEN_CPU_CAPABILITY`` before torch is imported; set it too to cap them.

A build is keyed by ``cpu_key(level)`` (the level, the architecture and the compiler), so a
cache folder shared by two machines (a home directory on NFS, an image built elsewhere) never
loads code built for features the CPU lacks: the other machine builds its own.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess

from rtinfer.errors import BackendError

ENV = "RTINFER_CPU_ISA"
LEVELS = ("generic", "avx2", "avx512")  # lowest first
NEEDS: dict[str, frozenset[str]] = {
    "generic": frozenset(),
    "avx2": frozenset({"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe"}),
    "avx512": frozenset({"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "avx512f",
                         "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
}
MARCH = {"generic": [], "avx2": ["-march=x86-64-v3"],
         # g++'s x86-64-v4 prefers 256-bit vectors for loops it vectorizes itself
         "avx512": ["-march=x86-64-v4", "-mprefer-vector-width=512"]}
ONEDNN_ISA = {"generic": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"}


class CpuIsaError(BackendError):
    """``$RTINFER_CPU_ISA`` names no level, or a level this CPU cannot run."""


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


@functools.cache
def host_features() -> frozenset[str]:
    """The CPU's feature flags as ``/proc/cpuinfo`` spells them (empty where it cannot be
    read: then only ``generic`` is built)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def supported(features: frozenset[str] | None = None) -> list[str]:
    """The levels a CPU with ``features`` (default: this host's) can run, lowest first."""
    feats = host_features() if features is None else features
    if not _is_x86():
        return ["generic"]
    return [lv for lv in LEVELS if NEEDS[lv] <= feats]


def cap() -> str | None:
    """``$RTINFER_CPU_ISA``, checked (None when unset)."""
    raw = os.environ.get(ENV, "").strip().lower()
    if not raw or raw == "native":
        return None
    aliases = {"avx512": "avx512", "avx-512": "avx512", "avx512_core": "avx512", "avx2": "avx2",
               "x86-64-v3": "avx2", "x86-64-v4": "avx512", "generic": "generic",
               "scalar": "generic"}
    if raw not in aliases:
        raise CpuIsaError(f"${ENV}={os.environ[ENV]!r} names no CPU level; use one of "
                          f"{', '.join(LEVELS)} (or unset it for the best this CPU has)")
    return aliases[raw]


def level(features: frozenset[str] | None = None) -> str:
    """The level rtinfer's C++ is built for here: the highest this CPU runs, capped by
    ``$RTINFER_CPU_ISA``. A cap above what the CPU has is an error, never an illegal
    instruction later."""
    have = supported(features)
    want = cap()
    if want is None:
        return have[-1]
    if want not in have:
        feats = host_features() if features is None else features
        raise CpuIsaError(f"${ENV}={want} but this CPU runs only {', '.join(have)} (it lacks "
                          f"{', '.join(sorted(NEEDS[want] - feats))})")
    return want


def march_flags(lv: str) -> list[str]:
    """The compiler flags that build code for level ``lv``."""
    return list(MARCH[lv]) if _is_x86() else []


@functools.cache
def compiler_id(cxx: str) -> str:
    """The first line of ``cxx --version`` (the compiler and its version)."""
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout.splitlines() or [""])[0].strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_key(lv: str | None = None) -> str:
    """What code built here depends on: the architecture and the level (not the CPU model:
    two CPUs of one level share builds)."""
    return f"{platform.machine().lower()}-{lv or level()}"


def describe() -> dict[str, object]:
    """For reports: the level in use, the levels the CPU runs, the cap and oneDNN's cap."""
    lv = level()
    return {"level": lv, "supported": supported(), "cap": cap(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}


__all__ = ["ENV", "LEVELS", "MARCH", "NEEDS", "ONEDNN_ISA", "CpuIsaError", "cap",
           "compiler_id", "cpu_key", "describe", "host_features", "level", "march_flags",
           "supported"]
