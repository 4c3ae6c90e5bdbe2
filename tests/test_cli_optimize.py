"""``rtinfer optimize``: a small ONNX file (symbolic batch, ONNX Runtime as the baseline), an IR
file and a built-in model; the output directory holds the artifact and both reports; bad
arguments are one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

import rtinfer
from rtinfer.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FIELDS = {"model", "kind", "baseline", "target", "pipeline", "backend", "inputs", "runs",
          "latency_ms", "speedup_p50", "size_bytes", "fidelity", "nodes", "fused_ops",
          "compile_seconds", "cache", "artifact"}


@pytest.fixture
def mlp_onnx(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [w1, b1, w2])
    path = tmp_path / "mlp.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _report(out: Path) -> dict:
    assert (out / "report.md").is_file() and (out / "artifact" / "manifest.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert FIELDS <= set(report)
    for side in ("before", "after"):
        assert {"p50", "p90"} <= set(report["latency_ms"][side])
        assert 0 < report["latency_ms"][side]["p50"] <= report["latency_ms"][side]["p90"]
    assert report["speedup_p50"] > 0
    assert report["fidelity"]["max_abs_error"] < 1e-3
    assert report["fidelity"]["cosine_similarity"] > 0.9999
    return report


def test_optimize_an_onnx_file(mlp_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["optimize", str(mlp_onnx), "--input-shape", "x=3x16", "--runs", "3",
               "--warmup", "1", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    report = _report(out)
    assert report["baseline"] == "ONNX Runtime" and report["inputs"] == {"x": [3, 16]}
    assert report["fused_ops"] == {"fused_matmul": 1} or report["nodes"]["after"] < \
        report["nodes"]["before"]
    assert "latency p50" in stdout and "cosine similarity" in stdout and "speedup" in stdout
    md = (out / "report.md").read_text()
    assert "| latency p90 |" in md and "rtinfer compiled model" in md
    cm = rtinfer.load(out / "artifact")  # the artifact loads and runs at another batch
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    assert cm(x).shape == (5, 4)


def test_optimize_a_builtin_model(tmp_path, capsys):
    out = tmp_path / "r18"
    rc = main(["optimize", "resnet18", "--runs", "2", "--warmup", "0", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    report = _report(out)
    assert report["baseline"] == "eager torch" and report["fused_ops"]["fused_conv2d"] > 0
    assert report["nodes"]["after"] < report["nodes"]["before"]
    assert report["size_bytes"]["weights_before"] > 40e6


def test_optimize_an_ir_file(tmp_path, capsys):
    ir = tmp_path / "g.ir"
    ir.write_text("""
    func @main(%x: f32[B,8]) -> f32[B,8] {
      %a = add(%x, %x)
      %b = add(%x, %x)
      %c = mul(%a, %b)
      return %c
    }""")
    out = tmp_path / "g"
    assert main(["optimize", str(ir), "--dims", "B=4", "--runs", "2", "--out", str(out)]) == 0
    report = _report(out)
    assert report["inputs"] == {"x": [4, 8]} and report["nodes"]["before"] == 3
    assert report["nodes"]["after"] < 3


@pytest.mark.parametrize("argv,message", [
    (["optimize", "no/such/model.onnx"], "no such model: no/such/model.onnx"),
    (["optimize", "resnet18", "--input-shape", "x=1x3"], "built-in model"),
])
def test_bad_arguments_are_one_clear_error(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("rtinfer: error: ") and message in err and "Traceback" not in err


def test_bad_input_shape(mlp_onnx, tmp_path, capsys):
    assert main(["optimize", str(mlp_onnx), "--input-shape", "y=3x16",
                 "--out", str(tmp_path / "o")]) == 1
    assert "unknown input(s) y; the model's inputs: x" in capsys.readouterr().err
    assert main(["optimize", str(mlp_onnx), "--input-shape", "x=3by16"]) == 1
    assert "NAME=D0xD1" in capsys.readouterr().err


def test_optimize_int8_prints_and_writes_the_layer_table(mlp_onnx, tmp_path, capsys):
    """--int8 with --calibration FILE.npz (samples along the first axis) and --budget: the
    per-layer table on stdout, in report.md and in report.json; outputs close to ORT's fp32."""
    x = np.random.default_rng(2).standard_normal((24, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "q"
    rc = main(["optimize", str(mlp_onnx), "--input-shape", "x=3x16", "--runs", "2",
               "--warmup", "0", "--out", str(out), "--backend", "torch", "--int8",
               "--calibration", str(tmp_path / "calib.npz"), "--budget", "0.5"])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    assert "int8: 2 of 2 layers int8" in stdout and "sensitivity" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["precision"] == "int8"
    layers = report["int8"]["layers"]
    assert len(layers) == 2 and all(r["sensitivity"] is not None for r in layers)
    assert report["int8"]["budget"] == 0.5 and report["int8"]["error"] <= 0.5
    assert report["fidelity"]["cosine_similarity"] > 0.99  # int8, not bit-exact
    assert "int8:" in (out / "report.md").read_text()
    assert "generated inputs" not in stdout  # real data given: no warning


def test_optimize_int8_with_generated_calibration_warns(mlp_onnx, tmp_path, capsys):
    out = tmp_path / "g"
    rc = main(["optimize", str(mlp_onnx), "--input-shape", "x=3x16", "--runs", "2",
               "--warmup", "0", "--out", str(out), "--backend", "torch", "--int8",
               "--calibration", "4"])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    assert "calibrated on 4 generated inputs, not real data" in stdout
    assert main(["optimize", str(mlp_onnx), "--input-shape", "x=3x16", "--budget", "0.1",
                 "--out", str(tmp_path / "b")]) == 1
    assert "--calibration and --budget go with --int8" in capsys.readouterr().err


# -- --prune -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_cnn():
    """A small CNN trained here on scikit-learn's digits (one thread: small convolutions run
    fastest so, and the machine is shared), and its images and labels."""
    import torch
    from torch import nn

    from tests.test_simplify import DigitsCNN

    datasets = pytest.importorskip("sklearn.datasets")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(2):
        for i in range(0, 1200, 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    yield model, x, y
    torch.set_num_threads(old)


@pytest.fixture
def digits_builtin(digits_cnn, monkeypatch):
    """The digits CNN served as built-in model "digits" (the real built-ins take minutes to
    prune and distill on a shared machine), and its held-out data: images, integer labels."""
    import torch

    from rtinfer import optimize_cmd

    model, x, y = digits_cnn
    real = optimize_cmd._builtin

    def builtin(name: str, seq: int):
        if name != "digits":
            return real(name, seq)
        example = x[:1]

        def baseline():
            with torch.no_grad():
                return [model(example).numpy()]
        return optimize_cmd._Subject("builtin", "eager torch", model, example, None, baseline,
                                     {"x": [1, 1, 8, 8]}, 4 * sum(
                                         p.numel() for p in model.state_dict().values()))

    monkeypatch.setattr(optimize_cmd, "BUILTINS", (*optimize_cmd.BUILTINS, "digits"))
    monkeypatch.setattr(optimize_cmd, "_builtin", builtin)
    return x.numpy()[1200:], y.numpy()[1200:]


def test_optimize_prune_prints_the_before_after_table(digits_builtin, tmp_path, capsys):
    """--prune with --distill data.npz (labels given): the per-step table, then the before/after
    table with MACs, parameters and held-out top-1; report.json keeps the per-step record."""
    x, y = digits_builtin
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    out = tmp_path / "p"
    rc = main(["optimize", "digits", "--prune", "0.5", "--distill", str(tmp_path / "d.npz"),
               "--distill-steps", "40", "--distill-batch", "64", "--budget", "0.2",
               "--runs", "3", "--warmup", "0", "--backend", "torch", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    report = json.loads((out / "report.json").read_text())
    steps = report["simplify"]["rows"]
    assert [r["step"].split(" (")[0] for r in steps] == [
        "dense", "prune 0.5", "distill 40 steps", "compiled"]
    dense, compiled = steps[0], steps[-1]
    assert 0.2 < compiled["macs"] / dense["macs"] < 0.3  # half the channels of every layer
    assert 0.2 < compiled["params"] / dense["params"] < 0.3
    # the held-out samples: the last 20% of the file's 597
    assert report["simplify"]["budget"] == 0.2 and report["simplify"]["metric"] == "top-1"
    assert report["simplify"]["within_budget"] is (dense["metric"] - compiled["metric"] <= 20)
    assert "prune -> distill -> int8 (budget: top-1 drop at most 20 pt" in stdout
    for row in ("MACs", "parameters", "top-1 (held out)", "latency p50", "cosine similarity"):
        assert f"\n{row} " in stdout, row
    assert f"{dense['macs']:,}" in stdout and f"{compiled['params']:,}" in stdout
    assert "generated images" not in stdout  # real data given
    assert "top-1 (held out)" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--prune", "0.3"], "needs a torch model: a built-in"),
    (["--distill", "d.npz"], "--distill and --distill-steps go with --prune"),
    (["--distill-steps", "5"], "--distill and --distill-steps go with --prune"),
])
def test_prune_arguments_are_one_clear_error(mlp_onnx, tmp_path, argv, message, capsys):
    assert main(["optimize", str(mlp_onnx), "--input-shape", "x=3x16", "--out",
                 str(tmp_path / "o"), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rtinfer: error: ") and message in err and "Traceback" not in err


def test_prune_ratio_and_data_are_checked(digits_builtin, tmp_path, capsys):
    assert main(["optimize", "digits", "--prune", "1.5", "--out", str(tmp_path / "o")]) == 1
    assert "--prune is the fraction of channels removed, in (0, 1); got 1.5" in \
        capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", image=np.zeros((4, 1, 8, 8), np.float32))
    assert main(["optimize", "digits", "--prune", "0.5", "--distill", str(tmp_path / "bad.npz"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "--distill " + str(tmp_path / "bad.npz") + " lacks input(s) x" in \
        capsys.readouterr().err
