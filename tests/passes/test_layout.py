"""layout: NCHW -> NHWC with the transposes between converted ops cancelled."""

from __future__ import annotations

import io

import numpy as np

from rtinfer.ir import interpret, parse, random_inputs
from rtinfer.pass_manager import run_pipeline
from rtinfer.testing import check_ir, check_rewrite

from .test_pipelines import RESNET_BLOCK


def _transposes(graph) -> list:
    return [n for n in graph.nodes if n.op == "transpose"]


def test_converts_one_conv_with_a_per_channel_bias():
    check_rewrite(
        "layout",
        before="""
        func @main(%x: f32[1,3,6,6]) -> f32[1,4,6,6] {
          %w = const f32[4,3,3,3] random(seed=0)
          %b = const f32[4,1,1] dense<[1.0, 2.0, 3.0, 4.0]>
          %y = conv2d(%x, %w) {pad=[1]}
          %z = add(%y, %b)
          %r = relu(%z)
          return %r
        }""",
        expected="""
        func @main(%x: f32[1,3,6,6]) -> f32[1,4,6,6] {
          %w = const f32[4,3,3,3] random(seed=0)
          %b = const f32[1,1,1,4] dense<[1.0, 2.0, 3.0, 4.0]>
          %t = transpose(%x) {perm=[0, 2, 3, 1]}
          %y = conv2d(%t, %w) {pad=[1], layout="NHWC"}
          %z = add(%y, %b)
          %r = relu(%z)
          %o = transpose(%r) {perm=[0, 3, 1, 2]}
          return %o
        }""",
        numerics={"atol": 1e-5},
    )


def test_resnet_block_has_one_transpose_in_and_one_out():
    graph = parse(RESNET_BLOCK)
    for pipeline in ("layout", "O2,layout", "layout,O2,fuse-elementwise,dce"):
        result = run_pipeline(graph.clone(), pipeline, verify_each=True,
                              check_numerics={"rtol": 1e-4, "atol": 1e-4}, out=io.StringIO())
        t_in, t_out = _transposes(result.graph)
        assert t_in.inputs[0] is result.graph.inputs[0]
        assert t_in.attrs["perm"] == (0, 2, 3, 1)
        assert result.graph.outputs == [t_out.out] and t_out.attrs["perm"] == (0, 3, 1, 2)
        convs = [n for n in result.graph.nodes if "conv2d" in n.op]
        assert len(convs) == 2 and all(n.attrs["layout"] == "NHWC" for n in convs)
    inputs = random_inputs(graph, seed=2)
    np.testing.assert_allclose(interpret(result.graph, *inputs), interpret(graph, *inputs),
                               rtol=1e-4, atol=1e-4)


def test_round_trip_back_to_nchw():
    graph = parse(RESNET_BLOCK)
    result = run_pipeline(graph.clone(), "layout,layout{to=nchw}", verify_each=True,
                          check_numerics={"atol": 1e-4}, out=io.StringIO())
    assert _transposes(result.graph) == []
    assert all(n.attrs.get("layout", "NCHW") == "NCHW" for n in result.graph.nodes)


def test_leaves_other_layouts_and_ranks_alone():
    check_ir(
        "layout",
        before="""
        func @main(%x: f32[2,3,9], %q: f32[2,4,5,6]) -> (f32[2,4,7], f32[2,5,4,6]) {
          %w = const f32[4,3,3] random(seed=0)
          %y = conv1d(%x, %w)
          %r = relu(%y)
          %t = transpose(%q) {perm=[0, 2, 1, 3]}
          %s = sigmoid(%t)
          return %r, %s
        }""",
        checks=["CHECK: conv1d(", "CHECK: relu(", "CHECK: transpose(%q) {perm=[0, 2, 1, 3]}",
                "CHECK: sigmoid(", "CHECK-NOT: NHWC"])


def test_declines_sinking_when_an_operand_would_need_a_new_transpose():
    result = run_pipeline(parse("""
        func @main(%x: f32[1,3,4,4], %r: f32[1,4,4,4]) -> f32[1,4,4,4] {
          %w = const f32[4,3,1,1] random(seed=0)
          %y = conv2d(%x, %w)
          %z = mul(%y, %r)
          return %z
        }"""), "layout", verify_each=True, check_numerics=True, out=io.StringIO())
    assert len(_transposes(result.graph)) == 2
    report = result.match_report()
    assert report.get("sink").declines == [
        "operand %r of mul is not transposed: sinking would need a new transpose"]
