"""CPU levels: ``$RTINFER_CPU_ISA`` caps rtinfer's own C++, builds are keyed by the level,
and a build made for a CPU with more features is rebuilt, never loaded."""

from __future__ import annotations

import json
import types

import pytest

from rtinfer.kernels import build, codegen, isa

AVX2_ONLY = frozenset(isa.NEEDS["avx2"] | {"sse4_2"})  # a Zen 3: AVX2 + FMA, no AVX-512


@pytest.fixture
def x86(monkeypatch):
    monkeypatch.setattr(isa, "_is_x86", lambda: True)


def test_levels_follow_the_features(x86):
    assert isa.supported(AVX2_ONLY) == ["generic", "avx2"]
    assert isa.supported(AVX2_ONLY | isa.NEEDS["avx512"]) == ["generic", "avx2", "avx512"]
    assert isa.supported(frozenset()) == ["generic"]
    assert isa.level(AVX2_ONLY) == "avx2"


def test_the_cap_lowers_the_level_and_names_bad_values(x86, monkeypatch):
    full = AVX2_ONLY | isa.NEEDS["avx512"]
    monkeypatch.setenv("RTINFER_CPU_ISA", "avx2")
    assert isa.level(full) == "avx2"
    monkeypatch.setenv("RTINFER_CPU_ISA", "AVX512")
    assert isa.level(full) == "avx512"
    with pytest.raises(isa.CpuIsaError, match="lacks .*avx512f"):
        isa.level(AVX2_ONLY)  # a cap above the CPU is an error now, not SIGILL later
    monkeypatch.setenv("RTINFER_CPU_ISA", "sse9")
    with pytest.raises(isa.CpuIsaError, match="RTINFER_CPU_ISA='sse9' names no CPU level"):
        isa.level(full)


def test_build_folders_and_flags_differ_by_level():
    keys = {lv: build.fingerprint("same", lv) for lv in isa.LEVELS}
    assert len(set(keys.values())) == 3
    for lv, key in keys.items():
        assert key.startswith(isa.cpu_key(lv))
    if isa._is_x86():
        assert "-march=x86-64-v3" in build.cflags("avx2")
        assert "-march=native" not in build.cflags("avx512") + codegen.FLAGS


def test_a_build_for_more_features_is_rebuilt_not_loaded(tmp_path, monkeypatch, x86):
    """A cache folder made on an AVX-512 machine, used on an AVX2 one (a shared home, an image
    built elsewhere): the stamp says what the code needs, and the folder is rebuilt."""
    monkeypatch.setenv("RTINFER_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(isa, "host_features", lambda: AVX2_ONLY)
    monkeypatch.setattr(build, "_modules", {})
    monkeypatch.delenv("RTINFER_CPU_ISA", raising=False)
    monkeypatch.setattr(build, "onednn_prefix", lambda: tmp_path)
    cxx = build.compiler()
    out = build.build_dir(build.fingerprint(
        f"{cxx}|{isa.compiler_id(cxx)}|{tmp_path}|{build.NATIVE_DIR}", "avx2"))
    (out / "rtinfer_native_avx2.so").write_bytes(b"built for another CPU")
    (out / build.STAMP).write_text(json.dumps({"needs": sorted(isa.NEEDS["avx512"])}))
    assert not build.stamp_ok(out)
    built = []

    def fake_build(name, what, where, error, verbose=False, **options):
        built.append((name, where, sorted(p.name for p in where.iterdir())))
        return types.SimpleNamespace(set_max_cpu_isa=lambda isa_name: True)

    monkeypatch.setattr(build, "build_extension", fake_build)
    build.load()
    (name, where, files_then), = built
    assert name == "rtinfer_native_avx2" and where == out
    assert "rtinfer_native_avx2.so" not in files_then  # the foreign build was removed first
    assert json.loads((out / build.STAMP).read_text())["level"] == "avx2"
    assert build.stamp_ok(out)


def test_generated_code_is_cached_per_level(tmp_path, monkeypatch):
    monkeypatch.setenv("RTINFER_CACHE_DIR", str(tmp_path))
    src = 'extern "C" int rtinfer_level_probe() { return 7; }'
    levels = isa.supported()[-2:]
    for lv in levels:
        codegen.compile_functions({"rtinfer_level_probe": src}, lv)
    assert len(list(tmp_path.rglob("ew_*.so"))) == len(levels)


@pytest.mark.parametrize("level", isa.supported())
def test_each_level_the_host_runs_computes_attention_like_torch(level):
    """Run in a child process so that ``$RTINFER_CPU_ISA`` caps oneDNN too, as a user's would."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, rtinfer\n"
        "from rtinfer.kernels import build\n"
        "class A(torch.nn.Module):\n"
        "    def forward(self, q, k, v, m):\n"
        "        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)\n"
        "        return torch.nn.functional.layer_norm(y, (40,)).softmax(-1)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "q, k, v = (torch.randn(2, 3, 37, 40, generator=g) for _ in range(3))\n"
        "m = torch.randn(2, 1, 37, 37, generator=g)\n"
        "cm = rtinfer.compile(A(), example_inputs=(q, k, v, m), backend='native', cache=None)\n"
        "torch.testing.assert_close(cm(q, k, v, m), A()(q, k, v, m), rtol=1e-5, atol=1e-5)\n"
        "print(build.load().level(), build.load().cpu_isa())\n")
    env = {**os.environ, "RTINFER_CPU_ISA": level}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)
    if "native backend unavailable" in proc.stderr:
        pytest.skip("native backend unavailable here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == level
