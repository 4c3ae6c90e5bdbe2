"""Test helpers for pass authors: IR text in, IR text (or FileCheck-style checks) out.

    check_rewrite("cse", before=..., expected=..., numerics={"atol": 1e-5})
    check_ir("fold-batchnorm", before=..., checks=["CHECK: conv2d(", "CHECK-NOT: batch_norm("])

Both run the pipeline with the verifier after every pass and without the ``requires`` check (a
unit test runs one pass on IR written to need it).
"""

from __future__ import annotations

import difflib
import re
import textwrap
from typing import Any

import numpy as np

from rtinfer.ir.graph import Graph
from rtinfer.pass_manager.runner import Pipeline, PipelineResult, run_pipeline


def _parse(text: str, source: str) -> Graph:
    from rtinfer.ir.parser import parse

    return parse(textwrap.dedent(text).strip() + "\n", source=source)


def _print(graph: Graph) -> str:
    from rtinfer.ir.printer import print_graph

    return print_graph(graph)


def _diff(a: Graph, b: Graph) -> str:
    from rtinfer.ir import equality

    if hasattr(equality, "structural_diff"):
        return str(equality.structural_diff(a, b))
    return "\n".join(difflib.unified_diff(_print(a).splitlines(), _print(b).splitlines(),
                                          "got", "expected", lineterm=""))


def _run(pipeline: Pipeline, graph: Graph, **options: Any) -> PipelineResult:
    import io

    return run_pipeline(graph, pipeline, verify_each=True, check_requires=False,
                        out=io.StringIO(), **options)


def _outputs(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from rtinfer.ir.interpreter import interpret_values

    values = interpret_values(graph, inputs)
    return [np.asarray(values[v]) for v in graph.outputs]


def check_rewrite(pipeline: Pipeline, before: str, expected: str,
                  numerics: dict[str, Any] | None = None, **run_options: Any) -> Graph:
    """Parse ``before``, run ``pipeline`` (verifying after each pass), assert the result is
    structurally equal to ``expected`` (SSA names ignored), that a second run changes nothing,
    and with ``numerics`` (``rtol``, ``atol``, ``seed``, ``dims``) that the reference interpreter
    gives the same outputs before and after on seeded random inputs. Returns the result."""
    from rtinfer.ir.equality import structural_equal

    original = _parse(before, "<before>")
    want = _parse(expected, "<expected>")
    graph = _run(pipeline, original.clone(), **run_options).graph
    if not structural_equal(graph, want):
        raise AssertionError(
            f"pipeline {pipeline!r} did not give the expected IR\n"
            f"--- got:\n{_print(graph)}\n--- expected:\n{_print(want)}\n"
            f"--- difference:\n{_diff(graph, want)}")

    again = graph.clone()
    second = _run(pipeline, again, **run_options)
    changed = [r.label for r in second.passes if r.changed]
    if changed or not structural_equal(again, graph):
        raise AssertionError(
            f"pipeline {pipeline!r} does not converge: a second run changed the IR "
            f"(passes: {', '.join(changed) or '?'})\n--- after one run:\n{_print(graph)}\n"
            f"--- after two:\n{_print(again)}")

    if numerics is not None:
        from rtinfer.ir.interpreter import random_inputs

        opts = {"rtol": 1e-4, "atol": 1e-5, "seed": 0, "dims": None} | dict(numerics)
        inputs = list(random_inputs(original, seed=opts["seed"], dims=opts["dims"]))
        ref, got = _outputs(original, inputs), _outputs(graph, inputs)
        assert len(ref) == len(got), f"{len(got)} outputs instead of {len(ref)}"
        for k, (g, r) in enumerate(zip(got, ref, strict=True)):
            np.testing.assert_allclose(g, r, rtol=opts["rtol"], atol=opts["atol"],
                                       err_msg=f"output {k} after {pipeline!r}")
    return graph


# -- FileCheck-lite ----------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"^\s*(CHECK(?:-NEXT|-NOT|-LABEL|-COUNT-(\d+))?):\s?(.*)$")


def _pattern(text: str) -> re.Pattern[str]:
    """Literal text, except ``{{regex}}`` parts (as in FileCheck)."""
    parts = re.split(r"\{\{(.*?)\}\}", text.strip())
    return re.compile("".join(p if i % 2 else re.escape(p) for i, p in enumerate(parts)))


def filecheck(output: str, checks: list[str]) -> None:
    """Check ``output`` against directives, line-oriented as in LLVM's FileCheck:

    ``CHECK: x`` x on a later line (or the rest of the current one); ``CHECK-NEXT: x`` on the
    very next line; ``CHECK-NOT: x`` x absent between the previous match and the next positive
    match (or the end); ``CHECK-COUNT-n: x`` n lines with x from here on; ``CHECK-LABEL`` as
    ``CHECK``. Text is literal except ``{{regex}}``.
    """
    lines = output.splitlines()
    pos = 0  # first line a positive directive may match
    last = -1  # line of the previous positive match
    pending_not: list[tuple[str, re.Pattern[str]]] = []

    def fail(message: str) -> AssertionError:
        return AssertionError(f"{message}\n--- output:\n{output}")

    def flush_nots(end: int) -> None:
        for text, pat in pending_not:
            for j in range(last + 1, end):
                if pat.search(lines[j]):
                    raise fail(f"CHECK-NOT: {text!r} found on line {j + 1}: {lines[j]!r}")
        pending_not.clear()

    for directive in checks:
        m = _DIRECTIVE.match(directive)
        if not m:
            raise ValueError(f"not a check directive: {directive!r} (CHECK, CHECK-NEXT, "
                             f"CHECK-NOT, CHECK-LABEL, CHECK-COUNT-n)")
        kind, count, text = m.group(1), m.group(2), m.group(3)
        pat = _pattern(text)
        if kind == "CHECK-NOT":
            pending_not.append((text, pat))
            continue
        if kind == "CHECK-NEXT":
            if last < 0 or last + 1 >= len(lines) or not pat.search(lines[last + 1]):
                got = lines[last + 1] if 0 <= last + 1 < len(lines) else "<end of output>"
                raise fail(f"CHECK-NEXT: {text!r} not on the line after the previous match "
                           f"(found {got!r})")
            flush_nots(last + 1)
            last, pos = last + 1, last + 2
            continue
        n = int(count) if count else 1
        for _ in range(n):
            j = next((j for j in range(pos, len(lines)) if pat.search(lines[j])), None)
            if j is None:
                raise fail(f"{kind}: {text!r} not found"
                           + (f" after line {last + 1}" if last >= 0 else ""))
            flush_nots(j)
            last, pos = j, j + 1
    flush_nots(len(lines))


def check_ir(pipeline: Pipeline, before: str, checks: list[str], **run_options: Any) -> str:
    """Run ``pipeline`` on ``before`` (verifying after each pass) and FileCheck the printed
    result against ``checks``. Returns the printed IR."""
    graph = _run(pipeline, _parse(before, "<before>"), **run_options).graph
    text = _print(graph)
    filecheck(text, checks)
    return text
