"""``rtinfer demo``: rtinfer's main job on a built-in example.

Until the frontends and code generators land, the demo optimizes a built-in IR graph (a small
MLP block with a recomputed subexpression and a dead branch, as captured models often have),
prints the IR before and after with the pass statistics, and checks on the reference
interpreter that the outputs did not change.
"""

from __future__ import annotations

import io
import sys
from typing import TextIO

import numpy as np

EXAMPLE = """\
// A two-layer MLP block as a frontend might capture it: the first layer is computed twice
// (two branches of the model asked for it) and one branch's result is never used.
func @mlp_block(%x: f32[B,16]) -> (f32[B,8]) {
  %w1 = const f32[32,16] random(seed=1)
  %b1 = const f32[32] random(seed=2)
  %h = linear(%x, %w1, %b1)
  %a = relu(%h)
  %h_again = linear(%x, %w1, %b1)
  %a_again = relu(%h_again)
  %s = add(%a, %a_again)
  %unused = sigmoid(%s)
  %w2 = const f32[8,32] random(seed=3)
  %y = linear(%s, %w2)
  return %y
}
"""

PIPELINE = "cse,dce"


def run_demo(out: TextIO | None = None) -> int:
    from rtinfer.ir import interpret, parse, random_inputs
    from rtinfer.pass_manager import run_pipeline

    out = out or sys.stdout
    graph = parse(EXAMPLE, source="<demo>")
    original = graph.clone()
    print("== rtinfer demo: optimize a built-in example graph ==\n", file=out)
    print(f"-- IR before ({len(graph.nodes)} nodes) --", file=out)
    print(graph, file=out)

    log = io.StringIO()
    run_pipeline(graph, PIPELINE, verify_each=True, stats=True, timing=True,
                          check_numerics=True, out=log)
    print(f"-- pipeline: {PIPELINE} (verified and numerics-checked after each pass) --", file=out)
    print(log.getvalue().rstrip(), file=out)
    print(f"\n-- IR after ({len(graph.nodes)} nodes) --", file=out)
    print(graph, file=out)

    inputs = random_inputs(original, seed=0, dims={"B": 4})
    before, after = interpret(original, *inputs), interpret(graph, *inputs)
    err = float(np.max(np.abs(before - after)))
    print(f"\nnodes: {len(original.nodes)} -> {len(graph.nodes)}; "
          f"outputs on the reference interpreter (B=4): max abs difference {err:.3g}", file=out)
    return 0 if err <= 1e-5 else 1
