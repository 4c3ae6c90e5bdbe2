"""Latency of a call made after the process slept, against back-to-back calls.

    python benchmarks/wakeup.py                     # all configurations, about 1.5 minutes
    python benchmarks/wakeup.py --threads 2 --budget 100 --json out.json
    setsid nice -n -20 .venv/bin/python benchmarks/wakeup.py

A deployed model is rarely called back to back: between two requests its thread pool goes
idle, its worker threads stop spinning and sleep in the kernel, and the next call pays to wake
them (a futex wake-up, on a VM an inter-processor interrupt through the hypervisor) and runs on
cold caches. This script measures that on the MLP 784-512-512-10 at batch 1 (a model whose call
is short enough that the wake-up shows): for each system, the median latency of

- back-to-back calls (one untimed call, then calls one after another),
- a call right after ``time.sleep(S)`` for S = 0, 1, 10 and 100 ms.

Systems: rtinfer native (``rtinfer.compile(model, example_inputs=x, backend="native")``),
eager torch and ONNX Runtime (spinning, its default, and with
``session.intra_op.allow_spinning=0``). Each system runs alone in its own child process (one
runtime's spinning workers never steal a core from another's), under each OpenMP wait
setting: the default (GNU OpenMP spins ``GOMP_SPINCOUNT``, 300000 iterations, then sleeps),
``OMP_WAIT_POLICY=ACTIVE`` (spins, in effect, forever), ``OMP_WAIT_POLICY=PASSIVE`` (sleeps at
once) and ``GOMP_SPINCOUNT=3000000`` (ten times the default). ONNX Runtime has its own thread
pool, not OpenMP: it runs under the default setting only. Torch's bundled ``libgomp.so.1`` is
also the one rtinfer's extension binds to (same soname, loaded first), so one OpenMP runtime
serves both.

The whole run is bounded by ``--budget`` seconds of measurement (the repetitions scale down to
fit); the table gives medians in microseconds and each delay's median over the back-to-back
median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DELAYS_MS = (0, 1, 10, 100)
# repetitions per delay at --budget's full share (back-to-back: timed calls in one block)
REPS = {"b2b": 400, 0: 200, 1: 150, 10: 60, 100: 12}
SYSTEMS = ("rtinfer-native", "eager", "onnxruntime", "onnxruntime-nospin")
CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=3000000": {"GOMP_SPINCOUNT": "3000000"},
    "OMP_PROC_BIND=close": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
}
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND", "OMP_PLACES")
OPENMP_SYSTEMS = ("rtinfer-native", "eager")  # ONNX Runtime's pool is its own


def thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


# -- child: one system under one configuration ------------------------------------------------


def _model_and_input():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).eval()
    x = torch.randn(1, 784, generator=torch.Generator().manual_seed(0))
    return model, x


def _export_onnx(model, x, path: Path) -> None:
    import torch

    if path.exists():
        return
    tmp = path.with_suffix(f".{os.getpid()}.onnx")
    try:  # the TorchScript exporter is quick on a plain MLP; dynamo if it is gone
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=17)
    except Exception:
        torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=["x"],
                          output_names=["y"])
    tmp.replace(path)


def _setup(system: str, threads: int, onnx_path: Path):
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.set_grad_enabled(False)
    model, x = _model_and_input()
    if system == "eager":
        return lambda: model(x)
    if system == "rtinfer-native":
        import rtinfer

        cm = rtinfer.compile(model, example_inputs=x, backend="native")
        return lambda: cm(x)
    import onnxruntime as ort

    _export_onnx(model, x, onnx_path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if system == "onnxruntime-nospin":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feeds)


def _measure(fn, scale: float) -> dict[str, list[int]]:
    """Per-call times in ns: a back-to-back block, then each delay's calls."""
    import gc

    for _ in range(50):  # warm: the pool started, caches and allocator settled
        fn()
    out: dict[str, list[int]] = {}
    gc.collect()
    gc.disable()
    try:
        n = max(20, int(REPS["b2b"] * scale))
        fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            ts.append(time.perf_counter_ns() - t0)
        out["b2b"] = ts
        for d in DELAYS_MS:
            n = max(3, int(REPS[d] * scale))
            fn()
            ts = []
            for _ in range(n):
                time.sleep(d / 1000)
                t0 = time.perf_counter_ns()
                fn()
                ts.append(time.perf_counter_ns() - t0)
            out[f"sleep{d}"] = ts
    finally:
        gc.enable()
    return out


def child(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    fn = _setup(args.system, args.threads, Path(args.onnx))
    setup_s = time.perf_counter() - t0
    samples = _measure(fn, args.scale)
    print(json.dumps({"system": args.system, "setup_s": setup_s, "samples_ns": samples}))
    return 0


# -- parent -----------------------------------------------------------------------------------


def _sleep_seconds(scale: float) -> float:
    return sum(max(3, int(REPS[d] * scale)) * d / 1000 for d in DELAYS_MS)


def runs(configs: list[str], systems: list[str]) -> list[tuple[str, str]]:
    return [(c, s) for c in configs for s in systems
            if c == "default" or s in OPENMP_SYSTEMS]


def parent(args: argparse.Namespace) -> int:
    configs = [c for c in args.configs.split(",") if c]
    systems = [s for s in args.systems.split(",") if s]
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"unknown configuration {c!r}; from: {', '.join(CONFIGS)}")
    for s in systems:
        if s not in SYSTEMS:
            raise SystemExit(f"unknown system {s!r}; from: {', '.join(SYSTEMS)}")
    todo = runs(configs, systems)
    # the sleeps dominate a child's measurement: scale the repetitions to fit the budget
    scale = min(1.0, args.budget / max(1e-9, len(todo) * _sleep_seconds(1.0) * 1.15))
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"wakeup: {cpu}, {os.cpu_count()} logical cores, {args.threads} threads, "
          f"MLP 784-512-512-10 batch 1; {len(todo)} child runs, repetitions x{scale:.2f}",
          file=sys.stderr, flush=True)
    results: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rtinfer-wakeup-") as tmp:
        onnx_path = Path(tmp) / "mlp784.onnx"
        for config, system in todo:
            env = os.environ | thread_env(args.threads) | CONFIGS[config]
            for var in OMP_VARS:
                if var not in CONFIGS[config] and var not in os.environ:
                    env.pop(var, None)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--system", system,
                   "--threads", str(args.threads), "--scale", str(scale), "--onnx",
                   str(onnx_path)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                print(f"  {config} / {system}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            rec["config"] = config
            results.append(rec)
            med = {k: statistics.median(v) / 1e3 for k, v in rec["samples_ns"].items()}
            print(f"  {config} / {system}: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items())
                  + f" µs ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(table(results, cpu, args.threads, time.perf_counter() - started))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "threads": args.threads,
                                               "scale": scale, "runs": results}) + "\n")
    return 0


def table(results: list[dict], cpu: str, threads: int, seconds: float) -> str:
    cols = ["b2b", *(f"sleep{d}" for d in DELAYS_MS)]
    heads = ["back-to-back", *(f"after {d} ms" for d in DELAYS_MS)]
    lines = [f"CPU: {cpu}, {os.cpu_count()} logical cores, {threads} threads; MLP "
             f"784-512-512-10, batch 1; {seconds:.0f} s",
             "",
             "median µs (× back-to-back); n = calls per cell",
             "",
             "| setting | system | " + " | ".join(heads) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for rec in results:
        s = rec["samples_ns"]
        base = statistics.median(s["b2b"])
        cells = []
        for c in cols:
            med = statistics.median(s[c])
            cells.append(f"{med / 1e3:.1f}" + ("" if c == "b2b" else f" (×{med / base:.2f})")
                         + f" n={len(s[c])}")
        lines.append(f"| {rec['config']} | {rec['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=75.0,
                    help="seconds of measurement in all (setups come on top)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated, from: {', '.join(CONFIGS)}")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated, from: {', '.join(SYSTEMS)}")
    ap.add_argument("--json", default=None, help="write every sample here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--system", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--onnx", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
