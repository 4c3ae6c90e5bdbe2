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
