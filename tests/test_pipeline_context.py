"""The pipeline-level context: data inputs and analyses shared by the passes of one run, the
invalidation rule, and the data digest that keys the compile cache."""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.cache import cache_key
from rtinfer.errors import PipelineError
from rtinfer.ir.parser import parse
from rtinfer.pass_manager import (
    PipelineContext,
    graph_pass,
    register_pass,
    run_pipeline,
    unregister_pass,
)

IR = """
func @main(%x: f32[2,4]) -> f32[2,4] {
  %one = const f32[] dense<1.0>
  %a = mul(%x, %one)
  %b = relu(%a)
  %c = relu(%a)
  %d = add(%b, %c)
  return %d
}"""


def use_counts(graph) -> dict[str, int]:
    """A real analysis: how many users each op's outputs have in all."""
    counts: dict[str, int] = {}
    for n in graph.nodes:
        counts[n.op] = counts.get(n.op, 0) + sum(len(v.users) for v in n.outputs)
    return counts


@pytest.fixture
def probes():
    """Two passes that read the analysis (one of them first records what it saw), around the
    pipeline's cleanups."""
    seen: list[dict[str, int]] = []
    calls: list[int] = []

    def counted(graph):
        calls.append(1)
        return use_counts(graph)

    @graph_pass("probe-uses", summary="read the use-counts analysis")
    def probe(graph, ctx):
        seen.append(ctx.pipeline.analysis("use-counts", counted, graph))

    @graph_pass("probe-keeps", summary="change the graph but preserve use-counts",
                preserves=("use-counts",))
    def keeps(graph, ctx):
        ctx.mark_changed()

    for p in (probe, keeps):
        register_pass(p)
    yield seen, calls
    for name in ("probe-uses", "probe-keeps"):
        unregister_pass(name)


def test_an_analysis_is_computed_once_while_the_graph_does_not_change(probes):
    seen, calls = probes
    g = parse(textwrap.dedent(IR))
    run_pipeline(g, "probe-uses,probe-uses", out=io.StringIO())
    assert len(calls) == 1 and seen[0] == seen[1] == use_counts(g)


def test_a_pass_that_changes_the_graph_drops_the_analyses_it_does_not_preserve(probes):
    seen, calls = probes
    g = parse(textwrap.dedent(IR))
    pctx = PipelineContext()
    run_pipeline(g, "probe-uses,canonicalize,cse,dce,probe-uses", out=io.StringIO(),
                 pipeline_ctx=pctx)
    assert len(calls) == 2  # recomputed after the graph changed
    assert seen[0]["relu"] == 2 and seen[1]["relu"] == 1  # cse merged the two relus
    assert pctx.computed == ["use-counts", "use-counts"]
    run_pipeline(g, "probe-keeps,probe-uses", out=io.StringIO(), pipeline_ctx=pctx)
    assert len(calls) == 2  # preserved across a change


def test_data_inputs_are_named_and_missing_ones_say_what_was_given():
    pctx = PipelineContext(data={"calibration": [np.ones(3)]})
    assert pctx.input("calibration")[0].shape == (3,)
    with pytest.raises(PipelineError, match="'train_data' .*given: calibration"):
        pctx.input("train_data")


def test_the_data_digest_follows_the_content():
    batches = [(torch.ones(2, 4),), (torch.zeros(2, 4),)]
    a = PipelineContext(data={"calibration": batches}).data_digest()
    assert a == PipelineContext(data={"calibration": [(np.ones((2, 4), np.float32),),
                                                      (np.zeros((2, 4), np.float32),)]}
                                ).data_digest()
    other = [(torch.ones(2, 4),), (torch.ones(2, 4),)]
    assert a != PipelineContext(data={"calibration": other}).data_digest()
    assert PipelineContext().data_digest() == ""
    with pytest.raises(PipelineError, match="materialize"):
        PipelineContext(data={"calibration": iter(batches)}).data_digest()


def test_the_data_digest_is_part_of_the_cache_key():
    g = parse(textwrap.dedent(IR))
    digest = PipelineContext(data={"calibration": [np.ones(3)]}).data_digest()
    assert cache_key(g, "cpu", "O3", "torch") != cache_key(g, "cpu", "O3", "torch",
                                                           data_digest=digest)


def test_compile_runs_its_pipeline_with_a_context(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    x = torch.randn(2, 4)
    cm = rtinfer.compile(model, example_inputs=(x,), backend="torch", cache=tmp_path)
    torch.testing.assert_close(cm(x), model(x))
