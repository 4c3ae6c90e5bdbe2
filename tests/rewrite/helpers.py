"""Helpers for the rewriter tests: IR from text and numeric comparison."""

from __future__ import annotations

import textwrap

import numpy as np

from rtinfer.ir.graph import Graph
from rtinfer.ir.interpreter import interpret, random_inputs
from rtinfer.ir.parser import parse
from rtinfer.ir.verifier import verify


def ir(text: str) -> Graph:
    g = parse(textwrap.dedent(text))
    verify(g)
    return g


def outputs(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    out = interpret(graph, *inputs)
    return list(out) if isinstance(out, tuple) else [out]


def same_numerics(before: Graph, after: Graph, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    """``after`` computes what ``before`` does, on seeded random inputs."""
    inputs = random_inputs(before, seed=0)
    for a, b in zip(outputs(before, inputs), outputs(after, inputs), strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)
