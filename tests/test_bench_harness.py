"""The benchmark harness runs end to end and writes well-formed reports (the structure, never
the timings: tests do not assert on wall time)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--models", "mlp", "--systems",
         "eager,rtinfer-torch", "--iters", "2", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_json_records_machine_settings_and_every_system(quick_run):
    out, _ = quick_run
    doc = json.loads((out / "latest.json").read_text())
    assert doc["schema"] == "rtinfer.bench/1"
    assert {"cpu", "logical_cores", "python"} <= set(doc["machine"])
    assert doc["versions"]["torch"] and doc["versions"]["rtinfer"]
    assert doc["settings"]["threads"] == 1 and doc["settings"]["batch"] == 1
    assert list(doc["systems"]) == ["eager", "rtinfer-torch"]
    assert doc["systems"]["rtinfer-torch"]["rtinfer"] and not doc["systems"]["eager"]["rtinfer"]
    results = doc["models"]["mlp"]["results"]
    for name in ("eager", "rtinfer-torch"):
        rec = results[name]
        assert rec["status"] == "ok", rec
        # 2 rounds x 2 iterations, unless the time budget capped the system
        assert len(rec["samples_ns"]) == rec["samples"]
        assert rec["samples"] == 4 or rec["capped"]
        assert rec["min_ms"] <= rec["median_ms"] <= rec["p90_ms"]
        assert rec["fidelity_ok"] is True and rec["max_abs_err"] < 1e-4
        assert rec["setup_s"] >= 0 and rec["vs_eager"] > 0
    assert results["eager"]["vs_eager"] == 1.0
    # the best peer is never an rtinfer system
    assert doc["models"]["mlp"]["best_peer"] == "eager"
    assert "vs_best_peer" in results["rtinfer-torch"]


def test_markdown_has_the_tables(quick_run):
    out, proc = quick_run
    md = (out / "latest.md").read_text()
    assert proc.stdout == md
    for heading in ("## Median latency", "## Minimum latency", "## rtinfer against the best peer",
                    "## Targets", "## Setup time"):
        assert heading in md
    assert "| model | eager | rtinfer-torch |" in md
    row = next(line for line in md.splitlines() if line.startswith("| mlp | "))
    assert row.count("(×") == 2


def test_unavailable_system_is_a_result_not_a_crash(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_report",
                                                  ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    doc = {"date": "d", "git": None, "machine": {"cpu": "c", "logical_cores": 1},
           "versions": {}, "settings": {"threads": 1, "rounds": 1, "iters_per_round": 1,
                                        "warmup": 1, "fidelity_rtol": 1e-3, "max_seconds": 1},
           "systems": {"eager": {"summary": "", "rtinfer": False},
                       "rtinfer-tvm": {"summary": "", "rtinfer": True}},
           "models": {"mlp": {"best_peer": "eager", "results": {
               "eager": {"status": "ok", "median_ms": 1.0, "min_ms": 1.0, "vs_eager": 1.0},
               "rtinfer-tvm": {"status": "unavailable", "reason": "not yet"}}}}}
    md = report.markdown(doc)
    assert "| mlp | 1 (×1.00) | n/a |" in md
    assert "mlp / rtinfer-tvm: unavailable: not yet" in md
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\nrest\n")
    report.update_readme(readme, report.readme_block(doc))
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "| mlp | 1 (×1.00) | n/a |" in text
