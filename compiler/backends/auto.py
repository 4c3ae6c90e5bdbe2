"""``backend="auto"``: build each candidate backend, time them against each other, keep the
fastest, or on a tie the one with less per-call overhead.

The candidates (``AUTO_CANDIDATES``, in this order) are the backends installed here that serve
the target and do not decline the graph. The first is the reference: it is built first, its
errors are the user's, and it is the choice when nothing can be measured. Each other candidate
is built, and skipped if it falls back to another backend for some op or fails. The rest race
on the same inputs (``race``: interleaved rounds, each call timed alone) until one is clearly
fastest or the budget is spent; ``decide`` reads the verdict off the times. ``select_backend``
returns the record ``CompileInfo.auto`` shows: the choice, the verdict and the evidence (each
candidate's median, quantiles and number of calls, the date measured and the CPU key). The
compile cache keeps it, so that a warm compile on the same CPU builds the remembered choice
without measuring again; a record measured on another CPU is measured again.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from rtinfer.backends import dispatch
from rtinfer.ir.graph import Graph
from rtinfer.kernels.isa import cpu_key

# The race (``race``): one warm-up call each, then rounds in which every candidate still in it
# is called once, in candidate order and in reverse order on alternate rounds (so going first
# or second favours none). The calls of one round ran under the same machine state, so they are
# compared round by round: after rounds AUTO_HOPELESS_ROUNDS to 8, then 12, 16, 24, 32, 48, ...
# (``_checkpoint``: few looks, each a chance for noise to pass the test) and after the last,
# with "best" the candidate of the lowest median,
# - a candidate whose lower quartile is over AUTO_HOPELESS times the best's upper quartile
#   (even its faster calls far slower than the best's slower ones) is out ("hopeless");
# - a candidate *apart* from the best is out ("slower"): ``apart``, a sign test on the paired
#   rounds: k of n rounds slower than the best, with (k - n/2) / sqrt(n/4) > AUTO_Z (what
#   chance would exceed about once in a thousand; n >= 10 at the least: 10 of 10, 21 of 25,
#   34 of 40, 61 of 100), and its median over 1 + AUTO_TIE_MARGIN times the best's (smaller
#   gains are not worth overriding the tie rule).
# The race ends when one candidate is left (but not before AUTO_MIN_ROUNDS rounds), after
# AUTO_MAX_ROUNDS rounds, or once the rounds have run AUTO_BUDGET_S seconds: with a 0.05 ms
# model that is the round cap, with a 30 ms one about 25 rounds of two. Candidates still in
# it at the end tie within noise: the tie goes to the one earliest in AUTO_TIE_PREFERENCE.
AUTO_BUDGET_S = 1.5
AUTO_MIN_ROUNDS = 5
AUTO_MAX_ROUNDS = 400
AUTO_HOPELESS_ROUNDS = 3
AUTO_HOPELESS = 3.0
AUTO_Z = 3.0
AUTO_TIE_MARGIN = 0.02
# Ties go to the lower per-call overhead: native runs its whole plan in one C++ call; the torch
# backend's module dispatches each op from Python; TVM's converts every input and output
# through DLPack at the boundary and enters its VM. A name not listed comes after these.
AUTO_TIE_PREFERENCE = ("native", "torch", "tvm")

# the clock the race reads (tests replace it with one that their fake modules advance)
now: Callable[[], float] = time.perf_counter


@dataclass(frozen=True)
class AutoCandidate:
    """A backend ``backend="auto"`` may pick. ``available()``: it is installed (cheap: no
    import). ``declines(graph)``: why building it for ``graph`` is not worth it (ops it would
    hand to another backend, kernels known to be far slower), or None."""

    name: str
    targets: tuple[str, ...]
    available: Callable[[], bool]
    declines: Callable[[Graph], str | None] = lambda graph: None
    differentiable: bool = False  # serves trainable=True


def _installed(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


def _tvm_declines(graph: Graph) -> str | None:
    # imported when asked: the TVM backend module imports TVM's Python package
    from rtinfer.backends.tvm_backend import declines

    return declines(graph)


def _native_available() -> bool:
    """oneDNN and a C++ compiler are here (the extension builds on first use)."""
    from rtinfer.kernels.build import NativeUnavailable, compiler, onednn_prefix

    try:
        compiler()
        onednn_prefix()
    except NativeUnavailable:
        return False
    return True


AUTO_CANDIDATES: list[AutoCandidate] = [
    AutoCandidate("torch", ("cpu",), lambda: True, differentiable=True),
    AutoCandidate("tvm", ("cpu",), _installed("tvm"), _tvm_declines),
    AutoCandidate("native", ("cpu",), _native_available),
]


def auto_candidates(target: Any, trainable: bool = False) -> list[AutoCandidate]:
    """The candidates of ``backend="auto"`` installed here that serve ``target``."""
    if not isinstance(target, str):
        return []
    return [c for c in AUTO_CANDIDATES if target in c.targets and (c.differentiable or not
                                                                     trainable) and c.available()]


def machine_key() -> str:
    """What the candidates' speed depends on here: rtinfer's CPU level (``cpu_key()``) and the
    instruction level torch's ATen runs (``torch.backends.cpu.get_cpu_capability()``, which
    CPUID and ``ATEN_CPU_CAPABILITY`` decide). A record measured under another is measured
    again: with only rtinfer capped at avx2, the torch backend ran AVX-512, and that verdict
    (torch 19.6 against native 25.3 ms on MiniLM) is wrong where torch runs AVX2 too."""
    return f"{cpu_key()}/torch-{torch.backends.cpu.get_cpu_capability().lower()}"


def select_backend(graph: Graph, candidates: list[AutoCandidate],
                   remembered: dict[str, Any] | None,
                   measure_inputs: Callable[[Any], list[torch.Tensor] | None],
                   options: dict[str, Any]) -> tuple[Any, str, dict[str, Any], float]:
    """(the module, its backend, the record for ``CompileInfo.auto``, the seconds spent
    measuring). ``options`` go to ``dispatch.build``. A ``remembered`` choice (a cache hit)
    measured on this CPU (its ``"cpu"`` is ``machine_key()``) is built without measuring; with one
    candidate left after the declines, nothing is measured. ``measure_inputs(module)``: the
    inputs to time on, given the reference's module (None when there are none); called only
    when there is something to measure.

    The record: ``choice``; ``skipped`` ({backend: why}); ``cpu`` (``machine_key()``); ``note``
    where there is something to add; and where measured, ``ms`` ({backend: median ms}),
    ``stats`` ({backend: {median, p10, p25, p75, p90 (ms), calls, and "out": why it left the
    race early}}), ``verdict``, ``tie`` and ``measured`` (ISO date and time, UTC). A cache
    hit's record also has ``remembered``: True. JSON-serializable (the cache stores it)."""
    skipped: dict[str, str] = {}
    viable = []
    for c in candidates:
        why = c.declines(graph)
        if why is None:
            viable.append(c.name)
        else:
            skipped[c.name] = why
    viable = viable or [candidates[0].name]
    here = machine_key()
    notes: list[str] = []
    if remembered and remembered.get("choice") in viable:
        if remembered.get("cpu") == here:
            choice = remembered["choice"]
            return (dispatch.build(choice, graph, **options), choice,
                    {**remembered, "remembered": True}, 0.0)
        notes.append(f"measured again: the remembered choice was measured on "
                     f"{remembered.get('cpu') or 'an unrecorded CPU'}")
    record: dict[str, Any] = {"choice": viable[0], "skipped": skipped, "cpu": here}
    if notes:
        record["note"] = "; ".join(notes)
    if len(viable) == 1:
        return dispatch.build(viable[0], graph, **options), viable[0], record, 0.0
    first = dispatch.build(viable[0], graph, **options)
    inputs = measure_inputs(first)
    if inputs is None:
        record["note"] = "; ".join(notes + ["not measured: symbolic input dims and no "
                                            "example inputs"])
        return first, viable[0], record, 0.0
    modules = {viable[0]: first}
    for name in viable[1:]:
        try:
            module = dispatch.build(name, graph, **options)
        except Exception as e:  # a candidate that fails, however it fails, is not chosen
            skipped[name] = _failed(e)
            continue
        if module.rtinfer_fallback_ops:  # a lowering declined
            skipped[name] = f"falls back for {', '.join(module.rtinfer_fallback_ops)}"
            continue
        modules[name] = module
    t = time.perf_counter()
    with torch.no_grad():
        times, out, failed = race({name: _caller(m, inputs) for name, m in modules.items()})
    measuring = time.perf_counter() - t
    skipped.update(failed)
    times = {k: v for k, v in times.items() if k not in failed and v}
    if not times:
        record["note"] = "; ".join(notes + ["every candidate failed on the example inputs"])
        return first, viable[0], record, measuring
    choice, verdict, tie = decide(times, out)
    stats = {k: {**quantiles(v), **({"out": out[k]} if k in out else {})}
             for k, v in times.items()}
    record.update(choice=choice, ms={k: s["median"] for k, s in stats.items()}, stats=stats,
                  verdict=verdict, tie=tie,
                  measured=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return modules[choice], choice, record, measuring


def _caller(module: Any, inputs: list[torch.Tensor]) -> Callable[[], Any]:
    return lambda: module(*inputs)


def _failed(e: BaseException) -> str:
    first_line = (str(e).splitlines() or [""])[0][:200]
    return f"failed: {type(e).__name__}: {first_line}"


def race(calls: dict[str, Callable[[], Any]]
         ) -> tuple[dict[str, list[float]], dict[str, str], dict[str, str]]:
    """Time ``calls`` against each other, interleaved (see ``AUTO_BUDGET_S``): (the seconds of
    each timed call of each, {name: why it left the race early} for those out as hopeless or
    slower, {name: why} for those that raised). Reads the clock ``now``."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    out: dict[str, str] = {}
    failed: dict[str, str] = {}
    active = list(calls)

    def call(name: str) -> float | None:
        t = now()
        try:
            calls[name]()
        except Exception as e:  # a candidate that fails, however it fails, is not chosen
            failed[name] = _failed(e)
            active.remove(name)
            return None
        return now() - t

    for name in list(active):  # warm-up: lazy initialization, caches
        call(name)
    start, rounds = now(), 0
    while active and rounds < AUTO_MAX_ROUNDS and (rounds < AUTO_MIN_ROUNDS or (
            len(active) > 1 and now() - start < AUTO_BUDGET_S)):
        for name in list(active if rounds % 2 == 0 else reversed(active)):
            seconds = call(name)
            if seconds is not None:
                times[name].append(seconds)
        rounds += 1
        if len(active) > 1 and _checkpoint(rounds):
            out.update(_out(active, times))
            active[:] = [name for name in active if name not in out]
    if len(active) > 1 and rounds >= AUTO_HOPELESS_ROUNDS and not _checkpoint(rounds):
        out.update(_out(active, times))  # the last round's look
    return times, out, failed


def _checkpoint(rounds: int) -> bool:
    """Whether the race looks after ``rounds`` rounds: AUTO_HOPELESS_ROUNDS to 8, then where
    only the two top bits are set (12, 16, 24, 32, 48, 64, 96, ...)."""
    if rounds < AUTO_HOPELESS_ROUNDS:
        return False
    return rounds <= 8 or rounds & ~(3 << (rounds.bit_length() - 2)) == 0


def _out(active: list[str], times: dict[str, list[float]]) -> dict[str, str]:
    """The candidates of ``active`` (timed in the same rounds) that leave the race now, and
    why."""
    med = {name: float(np.median(times[name])) for name in active}
    best = min(active, key=med.__getitem__)
    gone = {}
    for name in active:
        if name == best:
            continue
        n = len(times[name])
        if np.percentile(times[name], 25) > AUTO_HOPELESS * np.percentile(times[best], 75):
            gone[name] = (f"hopeless: lower quartile over {AUTO_HOPELESS:g}x {best}'s upper "
                          f"quartile after {n} calls")
        elif apart(times[name], times[best]):
            gone[name] = (f"slower than {best} in {_slower_rounds(times[name], times[best]):g}"
                          f" of {n} rounds")
    return gone


def _slower_rounds(slower: list[float], faster: list[float]) -> float:
    """In how many rounds ``slower`` took longer (a round of equal times counts half)."""
    s, f = np.asarray(slower), np.asarray(faster)
    return float(np.sum(s > f) + 0.5 * np.sum(s == f))


def apart(slower: list[float], faster: list[float]) -> bool:
    """``slower`` is slower than ``faster`` beyond noise (the two timed in the same rounds,
    the i-th call of each in round i): slower in k of n rounds with (k - n/2) / sqrt(n/4) over
    AUTO_Z, and its median more than AUTO_TIE_MARGIN above."""
    n = len(slower)
    if n == 0 or n != len(faster):
        return False
    z = (_slower_rounds(slower, faster) - n / 2) / np.sqrt(n / 4)
    return bool(z > AUTO_Z and np.median(slower) > np.median(faster) * (1 + AUTO_TIE_MARGIN))


def decide(times: dict[str, list[float]], out: dict[str, str]) -> tuple[str, str, bool]:
    """(the choice, the verdict, whether it was a tie) from a race's ``times`` (non-empty
    lists) and its ``out``: the one candidate left in the race wins; several left tie within
    noise, and the tie goes to the earliest in ``AUTO_TIE_PREFERENCE`` (then the lower
    median). "faster by X%": how much lower the winner's median is than the runner-up's."""
    med = {name: float(np.median(t)) for name, t in times.items()}
    left = [name for name in times if name not in out]
    if len(med) == 1:
        return left[0], f"{left[0]} alone measured (the others were skipped)", False
    if len(left) == 1:
        win = left[0]
        runner = min((name for name in med if name != win), key=med.__getitem__)
        pct = (1 - med[win] / med[runner]) * 100
        return win, (f"{win} faster by {pct:.0f}% than {runner} (median "
                     f"{_ms(med[win])} vs {_ms(med[runner])} ms; {runner} {out[runner]})"), False
    choice = min(left, key=lambda name: (_preference(name), med[name]))
    calls = min(len(times[name]) for name in left)
    tied = ", ".join(f"{name} {_ms(med[name])} ms" for name in left)
    return choice, (f"tie within noise ({tied}; not apart after {calls} calls each), "
                    f"chose {choice} for lower per-call overhead"), True


def _preference(name: str) -> int:
    return (AUTO_TIE_PREFERENCE.index(name) if name in AUTO_TIE_PREFERENCE
            else len(AUTO_TIE_PREFERENCE))


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def quantiles(seconds: list[float]) -> dict[str, Any]:
    """The evidence of one candidate: median, p10, p25, p75, p90 in ms, and the calls."""
    qs = np.percentile(np.asarray(seconds) * 1e3, [50, 10, 25, 75, 90])
    return {**{k: round(float(q), 6) for k, q in zip(("median", "p10", "p25", "p75", "p90"),
                                                      qs, strict=True)},
            "calls": len(seconds)}


def generated_inputs(graph: Graph) -> list[torch.Tensor] | None:
    """Seeded inputs of the graph's input types (static dims only), else None."""
    if not all(v.type.is_static for v in graph.inputs):
        return None
    gen = torch.Generator().manual_seed(0)
    out = []
    for v in graph.inputs:
        dtype, shape = v.type.dtype.torch, tuple(int(n) for n in v.type.shape)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(dtype))
        else:  # zeros index every table; a bool mask of ones keeps every position
            out.append(torch.ones(shape, dtype=dtype) if dtype == torch.bool
                       else torch.zeros(shape, dtype=dtype))
    return out


__all__ = ["AUTO_BUDGET_S", "AUTO_CANDIDATES", "AUTO_HOPELESS", "AUTO_HOPELESS_ROUNDS",
           "AUTO_MAX_ROUNDS", "AUTO_MIN_ROUNDS", "AUTO_TIE_MARGIN", "AUTO_TIE_PREFERENCE",
           "AUTO_Z", "AutoCandidate", "apart", "auto_candidates", "decide", "generated_inputs",
           "quantiles", "race", "select_backend"]
