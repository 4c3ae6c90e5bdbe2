"""Models x systems, side by side in one process: rtinfer against its peers on the CPU.

    python benchmarks/run.py                                  # everything, default settings
    python benchmarks/run.py --quick                          # a smoke run: a few iterations
    python benchmarks/run.py --models resnet18 --systems eager,onnxruntime,rtinfer-torch
    setsid nice -n -20 .venv/bin/python benchmarks/run.py --update-readme   # the real run

Each model is set up on every system, then timed in rounds: every round runs a block of
iterations on each system in turn (the order rotates from round to round), so a slow phase of
a shared machine hits every system alike. Per-call times come from ``perf_counter_ns`` after a
warm-up, with the garbage collector off inside a block. Batch 1, thread pools fixed. Results:
``latest.json`` (every sample, machine, versions, settings), ``latest.md`` and ``latest.png``
in ``--out``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
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
MODELS = ("resnet18", "mobilenet_v2", "minilm", "mlp")
SCHEMA = "rtinfer.bench/1"
# a system's output is flagged when max|out - eager| exceeds this fraction of max|eager|: fp32
# reassociation stays near 1e-6, a bf16 or wrong kernel lands far above
FIDELITY_RTOL = 1e-3


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
            "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
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


def bench_model(w: Workload, systems: list[System], args, settings: Settings,
                log) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    prepared: dict[str, Prepared] = {}
    for system in systems:
        log(f"  setup {system.name} ...")
        p, rec = setup_system(system, w, settings)
        results[system.name] = rec
        if p is None:
            log(f"    {rec['status']}: {rec['reason']}")
            continue
        prepared[system.name] = p
        log(f"    ready in {rec['setup_s']:.1f} s")

    # fidelity: each system's first output against eager's
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
        else:
            rec.update(fidelity(first, ref))
            if not rec["fidelity_ok"]:
                log(f"    {name}: WRONG OUTPUT (max abs err {rec['max_abs_err']})")

    # warm-up: up to --warmup calls, within a quarter of the time budget; the warm-up times
    # estimate each system's call time, which caps its iterations at --max-seconds
    blocks: dict[str, int] = {}
    for name, p in prepared.items():
        t0, warm = time.perf_counter(), []
        while len(warm) < max(1, args.warmup) and (
                not warm or time.perf_counter() - t0 < args.max_seconds / 4):
            warm += time_calls(p.run, 1)
        est_s = statistics.median(warm) / 1e9
        n = min(args.iters, max(1, int(args.max_seconds / args.rounds / max(est_s, 1e-9))))
        blocks[name] = n
        results[name].update(warmup_calls=len(warm), capped=n < args.iters)

    samples: dict[str, list[int]] = {name: [] for name in prepared}
    order = list(prepared)
    for r in range(args.rounds):
        k = r % len(order) if order else 0
        for name in order[k:] + order[:k]:
            if name not in prepared:
                continue
            try:
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
    ratios(results, systems)
    out = {"description": w.description,
           "inputs": [{"name": n, "shape": list(x.shape), "dtype": str(x.dtype)}
                      for n, x in zip(w.input_names, w.inputs, strict=True)],
           "onnx_export_s": w.onnx_export_s, "onnx_exporter": w.onnx_exporter,
           "best_peer": best_peer(results, systems), "results": results}
    return out


def _timed(rec: dict[str, Any]) -> bool:
    return rec.get("status") == "ok" and "median_ms" in rec


def best_peer(results: dict[str, dict[str, Any]], systems: list[System]) -> str | None:
    """The fastest (median) non-rtinfer system with correct outputs."""
    peers = [s.name for s in systems if not s.rtinfer and _timed(results.get(s.name, {}))
             and results[s.name].get("fidelity_ok") is not False]
    return min(peers, key=lambda n: results[n]["median_ms"], default=None)


def ratios(results: dict[str, dict[str, Any]], systems: list[System]) -> None:
    """Speed-ups (>1 is faster): ``vs_eager`` and ``vs_best_peer`` on medians,
    ``vs_eager_min`` on minimums."""
    eager = results.get("eager", {})
    peer = best_peer(results, systems)
    for rec in results.values():
        if not _timed(rec):
            continue
        if _timed(eager):
            rec["vs_eager"] = eager["median_ms"] / rec["median_ms"]
            rec["vs_eager_min"] = eager["min_ms"] / rec["min_ms"]
        if peer is not None:
            rec["vs_best_peer"] = results[peer]["median_ms"] / rec["median_ms"]


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
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None,
            "platform": platform.platform(), "python": platform.python_version(),
            "nice": os.nice(0), "root": hasattr(os, "geteuid") and os.geteuid() == 0}
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    return info


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
    ap.add_argument("--iters", type=int, default=40, help="timed calls per system per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--block-warmup", type=int, default=1,
                    help="untimed calls at the start of each block")
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
                    help="a smoke run: --warmup 1 --iters 3 --rounds 2 --max-seconds 3")
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
    if min(args.threads, args.iters, args.rounds) < 1:
        ap.error("--threads, --iters and --rounds must be at least 1")
    if args.tune_trials < 0:
        ap.error("--tune-trials must be at least 0")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    # a ceiling is the best rate the machine reaches: measured at the start and again at the
    # end, the better one counts (a busy phase of a shared machine only lowers it)
    machine["sgemm_gflops"] = machine["sgemm_gflops_start"] = sgemm_ceiling()
    started = datetime.datetime.now(datetime.timezone.utc)
    log(f"rtinfer bench: {machine['cpu']}, {args.threads} threads, models {', '.join(models)}; "
        f"systems {', '.join(s.name for s in systems)}")
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "date": started.isoformat(timespec="seconds"),
        "git": git_revision(),
        "machine": machine,
        "versions": package_versions(),
        "settings": {"threads": args.threads, "batch": 1, "warmup": args.warmup,
                     "iters_per_round": args.iters, "rounds": args.rounds,
                     "block_warmup": args.block_warmup, "max_seconds": args.max_seconds,
                     "minilm_seq": args.minilm_seq, "quick": args.quick,
                     "pipeline": args.pipeline, "tune_trials": args.tune_trials,
                     "fidelity_rtol": FIDELITY_RTOL,
                     "thread_env": thread_env(args.threads),
                     "torch_threads": torch.get_num_threads(),
                     "inductor_cache": "warm" if inductor_cache is None else "cold"},
        "systems": {s.name: {"summary": s.summary, "rtinfer": s.rtinfer, "slow": s.slow}
                    for s in systems},
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
    doc["duration_s"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    try:
        doc["machine"]["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass

    paths = report.write_all(doc, args.out, png=not args.no_png)
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
