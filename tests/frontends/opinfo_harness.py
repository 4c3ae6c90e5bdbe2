"""PyTorch's operator database (OpInfo) through ``rtinfer.compile``: each float32 sample input
wrapped in a module, compiled, run and compared with eager.

    python -m tests.frontends.opinfo_harness [--samples 2] [--backend torch] [--ops a,b]

A case is one OpInfo (name and variant) and one of its first ``samples`` float32 CPU sample
inputs. Every tensor of the sample becomes an input of the module; everything else is baked in.
Each case ends in one kind:

- ``pass``: compiled and equal to eager (``assert_close`` at rtol 1e-4, atol 1e-5, NaN equal);
- ``wrong``: compiled but the outputs differ (a silent wrong answer: the worst kind);
- ``capture``: ``rtinfer.capture`` refused it (an ``UnsupportedOpsError`` or ``CaptureError``);
- ``compile``: another rtinfer error while optimizing or building;
- ``run``: the compiled model raised where eager did not;
- ``crash``: a non-rtinfer exception escaped rtinfer (a bug in itself);
- ``random``: a sampling op (eager and compiled draw different numbers; not counted);
- ``unspecified``: an op whose result is uninitialized memory (``empty_like``; not counted);
- ``eager``: eager itself raised on the sample, or returned nothing to compare (not counted).
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

import rtinfer
from rtinfer.errors import CaptureError, RtinferError

TOL = dict(rtol=1e-4, atol=1e-5)
COUNTED = ("pass", "wrong", "capture", "compile", "run", "crash")
# OpInfos that sample random numbers: eager and compiled cannot agree (matched on the name)
RANDOM = re.compile(r"(^|\.)(bernoulli|normal|uniform|rand\w*|multinomial|cauchy|exponential|"
                    r"geometric|log_normal|\w*dropout\w*|rrelu|randint\w*|randn\w*)($|\.)")
# OpInfos whose result is uninitialized memory in eager (torch.empty and kin): any output is
# correct, so comparing values says nothing; like RANDOM, they are not counted
UNSPECIFIED = re.compile(r"^(empty|empty_like|empty_strided|empty_permuted|new_empty|"
                         r"new_empty_strided)($|\.)")


@dataclass
class Case:
    name: str  # OpInfo name, with ".variant" where it has one
    index: int  # which sample of the op
    opinfo: Any
    sample: Any


@dataclass
class Result:
    case: str
    kind: str
    detail: str = ""


def op_db() -> list[Any]:
    """The OpInfos that support float32 on CPU (importing torch's test internals needs
    ``expecttest``)."""
    from torch.testing._internal.common_methods_invocations import op_db as db

    return [o for o in db if torch.float32 in o.supported_dtypes("cpu")]


def case_name(opinfo: Any) -> str:
    return opinfo.name + (f".{opinfo.variant_test_name}" if opinfo.variant_test_name else "")


def cases(samples: int = 2, names: set[str] | None = None) -> Iterator[Case]:
    """The first ``samples`` float32 sample inputs of each OpInfo (or of those ``names``)."""
    for o in op_db():
        name = case_name(o)
        if names is not None and name not in names and o.name not in names:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                it = o.sample_inputs("cpu", torch.float32, requires_grad=False)
                for i, s in enumerate(it):
                    if i >= samples:
                        break
                    yield Case(name, i, o, s)
        except Exception:  # an OpInfo whose sample generator fails on this torch: no cases
            continue


class OpModule(torch.nn.Module):
    """``op(sample.input, *sample.args, **sample.kwargs)`` with the sample's tensors as the
    module's inputs (the same tensor given twice stays one input)."""

    def __init__(self, op: Any, sample: Any):
        super().__init__()
        self.op = op
        leaves, self.spec = pytree.tree_flatten((sample.input, sample.args, sample.kwargs))
        self.slots: list[int | None] = []
        self.consts: list[Any] = []
        self.inputs: list[torch.Tensor] = []
        for x in leaves:
            if isinstance(x, torch.Tensor):
                found = next((i for i, t in enumerate(self.inputs) if t is x), None)
                if found is None:
                    self.inputs.append(x)
                    found = len(self.inputs) - 1
                self.slots.append(found)
                self.consts.append(None)
            else:
                self.slots.append(None)
                self.consts.append(x)

    def forward(self, *tensors: torch.Tensor) -> Any:
        leaves = [tensors[s] if s is not None else c for s, c in zip(self.slots, self.consts,
                                                                     strict=True)]
        inp, args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return self.op(inp, *args, **kwargs)


def _clone(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x.detach().clone() for x in xs]


def _compare(got: Any, want: Any) -> str:
    """'' when ``got`` equals ``want`` (tensors within TOL), else what differs."""
    gl, wl = pytree.tree_leaves(got), pytree.tree_leaves(want)
    if len(gl) != len(wl):
        return f"{len(gl)} outputs, eager gives {len(wl)}"
    for i, (g, w) in enumerate(zip(gl, wl, strict=True)):
        if isinstance(w, torch.Tensor):
            g = torch.as_tensor(g)
            if g.dtype != w.dtype and not (g.is_floating_point() and w.is_floating_point()):
                return f"output {i}: dtype {g.dtype}, eager {w.dtype}"
            try:
                torch.testing.assert_close(g.to(w.dtype), w, equal_nan=True, **TOL)
            except AssertionError as e:
                return f"output {i}: " + " ".join(str(e).split())[:200]
        elif isinstance(w, float) and isinstance(g, float) and math.isnan(w) and math.isnan(g):
            continue
        elif g != w:
            return f"output {i}: {g!r}, eager {w!r}"
    return ""


def run_case(case: Case, backend: str = "torch") -> Result:
    name = f"{case.name}[{case.index}]"
    if RANDOM.search(case.name):
        return Result(name, "random")
    if UNSPECIFIED.search(case.name):
        return Result(name, "unspecified")
    model = OpModule(case.opinfo.op, case.sample)
    if not model.inputs:
        return Result(name, "eager", "no tensor inputs")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = model(*_clone(model.inputs))
    except Exception as e:
        return Result(name, "eager", f"{type(e).__name__}: {str(e)[:100]}")
    if not any(isinstance(x, torch.Tensor) for x in pytree.tree_leaves(want)):
        return Result(name, "eager", "no tensor output")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = rtinfer.compile(model, example_inputs=tuple(_clone(model.inputs)),
                                 backend=backend, cache=False)
    except CaptureError as e:
        return Result(name, "capture", str(e).splitlines()[0][:200])
    except RtinferError as e:
        return Result(name, "compile", str(e).splitlines()[0][:200])
    except Exception as e:
        return Result(name, "crash", f"compile: {type(e).__name__}: {str(e)[:150]}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = cm(*_clone(model.inputs))
    except RtinferError as e:
        return Result(name, "run", str(e).splitlines()[0][:200])
    except Exception as e:
        return Result(name, "crash", f"run: {type(e).__name__}: {str(e)[:150]}")
    diff = _compare(got, want)
    return Result(name, "wrong" if diff else "pass", diff)


def summarize(results: list[Result]) -> dict[str, Any]:
    counts = collections.Counter(r.kind for r in results)
    counted = sum(counts[k] for k in COUNTED)
    return {"counts": dict(counts), "counted": counted,
            "pass_rate": counts["pass"] / counted if counted else 0.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--ops", default="", help="comma-separated OpInfo names (default: all)")
    ap.add_argument("--show", default="wrong,compile,run,crash,capture",
                    help="kinds to list case by case")
    a = ap.parse_args(argv)
    names = set(a.ops.split(",")) if a.ops else None
    t0 = time.perf_counter()
    results = [run_case(c, a.backend) for c in cases(a.samples, names)]
    show = set(a.show.split(","))
    for r in results:
        if r.kind in show:
            print(f"{r.kind:8} {r.case}: {r.detail}")
    s = summarize(results)
    print(f"{s['counts']}\npass {s['counts'].get('pass', 0)} of {s['counted']} "
          f"({100 * s['pass_rate']:.1f}%) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
