"""Models through the optimizing pipeline (O3), compared with eager torch.

``optimize_model(model, inputs, via="torch"|"onnx")`` captures a model (torch.export, or
torch.onnx.export then the ONNX frontend), runs O3 with the verifier on, runs the reference
interpreter and compares every output with eager torch. Run ``python -m tests.passes.zoo_o3``
to put the whole zoo (tests/frontends/zoo.py) through it and regenerate docs/optimized-zoo.md;
``python -m tests.passes.zoo_o3 NAME...`` runs just those.
"""

from __future__ import annotations

import io
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.frontends.zoo import ZOO, eager_outputs

ROOT = Path(__file__).resolve().parents[2]

PIPELINE = "O3"
FUSED_OPS = ("scaled_dot_product_attention", "multi_head_attention", "layer_norm", "rms_norm",
             "gelu")
# spelled-out pieces that must not survive once their op is fused
LEFTOVERS = ("softmax", "erf", "reduce_mean", "rsqrt", "batch_norm")


def fused_counts(graph) -> Counter:
    """Ops that stand for a fused subgraph, with activations inside fused_* nodes counted as
    their op (a gelu folded into a linear is still one gelu)."""
    counts: Counter = Counter()
    for n in graph.nodes:
        op = n.op
        if op.startswith("fused_"):
            counts[op] += 1
            act = n.attrs.get("activation", "none")
            if act != "none":
                counts["gelu" if act.startswith("gelu") else act] += 1
        elif op in FUSED_OPS:
            counts[op] += 1
    return counts


def n_ops(graph) -> int:
    return sum(1 for n in graph.nodes if n.op != "const")


class _Positional(torch.nn.Module):
    """A model taking keyword tensors, called with positional ones (for torch.onnx.export)."""

    def __init__(self, model: torch.nn.Module, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *args):
        return self.model(**dict(zip(self.keys, args, strict=True)))


def capture(model: torch.nn.Module, inputs: Any, via: str, opset: int = 17):
    """The raw capture and the graph's input arrays."""
    import rtinfer

    keys = list(inputs) if isinstance(inputs, dict) else None
    args = tuple(inputs.values()) if keys else tuple(inputs)
    if via == "torch":
        from rtinfer.frontends.torch_frontend import flatten_inputs

        g = rtinfer.capture(model, inputs)
        flat = flatten_inputs(g, **inputs) if keys else flatten_inputs(g, *inputs)
        return g, [a.numpy() for a in flat]
    import onnx

    module = (_Positional(model, keys) if keys else model).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=opset)
    g = rtinfer.capture(onnx.load_from_string(f.getvalue()))
    return g, [a.numpy() for a in args]


def optimize_model(model: torch.nn.Module, inputs: Any, via: str = "torch",
                   pipeline: str = PIPELINE, opset: int = 17) -> dict[str, Any]:
    from rtinfer.ir import interpret
    from rtinfer.pass_manager import run_pipeline

    raw, arrays = capture(model, inputs, via, opset)
    t0 = time.perf_counter()
    result = run_pipeline(raw.clone(), pipeline, verify_each=True, out=io.StringIO())
    t_opt = time.perf_counter() - t0
    g = result.graph
    got = interpret(g, *arrays)
    got = list(got) if isinstance(got, tuple) else [got]
    want = [w.numpy() for w in eager_outputs(model, inputs)]
    if via == "onnx":  # torch.onnx.export keeps only the first outputs
        want = want[:len(got)]
    err = 0.0
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape, f"output shape {a.shape} != eager {b.shape}"
        if a.size:
            err = max(err, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    scale = max((float(np.abs(w).max()) for w in want if w.size), default=0.0)
    return {"raw": raw, "graph": g, "nodes_before": len(raw.nodes), "nodes_after": len(g.nodes),
            "ops_before": n_ops(raw), "ops_after": n_ops(g), "fused": fused_counts(g),
            "max_abs_err": err, "max_abs_out": scale, "outputs": got, "eager": want,
            "optimize_s": t_opt}


def close_enough(r: dict[str, Any], tol: float = 1e-4) -> bool:
    return r["max_abs_err"] <= tol + tol * r["max_abs_out"]


def _report(path: Path, names: list[str]) -> None:
    import traceback

    import transformers

    rows = []
    for name in names:
        t0 = time.perf_counter()
        try:
            model, inputs = ZOO[name]()
            r = optimize_model(model, inputs)
            drop = 100.0 * (1 - r["nodes_after"] / r["nodes_before"])
            op_drop = 100.0 * (1 - r["ops_after"] / r["ops_before"])
            fused = ", ".join(f"{k} {v}" for k, v in sorted(r["fused"].items())) or "-"
            rows.append((name, f"{r['nodes_before']} / {r['ops_before']}",
                         f"{r['nodes_after']} / {r['ops_after']}",
                         f"{drop:.0f}% / {op_drop:.0f}%", fused, f"{r['max_abs_err']:.1e}",
                         "pass" if close_enough(r) else "MISMATCH",
                         f"{time.perf_counter() - t0:.1f}"))
        except Exception as e:  # report every failure, keep going
            traceback.print_exc()
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]
            rows.append((name, "-", "-", "-", reason.replace("|", "\\|"), "-", "fail",
                         f"{time.perf_counter() - t0:.1f}"))
        print(" | ".join(rows[-1]), flush=True)
    lines = [
        "# Model zoo through the optimizing pipeline",
        "",
        "Generated by `python -m tests.passes.zoo_o3` (do not edit by hand). Each model of "
        "[model-zoo.md](model-zoo.md) is captured with the torch frontend, optimized with "
        f"`{PIPELINE}` (verifier after every pass), run on the reference interpreter and compared "
        "with eager torch (pass: max abs error <= 1e-4 + 1e-4 * max |output|). Nodes count "
        "every node / every node but constants. *Fused* counts the ops that stand for a fused "
        "subgraph; an activation inside a `fused_*` node counts as its op too.",
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}.",
        "",
        "| model | nodes before (all / ops) | after | drop | fused | max abs error | result "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", *_minilm_captures()]
    path.write_text("\n".join(lines) + "\n")


def _minilm_captures() -> list[str]:
    """The acceptance model through each capture (tests/passes/test_acceptance.py)."""
    from rtinfer import models

    model, inputs = models.minilm(), models.minilm_inputs(seq=16)
    lines = ["## all-MiniLM-L6-v2 through each capture", "",
             "The acceptance criterion: at least 60% fewer op nodes (every node but constants) "
             "on every path, outputs within 1e-4 of eager.", "",
             "| capture | ops before | ops after | op drop | nodes before | nodes after "
             "| node drop | max abs error |", "|---|---|---|---|---|---|---|---|"]
    for label, via, opset in (("torch.export", "torch", 17), ("ONNX opset 17", "onnx", 17),
                              ("ONNX opset 14", "onnx", 14)):
        r = optimize_model(model, inputs, via=via, opset=opset)
        lines.append(f"| {label} | {r['ops_before']} | {r['ops_after']} | "
                     f"{100 * (1 - r['ops_after'] / r['ops_before']):.0f}% | "
                     f"{r['nodes_before']} | {r['nodes_after']} | "
                     f"{100 * (1 - r['nodes_after'] / r['nodes_before']):.0f}% | "
                     f"{r['max_abs_err']:.1e} |")
    return lines


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    if len(sys.argv) > 1:
        for n in sys.argv[1:]:
            m, x = ZOO[n]()
            r = optimize_model(m, x)
            print(n, r["nodes_before"], r["nodes_after"], dict(r["fused"]), r["max_abs_err"])
    else:
        _report(ROOT / "docs" / "optimized-zoo.md", list(ZOO))
