"""``rtinfer optimize MODEL``: capture, optimize, build, then measure the model before and after.

MODEL is an ``.onnx`` file, an ``.ir`` file or a built-in name (``resnet18``, ``mobilenet_v2``,
``minilm``). "Before" is eager torch for a built-in, ONNX Runtime for an ONNX file, and the
unoptimized IR on the torch backend for an IR file. The command prints a table and writes
``DIR/artifact/`` (``rtinfer.load`` reads it), ``DIR/report.md`` and ``DIR/report.json``.

Latency: ``--warmup`` calls of each, then ``--runs`` calls interleaved (before, after, before...)
so that both see the same machine state; p50 and p90 of the per-call wall times.
Fidelity: on the same inputs (generated with ``--seed``, or ``--inputs FILE.npz``), the largest
absolute difference and the cosine similarity of each output, the worst over the outputs.

``--prune RATIO`` (a built-in model): prune -> distill (-> int8 with ``--int8``) under one
``--budget`` (``rtinfer.simplify``), distilled on ``--distill data.npz`` (arrays by input name,
samples along the first axis, optional integer ``labels``; the last ``--holdout`` of the
samples is the held-out data the budget is measured on) or, without it, on real sentences
(minilm) or generated images (with a warning). The table adds MACs, parameters and, with
labels, top-1 on the held-out samples; the per-step table comes first.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtinfer.compile import compile as rt_compile
from rtinfer.errors import OptimizeError
from rtinfer.measure import (
    fidelity,
    flat_outputs,
    load_average,
    percentiles,
    stability_warnings,
    usable_cores,
)

BUILTINS = ("resnet18", "mobilenet_v2", "minilm")


@dataclass
class Measured:
    """What ``rtinfer optimize`` measured; ``report.json`` is this record."""

    model: str
    kind: str  # builtin, onnx, ir
    baseline: str
    target: str
    pipeline: str
    backend: str
    inputs: dict[str, list[int]]
    runs: int
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    speedup_p50: float = 0.0
    size_bytes: dict[str, int] = field(default_factory=dict)
    fidelity: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    fused_ops: dict[str, int] = field(default_factory=dict)
    compile_seconds: float = 0.0
    cache: str = "off"
    artifact: str = ""
    warnings: list[str] = field(default_factory=list)  # why the latencies may not be trusted
    precision: str = "fp32"
    int8: dict[str, Any] | None = None  # --int8: the per-layer record (rtinfer.int8)
    simplify: dict[str, Any] | None = None  # --prune: the per-step record (rtinfer.simplify)


@dataclass
class _Subject:
    """A model made ready: what to compile, the baseline to call, the inputs."""

    kind: str
    baseline_name: str
    compile_arg: Any
    example: Any  # example_inputs for compile
    feeds: list[np.ndarray] | None  # flat numpy inputs (ONNX, IR)
    baseline: Callable[[], list[np.ndarray]]
    shapes: dict[str, list[int]]
    weight_bytes: int  # the model's weights before rtinfer


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``input=1x3x224x224`` -> ("input", (1, 3, 224, 224))."""
    name, eq, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not eq or not name.strip() or not shape or any(d < 0 for d in shape):
        raise OptimizeError(f"--input-shape expects NAME=D0xD1x..., e.g. input=1x3x224x224, "
                            f"got {text!r}")
    return name.strip(), shape


def _progress(total: int, desc: str, unit: str = "it"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None,
                dynamic_ncols=True)


def _builtin(name: str, seq: int) -> _Subject:
    import torch

    from rtinfer.models import (
        image_input,
        minilm,
        minilm_inputs,
        mobilenet_v2,
        randomize_batchnorm,
        resnet18,
    )

    torch.manual_seed(0)
    if name == "minilm":
        model = minilm()
        example: Any = minilm_inputs(seq=seq)
    else:
        build = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}[name]
        model = randomize_batchnorm(build())
        example = image_input()

    def baseline() -> list[np.ndarray]:
        with torch.no_grad():
            return flat_outputs(model(**example) if isinstance(example, dict) else model(example))

    shapes = ({k: list(v.shape) for k, v in example.items()} if isinstance(example, dict)
              else {"x": list(example.shape)})
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return _Subject("builtin", "eager torch", model, example, None, baseline, shapes, size)


def _bind_shapes(graph: Any, shapes: dict[str, tuple[int, ...]],
                 dims: dict[str, int]) -> dict[str, int]:
    """Symbolic dims bound by ``--input-shape`` (and ``--dims``) for ``graph``'s inputs."""
    names = [v.name for v in graph.inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise OptimizeError(f"--input-shape names unknown input(s) {', '.join(unknown)}; the "
                            f"model's inputs: {', '.join(map(str, names))}")
    out = dict(dims)
    for v in graph.inputs:
        if v.name not in shapes:
            continue
        shape = shapes[v.name]
        if len(shape) != v.type.rank:
            raise OptimizeError(f"--input-shape {v.name}: {len(shape)} dims given, the input "
                                f"is {v.type}")
        for d, n in zip(v.type.shape, shape, strict=True):
            if isinstance(d, int):
                if d != n:
                    raise OptimizeError(f"--input-shape {v.name}: {list(shape)} does not fit "
                                        f"{v.type}")
            elif d.is_Symbol:
                out[d.name] = n
    return out


def _file_inputs(graph: Any, path: str | None, seed: int,
                 dims: dict[str, int]) -> list[np.ndarray]:
    from rtinfer.ir import random_inputs

    if path is None:
        return random_inputs(graph, seed=seed, dims=dims)
    try:
        with np.load(path, allow_pickle=False) as npz:
            given = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise OptimizeError(f"cannot read --inputs {path}: {e}") from None
    names = [v.name for v in graph.inputs]
    missing = [n for n in names if n not in given]
    if missing:
        raise OptimizeError(f"--inputs {path} lacks input(s) {', '.join(missing)}")
    return [given[n] for n in names]


def _onnx(path: Path, shapes: dict, dims: dict, seed: int, inputs: str | None) -> _Subject:
    from rtinfer.frontends import capture

    graph = capture(str(path))
    feeds = _file_inputs(graph, inputs, seed, _bind_shapes(graph, shapes, dims))
    try:
        import onnxruntime as ort
    except ImportError:
        raise OptimizeError("measuring an ONNX model needs onnxruntime as the baseline: pip "
                            "install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feed = dict(zip(names, feeds, strict=True))

    def baseline() -> list[np.ndarray]:
        return [np.asarray(o) for o in sess.run(None, feed)]

    return _Subject("onnx", "ONNX Runtime", str(path), None, feeds, baseline,
                    {n: list(a.shape) for n, a in feed.items()}, _const_bytes(graph))


def _ir(path: Path, shapes: dict, dims: dict, seed: int, inputs: str | None) -> _Subject:
    from rtinfer.frontends import load_graph

    graph = load_graph(str(path))
    feeds = _file_inputs(graph, inputs, seed, _bind_shapes(graph, shapes, dims))
    plain = rt_compile(graph, pipeline="O0", cache=False)

    def baseline() -> list[np.ndarray]:
        return flat_outputs(plain(*feeds))

    return _Subject("ir", "unoptimized IR (torch backend)", graph, None, feeds, baseline,
                    {str(v.name): list(a.shape) for v, a in zip(graph.inputs, feeds,
                                                                 strict=True)},
                    _const_bytes(graph))


def _calibration(subject: _Subject, args: Any) -> tuple[list[Any], str | None]:
    """``--calibration N`` (real sentences for minilm; generated inputs otherwise, with a
    warning) or ``--calibration data.npz`` (by input name, samples along the first axis): the
    batches, and a warning if the data is not real."""
    import torch

    spec = "64" if args.calibration is None else str(args.calibration)
    if spec.isdigit():
        n = int(spec)
        if n < 1:
            raise OptimizeError("--calibration N needs N >= 1")
        if subject.kind == "builtin" and "input_ids" in subject.shapes:
            from rtinfer.models import english_sentences, minilm_inputs

            texts = english_sentences()
            order = np.random.default_rng(1).permutation(len(texts))[:n]
            return [minilm_inputs([texts[i]], seq=args.seq) for i in order], None
        note = (f"calibrated on {n} generated inputs, not real data: give --calibration "
                f"data.npz for a faithful int8 model")
        if subject.kind == "builtin":
            from rtinfer.models import image_input

            return [image_input(seed=1000 + i) for i in range(n)], note
        from rtinfer.ir import random_inputs

        graph = subject.compile_arg
        if not hasattr(graph, "inputs"):
            from rtinfer.frontends import capture

            graph = capture(str(graph))
        dims = {str(d): int(a.shape[i]) for v, a in zip(graph.inputs, subject.feeds or [],
                                                        strict=False)
                for i, d in enumerate(v.type.shape) if not isinstance(d, int)}
        return [tuple(random_inputs(graph, seed=1000 + i, dims=dims)) for i in range(n)], note
    given = _npz_samples(spec, list(subject.shapes), "--calibration")
    names = list(subject.shapes)
    step = max(1, subject.shapes[names[0]][0] if subject.shapes[names[0]] else 1)
    batches = []
    for i in range(0, len(given[names[0]]) - step + 1, step):
        arrays = [given[k][i:i + step] for k in names]
        if subject.kind == "builtin":
            tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
            batches.append(dict(zip(names, tensors, strict=True)) if len(names) > 1
                           else tensors[0])
        else:
            batches.append(tuple(arrays))
    if not batches:
        raise OptimizeError(f"--calibration {spec} holds fewer samples than one batch ({step})")
    return batches, None


def _npz_samples(path: str, names: list[str], flag: str) -> dict[str, np.ndarray]:
    """The arrays of ``path`` by input name (and ``labels`` where present), checked to hold
    the same number of samples along their first axis."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            given = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise OptimizeError(f"cannot read {flag} {path}: {e}") from None
    missing = [k for k in names if k not in given]
    if missing:
        raise OptimizeError(f"{flag} {path} lacks input(s) {', '.join(missing)} (arrays by input "
                            f"name, samples along the first axis)")
    keys = names + (["labels"] if flag == "--distill" and "labels" in given else [])
    counts = {len(given[k]) for k in keys}
    if len(counts) != 1:
        raise OptimizeError(f"{flag} {path}: the arrays hold different numbers of samples "
                            f"({sorted(counts)})")
    return {k: given[k] for k in keys}


def _prune_data(subject: _Subject, args: Any) -> tuple[dict[str, Any], str | None]:
    """``compile``'s prune= arguments for ``--prune``: training and held-out batches (from
    ``--distill FILE.npz``, else real sentences for minilm or generated images), and a warning
    where the data is not real."""
    import torch

    if subject.kind != "builtin":
        raise OptimizeError(f"--prune distills the pruned model from the dense one, which needs "
                            f"a torch model: a built-in ({', '.join(BUILTINS)}), not "
                            f"{subject.kind} file {args.model}")
    if not 0.0 < args.prune < 1.0:
        raise OptimizeError(f"--prune is the fraction of channels removed, in (0, 1); got "
                            f"{args.prune:g}")
    if not 0.0 < args.holdout < 1.0:
        raise OptimizeError(f"--holdout is the fraction of the samples held out, in (0, 1); got "
                            f"{args.holdout:g}")
    names = list(subject.shapes)
    note = None
    if args.distill is not None:
        given = {k: torch.from_numpy(np.ascontiguousarray(a))
                 for k, a in _npz_samples(args.distill, names, "--distill").items()}
    elif "input_ids" in names:
        from rtinfer.models import english_sentences, minilm_inputs

        texts = english_sentences()
        order = np.random.default_rng(2).permutation(len(texts))[:512]
        given = minilm_inputs([texts[i] for i in order], seq=args.seq)
    else:
        from rtinfer.models import image_input

        shape = subject.shapes[names[0]]
        given = {names[0]: image_input(batch=64, size=shape[-1], seed=2000)}
        note = ("distilled on 64 generated images, not real data: give --distill data.npz for "
                "a faithful pruned model")
    n = len(given[names[0]])
    held = max(1, int(round(n * args.holdout)))
    if n - held < 1:
        raise OptimizeError(f"--distill {args.distill}: {n} sample(s) leave none to train on "
                            f"after holding out {held}")

    def batches(lo: int, hi: int, size: int) -> list[Any]:
        out = []
        for i in range(lo, hi, size):
            part = {k: t[i:min(i + size, hi)] for k, t in given.items()}
            labels = part.pop("labels", None)
            if len(names) > 1:
                out.append(part if labels is None else {**part, "labels": labels})
            else:
                x = part[names[0]]
                out.append(x if labels is None else (x, labels))
        return out

    return {"prune": args.prune, "train_data": batches(0, n - held, args.distill_batch),
            "validation": batches(n - held, n, 64),
            "distill_steps": args.distill_steps}, note


def _subject(model: str, args: Any) -> _Subject:
    shapes = dict(parse_shape(s) for s in args.input_shape or [])
    dims = args.dims or {}
    if model in BUILTINS:
        if shapes or args.inputs:
            raise OptimizeError(f"{model} is a built-in model with fixed example inputs; "
                                f"--input-shape and --inputs are for .onnx and .ir files")
        return _builtin(model, args.seq)
    path = Path(model)
    if not path.exists():
        raise OptimizeError(f"no such model: {model} (give an .onnx or .ir file, or one of the "
                            f"built-in models: {', '.join(BUILTINS)})")
    if path.is_dir():
        raise OptimizeError(f"{model} is a directory, not a model file")
    if path.suffix == ".onnx":
        return _onnx(path, shapes, dims, args.seed, args.inputs)
    return _ir(path, shapes, dims, args.seed, args.inputs)


def _const_bytes(graph: Any) -> int:
    return int(sum(np.asarray(n.attrs["value"]).nbytes for n in graph.constants()))


def run(args: Any, stdout: Any, stderr: Any) -> int:
    import torch

    if args.runs < 1 or args.warmup < 0:
        raise OptimizeError("--runs must be at least 1 and --warmup at least 0")
    steps = _progress(4, f"rtinfer optimize {args.model}", "step")
    steps.set_postfix_str("load")
    subject = _subject(args.model, args)
    steps.update()
    steps.set_postfix_str("capture, optimize, build")
    t0 = time.perf_counter()
    precision, calibration, note = "fp32", None, None
    if args.int8:
        precision = "int8"
        calibration, note = _calibration(subject, args)
    elif (args.budget is not None and args.prune is None) or args.calibration is not None:
        raise OptimizeError("--calibration and --budget go with --int8")
    pruning: dict[str, Any] = {}
    if args.prune is not None:
        pruning, prune_note = _prune_data(subject, args)
        note = "; ".join(n for n in (note, prune_note) if n) or None
    elif args.distill is not None or args.distill_steps is not None:
        raise OptimizeError("--distill and --distill-steps go with --prune")
    cm = rt_compile(subject.compile_arg, target=args.target, example_inputs=subject.example,
                    pipeline=args.pipeline, backend=args.backend, cache=not args.no_cache,
                    precision=precision, calibration=calibration, accuracy_budget=args.budget,
                    **pruning)
    compile_s = time.perf_counter() - t0
    steps.update()

    if subject.feeds is not None:
        feeds = subject.feeds

        def after() -> list[np.ndarray]:
            return flat_outputs(cm(*feeds))
    else:
        example = subject.example

        def after() -> list[np.ndarray]:
            return flat_outputs(cm(**example) if isinstance(example, dict) else cm(example))

    steps.set_postfix_str("measure")
    want, got = subject.baseline(), after()
    fid = fidelity(want, got)
    times: dict[str, list[float]] = {"before": [], "after": []}
    load_before = load_average()
    bench = _progress(args.warmup + args.runs, "latency (before/after interleaved)", "run")
    with torch.no_grad():
        for i in range(args.warmup + args.runs):
            for key, fn in (("before", subject.baseline), ("after", after)):
                t = time.perf_counter()
                fn()
                if i >= args.warmup:
                    times[key].append(time.perf_counter() - t)
            bench.update()
    bench.close()
    load_after = load_average()
    steps.update()

    steps.set_postfix_str("save")
    out = Path(args.out) if args.out else Path(f"{Path(args.model).stem}.rtinfer")
    artifact = cm.save(out / "artifact")
    on_disk = sum(p.stat().st_size for p in artifact.iterdir() if p.is_file())
    info = cm.info
    m = Measured(
        model=args.model, kind=subject.kind, baseline=subject.baseline_name,
        target=args.target, pipeline=info.pipeline, backend=info.backend,
        inputs=subject.shapes, runs=args.runs,
        latency_ms={k: percentiles(v) for k, v in times.items()},
        size_bytes={"weights_before": subject.weight_bytes, "weights_after": _const_bytes(cm.ir),
                    "artifact": on_disk},
        fidelity=fid,
        nodes={"before": sum(info.ops_before.values()), "after": sum(info.ops_after.values())},
        fused_ops=cm.fused_ops, compile_seconds=compile_s, cache=info.cache,
        artifact=str(artifact))
    m.speedup_p50 = m.latency_ms["before"]["p50"] / max(m.latency_ms["after"]["p50"], 1e-12)
    loads = (load_before, load_after)
    m.warnings = stability_warnings(
        m.latency_ms, None if None in loads else loads, usable_cores())  # type: ignore[arg-type]
    m.precision, m.int8, m.simplify = precision, info.int8, info.simplify
    if note:
        m.warnings.append(note)
    (out / "report.json").write_text(json.dumps(asdict(m), indent=2) + "\n")
    (out / "report.md").write_text(markdown(m, cm.report()))
    steps.update()
    steps.close()
    if m.int8:
        from rtinfer.int8 import Int8Report

        stdout.write(Int8Report.from_record(m.int8).table() + "\n")
    if m.simplify:
        from rtinfer.simplify import simplify_lines

        stdout.write("\n".join(simplify_lines(m.simplify)) + "\n")
    stdout.write(table(m) + f"\nwrote {out}{os.sep}: artifact/, report.md, report.json\n")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _prune_rows(m: Measured) -> list[tuple[str, str, str]]:
    """MACs, parameters and held-out accuracy before (the dense model) and after (the compiled
    one), from the --prune record."""
    if not m.simplify or len(m.simplify["rows"]) < 2:
        return []
    first, last = m.simplify["rows"][0], m.simplify["rows"][-1]

    def n(x: Any) -> str:
        return "-" if x is None else f"{x:,}"

    out = [("MACs", n(first["macs"]), n(last["macs"])),
           ("parameters", n(first["params"]), n(last["params"]))]
    if m.simplify["metric"] == "top-1" and first["metric"] is not None:
        out.append(("top-1 (held out)", f"{first['metric']:.2f}%", f"{last['metric']:.2f}%"))
    elif first["metric"] is not None:
        out.append(("rel. error (held out)", "", f"{last['metric']:.4g}"))
    return out


def rows(m: Measured) -> list[tuple[str, str, str]]:
    b, a = m.latency_ms["before"], m.latency_ms["after"]
    return _prune_rows(m) + [
        ("latency p50", f"{b['p50']:.3f} ms", f"{a['p50']:.3f} ms"),
        ("latency p90", f"{b['p90']:.3f} ms", f"{a['p90']:.3f} ms"),
        ("speedup (p50)", "", f"{m.speedup_p50:.2f}x"),
        ("nodes", str(m.nodes["before"]), str(m.nodes["after"])),
        ("weights", _mb(m.size_bytes["weights_before"]), _mb(m.size_bytes["weights_after"])),
        ("artifact on disk", "", _mb(m.size_bytes["artifact"])),
        ("max abs error", "", f"{m.fidelity['max_abs_error']:.3g}"),
        ("cosine similarity", "", f"{m.fidelity['cosine_similarity']:.6f}"),
    ]


def table(m: Measured) -> str:
    head = (f"rtinfer optimize {m.model}: target {m.target}, pipeline {m.pipeline}, "
            f"precision {m.precision}, backend {m.backend}; compiled in "
            f"{m.compile_seconds:.2f} s (cache {m.cache}); {m.runs} runs")
    cols = ("", f"before ({m.baseline})", "after (rtinfer)")
    body = rows(m)
    w = [max(len(r[i]) for r in [cols, *body]) for i in range(3)]
    line = "-+-".join("-" * n for n in w)
    out = [head, line, " | ".join(c.ljust(n) for c, n in zip(cols, w, strict=True)), line]
    out += [" | ".join(c.ljust(n) for c, n in zip(r, w, strict=True)) for r in body]
    out.append(line)
    if m.fused_ops:
        out.append("fused: " + ", ".join(f"{k} x{v}" for k, v in m.fused_ops.items()))
    out += [f"warning: {w}" for w in m.warnings]
    return "\n".join(out)


def markdown(m: Measured, compile_report: str) -> str:
    lines = [f"# rtinfer optimize {m.model}", "",
             f"target `{m.target}`, pipeline `{m.pipeline}`, backend `{m.backend}`; inputs "
             + ", ".join(f"`{k}` {v}" for k, v in m.inputs.items())
             + f"; {m.runs} interleaved runs; compiled in {m.compile_seconds:.2f} s "
               f"(cache {m.cache}).", "",
             f"| | before ({m.baseline}) | after (rtinfer) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows(m)]
    if m.warnings:
        lines += [""] + [f"**Warning:** {w}" for w in m.warnings]
    lines += ["", "## Compilation", "", "```", compile_report, "```", ""]
    return "\n".join(lines)


def add_arguments(p: Any, dims_type: Callable[[str], dict[str, int]]) -> None:
    p.add_argument("model", metavar="MODEL",
                   help=f"an .onnx file, an .ir file, or a built-in: {', '.join(BUILTINS)}")
    p.add_argument("--target", default="cpu", help="target (cpu)")
    p.add_argument("-p", "--pipeline", default="O3", help="pipeline (O3)")
    p.add_argument("--backend", default="auto", help="backend (auto)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output directory (default: MODEL.rtinfer)")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3x224x224",
                   help="the shape of an input with symbolic dims (repeatable)")
    p.add_argument("--dims", type=dims_type, default=None, metavar="B=1,S=16",
                   help="sizes of symbolic dims (default 2)")
    p.add_argument("--inputs", metavar="FILE.npz", default=None,
                   help="inputs to measure on, by input name (default: seeded random)")
    p.add_argument("--seed", type=int, default=0, help="seed of generated inputs (0)")
    p.add_argument("--seq", type=int, default=16, help="minilm: sequence length (16)")
    p.add_argument("--runs", type=int, default=50, help="timed runs of each (50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs of each (5)")
    p.add_argument("--no-cache", action="store_true", help="do not use the compile cache")
    p.add_argument("--int8", action="store_true",
                   help="compile to int8: calibrate, choose int8 or fp32 per layer by measured "
                        "sensitivity and kernel speed, print the per-layer table")
    p.add_argument("--calibration", metavar="N|FILE.npz", default=None,
                   help="--int8: N calibration inputs (real sentences for minilm, generated "
                        "otherwise; default 64) or an .npz of arrays by input name, samples "
                        "along the first axis")
    p.add_argument("--budget", type=float, default=None, metavar="ERR",
                   help="--int8: the largest relative output error allowed (e.g. 0.01); "
                        "the most sensitive layers go back to fp32 until it holds. --prune: "
                        "the pipeline's budget on the held-out samples (top-1 drop as a "
                        "fraction with labels, else relative output error)")
    p.add_argument("--prune", type=float, default=None, metavar="RATIO",
                   help="a built-in model: prune this fraction of each layer's channels, "
                        "distill the accuracy back (then int8 with --int8), within --budget")
    p.add_argument("--distill", metavar="FILE.npz", default=None,
                   help="--prune: training data, arrays by input name (samples along the "
                        "first axis) and optional integer 'labels' (default: real sentences "
                        "for minilm, generated images otherwise)")
    p.add_argument("--distill-steps", type=int, default=None, metavar="N",
                   help="--prune: distillation steps (default: four passes, 300-1000)")
    p.add_argument("--distill-batch", type=int, default=32, metavar="N",
                   help="--prune: samples per distillation batch (32)")
    p.add_argument("--holdout", type=float, default=0.2, metavar="FRAC",
                   help="--prune: the last FRAC of the samples is held out to measure the "
                        "budget on (0.2)")
