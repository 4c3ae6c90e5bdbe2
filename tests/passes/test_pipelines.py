"""Named pipelines: a ResNet block through O2 ends as two fused convs, and every named pipeline
preserves the interpreter's outputs on random graphs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from rtinfer.ir.interpreter import interpret_values, random_inputs
from rtinfer.ir.parser import parse
from rtinfer.pass_manager import run_pipeline
from tests.strategies import graph_inputs, graphs

BN = """
  %m{i} = const f32[8] random(seed={s0})
  %v{i} = const f32[8] random(seed={s1}, low=0.5, high=2.0)
  %g{i} = const f32[8] random(seed={s2})
  %b{i} = const f32[8] random(seed={s3})"""

# conv -> batch_norm -> relu, conv -> batch_norm -> add shortcut -> relu (torchvision BasicBlock)
RESNET_BLOCK = """
func @block(%x: f32[2,8,8,8]) -> f32[2,8,8,8] {
  %w1 = const f32[8,8,3,3] random(seed=1)""" + BN.format(i=1, s0=2, s1=3, s2=4, s3=5) + """
  %w2 = const f32[8,8,3,3] random(seed=6)""" + BN.format(i=2, s0=7, s1=8, s2=9, s3=10) + """
  %c1 = conv2d(%x, %w1) {pad=[1]}
  %n1 = batch_norm(%c1, %m1, %v1, %g1, %b1)
  %r1 = relu(%n1)
  %c2 = conv2d(%r1, %w2) {pad=[1]}
  %n2 = batch_norm(%c2, %m2, %v2, %g2, %b2)
  %s = add(%n2, %x)
  %y = relu(%s)
  return %y
}
"""


def _outputs(graph, inputs):
    values = interpret_values(graph, inputs)
    return [np.asarray(values[v]) for v in graph.outputs]


def test_resnet_block_through_o2():
    graph = parse(RESNET_BLOCK)
    result = run_pipeline(graph.clone(), "O2", verify_each=True, stats=True,
                          check_numerics={"rtol": 1e-4, "atol": 1e-5}, out=io.StringIO())
    ops = [n.op for n in result.graph.nodes if n.op != "const"]
    assert ops == ["fused_conv2d", "fused_conv2d"]
    first, second = (n for n in result.graph.nodes if n.op == "fused_conv2d")
    assert (first.attrs["activation"], first.attrs["residual"]) == ("relu", "none")
    assert (second.attrs["activation"], second.attrs["residual"]) == ("relu", "pre")
    assert second.inputs[3] is result.graph.inputs[0]
    assert result.applications == {"into-producer": 2, "activation": 2, "add": 1,
                                   "dead-node": 11}
    stats = dict(result.stats)
    assert stats["fold-batchnorm"] == {"folded": 2} and stats["fuse-epilogue"] == {"fused": 3}
    inputs = list(random_inputs(graph, seed=1))
    for got, want in zip(_outputs(result.graph, inputs), _outputs(graph, inputs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pipeline", ["O0", "O1", "O2", "O3"])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(graph=graphs())
def test_named_pipelines_preserve_outputs(pipeline, graph):
    inputs = graph_inputs(graph, seed=0)
    want = _outputs(graph, inputs)
    result = run_pipeline(graph.clone(), pipeline, verify_each=True, out=io.StringIO())
    got = _outputs(result.graph, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
