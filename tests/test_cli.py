"""The ``rtinfer`` command line: ``opt`` with its instruments, ``passes``, and clean errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rtinfer.cli import main
from rtinfer.ir.equality import structural_equal
from rtinfer.ir.parser import parse

SMALL = """
func @main(%x: f32[2,3], %y: f32[2,3]) -> f32[2,3] {
  %a = add(%x, %y)
  %b = add(%y, %x)
  %c = mul(%a, %b)
  %dead = sub(%a, %b)
  %r = relu(%c)
  return %r
}
"""

OPTIMIZED = """
func @main(%x: f32[2,3], %y: f32[2,3]) -> f32[2,3] {
  %a = add(%x, %y)
  %c = mul(%a, %a)
  %r = relu(%c)
  return %r
}
"""


@pytest.fixture
def small(tmp_path: Path) -> Path:
    p = tmp_path / "small.ir"
    p.write_text(textwrap.dedent(SMALL))
    return p


def write(tmp_path: Path, text: str, name: str = "g.ir") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_opt_prints_the_optimized_ir_and_instruments_on_stderr(small, capsys):
    rc = main(["opt", str(small), "--pipeline", "cse,dce", "--stats", "--timing",
               "--verify-each", "--print-ir-after-change", "--check-numerics"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert structural_equal(parse(out), parse(OPTIMIZED))
    assert "IR after cse (1/2)" in err and "IR after dce (2/2)" in err
    assert "pass timing report" in err
    assert "merged: 1" in err and "removed: 1" in err


def test_opt_writes_to_a_file_and_accepts_named_pipelines(small, tmp_path, capsys):
    out_file = tmp_path / "out.ir"
    assert main(["opt", str(small), "-p", "O1", "-o", str(out_file)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert structural_equal(parse(out_file.read_text()), parse(OPTIMIZED))


def test_opt_without_a_pipeline_round_trips(small, capsys):
    assert main(["opt", str(small)]) == 0
    assert structural_equal(parse(capsys.readouterr().out), parse(SMALL))


def test_passes_lists_passes_options_and_pipelines(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "  cse (v1)  merge nodes with the same op" in out
    assert "  dce (v1)  remove nodes whose outputs are unused" in out
    assert "O1 = fold-constants,canonicalize,cse,dce" in out and "O0 = (no passes)" in out


def test_malformed_ir_reports_line_and_column_without_traceback(tmp_path, capsys):
    bad = write(tmp_path, "func @main(%x: f32[4]) -> f32[4] {\n  %a = relu(%x\n  return %a\n}\n")
    assert main(["opt", str(bad), "-p", "dce"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"rtinfer: error: {bad}:3:")
    assert "Traceback" not in err


def test_unknown_pass_is_named_with_the_valid_ones(small, capsys):
    assert main(["opt", str(small), "-p", "cse,dcx"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rtinfer: error: unknown pass 'dcx' (did you mean 'dce'?)")
    assert "valid passes:" in err and "cse" in err


def test_missing_file_says_so(tmp_path, capsys):
    assert main(["opt", str(tmp_path / "nope.ir"), "-p", "dce"]) == 1
    err = capsys.readouterr().err
    assert err == f"rtinfer: error: no such file: {tmp_path / 'nope.ir'}\n"


def test_load_graph_reads_a_model_file(small, tmp_path):
    """The CLI reads its models through ``rtinfer.frontends.load_graph``."""
    from rtinfer.errors import CaptureError
    from rtinfer.frontends import load_graph

    assert structural_equal(load_graph(str(small)), parse(SMALL))
    with pytest.raises(CaptureError, match="no such file"):
        load_graph(str(tmp_path / "nope.ir"))
    with pytest.raises(CaptureError, match="is a directory"):
        load_graph(str(tmp_path))


@pytest.mark.parametrize("flags", [["--verify-each"], []])
def test_ill_typed_graph_names_the_node(tmp_path, capsys, flags):
    bad = write(tmp_path, """
        func @main(%x: f32[4], %y: f32[4]) -> i32[4] {
          %a = add(%x, %y) : i32[4]
          return %a
        }""")
    assert main(["opt", str(bad), "-p", "dce", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"rtinfer: error: {bad}: the input graph is invalid")
    assert "op table infers f32[4]" in err
    assert "add(%x, %y)" in err and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    assert main(["opt"]) == 2
    assert main(["frobnicate"]) == 2
    assert main([]) == 2
    assert "usage: rtinfer" in capsys.readouterr().err


def test_bad_pipeline_syntax_shows_the_column(small, capsys):
    assert main(["opt", str(small), "-p", "cse{"]) == 1
    err = capsys.readouterr().err
    assert "malformed pipeline at column 4" in err and "unbalanced '{'" in err


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "rtinfer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rtinfer.cli"]


def test_subprocess_reports_errors_cleanly(tmp_path):
    # One run through the installed entry point (torch makes each start take seconds).
    bad = write(tmp_path, "func @main(%x: f32[4]) -> f32[4] {\n  %a = relu(%x\n}\n")
    run = subprocess.run([*_cli(), "opt", str(bad), "-p", "O1", "--stats"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.startswith(f"rtinfer: error: {bad}:3:1: ")
    assert "Traceback" not in run.stderr


def test_opt_reads_standard_input(monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(textwrap.dedent(SMALL)))
    assert main(["opt", "-", "-p", "O1"]) == 0
    assert structural_equal(parse(capsys.readouterr().out), parse(OPTIMIZED))


def test_demo_subcommand(capsys):
    assert main(["demo", "--quick"]) == 0  # the real demo, with small inputs and 3 runs
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    for text in ("all-MiniLM-L6-v2", "ResNet-18", "eager p50", "rtinfer p50", "cosine",
                 "fused_conv2d", "fused_linear"):
        assert text in out
