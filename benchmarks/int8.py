"""What the int8 columns of the report measure: accuracy against fp32 on held-out data, and the
int8 compute ceiling of this CPU that achieved GOP/s are held against.

Accuracy (every int8 system against fp32 eager, on the same held-out inputs):

- classifiers (ResNet-18, MobileNetV2, the MLP): the cosine between the int8 and the fp32 output
  vectors, averaged over the inputs, and the top-1 agreement (the fraction of inputs whose
  argmax is the same);
- sentence embeddings (MiniLM): each sentence's token states mean-pooled over its attention
  mask (sentence-transformers' pooling), the cosine of the int8 and fp32 sentence vectors
  averaged over the sentences, and "nearest neighbour unchanged": the fraction of sentences
  whose most similar other held-out sentence (by cosine) is the same under int8 as under fp32.

The ceiling (``int8_ceiling``): cores x GHz x int8 multiply-adds per cycle per core x 2 (a
multiply-add is two operations, as FLOPs count them). Per cycle and core, with two vector
ports that multiply (every Xeon with AVX-512 since Skylake-SP's Gold 6xxx, and every AVX2
core since Haswell):

| level | instructions | MACs a cycle |
|---|---|---:|
| AVX-512 VNNI | ``vpdpbusd zmm``: 16 lanes x 4 u8*s8 products, 2 a cycle | 128 |
| AVX-VNNI | ``vpdpbusd ymm``: 8 lanes x 4, 2 a cycle | 64 |
| AVX-512BW | ``vpmaddubsw zmm`` (64 products, s16 pairs) + ``vpmaddwd zmm`` (s32): 2 slots | 64 |
| AVX2 | ``vpmaddubsw ymm`` + ``vpmaddwd ymm``: two slots for 32 products | 32 |
| SSE4.1 | the same on xmm | 16 |

AMX (``amx_int8``), where the CPU has it, is reported beside the vector ceiling, not as it:
``tdpbusd`` multiplies a 16x64 by a 64x16 int8 tile (16384 MACs) in about 16 cycles, 1024 MACs
a cycle, and oneDNN (ONNX Runtime's MLAS too) may use it at batch 1 or may not. The clock is
``cpuinfo_max_freq`` where the kernel exposes it, else ``/proc/cpuinfo``'s ``cpu MHz`` (a VM's
nominal clock); turbo and AVX-512 frequency licences move the real one either way, so the
ceiling is a yardstick, not a bound.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

# (level, the /proc/cpuinfo flags it needs, int8 MACs a cycle per core, how), best first
VECTOR_LEVELS: tuple[tuple[str, frozenset[str], int, str], ...] = (
    ("avx512_vnni", frozenset({"avx512_vnni"}), 128, "vpdpbusd zmm, 64 MACs x 2 ports"),
    ("avx_vnni", frozenset({"avx_vnni"}), 64, "vpdpbusd ymm, 32 MACs x 2 ports"),
    ("avx512bw", frozenset({"avx512bw"}), 64,
     "vpmaddubsw + vpmaddwd zmm, 64 MACs per 2 port slots x 2 ports"),
    ("avx2", frozenset({"avx2"}), 32, "vpmaddubsw + vpmaddwd ymm, 32 MACs per 2 slots x 2 ports"),
    ("sse4_1", frozenset({"sse4_1"}), 16, "pmaddubsw + pmaddwd xmm, 16 MACs per 2 slots x 2"),
)
AMX_MACS_PER_CYCLE = 1024  # tdpbusd: 16 x 16 x 64 MACs in ~16 cycles
# what each rtinfer CPU level (rtinfer.kernels.isa, capped by run.py --isa) lets a kernel use:
# oneDNN's AVX2 cap (ONEDNN_MAX_CPU_ISA=AVX2) excludes AVX-VNNI, its AVX512_CORE cap excludes
# VNNI and AMX
LEVEL_ALLOWS: dict[str, frozenset[str]] = {
    "generic": frozenset({"sse4_1"}),
    "avx2": frozenset({"avx2", "sse4_1"}),
    "avx512": frozenset({"avx512bw", "avx2", "sse4_1"}),
}


def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_ghz() -> tuple[float | None, str]:
    """The clock the ceiling assumes, and where it was read."""
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return int(khz) / 1e6, "cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                return float(value) / 1e3, "/proc/cpuinfo cpu MHz"
    except (OSError, ValueError):
        pass
    return None, "unknown"


def int8_ceiling(cores: int, flags: frozenset[str] | None = None, ghz: float | None = None,
                 level: str | None = None) -> dict[str, Any]:
    """The int8 vector ceiling of ``cores`` cores in GOP/s (and AMX's where the CPU has it).
    ``flags``: the CPU's (default: /proc/cpuinfo); ``ghz``: the clock (default: ``cpu_ghz``);
    ``level``: an rtinfer CPU level that caps what counts ("avx2" for a run capped by
    ``--isa avx2``; None: not capped)."""
    flags = cpu_flags() if flags is None else flags
    clock_source = "given"
    if ghz is None:
        ghz, clock_source = cpu_ghz()
    if level is not None and level not in LEVEL_ALLOWS:
        raise ValueError(f"unknown CPU level {level!r}; levels: {', '.join(LEVEL_ALLOWS)}")
    allowed = None if level is None else LEVEL_ALLOWS[level]
    best = next(((name, macs, how) for name, need, macs, how in VECTOR_LEVELS
                 if need <= flags and (allowed is None or name in allowed)), None)
    out: dict[str, Any] = {"cores": cores, "ghz": ghz, "clock_source": clock_source,
                           "level": None, "macs_per_cycle": None, "gops": None, "how": None,
                           "amx_gops": None}
    if best is None or ghz is None:
        return out
    name, macs, how = best
    out.update(level=name, macs_per_cycle=macs, how=how, gops=cores * ghz * macs * 2)
    if "amx_int8" in flags and level is None:  # every cap excludes AMX
        out["amx_gops"] = cores * ghz * AMX_MACS_PER_CYCLE * 2
    return out


def effective_cores(threads: int) -> int:
    """The cores ``threads`` threads can occupy at once."""
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(threads, avail or 1))


# -- accuracy ---------------------------------------------------------------------------------


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [n, d] arrays; two zero rows agree (1), one zero row does not
    (0)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    both_zero = (na == 0) & (nb == 0)
    denom = np.where(na * nb == 0, 1.0, na * nb)
    return np.where(both_zero, 1.0, np.where(na * nb == 0, 0.0, dot / denom))


def _stack(name: str, outputs: list[np.ndarray], n: int | None = None) -> np.ndarray:
    if not outputs:
        raise ValueError(f"{name}: no outputs to compare")
    shapes = {np.shape(o) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"{name}: outputs of different shapes {sorted(shapes)}")
    if n is not None and len(outputs) != n:
        raise ValueError(f"{name}: {len(outputs)} outputs for {n} inputs")
    return np.stack([np.asarray(o, dtype=np.float64) for o in outputs])


def classify_accuracy(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """int8 outputs ``got`` against the fp32 outputs ``ref`` of the same inputs (each a logits
    array, e.g. [1, classes]): mean cosine and top-1 agreement."""
    r = _stack("fp32 outputs", ref)
    g = _stack("int8 outputs", got, len(ref))
    if r.shape != g.shape:
        raise ValueError(f"int8 output shape {list(g.shape[1:])} != fp32 {list(r.shape[1:])}")
    r, g = r.reshape(len(r), -1), g.reshape(len(g), -1)
    return {"cosine": float(_cosines(r, g).mean()),
            "top1_agreement": float(np.mean(r.argmax(1) == g.argmax(1))), "n": len(r)}


def mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Token states [n, seq, d] averaged over the tokens the mask [n, seq] keeps: [n, d]."""
    m = mask.astype(np.float64)[:, :, None]
    return (states * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """For each row of [n, d], the index of the most cosine-similar other row."""
    if len(emb) < 2:
        raise ValueError(f"nearest neighbours need at least 2 embeddings, got {len(emb)}")
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = emb / np.where(norm == 0, 1.0, norm)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def embed_accuracy(ref: list[np.ndarray], got: list[np.ndarray],
                   masks: list[np.ndarray]) -> dict[str, float]:
    """int8 token states ``got`` against fp32 ``ref`` (each [1, seq, d]) of the same sentences,
    mean-pooled over ``masks`` (each [1, seq]): mean sentence cosine, and the fraction of
    sentences whose nearest other sentence is unchanged."""
    r = _stack("fp32 outputs", ref)
    g = _stack("int8 outputs", got, len(ref))
    m = _stack("attention masks", masks, len(ref))
    if r.shape != g.shape:
        raise ValueError(f"int8 output shape {list(g.shape[1:])} != fp32 {list(r.shape[1:])}")
    r, g, m = r.reshape(len(r), *r.shape[-2:]), g.reshape(len(g), *g.shape[-2:]), m.reshape(
        len(m), -1)
    if m.shape[1] != r.shape[1]:
        raise ValueError(f"attention mask of {m.shape[1]} tokens for outputs of {r.shape[1]}")
    er, eg = mean_pool(r, m), mean_pool(g, m)
    return {"cosine": float(_cosines(er, eg).mean()),
            "nn_unchanged": float(np.mean(nearest_neighbours(er) == nearest_neighbours(eg))),
            "n": len(r)}


def accuracy(task: str, inputs: list[tuple[Any, ...]], ref: list[np.ndarray],
             got: list[np.ndarray]) -> dict[str, float]:
    """The accuracy metrics of ``task`` ("classify" or "embed"; for "embed", input 1 of each
    tuple is the attention mask)."""
    if task == "classify":
        return classify_accuracy(ref, got)
    if task == "embed":
        return embed_accuracy(ref, got, [np.asarray(x[1]) for x in inputs])
    raise ValueError(f"unknown accuracy task {task!r}; tasks: classify, embed")
