"""The benchmark harness runs end to end and writes well-formed reports (the structure, never
the timings: tests do not assert on wall time)."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"


@pytest.fixture(autouse=True)
def _grad_mode_restored():
    """Tests here turn autograd off globally, as the harness does; the next test, in this
    worker, must not inherit that."""
    import torch

    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--models", "mlp", "--systems",
         "eager,rtinfer-torch", "--iters", "2", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _bench_mlp(bench: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """``run.bench_model`` on the MLP workload with the systems ``names`` (quick, 1 thread)."""
    import torch

    torch.set_grad_enabled(False)
    run, systems = bench.run, bench.systems
    args = run.parse_args(["--quick", "--iters", "2"])
    w = bench.workloads.build("mlp")
    try:
        return run.bench_model(w, [systems.SYSTEMS[n] for n in names], args,
                               systems.Settings(threads=1), lambda _: None)
    finally:
        w.close()


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


# -- int8: data, accuracy metrics, ceiling, adapters, report ------------------------------------

BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The benchmark's modules, imported as run.py imports them (benchmarks/ on sys.path)."""
    import importlib

    sys.path.insert(0, str(BENCH))
    try:
        mods = {name: importlib.import_module(name)
                for name in ("calibration", "int8", "workloads", "systems", "report")}
        spec = importlib.util.spec_from_file_location("bench_run", RUN)
        run = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(run)
        mods["run"] = run
        yield type("Bench", (), mods)
    finally:
        sys.path.remove(str(BENCH))


def test_classify_accuracy_exact(bench):
    import numpy as np

    ref = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]])]
    got = [np.array([[3.0, 0.0]]), np.array([[1.0, 0.0]]), np.array([[2.0, 2.0]])]
    acc = bench.int8.classify_accuracy(ref, got)
    # cosines 1, 0, 1; top-1 0=0, 1!=0, 0=0 (a tie takes the first class)
    assert acc == {"cosine": pytest.approx(2 / 3), "top1_agreement": pytest.approx(2 / 3),
                   "n": 3}


def test_embed_accuracy_exact(bench):
    import numpy as np

    junk = [100.0, -100.0]  # a padding token: the mask leaves it out of the mean
    # fp32 sentence vectors a=(1,0), b=(1,.1), c=(0,1); a's is the mean of its two tokens
    ref = [np.array([[[2.0, 0.0], [0.0, 0.0]]]), np.array([[[1.0, 0.1], junk]]),
           np.array([[[0.0, 1.0], junk]])]
    masks = [np.array([[1, 1]]), np.array([[1, 0]]), np.array([[1, 0]])]
    # int8 vectors a=(1,0), b=(1,.1), c=(1,.2): neighbours a->b, b->c (was a), c->b
    got = [np.array([[[1.0, 0.0], [1.0, 0.0]]]), np.array([[[1.0, 0.1], [5.0, 5.0]]]),
           np.array([[[1.0, 0.2], junk]])]
    acc = bench.int8.embed_accuracy(ref, got, masks)
    cos_c = 0.2 / np.sqrt(1.04)
    assert acc["cosine"] == pytest.approx((1 + 1 + cos_c) / 3)
    assert acc["nn_unchanged"] == pytest.approx(2 / 3) and acc["n"] == 3
    # the masks come from the inputs (input 1 of each tuple), as the harness passes them
    inputs = [(None, m) for m in masks]
    assert bench.int8.accuracy("embed", inputs, ref, got) == acc
    assert list(bench.int8.nearest_neighbours(np.array([[1.0, 0], [1, .1], [0, 1]]))) == [1, 0, 1]


def test_accuracy_rejects_mismatched_outputs(bench):
    import numpy as np

    ref = [np.zeros((1, 4)), np.zeros((1, 4))]
    with pytest.raises(ValueError, match=r"int8 outputs: 1 outputs for 2 inputs"):
        bench.int8.classify_accuracy(ref, [np.zeros((1, 4))])
    with pytest.raises(ValueError, match=r"int8 output shape \[1, 5\] != fp32 \[1, 4\]"):
        bench.int8.classify_accuracy(ref, [np.zeros((1, 5))] * 2)
    with pytest.raises(ValueError, match="at least 2 embeddings, got 1"):
        bench.int8.nearest_neighbours(np.ones((1, 3)))
    with pytest.raises(ValueError, match="unknown accuracy task 'segment'"):
        bench.int8.accuracy("segment", [], ref, ref)
    # two zero vectors agree, a zero against a non-zero one does not
    acc = bench.int8.classify_accuracy(ref, [np.zeros((1, 4)), np.ones((1, 4))])
    assert acc["cosine"] == pytest.approx(0.5)


def test_int8_ceiling_formula(bench):
    ceiling = bench.int8.int8_ceiling
    host = frozenset({"sse4_1", "avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})
    c = ceiling(2, host, ghz=2.0)
    # 2 cores x 2 GHz x 128 MACs (vpdpbusd zmm, 2 ports) x 2 ops
    assert (c["level"], c["macs_per_cycle"], c["gops"]) == ("avx512_vnni", 128, 1024.0)
    assert c["amx_gops"] == 2 * 2.0 * 1024 * 2
    # a run capped at AVX2: neither VNNI nor AMX counts
    c = ceiling(2, host, ghz=2.0, level="avx2")
    assert (c["level"], c["gops"], c["amx_gops"]) == ("avx2", 256.0, None)
    assert ceiling(1, frozenset({"avx2", "avx_vnni"}), ghz=3.0)["gops"] == 3.0 * 64 * 2
    assert ceiling(1, frozenset({"avx2", "avx512bw"}), ghz=1.0)["gops"] == 128.0
    assert ceiling(1, frozenset(), ghz=1.0)["gops"] is None
    with pytest.raises(ValueError, match="unknown CPU level 'avx9'"):
        ceiling(1, host, ghz=1.0, level="avx9")


def test_calibration_data_is_real_fixed_and_disjoint(bench):
    cal = bench.calibration
    first, again = cal.stdlib_sentences(), cal.stdlib_sentences()
    assert first == again and len(first) >= 2 * cal.CALIBRATION_SIZE
    train, held = cal.sentence_split()
    assert len(train) == 128 and len(held) == cal.HELDOUT_SENTENCES
    assert not set(train) & set(held)
    assert all(s.endswith(".") and 6 <= len(s.split()) <= 40 for s in train + held)
    ids, mask = cal.tokenized(["Return a new list of the items."], seq=16)[0]
    assert ids.shape == mask.shape == (1, 16)
    # [CLS] 7 words and a full stop [SEP], then padding (id 0) that the mask leaves out
    assert int(mask.sum()) == 10 and ids[0, 0] == 101 and (ids[0, 10:] == 0).all()
    data = cal.dataset("mlp", (bench.workloads.build("mlp").inputs[0],))
    assert len(data.calibration) == 128 and data.task == "classify"
    assert data.digest == cal.dataset("mlp", data.calibration[0]).digest
    with pytest.raises(ValueError, match="no int8 data set for workload 'vit'"):
        cal.dataset("vit", ())


def test_calibration_images_are_fixed_normalized_photo_crops(bench):
    pytest.importorskip("sklearn")
    pytest.importorskip("PIL")  # the bench extra's; scikit-learn reads its JPEGs with it
    cal = bench.calibration
    crops = cal.image_crops(3, seed=0, size=64)
    assert all(c.shape == (1, 3, 64, 64) for c in crops)
    assert all((a == b).all() for a, b in zip(crops, cal.image_crops(3, seed=0, size=64),
                                                      strict=True))
    assert not (crops[0] == cal.image_crops(1, seed=1, size=64)[0]).all()
    # ImageNet-normalized photographs: roughly zero-mean, unit-scale, not noise
    assert -1.5 < float(crops[0].mean()) < 1.5 and 0.1 < float(crops[0].std()) < 2.0


def _held_out_accuracy(bench, w, prepared):
    import numpy as np

    data = w.data()
    ref = [w.model(*x).numpy() for x in data.heldout]
    got = [np.array(prepared.infer(x), copy=True) for x in data.heldout]
    return bench.int8.accuracy(data.task, data.heldout, ref, got)


def test_onnxruntime_int8_static_on_mlp(bench):
    import torch

    torch.set_grad_enabled(False)
    w = bench.workloads.build("mlp")
    try:
        p = bench.systems.setup_onnxruntime_int8(w, bench.systems.Settings(threads=1))
        assert p.info["quantize_nodes"] >= 3 and p.info["calibration_s"] > 0
        assert any("quantize_static" in n for n in p.notes)
        acc = _held_out_accuracy(bench, w, p)
        assert acc["n"] == 64 and acc["cosine"] > 0.99 and acc["top1_agreement"] >= 0.9
        out = p.output(p.run())
        assert out.shape == (1, 10)
    finally:
        w.close()


def test_onnxruntime_int8_dynamic_for_embeddings(bench):
    """The transformer path (task "embed"): quantize_dynamic, no calibration."""
    import torch

    torch.set_grad_enabled(False)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.proj = torch.nn.Linear(16, 16)

        def forward(self, ids, mask):
            return self.proj(self.emb(ids)) * mask.unsqueeze(-1).float()

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 50, (1, 8), generator=g), torch.ones(1, 8, dtype=torch.long))
               for _ in range(6)]
    w = bench.workloads.Workload("tiny-encoder", "", Encoder().eval(), batches[0],
                                 ("input_ids", "attention_mask"))
    w._data = bench.calibration.DataSet(batches[:3], batches[3:], "test", "embed", "x")
    try:
        p = bench.systems.setup_onnxruntime_int8(w, bench.systems.Settings(threads=1))
        assert any("quantize_dynamic" in n for n in p.notes)
        assert p.info["quantize_nodes"] >= 1  # DynamicQuantizeLinear before the int8 MatMul
        acc = _held_out_accuracy(bench, w, p)
        assert acc["n"] == 3 and acc["cosine"] > 0.99
    finally:
        w.close()


def test_openvino_int8_on_mlp(bench):
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    import torch

    torch.set_grad_enabled(False)
    w = bench.workloads.build("mlp")
    try:
        p = bench.systems.setup_openvino_int8(w, bench.systems.Settings(threads=1))
        assert p.info["quantize_nodes"] >= 2  # NNCF's FakeQuantize before the linears
        acc = _held_out_accuracy(bench, w, p)
        assert acc["cosine"] > 0.99 and acc["top1_agreement"] >= 0.9
    finally:
        w.close()


def test_rtinfer_int8_unavailable_only_for_missing_keywords(bench, monkeypatch):
    import rtinfer

    systems = bench.systems
    w = bench.workloads.build("mlp")

    def old_compile(model, example_inputs=None, backend="auto", pipeline=None):
        raise AssertionError("not reached: the int8 keywords are refused first")

    monkeypatch.setattr(rtinfer, "compile", old_compile)
    with pytest.raises(systems.Unavailable, match="rtinfer int8 not built yet"):
        systems.setup_rtinfer_int8(w, systems.Settings(threads=1))

    def broken_int8(model, **kwargs):
        assert kwargs["precision"] == "int8" and kwargs["backend"] == "native"
        assert len(list(kwargs["calibration"])) == 128 and kwargs["accuracy_budget"] is None
        raise TypeError("unsupported operand type(s) for *: 'QuantParams' and 'float'")

    monkeypatch.setattr(rtinfer, "compile", broken_int8)
    with pytest.raises(TypeError, match="QuantParams"):  # a bug of int8: an error, not n/a
        systems.setup_rtinfer_int8(w, systems.Settings(threads=1))


def test_bench_model_reports_int8_accuracy_and_gops(bench):

    doc = _bench_mlp(bench, ("eager", "onnxruntime", "onnxruntime-int8"))
    res = doc["results"]
    rec = res["onnxruntime-int8"]
    assert rec["status"] == "ok", rec
    # int8 is judged by held-out accuracy, not by fp32's tolerance; never the fp32 best peer
    assert rec["fidelity_ok"] is None and rec["max_abs_err"] > 0
    assert doc["best_peer"] in ("eager", "onnxruntime")
    assert doc["int8"]["best_peer"] == "onnxruntime-int8" and rec["vs_best_int8_peer"] == 1.0
    assert rec["accuracy"]["n"] == 64 and rec["accuracy"]["cosine"] > 0.99
    assert doc["int8"]["gop"] == pytest.approx(2 * (64 * 128 + 128 * 128 + 128 * 10) / 1e9)
    assert rec["gops"] == pytest.approx(doc["int8"]["gop"] / (rec["median_ms"] / 1e3))
    assert "accuracy" not in res["onnxruntime"] and "gops" not in res["onnxruntime"]


def _int8_doc():
    ok = {"status": "ok", "min_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0}
    return {"date": "d", "git": None,
            "machine": {"cpu": "c", "logical_cores": 2, "int8_ceiling": {
                "cores": 2, "ghz": 2.0, "clock_source": "given", "level": "avx512_vnni",
                "macs_per_cycle": 128, "how": "vpdpbusd zmm", "gops": 1024.0,
                "amx_gops": None}},
            "versions": {}, "settings": {"threads": 2, "rounds": 1, "iters_per_round": 1,
                                         "warmup": 1, "fidelity_rtol": 1e-3, "max_seconds": 1},
            "systems": {"eager": {"summary": "", "rtinfer": False},
                        "onnxruntime-int8": {"summary": "", "rtinfer": False,
                                             "precision": "int8"},
                        "rtinfer-int8": {"summary": "", "rtinfer": True, "precision": "int8"}},
            "models": {"minilm": {"best_peer": "eager", "int8": {
                "source": "sentences", "digest": "abc", "best_peer": "onnxruntime-int8"},
                "results": {
                    "eager": ok | {"median_ms": 20.0, "vs_eager": 1.0},
                    "onnxruntime-int8": ok | {
                        "median_ms": 10.0, "vs_eager": 2.0, "vs_best_int8_peer": 1.0,
                        "setup_s": 3.0, "calibration_s": 2.5, "gops": 256.0,
                        "accuracy": {"cosine": 0.99213, "nn_unchanged": 0.91, "n": 100}},
                    "rtinfer-int8": ok | {
                        "median_ms": 8.0, "vs_eager": 2.5, "vs_best_int8_peer": 1.25,
                        "setup_s": 4.0, "calibration_s": 3.0, "gops": 320.0,
                        "accuracy": {"cosine": 0.996, "nn_unchanged": 0.96, "n": 100}}}}}}


def test_report_int8_table_and_targets(bench):
    md = bench.report.markdown(_int8_doc())
    assert "## int8: speed, accuracy on held-out data, GOP/s" in md
    assert "2 cores × 2.00 GHz (given) × 128 int8 multiply-adds" in md
    assert "**1024 GOP/s**" in md and "- minilm: sentences (digest abc)" in md
    assert ("| minilm | onnxruntime-int8 | 10.0 (×2.00) | ×1.00 | 3.0 (2.5) | 0.9921 | 91.0% "
            "| 256 | 25% |") in md
    assert "| minilm | rtinfer-int8 | 8 (×2.50) | ×1.25 | 4.0 (3.0) | 0.9960 | 96.0% | 320 |" in md
    assert "- ✓ rtinfer-int8 ≥ ×1.1 the best int8 peer on minilm: ×1.25 vs onnxruntime-int8" in md
    assert "- ✓ rtinfer-int8 mean cosine to fp32 ≥ 0.995 on minilm: 0.9960" in md
    assert "- ✗ rtinfer-int8 nearest neighbours unchanged ≥ 0.97 on minilm: 0.9600" in md
    assert "int8 (held-out accuracy" in bench.report.readme_block(_int8_doc())


def test_missing_data_packages_make_int8_systems_unavailable(bench, monkeypatch):
    def no_photos(name, inputs):
        raise bench.calibration.DataUnavailable("the calibration photos need Pillow")

    monkeypatch.setattr(bench.workloads, "dataset", no_photos)
    w = bench.workloads.build("mlp")
    for setup in (bench.systems.setup_onnxruntime_int8, bench.systems.setup_rtinfer_int8):
        with pytest.raises(bench.systems.Unavailable, match="calibration photos need Pillow"):
            setup(w, bench.systems.Settings(threads=1))
    assert w.onnx_export_s is None  # refused before exporting anything


# -- bf16: adapters, ratios by precision, report -------------------------------------------------


def _bf16_doc(flags: dict[str, bool] | None = None):
    """``_int8_doc`` with a bf16 peer, rtinfer-bf16 and a bf16 system that was n/a."""
    doc = _int8_doc()
    ok = {"status": "ok", "min_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0}
    doc["machine"]["bf16"] = flags or {"avx512_bf16": True, "amx_bf16": True}
    doc["isa"] = {"cpu_model": "c", "rtinfer": {"level": "avx512"},
                  "rtinfer_bf16": {"available": True, "why": "this CPU has avx512_bf16"}}
    for name, rtinfer in (("openvino-bf16", False), ("rtinfer-bf16", True),
                          ("other-bf16", False)):
        doc["systems"][name] = {"summary": "", "rtinfer": rtinfer, "precision": "bf16"}
    m = doc["models"]["minilm"]
    m["bf16"] = {"source": "sentences", "digest": "abc", "best_peer": "openvino-bf16"}
    m["results"] |= {
        "openvino-bf16": ok | {"median_ms": 12.5, "vs_eager": 1.6, "vs_best_bf16_peer": 1.0,
                               "setup_s": 2.0,
                               "accuracy": {"cosine": 0.99991, "nn_unchanged": 1.0, "n": 100}},
        "rtinfer-bf16": ok | {"median_ms": 6.25, "vs_eager": 3.2, "vs_best_bf16_peer": 2.0,
                              "setup_s": 5.0, "accuracy_error": "ValueError: boom"},
        "other-bf16": {"status": "unavailable", "reason": "no bf16 here"}}
    return doc


def test_report_bf16_table_beside_int8(bench):
    doc = _bf16_doc()
    md = bench.report.markdown(doc)
    assert "## bf16: speed, accuracy on held-out data" in md
    assert ("| model | system | median ms (× eager) | × best bf16 peer | setup s | cosine to fp32 "
            "| top-1 same / NN same |\n|---|---|---:|---:|---:|---:|---:|") in md
    assert "| minilm | openvino-bf16 | 12.5 (×1.60) | ×1.00 | 2.0 | 0.999910 | 100.0% |" in md
    # a failed accuracy check reads "error", never a number
    assert "| minilm | rtinfer-bf16 | 6.25 (×3.20) | ×2.00 | 5.0 | error | error |" in md
    assert "| minilm | other-bf16 | n/a | | | | |" in md
    # the machine section and the bf16 section say whether the CPU has bf16
    assert md.count("bf16 instructions: this CPU has avx512_bf16, amx_bf16; rtinfer bf16 "
                    "kernels: yes (this CPU has avx512_bf16).") == 2
    # the int8 table is unchanged by the bf16 systems beside it
    assert ("| minilm | rtinfer-int8 | 8 (×2.50) | ×1.25 | 4.0 (3.0) | 0.9960 | 96.0% | 320 "
            "| 31% |") in md
    assert md.index("## int8:") < md.index("## bf16:") < md.index("## Targets")
    block = bench.report.readme_block(doc)
    assert "bf16 (held-out accuracy against fp32 eager):" in block
    assert "| minilm | openvino-bf16 | 12.5 (×1.60) | ×1.00 |" in block
    no_bf16 = bench.report.markdown(_bf16_doc({"avx512_bf16": False, "amx_bf16": False}))
    assert "this CPU has neither avx512_bf16 nor amx_bf16" in no_bf16
    assert "## bf16" not in bench.report.markdown(_int8_doc())


def _system(bench, name, precision="fp32", rtinfer=False):
    return bench.systems.System(name, "", lambda w, s: None, rtinfer=rtinfer,
                                precision=precision)


def test_best_peer_and_ratios_by_precision(bench):
    run = bench.run
    systems = [_system(bench, "eager"), _system(bench, "onnxruntime"),
               _system(bench, "rtinfer-native", rtinfer=True),
               _system(bench, "onnxruntime-int8", "int8"),
               _system(bench, "rtinfer-int8", "int8", rtinfer=True),
               _system(bench, "openvino-bf16", "bf16"), _system(bench, "bad-bf16", "bf16"),
               _system(bench, "rtinfer-bf16", "bf16", rtinfer=True)]

    def rec(ms, **kw):
        return {"status": "ok", "median_ms": ms, "min_ms": ms, "p90_ms": ms} | kw

    results = {"eager": rec(20.0), "onnxruntime": rec(10.0), "rtinfer-native": rec(8.0),
               "onnxruntime-int8": rec(5.0, fidelity_ok=None),
               "rtinfer-int8": rec(4.0, fidelity_ok=None),
               "openvino-bf16": rec(6.0, fidelity_ok=None),
               "bad-bf16": rec(1.0, fidelity_ok=False),  # a non-finite output: never a peer
               "rtinfer-bf16": rec(3.0, fidelity_ok=None)}
    assert run.best_peer(results, systems) == "onnxruntime"
    assert run.best_peer(results, systems, precision="int8") == "onnxruntime-int8"
    assert run.best_peer(results, systems, precision="bf16") == "openvino-bf16"
    run.ratios(results, systems)
    assert results["rtinfer-bf16"]["vs_best_bf16_peer"] == 2.0
    assert results["openvino-bf16"]["vs_best_bf16_peer"] == 1.0
    assert results["rtinfer-int8"]["vs_best_int8_peer"] == 1.25
    assert results["rtinfer-bf16"]["vs_best_peer"] == pytest.approx(10 / 3)  # fp32's best peer
    assert results["rtinfer-bf16"]["vs_eager"] == pytest.approx(20 / 3)
    # each ratio only on its own precision's systems
    assert not any("vs_best_bf16_peer" in results[n] for n in ("rtinfer-int8", "onnxruntime",
                                                                 "rtinfer-native"))
    assert not any("vs_best_int8_peer" in results[n] for n in ("rtinfer-bf16", "eager"))


def test_bf16_fidelity_flags_only_wrong_shapes_and_non_finite(bench):
    import numpy as np

    ref = np.ones((1, 4), np.float32)
    results = {"eager": {"_first": ref},
               "rtinfer-bf16": {"_first": ref * 1.01},  # bf16 rounding: far above 1e-3
               "nan-bf16": {"_first": np.full((1, 4), np.nan, np.float32)},
               "short-bf16": {"_first": np.ones((1, 3), np.float32)},
               "rtinfer-native": {"_first": ref * 1.01}}
    precision = {"eager": "fp32", "rtinfer-native": "fp32", "rtinfer-bf16": "bf16",
                 "nan-bf16": "bf16", "short-bf16": "bf16"}
    logged = []
    bench.run.check_fidelity(results, precision, logged.append)
    bf16 = results["rtinfer-bf16"]
    assert bf16["fidelity_ok"] is None and bf16["fidelity"] == "bf16: see the held-out accuracy"
    assert bf16["max_abs_err"] == pytest.approx(0.01, rel=1e-3)
    assert results["nan-bf16"]["fidelity_ok"] is False
    assert results["short-bf16"]["fidelity"] == "shape [1, 3] != eager [1, 4]"
    assert results["rtinfer-native"]["fidelity_ok"] is False  # fp32 keeps its tolerance
    assert all("_first" not in r for r in results.values())
    assert sorted(line.split(":")[0].strip() for line in logged) == [
        "nan-bf16", "rtinfer-native", "short-bf16"]


def test_rtinfer_bf16_unavailable_without_bf16(bench, monkeypatch):
    import rtinfer.bf16

    def compile_not_reached(*args, **kwargs):
        raise AssertionError("no compile where bf16 is missing")

    monkeypatch.setattr(rtinfer.bf16, "bf16_support",
                        lambda: (False, "this CPU lacks avx512_bf16 and amx_bf16"))
    monkeypatch.setattr(rtinfer, "compile", compile_not_reached)
    w = bench.workloads.build("mlp")
    with pytest.raises(bench.systems.Unavailable,
                       match=r"no bf16 kernels here: this CPU lacks avx512_bf16 and amx_bf16; "
                             r"rtinfer would compile fp32 \(Bf16Fallback\)"):
        bench.systems.setup_rtinfer_bf16(w, bench.systems.Settings(threads=1))


def test_openvino_bf16_unavailable_where_it_runs_f32(bench, monkeypatch):
    """A CPU plugin without bf16 resolves the hint to f32: the system is n/a, not an f32
    number in the bf16 table (here: the plugin is asked for f32, as it would resolve it)."""
    pytest.importorskip("openvino")
    config = bench.systems._openvino_config
    monkeypatch.setattr(bench.systems, "_openvino_config",
                        lambda s, precision="f32": config(s, "f32"))
    w = bench.workloads.build("mlp")
    try:
        with pytest.raises(bench.systems.Unavailable,
                           match=r"OpenVINO resolved the bf16 precision hint to "
                                 r"<Type: 'float32'> here"):
            bench.systems.setup_openvino_bf16(w, bench.systems.Settings(threads=1))
    finally:
        w.close()


def test_bench_model_runs_bf16_systems_on_mlp(bench):
    """Where the CPU has bf16: both bf16 systems time, are judged on the held-out inputs and
    compared with the best bf16 peer; elsewhere both are n/a with the reason."""
    pytest.importorskip("openvino")

    from rtinfer.bf16 import bf16_support

    doc = _bench_mlp(bench, ("eager", "openvino-bf16", "rtinfer-bf16"))
    res = doc["results"]
    ok, why = bf16_support()
    if not ok:
        assert res["rtinfer-bf16"]["status"] == "unavailable"
        assert why in res["rtinfer-bf16"]["reason"]
        return
    for name in ("openvino-bf16", "rtinfer-bf16"):
        rec = res[name]
        assert rec["status"] == "ok", rec
        assert rec["fidelity_ok"] is None and rec["max_abs_err"] > 0  # bf16 rounding
        assert rec["accuracy"]["n"] == 64 and rec["accuracy"]["cosine"] > 0.999
        assert "gops" not in rec
    rt = res["rtinfer-bf16"]
    assert rt["bf16_layers"] == rt["bf16_steps"] == 3 and rt["kernel_ms"] > 0
    assert any(n.startswith("bf16 kernels ran: 3 layers bf16") for n in rt["notes"])
    assert res["openvino-bf16"]["notes"][1].startswith(
        "OpenVINO CPU, bf16 precision hint (resolved to <Type: 'bfloat16'>)")
    assert doc["bf16"]["best_peer"] == "openvino-bf16" and "int8" not in doc
    assert res["openvino-bf16"]["vs_best_bf16_peer"] == 1.0
    assert rt["vs_best_bf16_peer"] == pytest.approx(
        res["openvino-bf16"]["median_ms"] / rt["median_ms"])
    assert doc["best_peer"] == "eager"  # bf16 systems are never fp32 peers


# -- the CPU's identity: which core ran a benchmark, and what an AVX2 cap costs there -----------

CPUINFO_ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
"""


@pytest.mark.parametrize(("vendor", "family", "model", "core", "bits"), [
    ("AuthenticAMD", 26, 2, "Zen 5", 512),
    ("AuthenticAMD", 25, 0x11, "Zen 4", 256),  # Genoa
    ("AuthenticAMD", 25, 0x61, "Zen 4", 256),  # Raphael
    ("AuthenticAMD", 25, 0x01, "Zen 3", None),  # Milan
    ("AuthenticAMD", 23, 0x31, "Zen / Zen 2", None),
    ("GenuineIntel", 6, 143, None, None),
])
def test_cpu_identity_names_the_core(bench, vendor, family, model, core, bits):
    text = f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
    ident = bench.run.cpu_identity(text)
    assert (ident["vendor"], ident["family"], ident["model"]) == (vendor, family, model)
    assert ident.get("core") == core and ident.get("avx512_datapath_bits") == bits


def test_cpu_identity_reads_the_first_processor_only(bench):
    ident = bench.run.cpu_identity(CPUINFO_ZEN5)
    assert ident == {"vendor": "AuthenticAMD", "family": 26, "model": 2, "core": "Zen 5",
                     "avx512_datapath_bits": 512}
    assert bench.report.describe_cpu(ident) == "AuthenticAMD family 0x1a model 0x02: Zen 5"
    # not x86 Linux (an ARM cpuinfo has no vendor_id / family): nothing, and no error
    assert bench.run.cpu_identity("processor\t: 0\nBogoMIPS\t: 50.00\n") == {}
    assert bench.report.describe_cpu({}) == ""


def test_report_names_the_core_and_what_the_avx2_cap_costs(bench):
    doc = _bf16_doc()
    zen5 = bench.run.cpu_identity(CPUINFO_ZEN5)
    doc["isa"] = {"cpu_model": "AMD EPYC", "cpu_identity": zen5, "requested": "avx2",
                  "rtinfer": {"level": "avx2"}, "systems": {"openvino-bf16": "uncapped"}}
    md = bench.report.markdown(doc)
    assert "CPU: AMD EPYC (AuthenticAMD family 0x1a model 0x02: Zen 5); AVX-512 flags" in md
    assert ("Zen 5 has 512-bit FMA units: the cap halves the FMA peak of every capped system, "
            "so an uncapped system's numbers are not comparable with the capped ones.") in md
    doc["isa"]["cpu_identity"] = dict(zen5, core="Zen 4", avx512_datapath_bits=256)
    assert "Zen 4 runs AVX-512 on 256-bit units: the cap keeps the FMA peak" in (
        bench.report.markdown(doc))
    # uncapped runs, or cores of unknown width, say nothing about it
    doc["isa"]["requested"] = None
    assert "FMA peak" not in bench.report.markdown(doc)
    doc["isa"] |= {"requested": "avx2", "cpu_identity": {"vendor": "GenuineIntel", "family": 6,
                                                         "model": 143}}
    md = bench.report.markdown(doc)
    assert "FMA peak" not in md and "(GenuineIntel family 0x06 model 0x8f)" in md


def test_report_says_what_the_cpuid_mask_capped(bench):
    doc = _bf16_doc()
    zen5 = bench.run.cpu_identity(CPUINFO_ZEN5)
    masked = {n: "capped: CPUID shows no AVX-512" for n in doc["systems"]}
    doc["isa"] = {"cpu_model": "AMD EPYC", "cpu_identity": zen5, "requested": "avx2",
                  "rtinfer": {"level": "avx2"}, "systems": masked,
                  "cpuid_mask": {"loaded": True, "active": True, "traps": 52,
                                 "avx512f_visible": False, "hidden": ["avx512f", "avx512vl"]}}
    md = bench.report.markdown(doc)
    assert ("CPUID hides AVX-512 from the whole process (benchmarks/cpuid_mask.c preloaded, "
            "Linux CPUID faulting; 52 CPUID instructions answered; hidden: avx512f avx512vl)"
            in md)
    assert "Every system here is capped." in md and "(uncapped)" not in md
    # with no system left uncapped, Zen 5's halved peak applies to all alike
    assert "as on an AVX2 machine with two 256-bit FMA pipes (Zen 3) at this clock" in md
    assert "not comparable" not in md
    # one system the mask does not reach (TVM's LLVM code names the core): marked again
    name = next(iter(doc["systems"]))
    doc["isa"]["systems"][name] = "uncapped: LLVM code for the host CPU model"
    md = bench.report.markdown(doc)
    assert f"{name} (uncapped)" in md and "not comparable" in md
    # no mask loaded: no word of it
    doc["isa"]["cpuid_mask"] = {"loaded": False, "active": False}
    assert "CPUID hides" not in bench.report.markdown(doc)


def test_cpuid_mask_says_why_it_cannot_run(bench):
    mask = pytest.importorskip("cpuid_mask")
    if mask.platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 only")
    no_fault = frozenset({"fpu", "avx2", "avx512f", "hypervisor"})
    assert "no CPUID faulting" in mask.why_unavailable(no_fault)
    assert mask.hidden_flags({"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "avx_vnni"}
                             ) == ["amx_tile", "avx512_bf16", "avx512f", "avx_vnni"]
    env = mask.child_env(Path("/x/m.so"), {"LD_PRELOAD": "/y/other.so",
                                          "GLIBC_TUNABLES": "glibc.malloc.check=3"})
    assert env["LD_PRELOAD"] == "/x/m.so /y/other.so"
    # started from a masked process: the older shim is not loaded a second time
    again = mask.child_env(Path("/x/cpuid_mask-new.so"),
                           {"LD_PRELOAD": "/c/cpuid_mask-old.so /y/o.so"})
    assert again["LD_PRELOAD"] == "/x/cpuid_mask-new.so /y/o.so"
    assert env["GLIBC_TUNABLES"].startswith("glibc.malloc.check=3:glibc.cpu.hwcaps=-AVX512F")


_MASKED_CHILD = """
import ctypes, faulthandler, json, sys
import numpy, torch
sys.path.insert(0, sys.argv[1])
import cpuid_mask
faulthandler.enable()  # installs a SIGSEGV handler: the shim must keep answering CPUID
out = cpuid_mask.status()
out["torch"] = torch.backends.cpu.get_cpu_capability()
out["numpy_avx512f"] = bool(numpy._core._multiarray_umath.__cpu_features__["AVX512F"])
out["numpy_avx2"] = bool(numpy._core._multiarray_umath.__cpu_features__["AVX2"])
out["after_faulthandler"] = cpuid_mask.status()["avx512f_visible"]
print(json.dumps(out), flush=True)
if len(sys.argv) > 2:
    ctypes.string_at(0)  # a real segfault: faulthandler reports it, the process dies of it
"""


def _masked_child(bench, tmp_path, *extra):
    mask = pytest.importorskip("cpuid_mask")
    why = mask.why_unavailable()
    if why:
        pytest.skip(why)
    shim = mask.build(tmp_path)
    env = mask.child_env(shim)
    for var in ("ATEN_CPU_CAPABILITY", "RTINFER_CPU_ISA", "ONEDNN_MAX_CPU_ISA"):
        env.pop(var, None)
    return mask, subprocess.run([sys.executable, "-c", _MASKED_CHILD, str(BENCH), *extra],
                                capture_output=True, text=True, env=env, timeout=300)


def test_cpuid_mask_hides_avx512_from_every_library(bench, tmp_path):
    mask, proc = _masked_child(bench, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["loaded"] and got["active"] and got["traps"] > 0
    assert got["avx512f_visible"] is False and got["after_faulthandler"] is False
    # torch and numpy dispatch on CPUID with no cap variable set: both see AVX2 at most
    assert got["numpy_avx512f"] is False and got["numpy_avx2"] is True
    assert got["torch"] in ("AVX2", "DEFAULT")
    if "avx512f" in Path("/proc/cpuinfo").read_text().split():
        assert got["torch"] == "AVX2"  # an AVX-512 host, seen as AVX2


def test_cpuid_mask_keeps_compilers_working(bench, tmp_path):
    """GCC's cc1plus installs its crash handler with signal(), then runs CPUID: the shim
    chains that handler too (it crashed with an internal compiler error before), so builds
    in a masked run (the native extension, generated code) still compile."""
    mask = pytest.importorskip("cpuid_mask")
    why = mask.why_unavailable()
    if why:
        pytest.skip(why)
    cxx = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "t.cpp"
    src.write_text("int f(int x) { return x * 2; }\n")
    proc = subprocess.run([cxx, "-O2", "-c", str(src), "-o", str(tmp_path / "t.o")],
                          capture_output=True, text=True, timeout=120,
                          env=mask.child_env(mask.build(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cpuid_mask_keeps_real_segfaults_fatal(bench, tmp_path):
    _, proc = _masked_child(bench, tmp_path, "crash")
    assert proc.returncode == -11, (proc.returncode, proc.stderr[-2000:])
    assert "Fatal Python error: Segmentation fault" in proc.stderr  # faulthandler was chained


# -- the pause before each block: the system timed before stops competing for the cores ---------


def test_each_block_starts_after_the_switch_pause(bench, monkeypatch):
    """run.py sleeps --switch-pause ms before every block (ONNX Runtime's workers spin on after
    a call and slowed whichever system came next), and the report says so."""
    import time as time_mod

    assert bench.run.parse_args([]).switch_pause == bench.run.SWITCH_PAUSE_MS == 20.0
    sleeps: list[float] = []
    real_sleep = time_mod.sleep
    monkeypatch.setattr(bench.run.time, "sleep",
                        lambda s: (sleeps.append(s), real_sleep(min(s, 0.001)))[1])
    doc = _bench_mlp(bench, ("eager", "rtinfer-torch"))
    args = bench.run.parse_args(["--quick", "--iters", "2"])
    # one pause per block: every round, each timed system
    assert sleeps.count(0.02) == args.rounds * 2, sleeps
    assert all(r["status"] == "ok" for r in doc["results"].values())


def test_report_header_says_each_block_follows_a_pause(bench):
    doc = _bf16_doc()
    doc["settings"] |= {"switch_pause_ms": 20.0, "block_warmup": 1}
    assert ("after 1 warm-up calls; each block after a 20 ms pause (the previous system's "
            "threads stop competing) and 1 untimed call.") in bench.report.markdown(doc)
    doc["settings"] |= {"switch_pause_ms": 0.0}
    assert "ms pause" not in bench.report.markdown(doc)
