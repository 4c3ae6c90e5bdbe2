"""Reports of a benchmark run: ``latest.json``, ``latest.md``, ``latest.png`` and the README
table. Everything here reads the JSON document that ``run.py`` builds, so a saved
``latest.json`` can be re-rendered without rerunning."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
WRONG = "⚠"  # outputs differ from eager beyond the fidelity tolerance
CAPPED = "†"  # fewer iterations than asked: the system exceeded its time budget


def _systems(doc: dict[str, Any]) -> list[str]:
    return list(doc["systems"])


def _isa_capped(doc: dict[str, Any]) -> str | None:
    """The level a ``--isa`` run was capped at (None: an uncapped run)."""
    return (doc.get("isa") or {}).get("requested")


def _col(doc: dict[str, Any], name: str) -> str:
    """A system's column heading; in a capped run, systems the cap does not fully reach say
    so (their numbers are the host's full ISA, not the emulated level)."""
    cap = (doc.get("isa") or {}).get("systems", {}).get(name, "")
    if _isa_capped(doc) and not cap.startswith("capped"):
        return f"{name} ({cap.split(':')[0] or 'uncapped'})"
    return name


def _heads(doc: dict[str, Any], names: list[str]) -> str:
    return " | ".join(_col(doc, n) for n in names)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 10 else f"{v:.1f}"


def _cell(rec: dict[str, Any] | None, key: str = "median_ms", ratio: str = "vs_eager") -> str:
    if rec is None:
        return "-"
    if rec.get("status") != "ok" or key not in rec:
        return rec.get("status", "-").replace("unavailable", "n/a")
    text = f"{rec[key]:.3g}" if rec[key] < 10 else f"{rec[key]:.1f}"
    if ratio in rec:
        text += f" (×{rec[ratio]:.2f})"
    if rec.get("fidelity_ok") is False:
        text += f" {WRONG}"
    if rec.get("capped"):
        text += f" {CAPPED}"
    return text


def _table(doc: dict[str, Any], key: str, ratio: str) -> list[str]:
    names = _systems(doc)
    lines = ["| model | " + _heads(doc, names) + " |", "|---|" + "---:|" * len(names)]
    for model, m in doc["models"].items():
        cells = [_cell(m["results"].get(n), key, ratio) for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _peer_table(doc: dict[str, Any]) -> list[str]:
    """Per model: the best peer at the median and rtinfer's ratios to it; then the best peer
    at p90 (the fastest non-rtinfer p90, maybe another system) and rtinfer-native's p90
    against it."""
    ours = [n for n, s in doc["systems"].items() if s["rtinfer"]]
    native = "rtinfer-native" in ours
    tail_heads = (" | best peer at p90 | its p90 ms | rtinfer-native p90 ms | native p90 ×"
                  if native else "")
    lines = ["| model | best peer | its median ms | " + _heads(doc, ours) + tail_heads + " |",
             "|---|---|---:|" + "---:|" * len(ours) + ("---|---:|---:|---:|" if native else "")]
    for model, m in doc["models"].items():
        peer = m.get("best_peer")
        peer_ms = f"{m['results'][peer]['median_ms']:.3g}" if peer else "-"
        cells = []
        for n in ours:
            rec = m["results"].get(n, {})
            cells.append(f"×{rec['vs_best_peer']:.2f}" if "vs_best_peer" in rec
                         else _cell(rec or None))
        if native:
            p90 = m.get("best_peer_p90")
            rec = m["results"].get("rtinfer-native", {})
            cells += [_col(doc, p90) if p90 else "-",
                      _ms(m["results"][p90]["p90_ms"]) if p90 else "-",
                      _ms(rec["p90_ms"]) if "p90_ms" in rec else "-",
                      f"×{rec['vs_best_peer_p90']:.2f}" if "vs_best_peer_p90" in rec else "-"]
        lines.append(f"| {model} | {_col(doc, peer) if peer else '-'} | {peer_ms} | "
                     + " | ".join(cells) + " |")
    return lines


def _tail_cell(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "-"
    if rec.get("status") != "ok" or "median_ms" not in rec:
        return rec.get("status", "-").replace("unavailable", "n/a")
    parts = [_ms(rec[k]) if k in rec else "-" for k in ("min_ms", "median_ms", "p90_ms",
                                                         "p99_ms")]
    text = " / ".join(parts)
    if rec.get("samples") is not None and rec["samples"] < 100:
        text += f" (n={rec['samples']})"
    if rec.get("capped"):
        text += f" {CAPPED}"
    return text


def _tail_table(doc: dict[str, Any]) -> list[str]:
    names = _systems(doc)
    lines = ["| model | " + _heads(doc, names) + " |", "|---|" + "---:|" * len(names)]
    for model, m in doc["models"].items():
        lines.append(f"| {model} | " + " | ".join(_tail_cell(m["results"].get(n))
                                                   for n in names) + " |")
    return lines


def _setup_table(doc: dict[str, Any]) -> list[str]:
    names = _systems(doc)
    lines = ["| model | " + _heads(doc, names) + " |", "|---|" + "---:|" * len(names)]
    for model, m in doc["models"].items():
        cells = [f"{m['results'][n]['setup_s']:.1f}" if "setup_s" in m["results"].get(n, {})
                 else "-" for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def targets(doc: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """The tracked targets of the torch backend: never slower than eager on any model, at
    least 1.3x faster than eager on ResNet-18 and MobileNetV2 (medians)."""
    out = []
    for model, m in doc["models"].items():
        rec = m["results"].get("rtinfer-torch", {})
        need = 1.3 if model in ("resnet18", "mobilenet_v2") else 1.0
        ratio = rec.get("vs_eager")
        ok = None if ratio is None else (ratio >= need and rec.get("fidelity_ok") is not False)
        got = "not measured" if ratio is None else f"×{ratio:.2f}"
        out.append((f"rtinfer-torch ≥ ×{need:.1f} eager on {model}", ok, got))
    return out


def _gflops_table(doc: dict[str, Any]) -> list[str]:
    """Achieved GFLOP/s (the model's convolution/matmul/attention FLOPs over the median)."""
    names = _systems(doc)
    lines = ["| model | GFLOP | " + _heads(doc, names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for model, m in doc["models"].items():
        gflop = next((r["gflop"] for r in m["results"].values() if r.get("gflop")), None)
        if not gflop:
            continue
        cells = [f"{gflop / (rec['median_ms'] / 1e3):.0f}" if rec.get("status") == "ok"
                 and "median_ms" in rec else "-"
                 for rec in (m["results"].get(n, {}) for n in names)]
        lines.append(f"| {model} | {gflop:.3g} | " + " | ".join(cells) + " |")
    return lines


def _precision_systems(doc: dict[str, Any], precision: str) -> list[str]:
    return [n for n, s in doc["systems"].items() if s.get("precision") == precision]


def _int8_systems(doc: dict[str, Any]) -> list[str]:
    return _precision_systems(doc, "int8")


def _accuracy_cells(rec: dict[str, Any], digits: int = 4) -> list[str]:
    """The cosine (to ``digits`` decimals) and the agreement cells of a system's held-out
    accuracy."""
    acc = rec.get("accuracy")
    if not acc:
        return ["error" if rec.get("accuracy_error") else "-"] * 2
    agree = acc.get("top1_agreement", acc.get("nn_unchanged"))
    return [f"{acc['cosine']:.{digits}f}", f"{agree:.1%}" if agree is not None else "-"]


def _setup_cell(rec: dict[str, Any]) -> str:
    if "setup_s" not in rec:
        return "-"
    return f"{rec['setup_s']:.1f}" + (f" ({rec['calibration_s']:.1f})"
                                      if "calibration_s" in rec else "")


def _gops_cells(doc: dict[str, Any], rec: dict[str, Any]) -> list[str]:
    """int8's GOP/s and its fraction of the int8 ceiling."""
    c = doc["machine"].get("int8_ceiling") or {}
    ceiling, amx = c.get("gops"), c.get("amx_gops")
    gops = rec.get("gops")
    # past the vector ceiling the kernels used AMX: its ceiling is then the one to read
    share = f"{gops / ceiling:.0%}" if gops and ceiling else "-"
    if gops and amx:
        share += f" (AMX {gops / amx:.0%})"
    return [f"{gops:.0f}" if gops else "-", share]


# per low precision: its setup heading, the cosine's decimals (bf16 stays within 1e-5 of fp32,
# which 4 decimals would print as 1.0000), the columns after the accuracy ones (headings, cells)
_LOW_COLUMNS: dict[str, tuple[str, int, list[str],
                              Callable[[dict[str, Any], dict[str, Any]], list[str]]]] = {
    "int8": ("setup s (calibration s)", 4, ["GOP/s", "of ceiling"], _gops_cells),
    "bf16": ("setup s", 6, [], lambda doc, rec: []),
}


def _low_precision_table(doc: dict[str, Any], precision: str) -> list[str]:
    """Per model and ``precision`` ("int8", "bf16") system: speed, the ratio to the best peer
    of that precision, setup, accuracy on held-out data (int8: GOP/s too)."""
    setup_head, digits, extra_heads, extra = _LOW_COLUMNS[precision]
    heads = ["model", "system", "median ms (× eager)", f"× best {precision} peer", setup_head,
             "cosine to fp32", "top-1 same / NN same", *extra_heads]
    lines = ["| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 2)]
    for model, m in doc["models"].items():
        for n in _precision_systems(doc, precision):
            rec = m["results"].get(n)
            if rec is None:
                continue
            if rec.get("status") != "ok":
                lines.append(f"| {model} | {_col(doc, n)} | {_cell(rec)} |"
                             + " |" * (len(heads) - 3))
                continue
            ratio = rec.get(f"vs_best_{precision}_peer")
            cells = [_cell(rec), f"×{ratio:.2f}" if ratio is not None else "-",
                     _setup_cell(rec), *_accuracy_cells(rec, digits), *extra(doc, rec)]
            lines.append(f"| {model} | {_col(doc, n)} | " + " | ".join(cells) + " |")
    return lines


def _int8_table(doc: dict[str, Any]) -> list[str]:
    """Per model and int8 system: speed, calibration, accuracy on held-out data, GOP/s."""
    return _low_precision_table(doc, "int8")


def _data_lines(doc: dict[str, Any], precision: str) -> list[str]:
    """Per model, the held-out data the ``precision`` systems were judged on."""
    lines = []
    for model, m in doc["models"].items():
        d = m.get(precision)
        if d:
            lines.append(f"- {model}: " + (f"data unavailable: {d['error']}" if "error" in d
                                           else f"{d['source']} (digest {d['digest']})"))
    return lines


def _int8_lines(doc: dict[str, Any]) -> list[str]:
    """The int8 section: how accuracy is measured, the data, the ceiling, the table."""
    if not _int8_systems(doc):
        return []
    c = doc["machine"].get("int8_ceiling") or {}
    if c.get("gops"):
        ceiling = (f"The int8 ceiling: {c['cores']} cores × {c['ghz']:.2f} GHz "
                   f"({c['clock_source']}) × {c['macs_per_cycle']} int8 multiply-adds a cycle "
                   f"({c['level']}: {c['how']}) × 2 = **{c['gops']:.0f} GOP/s**"
                   + (f"; with AMX (tdpbusd, 1024 a cycle) {c['amx_gops']:.0f} GOP/s, the "
                      "share of which is in brackets (above 100% of the vector ceiling, a "
                      "system's kernels ran on AMX)"
                      if c.get("amx_gops") else "") + ". GOP/s: 2 × the model's "
                   "multiply-adds (rtinfer's cost model) / the median.")
    else:
        ceiling = "The int8 ceiling: unknown here (no CPU flags or clock)."
    lines = ["## int8: speed, accuracy on held-out data, GOP/s", "",
             "Each int8 system against fp32 eager on held-out inputs (never the calibration "
             "ones): classifiers, the mean cosine of the output vectors and the fraction of "
             "inputs with the same top-1 class; MiniLM, the mean cosine of the mean-pooled "
             "sentence embeddings and the fraction of sentences whose nearest other held-out "
             "sentence is unchanged. × best int8 peer: the fastest non-rtinfer int8 system's "
             "median over this one's.", "", ceiling, ""]
    return [*lines, *_data_lines(doc, "int8"), "", *_int8_table(doc), ""]


def _bf16_support_line(doc: dict[str, Any]) -> str:
    """Whether the CPU has bf16 instructions, and whether rtinfer used them."""
    flags = doc["machine"].get("bf16")
    if flags is None:
        return "bf16 instructions: not recorded."
    have = [f for f, on in flags.items() if on]
    rt = (doc.get("isa") or {}).get("rtinfer_bf16")
    return ("bf16 instructions: " + (f"this CPU has {', '.join(have)}" if have else
                                     f"this CPU has neither {' nor '.join(flags)}")
            + (f"; rtinfer bf16 kernels: {'yes' if rt['available'] else 'no'} ({rt['why']})"
               if rt else "") + ".")


def _bf16_lines(doc: dict[str, Any]) -> list[str]:
    """The bf16 section: what the systems compute, the data, the table."""
    if not _precision_systems(doc, "bf16"):
        return []
    return ["## bf16: speed, accuracy on held-out data", "",
            "The bf16 systems compute convolutions and matrix products in bf16 (f32 "
            "accumulation) and the rest in f32; they are n/a where they would not compute in "
            "bf16. Accuracy against fp32 eager on the int8 systems' held-out inputs, measured "
            "the same way. × best bf16 peer: the fastest non-rtinfer bf16 system's median over "
            "this one's. " + _bf16_support_line(doc), "", *_data_lines(doc, "bf16"), "",
            *_low_precision_table(doc, "bf16"), ""]


# the issue-13 acceptance numbers: held-out accuracy an int8 rtinfer must keep, per model
_MINILM_INT8 = {"cosine": 0.995, "nn_unchanged": 0.97}  # both MiniLM inputs
INT8_ACCURACY = {"resnet18": {"cosine": 0.999}, "mobilenet_v2": {"cosine": 0.99},
                 "minilm": _MINILM_INT8, "minilm_full": _MINILM_INT8}
INT8_SPEEDUP = 1.1  # rtinfer int8 against the faster of ONNX Runtime int8 and OpenVINO int8


def int8_targets(doc: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """rtinfer-int8's targets: at least 1.1x faster than the best int8 peer, and the held-out
    accuracy of ``INT8_ACCURACY``; only where rtinfer-int8 was timed."""
    out = []
    for model, m in doc["models"].items():
        rec = m["results"].get("rtinfer-int8", {})
        if "median_ms" not in rec:
            continue
        peer = (m.get("int8") or {}).get("best_peer")
        ratio = rec.get("vs_best_int8_peer")
        out.append((f"rtinfer-int8 ≥ ×{INT8_SPEEDUP:g} the best int8 peer on {model}",
                    None if ratio is None else ratio >= INT8_SPEEDUP,
                    "no int8 peer timed" if ratio is None else f"×{ratio:.2f} vs {peer}"))
        for key, need in INT8_ACCURACY.get(model, {}).items():
            got = (rec.get("accuracy") or {}).get(key)
            label = "mean cosine to fp32" if key == "cosine" else "nearest neighbours unchanged"
            out.append((f"rtinfer-int8 {label} ≥ {need:g} on {model}",
                        None if got is None else got >= need,
                        "not measured" if got is None else f"{got:.4f}"))
    return out


def native_targets(doc: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """The native backend's targets: faster than ONNX Runtime and OpenVINO on ResNet-18,
    MobileNetV2 and MiniLM, or within 5% of the sgemm ceiling where compute-bound; on the MLP,
    latency minus kernel time <= 20 us."""
    out = []
    ceiling = doc["machine"].get("sgemm_gflops")
    for model, m in doc["models"].items():
        rec = m["results"].get("rtinfer-native", {})
        if "median_ms" not in rec:
            continue
        if model == "mlp":
            over = (rec["median_ms"] - rec.get("kernel_ms", 0.0)) * 1e3
            out.append(("rtinfer-native per-call overhead ≤ 20 µs on mlp", over <= 20.0,
                        f"{over:.1f} µs ({rec['median_ms'] * 1e3:.1f} µs a call, kernels "
                        f"{rec.get('kernel_ms', 0.0) * 1e3:.1f} µs)"))
            continue
        peers = {p: m["results"][p]["median_ms"] for p in ("onnxruntime", "openvino")
                 if "median_ms" in m["results"].get(p, {})}
        faster = all(rec["median_ms"] < v for v in peers.values())
        rate = rec.get("gflop", 0) / (rec["median_ms"] / 1e3) if rec.get("gflop") else None
        near = bool(rate and ceiling and rate >= 0.95 * ceiling)
        got = ", ".join(f"×{v / rec['median_ms']:.2f} vs {p}" for p, v in peers.items())
        if rate:
            got += f"; {rate:.0f} GFLOP/s" + (f" = {rate / ceiling:.0%} of sgemm" if ceiling
                                               else "")
        out.append((f"rtinfer-native faster than ONNX Runtime and OpenVINO on {model} (or "
                    f"≥95% of the sgemm ceiling)", (faster or near) and bool(peers)
                    and rec.get("fidelity_ok") is not False, got))
    return out


def _header(doc: dict[str, Any]) -> list[str]:
    mach, st, v = doc["machine"], doc["settings"], doc["versions"]
    versions = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    load = mach.get("loadavg")
    busy = load and mach.get("logical_cores") and load[0] > 0.5 * mach["logical_cores"]
    warning = ["", f"**The machine was busy (load average {load[0]:.2f} on "
                   f"{mach['logical_cores']} cores at the start): multi-threaded runtimes "
                   f"suffer most from sharing cores, so these ratios are not meaningful.**"
               ] if busy else []
    min_samples = st.get("min_samples")
    return [f"{mach['cpu']} ({mach['logical_cores']} logical cores), {st['threads']} threads, "
            f"batch 1; {doc['date']}, rtinfer {doc.get('git') or '?'}"
            + (f"; load average {load[0]:.2f} at start" if load else "")
            + (" — **quick run: the numbers are noise**" if st.get("quick") else ""),
            "", *_isa_lines(doc),
            f"Medians over {st['rounds']} interleaved rounds of "
            f"{st.get('calls_per_round', st['iters_per_round'])} calls per system"
            + (f" (--iters {st['iters_per_round']}, raised to reach --min-samples "
               f"{min_samples}; fewer where the time budget runs out)"
               if min_samples and st.get("calls_per_round", 0) > st["iters_per_round"] else "")
            + f", after {st['warmup']} warm-up calls"
            + (f"; each block after a {st['switch_pause_ms']:g} ms pause (the previous "
               f"system's threads stop competing) and {st.get('block_warmup', 0)} untimed "
               f"call{'s' if st.get('block_warmup', 0) != 1 else ''}"
               if st.get("switch_pause_ms") else "")
            + f". {versions}.", *warning]


def describe_cpu(ident: dict[str, Any]) -> str:
    """``AuthenticAMD family 0x1a model 0x02: Zen 5`` for run.py's ``cpu_identity``, or ''
    for an empty one."""
    if not ident:
        return ""
    text = f"{ident['vendor']} family {ident['family']:#04x} model {ident['model']:#04x}"
    return text + (f": {ident['core']}" if ident.get("core") else "")


def _datapath_line(ident: dict[str, Any], requested: str, all_capped: bool = False) -> str:
    """What an AVX2 cap costs on this core, where its AVX-512 datapath width is known
    (``all_capped``: no system of the run escapes the cap)."""
    bits = ident.get("avx512_datapath_bits")
    if requested != "avx2" or not bits:
        return ""
    core = ident.get("core", "this core")
    if bits == 256:
        return (f" {core} runs AVX-512 on 256-bit units: the cap keeps the FMA peak, so capped "
                f"and uncapped systems compare as on an AVX2 machine of the same clock.")
    if all_capped:
        return (f" {core} has 512-bit FMA units: AVX2 code runs at half their peak, as on an "
                f"AVX2 machine with two 256-bit FMA pipes (Zen 3) at this clock, for every "
                f"system alike.")
    return (f" {core} has 512-bit FMA units: the cap halves the FMA peak of every capped "
            f"system, so an uncapped system's numbers are not comparable with the capped ones.")


def _mask_line(isa: dict[str, Any]) -> str:
    """What the CPUID mask did in a capped run (empty where it was not loaded)."""
    mask = isa.get("cpuid_mask") or {}
    if not mask.get("active"):
        return ""
    hidden = mask.get("hidden") or []
    return (f" CPUID hides AVX-512 from the whole process (benchmarks/cpuid_mask.c preloaded, "
            f"Linux CPUID faulting; {mask.get('traps', 0)} CPUID instructions answered"
            + (f"; hidden: {' '.join(hidden)}" if hidden else "")
            + "), so libraries that dispatch on CPUID and read no cap variable (ONNX "
              "Runtime's MLAS, OpenVINO's kernels) run AVX2 code too.")


def _isa_lines(doc: dict[str, Any]) -> list[str]:
    """The CPU-level paragraph of the header: the CPU, its AVX-512 flags, rtinfer's level,
    the cap variables, torch's capability; for a capped run, whom the cap does not reach."""
    isa = doc.get("isa")
    if not isa:
        return []
    rt = isa.get("rtinfer") or {}
    env = ", ".join(f"{k}={v}" for k, v in (isa.get("env") or {}).items() if v) or "none set"
    flags = isa.get("avx512_flags") or []
    ident = isa.get("cpu_identity") or {}
    cpu = isa.get("cpu_model", "?") + (f" ({describe_cpu(ident)})" if ident else "")
    text = (f"CPU: {cpu}; AVX-512 flags: "
            f"{' '.join(flags) if flags else 'none'}. rtinfer CPU level "
            f"**{rt.get('level', '?')}** (runs {', '.join(rt.get('supported') or []) or '?'}; "
            f"cap {rt.get('cap') or 'none'}; oneDNN cap {rt.get('onednn_max_cpu_isa') or 'none'}"
            + (", native oneDNN dispatched " + ", ".join(
                f"{v}" for v in isa["native_onednn_isa"].values())
               if isa.get("native_onednn_isa") else "")
            + f"); torch ATen capability {isa.get('torch_cpu_capability', '?')}; "
            f"cap variables: {env}."
            + (" " + _bf16_support_line(doc) if "bf16" in doc["machine"] else ""))
    lines = [text, ""]
    if isa.get("requested"):
        loose = [f"{n} ({c})" for n, c in (isa.get("systems") or {}).items()
                 if n in doc["systems"] and not c.startswith("capped")]
        lines += [f"**Capped run (--isa {isa['requested']})**: the emulated level applies only "
                  f"to the capped systems." + _mask_line(isa) + " "
                  + (f"Not (fully) capped, running the host's instruction set (marked in the "
                     f"column headings): {'; '.join(loose)}." if loose
                     else "Every system here is capped.")
                  + _datapath_line(ident, isa["requested"], not loose), ""]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# rtinfer benchmark", "", *_header(doc), "",
             "## Median latency, ms (× eager: above 1 is faster than eager)", "",
             *_table(doc, "median_ms", "vs_eager"), "",
             "## Minimum latency, ms (× eager's minimum)", "",
             *_table(doc, "min_ms", "vs_eager_min"), "",
             "## Tails, ms: min / median / p90 / p99", "",
             "Percentiles of every timed call of a system (n: the samples, where fewer than "
             "100: its p99 is then near its maximum).", "", *_tail_table(doc), "",
             "## rtinfer against the best peer (median; the best non-rtinfer system with "
             "correct outputs; at p90, the non-rtinfer system with the lowest p90)", "",
             *_peer_table(doc), "",
             "## Achieved GFLOP/s (convolution, matmul and attention FLOPs / median)", "",
             f"The measured sgemm ceiling (torch.mm 1536³, best of 15, same threads; the "
             f"better of the measurements at the start and at the end): "
             f"{doc['machine'].get('sgemm_gflops', 0):.0f} GFLOP/s.", "", *_gflops_table(doc),
             "", *_int8_lines(doc), *_bf16_lines(doc), "## Targets", ""]
    lines += _target_lines(doc)
    lines += ["", "## Setup time, s (ONNX export or capture, compile, first call)", "",
              *_setup_table(doc), "", "## Notes", "",
              f"- {WRONG}: outputs differ from eager by more than "
              f"{doc['settings']['fidelity_rtol']:g} of the largest eager output; "
              f"{CAPPED}: fewer samples than asked (the time budget of "
              f"{doc['settings']['max_seconds']:g} s per system and model); n/a: unavailable "
              f"here; error: failed on this model."]
    for name, s in doc["systems"].items():
        cap = (doc.get("isa") or {}).get("systems", {}).get(name)
        lines.append(f"- **{name}**: {s['summary']}"
                     + (f" — ISA {cap}" if cap and _isa_capped(doc) else ""))
    for model, m in doc["models"].items():
        for name, rec in m["results"].items():
            if rec.get("status") != "ok":
                lines.append(f"- {model} / {name}: {rec['status']}: {rec.get('reason', '')}")
            elif rec.get("fidelity_ok") is False:
                lines.append(f"- {model} / {name}: wrong outputs, max abs error "
                             f"{rec.get('max_abs_err')} ({rec.get('fidelity', '')})")
            elif rec.get("capped"):
                lines.append(f"- {model} / {name}: capped at {rec['samples']} samples")
            # which kernels a peer chose, where it says (OpenVINO): the ISA it really ran
            for note in rec.get("notes") or []:
                if note.startswith("kernels: "):
                    lines.append(f"- {model} / {name}: {note}")
    return "\n".join(lines) + "\n"


def _target_lines(doc: dict[str, Any]) -> list[str]:
    return [f"- {'–' if ok is None else ('✓' if ok else '✗')} {name}: {got}"
            for name, ok, got in targets(doc) + native_targets(doc) + int8_targets(doc)]


def readme_block(doc: dict[str, Any]) -> str:
    """The part of the report the project README shows."""
    return "\n".join([*_header(doc), "", "Median latency, ms (× eager; above 1 is faster):", "",
                      *_table(doc, "median_ms", "vs_eager"), "",
                      "rtinfer against the best peer:", "", *_peer_table(doc), "",
                      f"Achieved GFLOP/s (sgemm ceiling measured here: "
                      f"{doc['machine'].get('sgemm_gflops', 0):.0f}):", "",
                      *_gflops_table(doc), "",
                      *(["int8 (held-out accuracy against fp32 eager, GOP/s against the int8 "
                         "ceiling):", "", *_int8_table(doc), ""] if _int8_systems(doc) else []),
                      *(["bf16 (held-out accuracy against fp32 eager):", "",
                         *_low_precision_table(doc, "bf16"), ""]
                        if _precision_systems(doc, "bf16") else []),
                      "Targets:", "", *_target_lines(doc), "",
                      "Full report (minimums, setup times, notes): "
                      "[benchmarks/results/latest.md](benchmarks/results/latest.md)."])


def update_readme(readme: Path, block: str) -> None:
    """Replace what lies between the bench markers in ``readme`` with ``block``."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} markers; add them "
                         f"where the benchmark table belongs")
    head = text[:start + len(README_START)]
    readme.write_text(head + "\n" + block.strip() + "\n" + text[end:])


def chart(doc: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: median latency per model and system, log scale, minimums as ticks."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')",
              file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, names = list(doc["models"]), _systems(doc)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 0.35 * len(models) * len(names))),
                                    5.5))
    cmap = plt.get_cmap("tab10")
    for j, name in enumerate(names):
        xs, ys, mins = [], [], []
        for i, model in enumerate(models):
            rec = doc["models"][model]["results"].get(name, {})
            if "median_ms" in rec:
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(rec["median_ms"])
                mins.append(rec["min_ms"])
        rtinfer = doc["systems"][name]["rtinfer"]
        ax.bar(xs, ys, width, label=name, color=cmap(j % 10),
               edgecolor="black" if rtinfer else "none", linewidth=1.2 if rtinfer else 0)
        ax.scatter(xs, mins, marker="_", color="black", s=40, zorder=3)
    ax.set_yscale("log")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("latency, ms (log; bar: median, tick: min)")
    mach, st = doc["machine"], doc["settings"]
    ax.set_title(f"batch 1, {st['threads']} threads, {mach['cpu']}"
                 + (f", capped at {_isa_capped(doc)}" if _isa_capped(doc) else "")
                 + (" (quick run)" if st.get("quick") else ""), fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(names)), loc="upper center",
              bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(doc: dict[str, Any], out: Path, png: bool = True,
              stem: str = "latest") -> list[Path]:
    """``stem``.json, .md and .png in ``out`` (run.py: ``latest``, or ``latest-avx2`` and so
    on for a capped run)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    # lists of numbers (the samples) on one line each
    text = re.sub(r"\[\s*([-\d.e,\s]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  json.dumps(doc, indent=1))
    paths[0].write_text(text + "\n")
    paths[1].write_text(markdown(doc))
    if png and (p := chart(doc, out / f"{stem}.png")) is not None:
        paths.append(p)
    return paths


if __name__ == "__main__":  # re-render a saved run: python benchmarks/report.py latest.json
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest.json")
    write_all(json.loads(src.read_text()), src.parent, stem=src.stem)
