"""Structured pruning and the prune -> distill -> int8 pipeline, measured (issue 14).

    python benchmarks/pruning.py                         # every part, full sizes (tens of minutes)
    python benchmarks/pruning.py --quick                 # a smoke run: small sizes, few steps
    python benchmarks/pruning.py --parts speed --json out.json
    setsid nice -n -20 .venv/bin/python benchmarks/pruning.py --json results/pruning.json

Three parts (README.md, "Pruning"):

- ``speed``: ResNet-18 and MobileNetV2 (rtinfer.models, seeded weights, BatchNorm statistics
  randomized), batch 1: Torch-Pruning at 50% of channels (L2 magnitude, ``round_to=8``, the
  classifier left whole) exported to ONNX and run by ONNX Runtime, against ``rtinfer.prune(
  ratio=0.5)`` compiled with the native backend, against rtinfer's dense native model and dense
  ONNX Runtime: one interleaved run (each round calls every system once, in rotating order),
  medians and ratios.
- ``digits``: a ResNet-18 with a 32x32 stem (3x3 stride-1 first convolution, no max-pool, one
  input channel) trained here on scikit-learn's digits upsampled to 32x32, then
  ``rtinfer.compile(prune=0.5, precision="int8", accuracy_budget=0.01)`` with its training
  digits to distill on and held-out digits to judge: latency against the dense eager fp32
  model at batch 1 (target: 5x) and top-1 on the held-out digits (target: at most 1 point
  below dense).
- ``minilm``: all-MiniLM-L6-v2 (real weights), half of each layer's FFN neurons and a third of
  its heads pruned (activation importance), distilled with the sentence-encoder recipe
  (``loss="embedding"``: hidden-state MSE plus ``1 - cosine`` of the mean-pooled embedding;
  AdamW 5e-4, cosine schedule, 5% warmup, 1500 steps) on real English sentences (the
  standard library's docstrings, every sentence but the held-out ones, and the installed
  packages' docstrings, ``english_corpus``; shuffled batches of 16), int8;
  latency against eager fp32 at batch 1 (target: 3x) and the mean cosine of mean-pooled
  sentence embeddings to the dense model on held-out sentences (target: 0.95). Sequence
  length 64 holds all but 0.2% of the sentences whole (32 truncates 13%).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rtinfer  # noqa: E402
from rtinfer.measure import flat_outputs  # noqa: E402
from rtinfer.models import (  # noqa: E402
    english_corpus,
    english_sentences,
    image_input,
    minilm,
    minilm_inputs,
    mobilenet_v2,
    randomize_batchnorm,
    resnet18,
)

PARTS = ("speed", "digits", "minilm")


# -- timing ------------------------------------------------------------------------------------


def interleaved(systems: dict[str, Callable[[], Any]], rounds: int, warmup: int = 3,
                block: int = 10, pause_s: float = 0.02) -> dict[str, dict[str, float]]:
    """Median, p25 and p75 ms of each system, every round calling each ``block`` times in
    rotating order (so that a noisy stretch of the machine falls on all of them). Blocks, not
    single calls: a runtime's thread pool spins on after its call returns (ONNX Runtime's does
    by default) and would slow the next system's call, the first call after a switch pays the
    other pool's wake-up, and back-to-back calls are what a benchmark of latency measures.
    Before each block, ``pause_s`` of sleep lets the previous system's pool quiet down: without
    it, rtinfer's dense ResNet-18 right after ONNX Runtime's blocks had a p75 of 12.6 ms
    against 7.1 alone (2-core Zen 5; benchmarks/run.py's SWITCH_PAUSE_MS)."""
    names = list(systems)
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in systems.values():
                fn()
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                time.sleep(pause_s)
                systems[name]()  # the switch: not timed
                for _ in range(block):
                    t = time.perf_counter()
                    systems[name]()
                    times[name].append(1e3 * (time.perf_counter() - t))
    return {n: {"median": statistics.median(v), "p25": float(np.percentile(v, 25)),
                "p75": float(np.percentile(v, 75)), "calls": len(v)} for n, v in times.items()}


def _ort(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _export(model: nn.Module, x: torch.Tensor, path: Path) -> str:
    """The ONNX file of ``model`` (the TorchScript exporter: Torch-Pruning's modules are plain
    nn layers with fewer channels, which it exports as they are); the exporter used."""
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], opset_version=17)
    return "torchscript"


# -- part 1: pruned speed against Torch-Pruning + ONNX Runtime ----------------------------------


def torch_pruning_50(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, int]:
    """Torch-Pruning's 50% L2-magnitude channel pruning of a copy of ``model`` (the last linear
    layer, the classifier, left whole), and its MACs."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    last = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(pruned, x, importance=tp.importance.GroupMagnitudeImportance(
        p=2), pruning_ratio=0.5, ignored_layers=[last], round_to=8)
    pruner.step()
    macs, _ = tp.utils.count_ops_and_params(pruned, x)
    return pruned.eval(), int(macs)


def part_speed(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, build in (("resnet18", resnet18), ("mobilenet_v2", mobilenet_v2)):
        torch.manual_seed(0)
        model = randomize_batchnorm(build()).eval()
        x = image_input(size=args.size)
        tp_model, tp_macs = torch_pruning_50(model, x)
        pruned = rtinfer.prune(model, example_inputs=x, ratio=0.5, importance="l2", round_to=8)
        rep = pruned.report()
        rt_pruned = rtinfer.compile(pruned, example_inputs=x, backend=args.backend, cache=False)
        rt_dense = rtinfer.compile(model, example_inputs=x, backend=args.backend, cache=False)
        with tempfile.TemporaryDirectory(prefix="rtinfer-prune-bench-") as tmp:
            _export(model, x, Path(tmp) / "dense.onnx")
            _export(tp_model, x, Path(tmp) / "tp.onnx")
            ort_dense = _ort(Path(tmp) / "dense.onnx", args.threads)
            ort_tp = _ort(Path(tmp) / "tp.onnx", args.threads)
        feed = {"x": x.numpy()}
        ms = interleaved({
            "onnxruntime dense": lambda s=ort_dense, f=feed: s.run(None, f),
            "torch-pruning 50% + onnxruntime": lambda s=ort_tp, f=feed: s.run(None, f),
            "rtinfer native dense": lambda m=rt_dense, v=x: m(v),
            "rtinfer prune 0.5 native": lambda m=rt_pruned, v=x: m(v),
        }, args.rounds)
        tp_ms = ms["torch-pruning 50% + onnxruntime"]["median"]
        rt_ms = ms["rtinfer prune 0.5 native"]["median"]
        out[name] = {
            "ms": ms, "macs": {"dense": rep.macs_before, "rtinfer prune 0.5": rep.macs_after,
                               "torch-pruning 50%": tp_macs},
            "params": {"dense": rep.params_before, "rtinfer prune 0.5": rep.params_after},
            "rtinfer_pruned_vs_torch_pruning_ort": tp_ms / rt_ms,
            "rtinfer_pruned_vs_rtinfer_dense": ms["rtinfer native dense"]["median"] / rt_ms,
            "size": args.size}
    return out


def speed_table(res: dict[str, Any]) -> str:
    lines = ["| model | system | GMACs | median ms (p25-p75) |", "|---|---|---:|---:|"]
    for model, r in res.items():
        macs = {"onnxruntime dense": r["macs"]["dense"], "rtinfer native dense":
                r["macs"]["dense"], "torch-pruning 50% + onnxruntime":
                r["macs"]["torch-pruning 50%"], "rtinfer prune 0.5 native":
                r["macs"]["rtinfer prune 0.5"]}
        for system, st in r["ms"].items():
            lines.append(f"| {model} ({r['size']}px) | {system} | {macs[system] / 1e9:.3f} | "
                         f"{st['median']:.2f} ({st['p25']:.2f}-{st['p75']:.2f}) |")
        lines.append(f"| {model} | rtinfer pruned vs Torch-Pruning+ORT | | "
                     f"{r['rtinfer_pruned_vs_torch_pruning_ort']:.2f}x |")
        lines.append(f"| {model} | rtinfer pruned vs rtinfer dense | | "
                     f"{r['rtinfer_pruned_vs_rtinfer_dense']:.2f}x |")
    return "\n".join(lines)


# -- part 2: the pipeline on a digits ResNet-18 ------------------------------------------------


def digits_resnet18() -> nn.Module:
    """ResNet-18 with a 32x32 stem: a 3x3 stride-1 first convolution on one channel, no
    max-pool (CIFAR-style), ten classes."""
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _digits32() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x, y, perm[:1300], perm[1300:]


def _top1(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        hits = sum(int(fn(x[i:i + 1]).argmax(1).item() == int(y[i])) for i in range(len(x)))
    return 100.0 * hits / len(x)


def part_digits(args: argparse.Namespace) -> dict[str, Any]:
    x, y, train, test = _digits32()
    if args.quick:
        train, test = train[:256], test[:100]
    torch.manual_seed(0)
    model = digits_resnet18()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), 64):
            b = order[i:i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    train_s = time.perf_counter() - t0
    batches = [(x[train[i:i + 64]], y[train[i:i + 64]]) for i in range(0, len(train), 64)]
    t0 = time.perf_counter()
    cm = rtinfer.compile(model, example_inputs=x[test[:1]], backend=args.backend, prune=0.5,
                         precision="int8", calibration=[x[i:i + 1] for i in train[:128]],
                         train_data=batches, validation=[(x[test], y[test])],
                         accuracy_budget=0.01, distill_steps=args.distill_steps)
    compile_s = time.perf_counter() - t0
    sample = x[test[:1]]
    ms = interleaved({"eager fp32 (dense)": lambda: model(sample),
                      "rtinfer prune+distill+int8": lambda: cm(sample)}, args.rounds)
    dense, fast = _top1(model, x[test], y[test]), _top1(cm, x[test], y[test])
    speedup = ms["eager fp32 (dense)"]["median"] / ms["rtinfer prune+distill+int8"]["median"]
    return {"ms": ms, "speedup": speedup, "top1": {"dense": dense, "rtinfer": fast},
            "top1_drop_points": dense - fast, "train_s": train_s, "compile_s": compile_s,
            "epochs": args.epochs, "distill_steps": args.distill_steps,
            "train": len(train), "held_out": len(test), "report": cm.info.simplify,
            "targets": {"speedup>=5": speedup >= 5.0, "top1_drop<=1": dense - fast <= 1.0}}


# -- part 3: the pipeline on MiniLM ------------------------------------------------------------


def _embed(out: Any, mask: torch.Tensor) -> np.ndarray:
    from int8 import mean_pool

    return mean_pool(flat_outputs(out)[0], mask.numpy())


def part_minilm(args: argparse.Namespace) -> dict[str, Any]:
    texts = english_sentences()
    order = np.random.default_rng(0).permutation(len(texts))
    n_held = 16 if args.quick else 100
    held = [texts[i] for i in order[:n_held]]
    # the sentences not held out, and (full runs) more real prose to distill on: the
    # docstrings of the installed packages (rtinfer.models.english_corpus, none held out)
    train = [texts[i] for i in order[n_held:]]
    train = train[:64] if args.quick else train + english_corpus(min_sentences=5000)
    n_train = len(train)
    seq = args.seq
    model = minilm()
    example = minilm_inputs([held[0]], seq=seq)
    shuffled = [train[i] for i in np.random.default_rng(1).permutation(n_train)]
    batches = [minilm_inputs(shuffled[i:i + 16], seq=seq) for i in range(0, n_train - 15, 16)]
    t0 = time.perf_counter()
    cm = rtinfer.compile(model, example_inputs=example, backend=args.backend,
                         prune={"ffn": 0.5, "heads": 0.34}, precision="int8",
                         calibration=[minilm_inputs([t], seq=seq) for t in train[:64]],
                         train_data=batches, validation=[minilm_inputs(held, seq=seq)],
                         accuracy_budget=args.minilm_budget,
                         distill_steps=args.minilm_distill_steps)
    compile_s = time.perf_counter() - t0
    ms = interleaved({"eager fp32 (dense)": lambda: model(**example),
                      "rtinfer prune+distill+int8": lambda: cm(**example)}, args.rounds)
    cos = []
    with torch.inference_mode():
        for t in held:
            inp = minilm_inputs([t], seq=seq)
            a = _embed(model(**inp), inp["attention_mask"])[0]
            b = _embed(cm(**inp), inp["attention_mask"])[0]
            cos.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
    speedup = ms["eager fp32 (dense)"]["median"] / ms["rtinfer prune+distill+int8"]["median"]
    return {"ms": ms, "speedup": speedup, "embedding_cosine": float(np.mean(cos)),
            "seq": seq, "train_sentences": n_train, "held_out": n_held, "compile_s": compile_s,
            "distill_steps": args.minilm_distill_steps or "recipe (1500)",
            "budget": args.minilm_budget,
            "report": cm.info.simplify,
            "targets": {"speedup>=3": speedup >= 3.0, "cosine>=0.95": float(np.mean(cos))
                        >= 0.95}}


def pipeline_table(name: str, r: dict[str, Any]) -> str:
    a, b = r["ms"]["eager fp32 (dense)"], r["ms"]["rtinfer prune+distill+int8"]
    acc = (f"top-1 {r['top1']['dense']:.2f}% -> {r['top1']['rtinfer']:.2f}%" if "top1" in r
           else f"embedding cosine {r['embedding_cosine']:.4f}")
    lines = [f"{name}: eager fp32 {a['median']:.3f} ms, rtinfer {b['median']:.3f} ms: "
             f"{r['speedup']:.2f}x; {acc}; targets: "
             + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in r["targets"].items())]
    from rtinfer.simplify import simplify_lines

    lines += simplify_lines(r["report"]) if r.get("report") else []
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"of {', '.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="small sizes and few steps: a smoke run")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds of 10 calls per system (30; quick 5)")
    p.add_argument("--size", type=int, default=None, help="speed: image size (224; quick 96)")
    p.add_argument("--epochs", type=int, default=None, help="digits: training epochs (8; 1)")
    p.add_argument("--distill-steps", type=int, default=None, help="(600; quick 20)")
    p.add_argument("--minilm-distill-steps", type=int, default=None,
                   help="minilm: distillation steps (the sentence-encoder recipe's 1500; "
                        "quick 20)")
    p.add_argument("--seq", type=int, default=None, help="minilm: tokens (64; quick 32)")
    p.add_argument("--minilm-budget", type=float, default=0.05,
                   help="minilm: the pipeline's budget, 1 - mean embedding cosine (0.05)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads (ONNX Runtime; torch and rtinfer use torch's)")
    p.add_argument("--backend", default="native",
                   help="rtinfer's backend (native; torch for a smoke run where native cannot "
                        "be built)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (5 if q else 30)
    args.size = args.size or (96 if q else 224)
    args.epochs = args.epochs or (1 if q else 8)
    args.distill_steps = args.distill_steps or (20 if q else 600)
    args.minilm_distill_steps = args.minilm_distill_steps or (20 if q else None)
    args.seq = args.seq or (32 if q else 64)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"quick": q, "threads": args.threads, "backend": args.backend,
                               "torch": torch.__version__, "rtinfer": rtinfer.__version__}
    if "speed" in parts:
        results["speed"] = part_speed(args)
        print(speed_table(results["speed"]), flush=True)
    if "digits" in parts:
        results["digits"] = part_digits(args)
        print(pipeline_table("digits ResNet-18 (32x32)", results["digits"]), flush=True)
    if "minilm" in parts:
        results["minilm"] = part_minilm(args)
        print(pipeline_table(f"all-MiniLM-L6-v2 (seq {args.seq})", results["minilm"]),
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
