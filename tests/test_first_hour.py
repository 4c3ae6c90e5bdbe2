"""The first hour of a new user (issue 16): pass plugins from the CLI, runnable `opt -o` files,
sizes errors that say how to compile for other sizes, no torch-internal warnings on capture,
latency tables that flag their own noise, `passes --help`."""

from __future__ import annotations

import textwrap
import warnings

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.cli import main
from rtinfer.errors import BackendError, PipelineError
from rtinfer.ir.interpreter import interpret
from rtinfer.ir.parser import parse
from rtinfer.ir.printer import format_tensor
from rtinfer.measure import stability_warnings
from rtinfer.pass_manager import plugins, registry

GRAPH = """
func @main(%x: f32[2,3]) -> f32[2,3] {
  %r = relu(%x)
  %n = neg(%r)
  return %n
}
"""

# A user's pass file: a @graph_pass record at module level (installed by the loader) that
# removes every relu.
PLUGIN = '''
import rtinfer
from rtinfer.rewrite import P, RuleSet

RULES = RuleSet("strip-relu", [(P.op("relu", P.var("x")), lambda rw, x: x)])


@rtinfer.graph_pass("strip-relu", summary="remove every relu (a test plugin)")
def strip_relu(graph, ctx):
    ctx.stat("removed", RULES.apply(graph, ctx))
'''


@pytest.fixture
def cleanup_passes():
    before = set(registry._PASSES)
    yield
    for name in set(registry._PASSES) - before:
        registry.unregister_pass(name)


def test_opt_loads_a_users_pass_from_a_file(tmp_path, capsys, cleanup_passes):
    ir = tmp_path / "g.ir"
    ir.write_text(textwrap.dedent(GRAPH))
    rc = main(["opt", str(ir), "--pipeline", "strip-relu,dce"])
    err = capsys.readouterr().err
    assert rc == 1 and "unknown pass 'strip-relu'" in err

    plugin = tmp_path / "my_pass.py"
    plugin.write_text(PLUGIN)
    rc = main(["opt", str(ir), "--load", str(plugin), "--pipeline", "strip-relu,dce"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    g = parse(out)
    assert [n.op for n in g.nodes] == ["neg"]
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(interpret(g, x), -x)

    rc = main(["passes", "--load", str(plugin)])
    assert "strip-relu (v1)  remove every relu (a test plugin)" in capsys.readouterr().out


def test_a_broken_plugin_is_an_error_naming_the_file_and_line(tmp_path, capsys):
    plugin = tmp_path / "bad_pass.py"
    plugin.write_text("import rtinfer\n\nraise RuntimeError('oops in the plugin')\n")
    ir = tmp_path / "g.ir"
    ir.write_text(textwrap.dedent(GRAPH))
    rc = main(["opt", str(ir), "--load", str(plugin), "--pipeline", "dce"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "bad_pass.py" in err and "RuntimeError: oops in the plugin" in err
    assert f"{plugin}:3" in err and "Traceback" not in err
    with pytest.raises(PipelineError, match="does not exist"):
        rtinfer.load_pass_plugin(tmp_path / "missing.py")


def test_an_installed_plugin_is_found_through_its_entry_point(tmp_path, monkeypatch,
                                                                cleanup_passes):
    # an installed distribution, as pip leaves it: a module and a dist-info with entry points
    (tmp_path / "acme_passes.py").write_text(PLUGIN.replace("strip-relu", "acme-strip-relu"))
    info = tmp_path / "acme_passes-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-passes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rtinfer.passes]\nacme = acme_passes\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    g = parse(textwrap.dedent(GRAPH))
    out = rtinfer.run_pipeline(g, "acme-strip-relu,dce").graph
    assert [n.op for n in out.nodes] == ["neg"]


def test_opt_output_file_holds_constants_in_full_and_runs(tmp_path, capsys):
    w = np.arange(3 * 64, dtype=np.float32).reshape(3, 64) / 7
    src = f"""
    func @main(%x: f32[2,3]) -> f32[2,64] {{
      %w = const {format_tensor(w, full=True)}
      %y = matmul(%x, %w)
      return %y
    }}
    """
    ir = tmp_path / "g.ir"
    ir.write_text(textwrap.dedent(src))
    g = parse(ir.read_text())
    out = tmp_path / "out.ir"
    assert main(["opt", str(ir), "--pipeline", "dce", "-o", str(out)]) == 0
    written = out.read_text()
    assert "elided<" not in written
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(interpret(parse(written), x), interpret(g, x))
    # printing to the terminal still elides; --elide-constants asks for it in a file
    assert main(["opt", str(ir), "--pipeline", "dce"]) == 0
    assert "elided<" in capsys.readouterr().out
    assert main(["opt", str(ir), "--pipeline", "dce", "-o", str(out), "--elide-constants"]) == 0
    assert "elided<" in out.read_text()


def test_passes_help_has_a_description(capsys):
    assert main(["passes", "--help"]) == 0
    out = capsys.readouterr().out
    assert "List every registered pass" in out and "--load" in out


def test_a_static_size_error_says_how_to_compile_for_other_sizes():
    model = torch.nn.Linear(16, 4)
    cm = rtinfer.compile(model, example_inputs=(torch.randn(2, 16),), backend="torch",
                         cache=False)
    with pytest.raises(BackendError) as e:
        cm(torch.randn(5, 16))
    msg = str(e.value)
    assert "expected f32[2,16], got f32[5,16]" in msg
    assert "dynamic_dims={'input': {0: 'B'}}" in msg
    # and the advice works: compiled with a symbolic batch, other sizes run and match eager
    cm = rtinfer.compile(model, example_inputs=(torch.randn(2, 16),), backend="torch",
                         cache=False, dynamic_dims={"input": {0: "B"}})
    x = torch.randn(5, 16)
    torch.testing.assert_close(cm(x), model(x).detach())
    # a dtype mistake gets no sizes advice
    with pytest.raises(BackendError) as e:
        cm(torch.randn(5, 16, dtype=torch.float64))
    assert "dynamic_dims" not in str(e.value)


def test_capture_prints_no_torch_internal_deprecation_warnings():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rtinfer.capture(model, (torch.randn(2, 4),))
    assert not [w for w in caught if "LeafSpec" in str(w.message)]


def test_latency_tables_flag_unstable_tails_and_a_busy_machine():
    steady = {"before": {"p50": 1.0, "p90": 1.1, "mean": 1.0},
              "after": {"p50": 0.29, "p90": 39.7, "mean": 4.0}}
    w = stability_warnings(steady, (0.1, 0.2), 2)
    assert len(w) == 1 and "after p90 39.700 ms is 136.9x its p50 0.290 ms" in w[0]
    w = stability_warnings({"before": steady["before"]}, (3.5, 2.0), 2)
    assert len(w) == 1 and "busy" in w[0] and "3.50 before" in w[0]
    assert stability_warnings({"before": steady["before"]}, (0.3, 0.2), 2) == []


def test_optimize_report_carries_the_warnings(tmp_path, capsys, monkeypatch):
    from rtinfer import optimize_cmd

    monkeypatch.setattr(optimize_cmd, "load_average", lambda: 64.0)  # a machine under load
    ir = tmp_path / "g.ir"
    ir.write_text(textwrap.dedent(GRAPH))
    rc = main(["optimize", str(ir), "--out", str(tmp_path / "o"), "--runs", "3", "--warmup",
               "0", "--backend", "torch", "--no-cache"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "warning: the machine was busy while measuring" in out
    assert "**Warning:** the machine was busy" in (tmp_path / "o" / "report.md").read_text()
