"""Models x systems, side by side in one process: rtinfer against its peers on the CPU.

    python benchmarks/run.py                                  # everything, default settings
    python benchmarks/run.py --quick                          # a smoke run: a few iterations
    python benchmarks/run.py --models resnet18 --systems eager,onnxruntime,rtinfer-torch
    python benchmarks/run.py --isa avx2                       # capped at AVX2, in a child
    setsid nice -n -20 .venv/bin/python benchmarks/run.py --update-readme   # the real run

Each model is set up on every system, then timed in rounds: every round runs a block of
iterations on each system in turn (the order rotates from round to round), so a slow phase of
a shared machine hits every system alike. Per-call times come from ``perf_counter_ns`` after a
warm-up, with the garbage collector off inside a block. Batch 1, thread pools fixed. Results:
``latest.json`` (every sample, machine, versions, settings), ``latest.md`` and ``latest.png``
in ``--out`` (``latest-avx2.*`` and so on for a run capped by ``--isa``). See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from systems import Prepared, Settings, System
    from workloads import Workload

ROOT = Path(__file__).resolve().parent.parent
# minilm: a 10-token sentence padded to --minilm-seq (a padded batch: attention can leave the
# padding keys out); minilm_full: as many tokens of prose (every position a token)
MODELS = ("resnet18", "mobilenet_v2", "minilm", "minilm_full", "mlp")
SCHEMA = "rtinfer.bench/1"
# a system's output is flagged when max|out - eager| exceeds this fraction of max|eager|: fp32
# reassociation stays near 1e-6, a bf16 or wrong kernel lands far above
FIDELITY_RTOL = 1e-3


# --isa: the environment a capped run starts with, set before torch, oneDNN, MKL or OpenVINO
# load (they read it once); a child process gets it, so the parent's imports never matter
ISA_CHOICES = ("avx2", "avx512")
ISA_ENV: dict[str, dict[str, str]] = {
    "avx2": {"RTINFER_CPU_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "TORCHINDUCTOR_CPP_MARCH": "x86-64-v3", "OV_CPU_MAX_ISA": "AVX2"},
    "avx512": {"RTINFER_CPU_ISA": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
               "OV_CPU_MAX_ISA": "AVX512_CORE"},
}
ISA_CHILD = "RTINFER_BENCH_ISA"  # set in the child: the run it is
# the variables recorded with every run (capped or not)
ISA_VARS = ("RTINFER_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
            "MKL_ENABLE_INSTRUCTIONS", "TORCHINDUCTOR_CPP_MARCH", "OV_CPU_MAX_ISA")
# /proc/cpuinfo's names of the bf16 instructions (AVX512_BF16 dot products, AMX-BF16 tiles)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's dnnl_cpu_isa_t values (dnnl_types.h) as ONEDNN_MAX_CPU_ISA names them
ONEDNN_ISA_NAMES = {0x1: "SSE41", 0x3: "AVX", 0x7: "AVX2", 0xF: "AVX2_VNNI",
                    0x1F: "AVX2_VNNI_2", 0x27: "AVX512_CORE", 0x67: "AVX512_CORE_VNNI",
                    0xE7: "AVX512_CORE_BF16", 0x1EF: "AVX512_CORE_FP16",
                    0xFEF: "AVX512_CORE_AMX", 0x1FEF: "AVX512_CORE_AMX_FP16"}


def thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "TVM_NUM_THREADS": n}


# -- timing -----------------------------------------------------------------------------------


def time_calls(fn, n: int) -> list[int]:
    """``n`` calls of ``fn``, each timed in ns, with the garbage collector off."""
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            times.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    return times


def stats_ms(samples: list[int]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(samples, dtype=np.float64) / 1e6
    return {"median_ms": float(np.median(a)), "min_ms": float(a.min()),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()),
            "stdev_ms": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def fidelity(got, want) -> dict[str, Any]:
    import numpy as np

    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return {"max_abs_err": None, "rel_err": None, "fidelity_ok": False,
                "fidelity": f"shape {list(got.shape)} != eager {list(want.shape)}"}
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
    scale = float(np.max(np.abs(want.astype(np.float64)), initial=0.0)) or 1.0
    ok = bool(np.isfinite(err)) and err <= FIDELITY_RTOL * scale
    return {"max_abs_err": err, "rel_err": err / scale, "fidelity_ok": ok}


def setup_system(system: System, w: Workload, settings: Settings
                 ) -> tuple[Prepared | None, dict[str, Any]]:
    """Set ``system`` up on ``w`` and make its first call (lazy compilers compile there)."""
    from systems import Unavailable

    rec: dict[str, Any] = {"status": "ok"}
    try:
        export_s = 0.0
        if system.needs_onnx:  # exported once per model, counted in each ONNX system's setup
            w.onnx()
            export_s = w.onnx_export_s or 0.0
        t0 = time.perf_counter()
        prepared = system.setup(w, settings)
        t1 = time.perf_counter()
        out = prepared.run()
        t2 = time.perf_counter()
        rec.update(setup_s=export_s + t2 - t0, first_call_s=t2 - t1, notes=prepared.notes,
                   **prepared.info)
        return prepared, rec | {"_first": prepared.output(out)}
    except Unavailable as e:
        return None, {"status": "unavailable", "reason": str(e)}
    except Exception as e:  # a failing system is a result, not a crash
        msg = str(e).strip().splitlines()
        return None, {"status": "error",
                      "reason": f"{type(e).__name__}: {msg[0][:300] if msg else ''}"}


def _low_precisions(systems: list[System]) -> list[str]:
    """The precisions judged by held-out accuracy (int8, bf16) that ``systems`` include."""
    from systems import LOW_PRECISIONS

    return [p for p in LOW_PRECISIONS if any(s.precision == p for s in systems)]


def heldout_data(w: Workload, systems: list[System], log) -> dict[str, Any] | None:
    """Build the calibration and held-out data of the low-precision (int8, bf16) systems
    before any setup (so no system's setup time pays for it) and, for int8's GOP/s, count the
    model's operations; None without such systems."""
    from calibration import DataUnavailable

    low = _low_precisions(systems)
    if not low:
        return None
    t0 = time.perf_counter()
    try:
        data = w.data()
    except DataUnavailable as e:
        log(f"  held-out data: unavailable: {e}")
        return {"error": str(e)}
    doc: dict[str, Any] = {"source": data.source, "task": data.task, "digest": data.digest,
                           "calibration": len(data.calibration), "heldout": len(data.heldout),
                           "build_s": time.perf_counter() - t0}
    try:
        if "int8" in low:
            doc["gop"] = w.gop()
    except Exception as e:  # no operation count: the GOP/s columns stay empty
        doc["gop_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    log(f"  held-out data: {data.source} ({doc['build_s']:.1f} s)")
    return doc


def heldout_accuracy(w: Workload, systems: list[System], prepared: dict[str, Prepared],
                     results: dict[str, dict[str, Any]], log) -> None:
    """Each int8 and bf16 system against fp32 eager on the held-out inputs
    (``int8.accuracy``)."""
    import int8
    import numpy as np
    from calibration import DataUnavailable
    from systems import LOW_PRECISIONS, first_output

    todo = [s.name for s in systems if s.precision in LOW_PRECISIONS and s.name in prepared
            and prepared[s.name].infer is not None]
    if not todo:
        return
    try:
        data = w.data()
    except DataUnavailable as e:  # bf16 systems run without it: no accuracy, said so
        for name in todo:
            results[name]["accuracy_error"] = f"held-out data unavailable: {e}"
        return
    ref = [np.array(first_output(w.model(*x)), copy=True) for x in data.heldout]
    for name in todo:
        try:
            # copies: a runtime may return a buffer that its next call overwrites
            got = [np.array(prepared[name].infer(x), copy=True) for x in data.heldout]
            results[name]["accuracy"] = int8.accuracy(data.task, data.heldout, ref, got)
        except Exception as e:  # a system that fails on held-out data: recorded, run goes on
            results[name]["accuracy_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            log(f"    {name}: held-out accuracy failed: {results[name]['accuracy_error']}")
            continue
        acc = results[name]["accuracy"]
        log(f"  {name}: held-out " + ", ".join(f"{k} {v:.4g}" for k, v in acc.items()
                                               if k != "n"))


def check_fidelity(results: dict[str, dict[str, Any]], precision: dict[str, str],
                   log) -> None:
    """Each system's first output (``_first``, popped from its record) against eager's;
    ``precision``: each system's, by name."""
    from systems import LOW_PRECISIONS

    ref = results.get("eager", {}).pop("_first", None)
    if ref is not None:
        results["eager"].update(max_abs_err=0.0, rel_err=0.0, fidelity_ok=True,
                                fidelity="reference")
    for name, rec in results.items():
        first = rec.pop("_first", None)
        if first is None:
            continue
        if ref is None:
            rec.update(fidelity_ok=None, fidelity="no eager reference")
        elif precision.get(name) in LOW_PRECISIONS:
            # int8 and bf16 are never within fp32's tolerance: the held-out accuracy columns
            # judge them; only a wrong shape or a non-finite output is flagged
            rec.update(fidelity(first, ref))
            if rec["max_abs_err"] is not None and math.isfinite(rec["max_abs_err"]):
                rec.update(fidelity_ok=None,
                           fidelity=f"{precision[name]}: see the held-out accuracy")
            else:
                log(f"    {name}: WRONG OUTPUT ({rec.get('fidelity') or 'not finite'})")
        else:
            rec.update(fidelity(first, ref))
            if not rec["fidelity_ok"]:
                log(f"    {name}: WRONG OUTPUT (max abs err {rec['max_abs_err']})")


def bench_model(w: Workload, systems: list[System], args, settings: Settings,
                log) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    prepared: dict[str, Prepared] = {}
    data_doc = heldout_data(w, systems, log)
    for system in systems:
        log(f"  setup {system.name} ...")
        p, rec = setup_system(system, w, settings)
        results[system.name] = rec
        if p is None:
            log(f"    {rec['status']}: {rec['reason']}")
            continue
        prepared[system.name] = p
        log(f"    ready in {rec['setup_s']:.1f} s")
    check_fidelity(results, {s.name: s.precision for s in systems}, log)

    # warm-up: up to --warmup calls, within a quarter of the time budget; the warm-up times
    # estimate each system's call time, which caps its iterations at --max-seconds. A block is
    # --iters calls, more where --min-samples asks for more (tails: p99 needs a few hundred)
    wanted = max(args.iters, math.ceil(args.min_samples / args.rounds))
    blocks: dict[str, int] = {}
    for name, p in prepared.items():
        t0, warm = time.perf_counter(), []
        while len(warm) < max(1, args.warmup) and (
                not warm or time.perf_counter() - t0 < args.max_seconds / 4):
            warm += time_calls(p.run, 1)
        est_s = statistics.median(warm) / 1e9
        n = min(wanted, max(1, int(args.max_seconds / args.rounds / max(est_s, 1e-9))))
        blocks[name] = n
        results[name].update(warmup_calls=len(warm), capped=n < wanted)

    samples: dict[str, list[int]] = {name: [] for name in prepared}
    order = list(prepared)
    for r in range(args.rounds):
        k = r % len(order) if order else 0
        for name in order[k:] + order[:k]:
            if name not in prepared:
                continue
            try:
                # the previous system's pool quiets down first (SWITCH_PAUSE_MS), then this
                # system's untimed calls wake its own
                time.sleep(args.switch_pause / 1e3)
                time_calls(prepared[name].run, args.block_warmup)
                samples[name] += time_calls(prepared[name].run, blocks[name])
            except Exception as e:
                results[name].update(status="error", reason=f"while timing: "
                                     f"{type(e).__name__}: {str(e)[:300]}")
                del prepared[name]
        log(f"  round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {statistics.median(samples[n]) / 1e6:.2f}" for n in prepared) + " ms")

    for name, s in samples.items():
        if name in prepared and s:
            results[name].update(stats_ms(s), samples=len(s), samples_ns=s)
    heldout_accuracy(w, systems, prepared, results, log)
    ratios(results, systems)
    if data_doc and data_doc.get("gop"):
        for system in systems:
            rec = results.get(system.name, {})
            if system.precision == "int8" and _timed(rec):
                rec["gops"] = data_doc["gop"] / (rec["median_ms"] / 1e3)
    peer90 = best_peer(results, systems, "p90_ms")
    for system in systems:
        rec = results.get(system.name, {})
        if system.rtinfer and "vs_best_peer_p90" in rec:
            log(f"  {system.name}: p90 {rec['p90_ms']:.4g} ms, p99 {rec['p99_ms']:.4g} ms; "
                f"best peer at p90 {peer90} {results[peer90]['p90_ms']:.4g} ms "
                f"(×{rec['vs_best_peer_p90']:.2f})")
    out = {"description": w.description,
           "inputs": [{"name": n, "shape": list(x.shape), "dtype": str(x.dtype)}
                      for n, x in zip(w.input_names, w.inputs, strict=True)],
           "onnx_export_s": w.onnx_export_s, "onnx_exporter": w.onnx_exporter,
           "best_peer": best_peer(results, systems),
           "best_peer_p90": best_peer(results, systems, "p90_ms"), "results": results}
    if data_doc is not None:  # per low precision: the held-out data and its best peer
        for p in _low_precisions(systems):
            out[p] = data_doc | {"best_peer": best_peer(results, systems, precision=p)}
    return out


def _timed(rec: dict[str, Any]) -> bool:
    return rec.get("status") == "ok" and "median_ms" in rec


def best_peer(results: dict[str, dict[str, Any]], systems: list[System],
              key: str = "median_ms", precision: str = "fp32") -> str | None:
    """The fastest (by ``key``: the median, or ``p90_ms``) non-rtinfer system of
    ``precision`` with correct outputs (fp32 peers are rtinfer fp32's; int8 ones rtinfer
    int8's; bf16 ones rtinfer bf16's)."""
    peers = [s.name for s in systems if not s.rtinfer and s.precision == precision
             and _timed(results.get(s.name, {}))
             and key in results[s.name] and results[s.name].get("fidelity_ok") is not False]
    return min(peers, key=lambda n: results[n][key], default=None)


def ratios(results: dict[str, dict[str, Any]], systems: list[System]) -> None:
    """Speed-ups (>1 is faster): ``vs_eager`` and ``vs_best_peer`` on medians,
    ``vs_eager_min`` on minimums, ``vs_eager_p90`` and ``vs_best_peer_p90`` on p90s (the best
    peer at p90 may be another system than the best at the median); an int8 or bf16
    system's ``vs_best_<precision>_peer`` against the fastest non-rtinfer system of its own
    precision."""
    from systems import LOW_PRECISIONS

    eager = results.get("eager", {})
    peer = best_peer(results, systems)
    peer90 = best_peer(results, systems, "p90_ms")
    low = {p: best_peer(results, systems, precision=p) for p in LOW_PRECISIONS}
    precision = {s.name: s.precision for s in systems}
    for name, rec in results.items():
        if not _timed(rec):
            continue
        if _timed(eager):
            rec["vs_eager"] = eager["median_ms"] / rec["median_ms"]
            rec["vs_eager_min"] = eager["min_ms"] / rec["min_ms"]
            rec["vs_eager_p90"] = eager["p90_ms"] / rec["p90_ms"]
        if peer is not None:
            rec["vs_best_peer"] = results[peer]["median_ms"] / rec["median_ms"]
        if peer90 is not None:
            rec["vs_best_peer_p90"] = results[peer90]["p90_ms"] / rec["p90_ms"]
        own = low.get(precision.get(name, "fp32"))
        if own is not None:
            rec[f"vs_best_{precision[name]}_peer"] = (results[own]["median_ms"]
                                                      / rec["median_ms"])


# -- machine ----------------------------------------------------------------------------------


def sgemm_ceiling(n: int = 1536, calls: int = 15) -> float:
    """The fp32 matrix-multiply rate this machine reaches with the benchmark's threads
    (GFLOP/s, the best of ``calls`` n x n x n products through oneDNN/MKL in torch.mm): the
    roofline a compute-bound model is held against."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    best = min(time_calls(lambda: torch.mm(a, b), calls)) / 1e9
    return 2 * n ** 3 / best / 1e9


# Before each block of calls: a system timed right after ONNX Runtime ran slower, its pool's
# workers spinning on after their calls. Measured on a 2-core Zen 5 (rtinfer native ResNet-18,
# 10 calls after 10 of ONNX Runtime's, 15 rounds): median / p75 7.52 / 12.57 ms with no pause,
# 7.64 / 11.78 after 1 ms, 7.08 / 7.19 after 10 ms, 7.18 / 7.40 after 50 ms; 6.91 / 7.08 alone.
SWITCH_PAUSE_MS = 20.0
# Interleaved rounds: many short blocks rather than a few long ones, so that a slow stretch of
# the shared machine (a preempted vCPU for a fraction of a second) lands on every system alike
# instead of on one system's block. With 5 rounds a block is a fifth of a system's samples, and
# one slow stretch inside it moves that system's p90: on a 2-core Zen 5 VM, capped at AVX2,
# rtinfer's MobileNetV2 p90 fell to x0.83, x0.88 and x0.94 of the best peer's in 3 of 7 runs at
# equal medians, each time with one of its five blocks at a p90 of 1.2-2.1x its median, while
# another run's worst block was ONNX Runtime's (2.65x). With 20 rounds a block is 5%.
ROUNDS = 20


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = " ".join(f for f in value.split() if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_flags": flags, "logical_cores": os.cpu_count(),
            # the instructions native bf16 kernels run on (oneDNN's, OpenVINO's)
            "bf16": {f: f in flags.split() for f in BF16_FLAGS},
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None,
            "platform": platform.platform(), "python": platform.python_version(),
            "nice": os.nice(0), "root": hasattr(os, "geteuid") and os.geteuid() == 0}
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    return info


# AMD's family / model ranges of the cores a run's numbers depend on: how wide the AVX-512 units
# are decides what an AVX2 cap costs. Zen 4 runs AVX-512 on 256-bit units, so a cap keeps its
# FMA peak; Zen 5 (like Intel's server cores with two 512-bit FMA ports) has 512-bit units, so a
# cap halves it.
_AMD_CORES = ((0x17, range(0x00, 0x100), "Zen / Zen 2", None),
              (0x19, (*range(0x10, 0x20), *range(0x60, 0x80), *range(0xA0, 0xB0)), "Zen 4", 256),
              (0x19, range(0x00, 0x100), "Zen 3", None),
              (0x1A, range(0x00, 0x100), "Zen 5", 512))


def cpu_identity(cpuinfo: str) -> dict[str, Any]:
    """The vendor, family and model of the first CPU in ``/proc/cpuinfo`` text, with the core's
    name and its AVX-512 datapath width (bits) where known (AMD); empty where not x86 Linux."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the first processor's block only
            continue
        fields.setdefault(key.strip(), value.strip())
    try:
        vendor, family, model = fields["vendor_id"], int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return {}
    out: dict[str, Any] = {"vendor": vendor, "family": family, "model": model}
    if vendor == "AuthenticAMD":
        for fam, models, name, width in _AMD_CORES:
            if family == fam and model in models:
                out["core"] = name
                if width:
                    out["avx512_datapath_bits"] = width
                break
    return out


def isa_info(requested: str | None, systems: list[System]) -> dict[str, Any]:
    """The CPU's instruction-set story of this run: the CPU model, its AVX-512 flags, the
    level rtinfer's C++ runs (``isa.describe()``), the cap variables as set, torch's ATen
    capability, and per system whether a ``--isa`` cap reaches it."""
    import torch

    model, flags = platform.processor() or platform.machine(), set()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    ident = cpu_identity(cpuinfo)
    info: dict[str, Any] = {
        "requested": requested, "cpu_model": model, "cpu_identity": ident,
        "avx512_flags": sorted(f for f in flags if f.startswith("avx512")),
        "env": {v: os.environ.get(v) for v in ISA_VARS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "systems": {s.name: s.isa_cap for s in systems},
    }
    import cpuid_mask

    mask = cpuid_mask.status()
    if mask["active"]:
        mask["hidden"] = cpuid_mask.hidden_flags(flags)
        # what the mask caps beyond the variables: the libraries that dispatch on CPUID
        info["systems"] = {s.name: s.isa_cap_masked or s.isa_cap for s in systems}
    info["cpuid_mask"] = mask
    try:
        from rtinfer.bf16 import bf16_support
        from rtinfer.kernels import isa

        info["rtinfer"] = isa.describe()
        # whether rtinfer-bf16 computes in bf16 here, and why (not): a cap hides bf16
        ok, why = bf16_support()
        info["rtinfer_bf16"] = {"available": ok, "why": why}
    except Exception as e:  # a bad $RTINFER_CPU_ISA: recorded, and the run stops in main
        info["rtinfer"] = {"error": f"{type(e).__name__}: {e}"}
    return info


def native_onednn_isa() -> dict[str, str]:
    """The ISA oneDNN dispatches to in each native extension this process loaded (after the
    run: the cap takes effect at oneDNN's first primitive)."""
    try:
        from rtinfer.kernels import build
    except ImportError:
        return {}
    out = {}
    for lv, module in dict(getattr(build, "_modules", {})).items():
        try:
            v = int(module.cpu_isa())
            out[lv] = ONEDNN_ISA_NAMES.get(v, hex(v))
        except Exception as e:
            out[lv] = f"unknown ({type(e).__name__})"
    return out


def package_versions() -> dict[str, str | None]:
    from systems import version

    dists = ["rtinfer", "torch", "onnxruntime", "onnx", "onnxscript", "openvino", "apache-tvm",
             "transformers", "numpy"]
    return {d: version(d) for d in dists}


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        return (rev + ("+dirty" if dirty.strip() else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated, from: {', '.join(MODELS)}")
    ap.add_argument("--systems", default=None,
                    help="comma-separated (default: all; --list names them)")
    ap.add_argument("--skip", default="", help="systems to leave out, comma-separated")
    ap.add_argument("--skip-slow", action="store_true",
                    help="leave out the untuned TVM path (tvm-relax)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every system")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up calls per system")
    ap.add_argument("--iters", type=int, default=15, help="timed calls per system per round")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds")
    ap.add_argument("--min-samples", type=int, default=300,
                    help="timed calls per system at least (more per round than --iters where "
                         "needed), so p99 means something; bounded by --max-seconds")
    ap.add_argument("--isa", choices=ISA_CHOICES, default=None,
                    help="cap the CPU level: the run goes on in a child process with "
                         "RTINFER_CPU_ISA, ONEDNN_MAX_CPU_ISA (and for avx2 "
                         "ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, "
                         "TORCHINDUCTOR_CPP_MARCH) set; for avx2, where the kernel offers CPUID "
                         "faulting, CPUID also hides AVX-512 from the whole process "
                         "(--cpuid-mask), which caps ONNX Runtime and OpenVINO too; TVM stays "
                         "uncapped; results go to latest-<isa>.*")
    ap.add_argument("--cpuid-mask", choices=("auto", "on", "off"), default="auto",
                    help="with --isa avx2: preload benchmarks/cpuid_mask.c, so that every "
                         "library sees an AVX2-only CPU (auto: where it can run; on: fail "
                         "where it cannot)")
    ap.add_argument("--block-warmup", type=int, default=1,
                    help="untimed calls at the start of each block")
    ap.add_argument("--switch-pause", type=float, default=SWITCH_PAUSE_MS,
                    help="ms of sleep before each block, so that the system timed before it "
                         "stops competing for the cores (ONNX Runtime's workers spin for "
                         "milliseconds after a call)")
    ap.add_argument("--max-seconds", type=float, default=30.0,
                    help="time budget of one system on one model; slower systems get fewer "
                         "iterations (marked capped)")
    ap.add_argument("--minilm-seq", type=int, default=128)
    ap.add_argument("--pipeline", default=None, help="rtinfer pipeline (default: O3)")
    ap.add_argument("--tune-trials", type=int, default=64,
                    help="MetaSchedule trials (in all, per model) of the tuned TVM systems, "
                         "tvm-relax-tuned and rtinfer-tvm-tuned; 0 leaves them out")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: --warmup 1 --iters 3 --rounds 2 --max-seconds 3 "
                         "--min-samples 0")
    ap.add_argument("--warm-inductor-cache", action="store_true",
                    help="keep Inductor's on-disk cache (default: a fresh one per run)")
    ap.add_argument("--no-png", action="store_true", help="skip the chart")
    ap.add_argument("--update-readme", action="store_true",
                    help="put the table into README.md between the bench markers")
    ap.add_argument("--list", action="store_true", help="list models and systems, then exit")
    args = ap.parse_args(argv)
    if args.quick:
        args.warmup, args.iters, args.rounds = 1, min(args.iters, 3), 2
        args.max_seconds = min(args.max_seconds, 3.0)
        args.min_samples = 0
    if min(args.threads, args.iters, args.rounds) < 1:
        ap.error("--threads, --iters and --rounds must be at least 1")
    if args.tune_trials < 0:
        ap.error("--tune-trials must be at least 0")
    if args.min_samples < 0:
        ap.error("--min-samples must be at least 0")
    if args.isa and args.update_readme:
        ap.error("--update-readme takes an uncapped run only (leave out --isa)")
    return args


def select_systems(args: argparse.Namespace) -> list[System]:
    from systems import SYSTEMS

    names = args.systems.split(",") if args.systems else list(SYSTEMS)
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}; systems: "
                         f"{', '.join(SYSTEMS)}")
    skip = set(filter(None, args.skip.split(",")))
    chosen = [SYSTEMS[n] for n in names if n not in skip
              and not (args.skip_slow and SYSTEMS[n].slow)
              and not (args.tune_trials == 0 and SYSTEMS[n].tuned)]
    if "eager" not in [s.name for s in chosen]:
        chosen.insert(0, SYSTEMS["eager"])  # the reference of every ratio and fidelity check
    return chosen


def run_capped(isa: str, argv: list[str], cpuid_mask: str = "auto") -> int:
    """The whole run again in a child process whose environment caps the CPU level (the
    variables must be set before torch, oneDNN and MKL load); for avx2, with the CPUID mask
    preloaded where it can run (``cpuid_mask``: auto, on or off)."""
    env = os.environ | ISA_ENV[isa] | {ISA_CHILD: isa}
    how = " ".join(f"{k}={v}" for k, v in ISA_ENV[isa].items())
    if isa == "avx2" and cpuid_mask != "off":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import cpuid_mask as mask

        try:
            env = mask.child_env(mask.build(), env)
            how += "; CPUID hides AVX-512 from the process (cpuid_mask.c preloaded)"
        except mask.Unavailable as e:
            if cpuid_mask == "on":
                raise SystemExit(f"rtinfer bench: --cpuid-mask on, but {e}") from None
            how += f"; no CPUID mask ({e}): peers that dispatch on CPUID stay uncapped"
    print(f"rtinfer bench: capped at {isa}: {how}", file=sys.stderr, flush=True)
    return subprocess.call([sys.executable, str(Path(__file__).resolve()), *argv], env=env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.isa and os.environ.get(ISA_CHILD) != args.isa and not args.list:
        return run_capped(args.isa, sys.argv[1:] if argv is None else list(argv),
                          args.cpuid_mask)
    # thread pools are sized when the runtimes load: fix them before importing any
    os.environ.update(thread_env(args.threads))
    # a cold Inductor cache, so torch.compile's setup time is a real compile, not a cache hit
    # from an earlier run (the two torch.compile columns still share compiled kernels)
    inductor_cache = None
    if not args.warm_inductor_cache:
        inductor_cache = tempfile.TemporaryDirectory(prefix="rtinfer-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache.name
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import report
    import torch
    import workloads
    from systems import SYSTEMS, Settings

    if args.list:
        print("models: " + ", ".join(MODELS))
        for s in SYSTEMS.values():
            print(f"  {s.name:<24} {s.summary}")
        return 0
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; models: {', '.join(MODELS)}")
    systems = select_systems(args)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set
    torch.set_grad_enabled(False)
    settings = Settings(threads=args.threads, pipeline=args.pipeline,
                        tune_trials=args.tune_trials)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    machine = machine_info()
    isa_doc = isa_info(args.isa, systems)
    if "error" in isa_doc["rtinfer"]:
        raise SystemExit(f"rtinfer bench: {isa_doc['rtinfer']['error']}")
    if args.isa and isa_doc["rtinfer"].get("level") != args.isa:
        raise SystemExit(f"rtinfer bench: --isa {args.isa} but rtinfer runs "
                         f"{isa_doc['rtinfer'].get('level')}")
    mask = isa_doc["cpuid_mask"]
    if mask["active"] and mask["avx512f_visible"]:
        raise SystemExit("rtinfer bench: the CPUID mask is loaded but CPUID still shows AVX512F")
    if args.isa == "avx2" and args.cpuid_mask == "on" and not mask["active"]:
        raise SystemExit("rtinfer bench: --cpuid-mask on, but the mask is not active in the run")
    # a ceiling is the best rate the machine reaches: measured at the start and again at the
    # end, the better one counts (a busy phase of a shared machine only lowers it)
    machine["sgemm_gflops"] = machine["sgemm_gflops_start"] = sgemm_ceiling()
    if any(s.precision == "int8" for s in systems):
        import int8

        machine["int8_ceiling"] = int8.int8_ceiling(int8.effective_cores(args.threads),
                                                    level=args.isa)
    started = datetime.datetime.now(datetime.timezone.utc)
    core = report.describe_cpu(isa_doc.get("cpu_identity") or {})
    log(f"rtinfer bench: {machine['cpu']}" + (f" ({core})" if core else "")
        + f", {args.threads} threads, models {', '.join(models)}; "
        f"systems {', '.join(s.name for s in systems)}; CPU level "
        f"{isa_doc['rtinfer'].get('level')}" + (f" (capped by --isa {args.isa})" if args.isa
                                                 else ""))
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "date": started.isoformat(timespec="seconds"),
        "git": git_revision(),
        "machine": machine,
        "isa": isa_doc,
        "versions": package_versions(),
        "settings": {"threads": args.threads, "batch": 1, "warmup": args.warmup,
                     "iters_per_round": args.iters, "rounds": args.rounds,
                     "min_samples": args.min_samples, "isa": args.isa,
                     "calls_per_round": max(args.iters,
                                            math.ceil(args.min_samples / args.rounds)),
                     "block_warmup": args.block_warmup, "switch_pause_ms": args.switch_pause,
                     "max_seconds": args.max_seconds,
                     "minilm_seq": args.minilm_seq, "quick": args.quick,
                     "pipeline": args.pipeline, "tune_trials": args.tune_trials,
                     "fidelity_rtol": FIDELITY_RTOL,
                     "thread_env": thread_env(args.threads),
                     "torch_threads": torch.get_num_threads(),
                     "inductor_cache": "warm" if inductor_cache is None else "cold"},
        "systems": {s.name: {"summary": s.summary, "rtinfer": s.rtinfer, "slow": s.slow,
                             "precision": s.precision} for s in systems},
        "models": {},
    }
    for m in models:
        log(f"{m}:")
        w = workloads.build(m, args.minilm_seq)
        try:
            doc["models"][m] = bench_model(w, systems, args, settings, log)
        finally:
            w.close()
            del w
            torch._dynamo.reset()
            gc.collect()
    machine["sgemm_gflops_end"] = sgemm_ceiling()
    machine["sgemm_gflops"] = max(machine["sgemm_gflops_start"], machine["sgemm_gflops_end"])
    doc["isa"]["native_onednn_isa"] = native_onednn_isa()
    doc["isa"]["env_end"] = {v: os.environ.get(v) for v in ISA_VARS}
    doc["duration_s"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    try:
        doc["machine"]["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass

    paths = report.write_all(doc, args.out, png=not args.no_png,
                             stem="latest" + (f"-{args.isa}" if args.isa else ""))
    for p in paths:
        log(f"wrote {p}")
    if args.update_readme:
        report.update_readme(ROOT / "README.md", report.readme_block(doc))
        log(f"updated {ROOT / 'README.md'}")
    sys.stdout.write(report.markdown(doc))
    if inductor_cache is not None:
        inductor_cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
