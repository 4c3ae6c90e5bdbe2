"""The match report: per-rule matches and applications, and why expected rules did not apply."""

from __future__ import annotations

import io

import rtinfer
from rtinfer.cli import main
from rtinfer.ir import parse
from rtinfer.pass_manager import run_pipeline, unregister_pass
from rtinfer.rewrite import P, Rule, RuleSet, explain_mismatch

x = P.var("x")
# relu(mul(x, 2.0)) -> the pattern; the graph has relu(add(x, 2.0)) and relu(mul(x, 3.0))
SCALED_RELU = P.op("relu", P.op("mul", x, 2.0))

GRAPH = """
func @main(%x: f32[4]) -> (f32[4], f32[4]) {
  %two = const f32[] dense<2.0>
  %three = const f32[] dense<3.0>
  %a = add(%x, %two)
  %r = relu(%a)
  %m = mul(%x, %three)
  %s = relu(%m)
  return %r, %s
}
"""


def test_explain_mismatch_reports_the_deepest_failure():
    g = parse(GRAPH)
    relu_of_add, relu_of_mul = (n for n in g.nodes if n.op == "relu")
    miss = explain_mismatch(SCALED_RELU, relu_of_add)
    assert (miss.depth, miss.reason) == (1, "op mul expected, found add at %a")
    miss = explain_mismatch(SCALED_RELU, relu_of_mul)
    assert miss.depth == 2 and miss.reason == "a constant equal to 2.0 expected, found %three"
    attr = P.op("leaky_relu", x, attrs={"alpha": 0.5})
    lr = parse("func @f(%x: f32[2]) -> f32[2] {\n %y = leaky_relu(%x) {alpha=0.1}\n"
               " return %y\n}").nodes[0]
    assert explain_mismatch(attr, lr).reason == \
        "attribute alpha=0.5 expected, found alpha=0.1 at leaky_relu at %y"


def test_pipeline_report_gives_the_closest_near_miss():
    rules = RuleSet("scaled-relu", [Rule("scaled-relu", SCALED_RELU, lambda x: x)])

    @rtinfer.register_pass("fold-scaled-relu", summary="test pass", expects=["scaled-relu"])
    def fold(graph, ctx):
        rules.apply(graph, ctx)

    try:
        result = run_pipeline(parse(GRAPH), "cse,fold-scaled-relu", stats=True,
                              out=io.StringIO())
    finally:
        unregister_pass("fold-scaled-relu")
    report = result.match_report()
    entry = report.get("scaled-relu")
    assert (entry.expected, entry.matches, entry.applications) == (True, 0, 0)
    assert entry.near_miss.depth == 2
    assert entry.why.startswith("closest near miss (2 op(s) of the pattern matched): a "
                                "constant equal to 2.0 expected, found %three")
    assert [r.rule for r in report.missed] == ["scaled-relu"]
    assert report.as_dict()[-1]["why"] == entry.why
    assert "expected rules that never applied:" in result.report
    assert "fold-scaled-relu/scaled-relu: closest near miss" in result.report


def test_declined_expected_rule_reports_the_decline_and_opt_prints_it(tmp_path, capsys):
    path = tmp_path / "m.ir"
    path.write_text("""
    func @main(%x: f32[2,4]) -> (f32[2,3], f32[2,3]) {
      %w = const f32[3,4] random(seed=0)
      %y = linear(%x, %w)
      %r = relu(%y)
      return %r, %y
    }""")
    assert main(["opt", str(path), "--pipeline", "fuse-epilogue", "--stats",
                 "--expect", "fuse-epilogue/activation,fuse-elementwise/fuse"]) == 0
    err = capsys.readouterr().err
    assert "===- match report -===" in err
    assert ("fuse-epilogue/activation: matched 1 time(s) but declined: linear output has "
            "other users") in err


def test_missing_root_op_and_applied_rules():
    result = run_pipeline(parse(GRAPH), "fuse-elementwise,layout", out=io.StringIO())
    report = result.match_report()
    assert report.get("fuse").applications == 2 and not report.get("fuse").missed
    assert report.get("convert").why == ("never tried: no node of the pattern's root op in the "
                                         "graph")
