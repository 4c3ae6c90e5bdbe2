"""A built wheel carries what an installed rtinfer needs at run time: the native backend builds
its C++/CUDA sources on first use, so they ship as package data (``rtinfer._cpp``)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_every_native_source_and_the_package_finds_them(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "cpp"], cwd=ROOT, capture_output=True,
                             text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                       capture_output=True, text=True, cwd=tmp_path)
    if r.returncode != 0:
        pytest.skip(f"pip wheel is not usable here: {r.stderr[-300:]}")
    (wheel,) = (tmp_path / "dist").glob("rtinfer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {"rtinfer/_cpp/" + p[len("cpp/"):] for p in tracked.stdout.split()}
    assert want and want <= names, sorted(want - names)

    # unpacked, the package (not this checkout) resolves the sources to its own copy
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import rtinfer.kernels.build as b, rtinfer.kernels.cuda as c; "
            "print(b.NATIVE_DIR); print(c.CUDA_DIR)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    native, cuda = out.stdout.split()
    assert Path(native) == site / "rtinfer" / "_cpp" / "native"
    assert Path(cuda) == site / "rtinfer" / "_cpp" / "cuda"
    assert (Path(native) / "executor.cpp").is_file()


# -- the top-level name ``kernels`` belongs to Hugging Face ------------------------------------

SHADOW_CHECK = """
import kernels, transformers, rtinfer, rtinfer.kernels.build
transformers.BertModel  # transformers.activations imports HF's kernels
import os
assert os.path.dirname(os.path.dirname(kernels.__file__)) != os.getcwd(), kernels.__file__
assert hasattr(kernels, "CUDAProperties"), kernels.__file__
print(kernels.__file__)
"""


@pytest.mark.parametrize("how", ["-c", "pytest"])
def test_transformers_imports_from_the_checkout_root(how, tmp_path):
    """``python -c`` and ``python -m pytest`` from the repository root put the root on
    ``sys.path``; neither the root's ``kernels/`` (rtinfer.kernels) nor ``tests/kernels/`` may
    shadow Hugging Face's ``kernels`` there, or every transformers model fails to import."""
    pytest.importorskip("kernels", reason="Hugging Face's kernels is not installed")
    if how == "-c":
        cmd = [sys.executable, "-c", SHADOW_CHECK]
    else:
        test = tmp_path / "test_shadow.py"
        test.write_text("def test_shadow():\n" + "".join(
            f"    {line}\n" for line in SHADOW_CHECK.strip().splitlines()))
        # sys.path as the README's command sets it; tests/kernels is collected (imported) first
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "shadow",
               str(ROOT / "tests" / "kernels" / "test_codegen.py"), str(test)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
