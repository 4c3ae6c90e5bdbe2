"""rtinfer bisect: the first divergent pass, then the first divergent rule application in it."""

from __future__ import annotations

import numpy as np
import pytest

import rtinfer
from rtinfer.cli import main
from rtinfer.errors import PipelineError
from rtinfer.ir import parse
from rtinfer.pass_manager import unregister_pass
from rtinfer.rewrite import P, Rule, RuleSet

# four scalings: the broken rule rewrites x * c -> x * (c + 1) on its 3rd application only
MODEL = """
func @main(%x: f32[2,3]) -> f32[2,3] {
  %c1 = const f32[] dense<1.5>
  %c2 = const f32[] dense<2.5>
  %c3 = const f32[] dense<3.5>
  %c4 = const f32[] dense<4.5>
  %a = mul(%x, %c1)
  %b = mul(%a, %c2)
  %c = mul(%b, %c3)
  %d = mul(%c, %c4)
  return %d
}
"""

SEEN: list[int] = []


@pytest.fixture
def broken_pass():
    marked: set[int] = set()

    def rewrite(rw, x, c, m):
        if id(m) in marked:
            return None
        SEEN.append(1)
        k = len(SEEN)
        data = c.const_data + np.float32(1.0) if k == 3 else c.const_data.copy()
        new = rw.op("mul", x, rw.const(np.asarray(data, np.float32)))
        marked.add(id(new.producer))
        return new

    rules = RuleSet("scale-bump", [
        # x * c -> x * c        (but x * (c + 1) on the 3rd application: the bug to find)
        Rule("bump", P.op("mul", P.var("x"), P.const("c"), name="m"), rewrite),
    ])

    @rtinfer.register_pass("bad-scale", summary="a deliberately broken rule (tests)")
    def bad_scale(graph, ctx):
        SEEN.clear()
        marked.clear()
        rules.apply(graph, ctx)

    yield "bad-scale"
    unregister_pass("bad-scale")


def test_bisect_names_the_pass_and_the_application(broken_pass):
    result = rtinfer.bisect(parse(MODEL), f"cse,{broken_pass},dce")
    assert result.diverged
    assert result.pass_label == "bad-scale" and result.pass_index == 1
    assert result.application == 2  # the 3rd application, 0-based
    assert result.event.rule == "bump"
    text = result.text()
    assert "first divergent pass: 'bad-scale' (pass 2 of 3)" in text
    assert "first divergent rule application: #3 of the pass (index 2), rule 'bump'" in text
    before, after = text.split("--- before:\n")[1].split("--- after:\n")
    # the matched mul and its constant (its input is the 2nd application's new value)
    assert before.strip() == "%c3 = const f32[] dense<3.5>\n%c = mul(%3, %c3) : f32[2,3]"
    assert "const f32[] dense<4.5>" in after and "mul(%3, " in after


def test_cli_bisect_prints_the_rewrite(broken_pass, tmp_path, capsys):
    path = tmp_path / "model.ir"
    path.write_text(MODEL)
    assert main(["bisect", str(path), "--pipeline", broken_pass, "--seed", "1"]) == 1
    out = capsys.readouterr()
    assert "first divergent rule application: #3" in out.out
    assert "%c = mul(%3, %c3)" in out.out
    assert "pass 1/1 bad-scale: DIVERGES" in out.err


def test_nothing_diverges(tmp_path, capsys):
    path = tmp_path / "model.ir"
    path.write_text(MODEL)
    assert main(["bisect", str(path), "--pipeline", "O3"]) == 0
    assert "no pass changes the outputs beyond tolerance" in capsys.readouterr().out
    assert not rtinfer.bisect(parse(MODEL), "O3").diverged


def test_bad_pipeline_is_an_error(tmp_path, capsys):
    path = tmp_path / "model.ir"
    path.write_text(MODEL)
    assert main(["bisect", str(path), "--pipeline", "cse,no-such-pass"]) == 1
    assert "unknown pass 'no-such-pass'" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="no-such-pass"):
        rtinfer.bisect(parse(MODEL), "no-such-pass")
