"""ONNX backend node-test conformance: every case ONNX -> IR -> reference interpreter.

The cases are the ones that ship with onnx (``onnx.backend.test.case.node.collect_testcases``),
compared as onnx's backend runner does: ``assert_allclose`` with the case's rtol/atol, dtypes
equal, NaN equal to NaN. Strictly, every graph input stays a runtime input: the case's first
data set is the example inputs, so a shape/axes/pads/k/scales input the IR needs as a constant
is specialized on its value (as ``rtinfer.compile`` does; a data set that passes another value
is run on a capture specialized on that one, as a compiled model would be recompiled). A case
that still fails that way is retried with such inputs frozen to constants (a larger input the
importer does not specialize on); the report counts those apart.

    python -m tests.frontends.onnx_conformance      # writes docs/onnx-conformance.md
"""

from __future__ import annotations

import collections
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtinfer.errors import CaptureError, IRError, Unsupported, UnsupportedOpsError
from rtinfer.frontends.onnx_frontend import NotConstant, capture_onnx, specialized_inputs
from rtinfer.ir import interpret

DOC = Path(__file__).resolve().parents[2] / "docs" / "onnx-conformance.md"


@dataclass
class Result:
    name: str
    op: str
    passed: bool
    reason: str  # "" when passed; else a category: unsupported op, unsupported dtype, ...
    detail: str = ""
    frozen: bool = False


def load_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        return collect_testcases()


def case_op(case) -> str:
    ops = [n.op_type for n in case.model.graph.node]
    base = case.name[len("test_"):].removesuffix("_expanded")
    if case.name.endswith("_expanded") or len(set(ops)) > 1:
        # an expanded function: attribute it to the op it expands (from the name)
        for op in sorted(set(ops), key=len, reverse=True):
            if op.lower() in base.replace("_", ""):
                return op + (" (expanded)" if case.name.endswith("_expanded") else "")
        return base.split("_")[0] + (" (expanded)" if case.name.endswith("_expanded") else "")
    return ops[0] if ops else "?"


def _classify(e: BaseException) -> str:
    msg = str(e)
    if isinstance(e, UnsupportedOpsError):
        return "unsupported op"
    if "unsupported dtype" in msg or "has no rtinfer dtype" in msg or "not a tensor" in msg:
        return "unsupported dtype"
    # a node the frontend cannot express is a CaptureError caused by the rule's Unsupported
    if isinstance(e.__cause__, NotConstant):
        return "needs a constant"
    if isinstance(e.__cause__, (Unsupported, IRError)):
        return "unsupported attribute/input"
    return "error"


def _array(x) -> np.ndarray:
    if type(x).__name__ == "TensorProto":
        from onnx import numpy_helper

        return numpy_helper.to_array(x)
    return np.asarray(x)


def _data_inputs(case, inputs) -> dict[str, np.ndarray]:
    names = [i.name for i in case.model.graph.input]
    return {n: _array(a) for n, a in zip(names, inputs, strict=False)}


def _graph_for(case, graph, named: dict[str, np.ndarray]):
    """``graph``, or, where it was specialized on values this data set does not pass, the
    case's model captured again for this data set (what recompiling the model does)."""
    spec = specialized_inputs(graph)
    if all(n in named and np.array_equal(named[n], a) for n, a in spec.items()):
        return graph
    return capture_onnx(case.model, example_inputs=named)


def run_case(case) -> Result:
    op = case_op(case)
    data = case.data_sets
    try:  # a sequence or optional input is no array: such a case then has no example inputs
        examples = _data_inputs(case, data[0][0]) if data else None
    except ValueError:
        examples = None
    try:
        graph = capture_onnx(case.model, example_inputs=examples)
    except CaptureError as e:
        if not isinstance(e.__cause__, NotConstant):
            return Result(case.name, op, False, _classify(e), str(e).splitlines()[0][:200])
        return _run_frozen(case, op)
    except Exception as e:  # classified and reported per case
        return Result(case.name, op, False, _classify(e), str(e).splitlines()[0][:200])
    return _check_outputs(case, op, graph, {})


def _run_frozen(case, op: str) -> Result:
    """The case with each input the IR needs as a constant frozen to the case's data."""
    frozen: dict[str, np.ndarray] = {}
    data = case.data_sets
    graph = None
    for _ in range(8):
        try:
            graph = capture_onnx(case.model, constant_inputs=frozen)
            break
        except CaptureError as e:
            if not isinstance(e.__cause__, NotConstant):
                return Result(case.name, op, False, _classify(e), str(e).splitlines()[0][:200])
            name = e.__cause__.input_name  # freeze that input to the case's data and retry
            named = _data_inputs(case, data[0][0]) if data else {}
            if name not in named or name in frozen or len(data) != 1:
                return Result(case.name, op, False, "needs a constant", str(e)[:200])
            frozen[name] = np.asarray(named[name])
        except Exception as e:  # classified and reported per case
            return Result(case.name, op, False, _classify(e), str(e).splitlines()[0][:200])
    if graph is None:
        return Result(case.name, op, False, "needs a constant", "too many frozen inputs")
    return _check_outputs(case, op, graph, frozen)


def _check_outputs(case, op: str, graph, frozen: dict[str, np.ndarray]) -> Result:
    """Run every data set of the case through ``graph`` and compare with its outputs."""
    data = case.data_sets
    try:
        for inputs, expected in data:
            named = _data_inputs(case, inputs)
            g = graph if frozen else _graph_for(case, graph, named)
            args = [named[v.name] for v in g.inputs] if all(
                v.name in named for v in g.inputs) else [
                a for n, a in named.items() if n not in frozen]
            with np.errstate(all="ignore"):
                got = interpret(g, *args)
            got = got if isinstance(got, tuple) else (got,)
            if len(got) != len(expected):
                return Result(case.name, op, False, "wrong result",
                              f"{len(got)} outputs, expected {len(expected)}", bool(frozen))
            for out, x in zip(got, expected, strict=True):
                x = _array(x)
                if x.dtype == object:
                    return Result(case.name, op, False, "unsupported dtype", "object output")
                if out.dtype != x.dtype:
                    return Result(case.name, op, False, "wrong result",
                                  f"dtype {out.dtype}, expected {x.dtype}", bool(frozen))
                np.testing.assert_allclose(out, x, rtol=case.rtol, atol=case.atol)
    except AssertionError as e:
        return Result(case.name, op, False, "wrong result", str(e).strip().splitlines()[0][:200],
                      bool(frozen))
    except Exception as e:  # any failure of the reference run is reported per case
        return Result(case.name, op, False, "error", str(e).splitlines()[0][:200], bool(frozen))
    return Result(case.name, op, True, "", "", bool(frozen))


def run_all(cases=None) -> list[Result]:
    cases = load_cases() if cases is None else cases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [run_case(c) for c in cases]


def report(results: list[Result]) -> str:
    n, ok = len(results), sum(r.passed for r in results)
    frozen = sum(r.passed and r.frozen for r in results)
    strict = ok - frozen
    by_op: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_op[r.op].append(r)
    reasons = collections.Counter(r.reason for r in results if not r.passed)
    lines = [
        "# ONNX backend node-test conformance",
        "",
        "Generated by `python -m tests.frontends.onnx_conformance`: every node test case that "
        "ships with the installed onnx runs ONNX -> rtinfer IR -> reference interpreter and is "
        "compared with the expected outputs (the case's rtol/atol, dtypes equal).",
        "",
        f"**{ok} of {n} cases pass ({100 * ok / n:.1f}%): {strict} strictly "
        f"({100 * strict / n:.1f}%), with every input left a runtime input, and {frozen} more "
        "with frozen shape inputs.** Strictly, a shape, axes, pads, k or scales input that "
        "rtinfer needs as a constant stays a runtime input and the model is specialized on "
        "its value in the case's data (as `rtinfer.compile` specializes on its example "
        "inputs, and refuses a call that passes another value); the frozen ones pass only "
        "once such an input is made a model constant.",
        "",
        "Failures by cause: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()) + ".",
        "",
        "| op | cases | passed | of them frozen | failures |",
        "|---|---:|---:|---:|---|",
    ]
    for op, rs in sorted(by_op.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        fails = collections.Counter(r.reason for r in rs if not r.passed)
        why = ", ".join(f"{k} ({v})" for k, v in fails.most_common())
        frz = sum(r.passed and r.frozen for r in rs)
        lines.append(f"| {op} | {len(rs)} | {sum(r.passed for r in rs)} | {frz or ''} | {why} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    res = run_all()
    DOC.write_text(report(res))
    if "-v" in sys.argv:
        for r in res:
            if not r.passed:
                print(f"{r.name}: {r.reason}: {r.detail}")
    ok = sum(r.passed for r in res)
    frozen = sum(r.passed and r.frozen for r in res)
    print(f"{ok} / {len(res)} passed ({100 * ok / len(res):.1f}%): {ok - frozen} strict, "
          f"{frozen} with frozen shape inputs; wrote {DOC}")
