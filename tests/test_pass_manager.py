"""The pass manager: pass records, pipeline strings, instruments, run_pipeline and optimize.

The custom passes below are registered from this file, the way a user's package would, with no
edits to rtinfer."""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pytest

import rtinfer
from rtinfer.errors import NumericsError, PassError, PipelineError, VerifyError
from rtinfer.ir.equality import structural_equal
from rtinfer.ir.graph import Graph
from rtinfer.ir.interpreter import interpret, random_inputs
from rtinfer.ir.parser import parse
from rtinfer.ir.printer import print_graph
from rtinfer.ir.types import DType, TensorType
from rtinfer.pass_manager import (
    Option,
    Pass,
    PassContext,
    RewriteEvent,
    check_requirements,
    get_pass,
    list_passes,
    parse_pipeline,
    register_pipeline,
    run_pipeline,
    unregister_pass,
)
from rtinfer.rewrite import Rewriter
from rtinfer.testing import check_ir, filecheck

# -- passes defined outside rtinfer ------------------------------------------------------------


@rtinfer.register_pass("test-relu-idempotent", summary="relu(relu(x)) -> relu(x)")
def relu_idempotent(graph: Graph, ctx: PassContext) -> None:
    rw = Rewriter(graph, ctx)
    for node in list(graph.nodes):
        inner = node.inputs[0].producer if node.op == "relu" else None
        if inner is not None and inner.op == "relu":
            rw.begin(node, "relu-relu")
            rw.replace(node.out, inner.out)
            rw.erase(node)
            ctx.record_rewrite(RewriteEvent(ctx.pass_name, "relu-relu", "", "", 0))
            ctx.stat("folded")


@rtinfer.register_pass("test-add-to-sub",
                       summary="a deliberately wrong pass: add(a, b) -> sub(a, b)")
def add_to_sub(graph: Graph, ctx: PassContext) -> None:
    rw = Rewriter(graph, ctx)
    for node in list(graph.nodes):
        if node.op == "add":
            rw.begin(node, "add-to-sub")
            rw.replace(node.out, rw.op("sub", *node.inputs))
            rw.erase(node)
            ctx.record_rewrite(RewriteEvent(ctx.pass_name, "add-to-sub", "", "", 0))


@rtinfer.register_pass("test-nudge", summary="add 6e-6 to every output (drifts slowly)")
def nudge(graph: Graph, ctx: PassContext) -> None:
    rw = Rewriter(graph, ctx)
    for i, v in enumerate(graph.outputs):
        eps = rw.const(np.full((), 6e-6, dtype=v.type.dtype.np))
        graph.outputs[i] = rw.op("add", v, eps)
    ctx.mark_changed()


@rtinfer.register_pass("test-break-types", summary="give the last node a wrong output type")
def break_types(graph: Graph, ctx: PassContext) -> None:
    node = graph.nodes[-1]
    node.outputs[0].type = TensorType(DType.i32, node.outputs[0].type.shape)
    ctx.mark_changed()


@rtinfer.register_pass("test-dangle", summary="drop the first node without fixing its uses")
def dangle(graph: Graph, ctx: PassContext) -> None:
    graph.nodes.pop(0)  # wrong on purpose: bypasses the Rewriter and leaves its users dangling


@rtinfer.register_pass("test-crash", summary="raise a Python error")
def crash(graph: Graph, ctx: PassContext) -> None:
    raise ValueError("boom")


@rtinfer.register_pass("test-silent-edit", summary="edit the graph without telling the context")
def silent_edit(graph: Graph, ctx: PassContext) -> None:
    graph.set_outputs([graph.add_op("relu", graph.outputs[0])])


rtinfer.register_pass(Pass(
    "test-options", lambda graph, ctx: ctx.stat("depth", ctx.options["max-depth"]),
    "a pass with one option of each type",
    options={
        "max-depth": Option(int, 8, "maximum depth"),
        "scale": Option(float, 1.0, "a factor"),
        "enabled": Option(bool, False, "switch"),
        "mode": Option(str, "fast", "how", choices=("fast", "exact")),
        "label": Option(str, "", "free text"),
    }))

rtinfer.register_pass("test-needs-cse", lambda graph, ctx: None, summary="requires cse",
                      requires=["cse"])

# -- IR used below -----------------------------------------------------------------------------

DUPES = """
func @main(%x: f32[2,3], %y: f32[2,3]) -> f32[2,3] {
  %a = add(%x, %y)
  %b = add(%y, %x)
  %c = mul(%a, %b)
  %r1 = relu(%c)
  %r2 = relu(%r1)
  return %r2
}
"""

WITH_DEAD = """
func @main(%x: f32[4], %y: f32[4]) -> f32[4] {
  %a = add(%x, %y)
  %dead = mul(%a, %a)
  %r = relu(%a)
  return %r
}
"""


def g(text: str = DUPES) -> Graph:
    return parse(textwrap.dedent(text))


# -- pipeline strings --------------------------------------------------------------------------


def test_pipeline_parses_typed_options():
    (inv,) = parse_pipeline(
        'test-options{max-depth=3, scale=0.5, enabled=true, mode=exact, label="a,b"}')
    assert inv.options == {"max-depth": 3, "scale": 0.5, "enabled": True, "mode": "exact",
                           "label": "a,b"}
    assert isinstance(inv.options["scale"], float)
    assert inv.label.startswith("test-options{max-depth=3,")


def test_pipeline_fills_defaults_and_keeps_order():
    invs = parse_pipeline(" cse , test-options{} ,dce ")
    assert [i.name for i in invs] == ["cse", "test-options", "dce"]
    assert invs[1].options["max-depth"] == 8 and invs[1].given == {}
    assert parse_pipeline("") == [] and parse_pipeline("  ") == []


def test_named_pipelines_expand():
    assert [i.name for i in parse_pipeline("O1")] == ["fold-constants", "canonicalize", "cse",
                                                      "dce"]
    assert parse_pipeline("O0") == []
    register_pipeline("test-cleanup", "O1,test-relu-idempotent")
    assert [i.name for i in parse_pipeline("test-cleanup,dce")] == [
        "fold-constants", "canonicalize", "cse", "dce", "test-relu-idempotent", "dce"]
    with pytest.raises(PipelineError, match="takes no options"):
        parse_pipeline("O1{x=1}")


def test_unknown_pass_is_named_with_valid_passes_and_close_matches():
    with pytest.raises(PipelineError) as e:
        parse_pipeline("cse,dcee")
    msg = str(e.value)
    assert "unknown pass 'dcee'" in msg and "did you mean 'dce'" in msg
    assert "valid passes:" in msg and "cse" in msg and "test-options" in msg


def test_unknown_option_is_named_with_pass_and_valid_options():
    with pytest.raises(PipelineError) as e:
        parse_pipeline("test-options{max-dept=3}")
    msg = str(e.value)
    assert "unknown option 'max-dept' for pass 'test-options'" in msg
    assert "did you mean 'max-depth'" in msg
    assert "valid options: max-depth, scale, enabled, mode, label" in msg


@pytest.mark.parametrize("text, expected", [
    ("test-options{max-depth=deep}", "expected an int, got 'deep'"),
    ("test-options{scale=x}", "expected a float"),
    ("test-options{enabled=yes}", "expected a bool (true or false)"),
    ("test-options{mode=slow}", "expected one of fast, exact"),
    ("test-options{max-depth=1,max-depth=2}", "given twice"),
])
def test_bad_option_values_say_what_was_expected(text, expected):
    with pytest.raises(PipelineError, match="test-options") as e:
        parse_pipeline(text)
    assert expected in str(e.value)


@pytest.mark.parametrize("text, column, words", [
    ("cse,test-options{max-depth=3", 17, "unbalanced '{'"),
    ("cse,,dce", 5, "expected a pass name"),
    (",dce", 1, "expected a pass name"),
    ("cse,", 5, "expected a pass name after ','"),
    ("cse}", 4, "unbalanced '}'"),
    ("cse dce", 5, "expected ',' between passes"),
    ("test-options{=3}", 14, "expected an option name"),
    ("test-options{max-depth}", 23, "expected '='"),
])
def test_malformed_pipelines_report_the_position(text, column, words):
    with pytest.raises(PipelineError) as e:
        parse_pipeline(text)
    msg = str(e.value)
    assert f"column {column}" in msg and words in msg
    assert msg.splitlines()[-1] == " " * (column + 1) + "^"


def test_requires_must_run_earlier():
    with pytest.raises(PipelineError) as e:
        run_pipeline(g(), "test-needs-cse,cse")
    assert "'test-needs-cse' requires 'cse'" in str(e.value)
    check_requirements(parse_pipeline("cse,test-needs-cse"))
    run_pipeline(g(), "test-needs-cse", check_requires=False)


def test_pass_records_are_validated():
    with pytest.raises(PipelineError, match="kebab-case"):
        rtinfer.register_pass("Bad_Name", lambda graph, ctx: None, summary="x")
    with pytest.raises(PipelineError, match="one non-empty line"):
        rtinfer.register_pass("test-no-summary", lambda graph, ctx: None)
    with pytest.raises(PipelineError, match="already registered"):
        rtinfer.register_pass("dce", lambda graph, ctx: None, summary="another dce")
    with pytest.raises(PipelineError, match="the default: expected int"):
        Option(int, "eight")


def test_builtins_are_registered_and_callable():
    names = [p.name for p in list_passes()]
    assert {"cse", "dce"} <= set(names) and names == sorted(names)
    graph = g(WITH_DEAD)
    ctx = get_pass("dce")(graph)
    assert ctx.stats["removed"] == 1 and ctx.changed
    assert get_pass("test-options")(g(), max_depth=3).stats["depth"] == 3
    with pytest.raises(PipelineError, match="unknown option 'depth'"):
        get_pass("test-options")(g(), depth=3)


# -- running -----------------------------------------------------------------------------------


def test_custom_pass_runs_from_a_pipeline_string_with_its_statistics():
    out = io.StringIO()
    result = run_pipeline(g(), "cse,test-relu-idempotent,dce", stats=True, out=out)
    assert result.stat("test-relu-idempotent", "folded") == 1
    assert result.stat("cse", "merged") == 1
    assert [r.changed for r in result.passes] == [True, True, False]
    assert result.applications == {"merge": 1, "relu-relu": 1}
    report = out.getvalue()
    assert report == result.report
    filecheck(report, ["CHECK: pass statistics", "CHECK: cse", "CHECK-NEXT: merged: 1",
                       "CHECK: test-relu-idempotent", "CHECK-NEXT: folded: 1",
                       "CHECK: rule applications:", "CHECK-NEXT: relu-relu: 1",
                       "CHECK: dce  (no change)", "CHECK-NEXT: removed: 0"])
    assert result.graph.op_counts() == {"add": 1, "mul": 1, "relu": 1}


def test_timing_prints_a_row_per_pass():
    result = run_pipeline(g(), "cse,dce", timing=True, out=io.StringIO())
    assert all(s >= 0 for _, s in result.timings)
    filecheck(result.report, ["CHECK: pass timing report", "CHECK: total:",
                              "CHECK: {{[0-9.]+}}%  cse", "CHECK-NEXT: %  dce"])


def test_check_numerics_names_the_wrong_pass_not_the_correct_one_before_it():
    with pytest.raises(NumericsError) as e:
        run_pipeline(g(), "cse,test-add-to-sub,dce", check_numerics=True, out=io.StringIO())
    assert e.value.pass_name == "test-add-to-sub"
    msg = str(e.value)
    assert "pass 'test-add-to-sub' changed output 0" in msg and "max abs error" in msg
    assert "after pass 'cse'" in msg


def test_check_numerics_passes_correct_pipelines():
    result = run_pipeline(g(), "O1,test-relu-idempotent", check_numerics={"seed": 3},
                          out=io.StringIO())
    assert result.changed


def test_check_numerics_catches_drift_against_the_original():
    # Each nudge stays within atol of the pass before it; the second one leaves the original.
    with pytest.raises(NumericsError) as e:
        run_pipeline(g(), "test-nudge,test-nudge", check_numerics={"rtol": 0.0, "atol": 1e-5},
                     out=io.StringIO())
    assert "against the original graph's output" in str(e.value)
    assert e.value.pass_name == "test-nudge"
    run_pipeline(g(), "test-nudge", check_numerics={"rtol": 0.0, "atol": 1e-5},
                 out=io.StringIO())


def test_verify_each_names_the_pass_that_broke_types():
    with pytest.raises(PassError) as e:
        run_pipeline(g(), "cse,test-break-types,dce", verify_each=True, out=io.StringIO())
    msg = str(e.value)
    assert "pass 'test-break-types' left an invalid graph" in msg
    assert "relu(" in msg  # the offending node
    assert isinstance(e.value.__cause__, VerifyError)


def test_verify_each_names_the_pass_that_left_a_dangling_use():
    with pytest.raises(PassError, match="pass 'test-dangle' left an invalid graph"):
        run_pipeline(g(), "dce,test-dangle", verify_each=True, out=io.StringIO())


def test_verify_each_rejects_an_invalid_input_before_any_pass():
    graph = g()
    graph.nodes[0].outputs[0].type = TensorType(DType.i32, (2, 3))
    with pytest.raises(VerifyError, match="before any pass"):
        run_pipeline(graph, "cse", verify_each=True, out=io.StringIO())


def test_a_crashing_pass_is_named():
    with pytest.raises(PassError, match=r"pass 'test-crash' crashed: ValueError: boom"):
        run_pipeline(g(), "cse,test-crash")


def test_print_ir_after_change_prints_only_passes_that_changed():
    result = run_pipeline(g(), "dce,cse,dce,test-silent-edit", print_ir_after_change=True,
                          out=io.StringIO())
    assert [r.changed for r in result.passes] == [False, True, False, True]
    headers = [line for line in result.report.splitlines() if line.startswith("// -----")]
    assert headers == ["// ----- IR after cse (2/4) ----- //",
                       "// ----- IR after test-silent-edit (4/4) ----- //"]
    filecheck(result.report, ["CHECK: IR after cse", "CHECK: %c = mul(%a, %a)",
                              "CHECK-NOT: IR after dce", "CHECK: IR after test-silent-edit"])


def test_print_ir_before_and_after_print_every_pass():
    result = run_pipeline(g(), "dce,cse", print_ir_before=True, print_ir_after=True,
                          out=io.StringIO())
    headers = [line for line in result.report.splitlines() if line.startswith("// -----")]
    assert headers == ["// ----- IR before dce (1/2) ----- //",
                       "// ----- IR after dce (1/2, unchanged) ----- //",
                       "// ----- IR before cse (2/2) ----- //",
                       "// ----- IR after cse (2/2) ----- //"]


def test_optimize_leaves_its_argument_untouched():
    graph = g()
    before_text, before_nodes = print_graph(graph), list(graph.nodes)
    before_uses = [list(v.uses) for v in graph.values()]
    reference = graph.clone()
    out = rtinfer.optimize(graph, "O1,test-relu-idempotent", verify_each=True)
    assert out is not graph and len(out.nodes) == 3
    assert len(graph.nodes) == len(before_nodes)
    assert all(a is b for a, b in zip(graph.nodes, before_nodes, strict=True))
    assert [list(v.uses) for v in graph.values()] == before_uses
    assert print_graph(graph) == before_text and structural_equal(graph, reference)
    inputs = random_inputs(graph)
    np.testing.assert_allclose(interpret(out, *inputs), interpret(graph, *inputs), rtol=1e-6)


def test_check_ir_runs_filecheck_on_the_result():
    check_ir("cse", DUPES, ["CHECK: add(%x, %y)", "CHECK-NOT: add(", "CHECK: mul(%a, %a)",
                            "CHECK-COUNT-2: relu("])
    dead_gone = ["CHECK: add(", "CHECK-NOT: mul(", "CHECK: return"]
    check_ir("dce", WITH_DEAD, dead_gone)
    with pytest.raises(AssertionError, match="CHECK-NOT: 'mul\\(' found on line 3"):
        check_ir("cse", WITH_DEAD, dead_gone)


def test_filecheck_directives():
    text = "a = add(x)\nb = mul(a)\nc = relu(b)\nreturn c\n"
    filecheck(text, ["CHECK: add(", "CHECK-NEXT: mul(", "CHECK-NOT: sub(", "CHECK: return"])
    filecheck(text, ["CHECK: {{[a-z]+}} = relu"])
    for checks in (["CHECK: relu(", "CHECK: add("],        # order matters
                   ["CHECK: add(", "CHECK-NEXT: relu("],   # not the next line
                   ["CHECK-NOT: mul(", "CHECK: relu("],    # mul sits before relu
                   ["CHECK-COUNT-2: relu("]):
        with pytest.raises(AssertionError):
            filecheck(text, checks)
    with pytest.raises(ValueError, match="not a check directive"):
        filecheck(text, ["CHEK: add("])


def test_unregister_removes_a_pass():
    rtinfer.register_pass("test-temporary", lambda graph, ctx: None, summary="temporary")
    assert get_pass("test-temporary").name == "test-temporary"
    unregister_pass("test-temporary")
    with pytest.raises(PipelineError, match="unknown pass 'test-temporary'"):
        get_pass("test-temporary")


def test_labels_print_back_as_pipelines():
    invs = parse_pipeline('test-options{mode=exact, label="a, b", enabled=true},dce')
    text = ",".join(i.label for i in invs)
    assert text == 'test-options{mode=exact,label="a, b",enabled=true},dce'
    assert [(i.name, i.options) for i in parse_pipeline(text)] == [
        (i.name, i.options) for i in invs]


# -- explicit registration and the pipeline context --------------------------------------------

def test_graph_pass_builds_a_record_that_install_registers_once():
    from rtinfer.pass_manager import graph_pass, install
    from rtinfer.passes.pipelines import PIPELINES

    @graph_pass("probe-record", summary="a record nobody installed yet")
    def probe(graph, ctx):
        pass

    assert isinstance(probe, Pass)
    with pytest.raises(PipelineError, match="unknown pass 'probe-record'"):
        get_pass("probe-record")
    try:
        install([probe])
        install([probe], PIPELINES)  # the same records again (a reloaded module): no error
        assert get_pass("probe-record") is probe
    finally:
        unregister_pass("probe-record")


def test_the_passes_package_lists_every_builtin_pass():
    from rtinfer.passes import BUILTIN_PASSES

    builtin = {p.name for p in list_passes() if p.source.startswith("rtinfer.passes.")}
    assert {p.name for p in BUILTIN_PASSES} == builtin
    assert all(get_pass(p.name) is p for p in BUILTIN_PASSES)


def test_an_analysis_is_kept_per_graph():
    from rtinfer.pass_manager import PipelineContext

    one, other = parse(textwrap.dedent(WITH_DEAD)), parse(textwrap.dedent(WITH_DEAD))
    calls = []

    def n_nodes(graph):
        calls.append(graph)
        return len(graph.nodes)

    pctx = PipelineContext()
    assert [pctx.analysis("n", n_nodes, x) for x in (one, one, other, other)] == [3, 3, 3, 3]
    assert len(calls) == 2 and calls[1] is other  # an equal graph is still another graph
