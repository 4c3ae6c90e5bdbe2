"""Files on disk under attack or accident (issue 16): a native build killed part way never makes
later builds wait forever; external data outside an ONNX model's folder is never read; a save
killed part way keeps the old artifact; leftovers of killed writers are tidied; cache folders
are owner-only; an unwritable cache is a clear rtinfer error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import rtinfer
from rtinfer import paths
from rtinfer.artifact import FORMAT
from rtinfer.cache import model_fingerprint, store
from rtinfer.errors import ArtifactError, BackendError
from rtinfer.frontends.external_data import ExternalDataError
from rtinfer.kernels import build

HAVE_TOOLCHAIN = shutil.which("g++") is not None and shutil.which("ninja") is not None


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()``'s result, failing the test (not hanging it) when it takes longer."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def dead_pid() -> int:
    """The id of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tag(pid: int, host: str | None = None) -> str:
    return f"{host or paths._host()}-{pid}-0123abcd"


# -- 4. native build locks ---------------------------------------------------------------------

HOLDER = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
open(sys.argv[2], "w").close()  # torch's baton, as a build in cpp_extension.load holds it
print("held", flush=True)
time.sleep(600)
"""


def hold_lock(out: Path) -> subprocess.Popen:
    """A process holding ``out`` 's build lock (and torch's baton), as a running build does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / build.LOCK),
                             str(out / build.TORCH_BATON)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def probe_build(out: Path, **kw: Any) -> str:
    """Build a one-function library in ``out`` through the path the native extension takes."""
    src = out.parent / "probe.cpp"
    src.write_text('extern "C" int rtinfer_probe() { return 42; }\n')
    return build.build_extension("rtinfer_probe", "probe", out, build.NativeUnavailable,
                                 sources=[str(src)], is_python_module=False, **kw)


@pytest.mark.skipif(not HAVE_TOOLCHAIN, reason="needs g++ and ninja")
def test_a_build_killed_part_way_does_not_block_the_next(tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    holder = hold_lock(out)
    holder.send_signal(signal.SIGKILL)  # kill -9 mid-build: torch's baton file stays behind
    holder.wait()
    assert (out / build.TORCH_BATON).exists()
    lib = within(120, lambda: probe_build(out, lock_timeout=30))
    import ctypes

    assert ctypes.CDLL(str(lib)).rtinfer_probe() == 42
    assert not (out / build.TORCH_BATON).exists()


def test_a_live_build_lock_times_out_naming_the_lock_and_its_holder(tmp_path, monkeypatch):
    out = tmp_path / "build"
    out.mkdir()
    holder = hold_lock(out)
    try:
        monkeypatch.setenv(build.LOCK_TIMEOUT_ENV, "0.5")
        start = time.monotonic()
        with pytest.raises(build.NativeUnavailable) as e:
            within(30, lambda: probe_build(out))
        assert time.monotonic() - start < 10
        msg = str(e.value)
        assert str(out / build.LOCK) in msg and f"process {holder.pid}" in msg
        assert build.LOCK_TIMEOUT_ENV in msg and "end it" in msg
        assert (out / build.TORCH_BATON).exists()  # a live build's baton is left alone
    finally:
        holder.kill()
        holder.wait()
    with build.build_lock(out, timeout=5):  # its holder gone, the lock is free at once
        assert not (out / build.TORCH_BATON).exists()


def test_a_bad_lock_timeout_is_named(monkeypatch):
    monkeypatch.setenv(build.LOCK_TIMEOUT_ENV, "soon")
    with pytest.raises(BackendError, match="RTINFER_BUILD_LOCK_TIMEOUT='soon'"):
        build.lock_timeout_seconds()


# -- 5. ONNX external data ---------------------------------------------------------------------

W = np.arange(12, dtype=np.float32).reshape(3, 4)


def external_model(folder: Path, **entry: str) -> Path:
    """``folder/model.onnx``: y = x @ w, w's bytes in ``w.bin`` (or as ``entry`` overrides)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "w.bin").write_bytes(W.tobytes())
    w = numpy_helper.from_array(W, "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    fields = {"location": "w.bin", "offset": "0", "length": str(W.nbytes), **entry}
    for key, value in fields.items():
        if value is not None:
            w.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    path = external_model(tmp_path / "m")
    x = np.ones((2, 3), np.float32)
    cm = rtinfer.compile(str(path), backend="torch", cache=tmp_path / "cache")
    np.testing.assert_allclose(np.asarray(cm(torch.from_numpy(x))), x @ W)
    assert model_fingerprint(str(path)) is not None


def _bad_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model path, what the error must say)."""
    outside = tmp_path / "secret.bin"
    outside.write_bytes(W.tobytes())
    cases = {
        "parent": (external_model(tmp_path / "a", location="../secret.bin"), "'..'"),
        "absolute": (external_model(tmp_path / "b", location=str(outside)), "relative"),
        "dev-zero": (external_model(tmp_path / "c", location="/dev/zero"), "relative"),
        "missing": (external_model(tmp_path / "e", location="nope.bin"), "No such file"),
        "past-end": (external_model(tmp_path / "f", offset="8"), "past the end"),
        "wrong-size": (external_model(tmp_path / "g", length="16"), "need 48"),
        "bad-offset": (external_model(tmp_path / "h", offset="-1"), "non-negative"),
        "no-location": (external_model(tmp_path / "i", location=None), "no 'location'"),
    }
    fifo_dir = tmp_path / "d"
    path = external_model(fifo_dir, location="pipe")
    os.mkfifo(fifo_dir / "pipe")  # a reader would block forever
    cases["fifo"] = (path, "not a regular file")
    link_dir = tmp_path / "j"
    path = external_model(link_dir, location="link.bin")
    (link_dir / "link.bin").symlink_to(outside)
    cases["symlink-out"] = (path, "outside the model's folder")
    dev_dir = tmp_path / "k"
    path = external_model(dev_dir, location="zero")
    (dev_dir / "zero").symlink_to("/dev/zero")
    cases["symlink-device"] = (path, "outside the model's folder")
    return cases


CASES = ["parent", "absolute", "dev-zero", "fifo", "missing", "past-end", "wrong-size",
         "bad-offset", "no-location", "symlink-out", "symlink-device"]


@pytest.mark.parametrize("case", CASES)
def test_bad_external_data_is_refused_before_a_read(tmp_path, case):
    path, says = _bad_cases(tmp_path)[case]
    # the compile cache's fingerprint runs first: it gives up without reading
    assert within(10, lambda: model_fingerprint(str(path))) is None
    with pytest.raises(ExternalDataError) as e:
        within(20, lambda: rtinfer.compile(str(path), backend="torch", cache=tmp_path / "c"))
    msg = str(e.value)
    assert says in msg and "tensor 'w'" in msg and str(path) in msg


def test_a_model_proto_with_external_data_reads_only_below_the_working_dir(tmp_path,
                                                                           monkeypatch):
    path = external_model(tmp_path / "m", location="../secret.bin")
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    monkeypatch.chdir(tmp_path / "m")
    with pytest.raises(ExternalDataError, match="<ModelProto>.*'..'"):
        rtinfer.capture(onnx.load(str(path), load_external_data=False))


def test_a_fifo_model_file_is_not_read_by_the_fingerprint(tmp_path):
    os.mkfifo(tmp_path / "model.onnx")
    assert within(10, lambda: model_fingerprint(str(tmp_path / "model.onnx"))) is None


# -- 6. atomic save, leftovers ------------------------------------------------------------------


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


X = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def compiled() -> tuple[Any, Any]:
    """Two compiled models of one architecture with different weights."""
    return tuple(rtinfer.compile(mlp(s), example_inputs=(X,), backend="torch", cache=False)
                 for s in (1, 2))


def test_a_save_that_fails_part_way_keeps_the_old_artifact(tmp_path, compiled, monkeypatch):
    old, new = compiled
    out = old.save(tmp_path / "model")
    real = Path.write_bytes

    def dies_on_weights(self: Path, data: bytes) -> int:
        if self.name == "weights.npz":
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", dies_on_weights)
    with pytest.raises(ArtifactError, match="No space left on device"):
        new.save(out)
    monkeypatch.undo()
    torch.testing.assert_close(rtinfer.load(out)(X), mlp(1)(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left


def test_a_save_interrupted_keeps_the_old_artifact(tmp_path, compiled, monkeypatch):
    old, new = compiled
    out = old.save(tmp_path / "model")

    def interrupted(*args: Any, **kw: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("rtinfer.artifact.np.savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(out)
    monkeypatch.undo()
    torch.testing.assert_close(rtinfer.load(out)(X), mlp(1)(X))
    new.save(out)  # and a later save replaces it whole
    torch.testing.assert_close(rtinfer.load(out)(X), mlp(2)(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_leftovers_of_a_killed_save_are_removed_and_a_set_aside_artifact_restored(tmp_path,
                                                                                   compiled):
    old, new = compiled
    out = old.save(tmp_path / "model")
    gone, alive = dead_pid(), os.getpid()
    stale = tmp_path / f".model.tmp-{tag(gone)}"
    running = tmp_path / f".model.tmp-{tag(alive)}"
    foreign = tmp_path / f".model.tmp-{tag(gone, 'ffffffff')}"
    for d in (stale, running, foreign):
        d.mkdir()
        (d / "graph.ir").write_text("half")
    new.save(out)
    assert not stale.exists() and running.exists() and foreign.exists()
    # another host's leftover goes once it is a day old (its pid cannot be checked here)
    day_old = time.time() - paths.FOREIGN_TEMP_SECONDS - 60
    os.utime(foreign, (day_old, day_old))
    new.save(out)
    assert not foreign.exists() and running.exists()
    # killed between "old aside" and "new into place": the next load puts the old one back
    os.rename(out, tmp_path / f".model.old-{tag(gone)}")
    torch.testing.assert_close(rtinfer.load(out)(X), mlp(2)(X))


def test_save_into_an_empty_folder_and_the_working_directory(tmp_path, compiled, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    compiled[0].save(".")
    compiled[1].save(".")  # replaces the artifact the process stands in, and stays in it
    assert sorted(os.listdir(".")) == ["graph.ir", "manifest.json", "weights.npz"]
    torch.testing.assert_close(rtinfer.load(".")(X), mlp(2)(X))


def test_save_refuses_to_replace_a_folder_of_other_files(tmp_path, compiled):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match=r"notes\.txt.*new or empty folder"):
        compiled[0].save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ArtifactError, match="does not exist"):
        rtinfer.load(tmp_path / "absent")


def test_stale_generated_code_and_cache_temporaries_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "_TIDIED", set())
    code = paths.codegen_dir()
    gone = dead_pid()
    stale = [code / f"ew_{'a' * 24}.{tag(gone)}.cpp", code / f"ew_{'a' * 24}.{tag(gone)}.so"]
    kept = [code / f"ew_{'b' * 24}.{tag(os.getpid())}.cpp", code / f"ew_{'c' * 24}.so"]
    for p in stale + kept:
        p.write_text("x")
    monkeypatch.setattr(paths, "_TIDIED", set())
    paths.codegen_dir()
    assert [p.exists() for p in stale + kept] == [False, False, True, True]
    # the compile cache's temporaries, on the next store
    root = tmp_path / "cc"
    root.mkdir()
    (root / f".tmp-{'d' * 16}-{tag(gone)}").mkdir()
    (root / f".tmp-{'e' * 16}-{tag(os.getpid())}").mkdir()
    g = rtinfer.capture(mlp(1), (X,))
    opts = {"backend": "torch", "pipeline": "O0", "trainable": False, "mkldnn": None}
    assert store(root, "f" * 64, g, ["input"], opts, {})
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["f" * 64, f".tmp-{'e' * 16}-{tag(os.getpid())}"])


# -- 9. owner-only cache folders; 7. unwritable caches ----------------------------------------


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_cache_folders_are_created_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "new" / "cache"))
    monkeypatch.setenv(paths.NATIVE_CACHE_ENV, str(tmp_path / "native"))
    assert mode(paths.codegen_dir()) == 0o700
    assert mode(tmp_path / "new") == mode(tmp_path / "new" / "cache") == 0o700
    assert mode(paths.native_build_dir("k")) == mode(tmp_path / "native") == 0o700
    g = rtinfer.capture(mlp(1), (X,))
    opts = {"backend": "torch", "pipeline": "O0", "trainable": False, "mkldnn": None}
    assert store(tmp_path / "cc", "f" * 64, g, ["input"], opts, {})
    assert mode(tmp_path / "cc") == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    paths.private_dir(shared)
    assert mode(shared) == 0o755  # an existing folder's mode is its owner's choice


def test_an_unusable_native_cache_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(paths.NATIVE_CACHE_ENV, str(tmp_path / "file" / "native"))
    with pytest.raises(build.NativeUnavailable) as e:
        build.build_dir("k")
    msg = str(e.value)
    assert str(tmp_path / "file" / "native" / "k") in msg and "$RTINFER_NATIVE_CACHE" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only folders")
def test_a_read_only_native_cache_is_a_clear_error(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    monkeypatch.setenv(paths.NATIVE_CACHE_ENV, str(ro))
    try:
        with pytest.raises(build.NativeUnavailable, match=r"\$RTINFER_NATIVE_CACHE"):
            build.build_dir("k")
    finally:
        os.chmod(ro, 0o700)


def test_an_unusable_generated_code_cache_is_a_clear_error(tmp_path, monkeypatch):
    from rtinfer.kernels import codegen

    (tmp_path / "file").write_text("")
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "file"))
    monkeypatch.setattr(codegen, "_LIBS", {})
    with pytest.raises(build.NativeUnavailable, match=r"generated-code cache .*RTINFER_CACHE_DIR"):
        codegen.compile_functions({"f": 'extern "C" void f() {}'})


# -- 7. malformed manifests ---------------------------------------------------------------------


def _set(doc: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split("/")
    for key in parents:
        doc = doc[key] if isinstance(doc, dict) else doc[int(key)]
    if value is KeyError:
        del doc[last]
    elif isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


MANIFEST_CASES = [
    ("files", ["graph.ir"], "'files'"),
    ("files", KeyError, "'files'"),
    ("files/graph.ir", "abc", "'files.graph.ir'"),
    ("files/weights.npz/sha256", 12, "'files.weights.npz.sha256'"),
    ("files/graph.ir/bytes", "12", "'files.graph.ir.bytes'"),
    ("files/graph.ir/bytes", 10**30, "the manifest records 1000"),
    ("format_version", True, "format version True"),
    ("backend", ["torch"], "'backend'"),
    ("pipeline", {"a": 1}, "'pipeline'"),
    ("trainable", "yes", "'trainable'"),
    ("input_names", {"x": 1}, "'input_names'"),
    ("torch_io", [1, 2], "'torch_io'"),
    ("torch_io/in_spec", 3, "'torch_io.in_spec'"),
    ("torch_io/input_kinds", ["tensor", "tensor"], "'torch_io.input_kinds'"),
    ("torch_io/input_kinds", ["weird"], "'torch_io.input_kinds[0]'"),
    ("torch_io/input_names", [], "'torch_io.input_names'"),
    ("torch_io/outputs", {"out": 0}, "'torch_io.outputs'"),
    ("torch_io/outputs/0", "out", "'torch_io.outputs[0]'"),
    ("torch_io/outputs/0", ["out", 5], "'torch_io.outputs[0][1]'"),
    ("torch_io/outputs/0", ["out", -1], "'torch_io.outputs[0][1]'"),
    ("torch_io/outputs", [["out", 0], ["literal", 3]], "'torch_io.out_spec'"),
    ("torch_io/in_spec", '[1, {"type": null, "context": null, "children_spec": []}]',
     "'torch_io.in_spec'"),
]


@pytest.mark.parametrize(("field", "value", "says"), MANIFEST_CASES,
                         ids=[f"{f}={v!r}"[:40] for f, v, _ in MANIFEST_CASES])
def test_a_malformed_manifest_is_an_artifact_error_naming_the_field(tmp_path, compiled, field,
                                                                   value, says):
    out = compiled[0].save(tmp_path / "model")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == FORMAT
    _set(manifest, field, value)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as e:
        rtinfer.load(out)
    assert says in str(e.value) and str(out) in str(e.value)


def test_an_unrebuildable_spec_is_a_warning_and_flat_outputs(tmp_path, compiled):
    out = compiled[0].save(tmp_path / "model")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["torch_io"]["out_spec"] = "not a spec"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="cannot be rebuilt"):
        loaded = rtinfer.load(out)
    got = loaded(X)
    torch.testing.assert_close(got if isinstance(got, torch.Tensor) else got[0], mlp(1)(X))
