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
