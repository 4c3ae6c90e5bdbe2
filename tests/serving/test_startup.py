"""The serving path starts from the saved artifact alone: a replica loads it without capturing
the model, running a pass pipeline or building native code (counted, not timed), and answers
requests announced to its batcher at once. In process, without Ray (fast)."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from rtinfer.serving.deploy import RtinferReplica, ray_init_options

from .mlp import mlp_artifact

# the module (``rtinfer.compile`` the attribute is the function)
compile_module = importlib.import_module("rtinfer.compile")


class _Request:
    """The part of a Starlette request the replica reads."""

    def __init__(self, method: str, body: bytes = b"", ctype: str = "application/json"):
        self.method, self._body, self.headers = method, body, {"content-type": ctype}

    async def body(self) -> bytes:
        return self._body


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return mlp_artifact(tmp_path_factory.mktemp("startup"))


def test_a_replica_loads_the_artifact_without_capture_pipeline_or_native_build(artifact,
                                                                                monkeypatch):
    path, cm = artifact
    calls: Counter[str] = Counter()

    def counted(name: str, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    # compile's own steps, as rtinfer.compile reaches them: none may run on the serving path
    monkeypatch.setattr(compile_module.frontends, "capture",
                        counted("capture", compile_module.frontends.capture))
    monkeypatch.setattr(compile_module, "run_pipeline",
                        counted("pipeline", compile_module.run_pipeline))
    monkeypatch.setattr(compile_module, "load", counted("load", compile_module.load))
    import rtinfer.serving.deploy as deploy

    monkeypatch.setattr(deploy, "load", counted("load", deploy.load))
    replica = RtinferReplica(str(path), 4, 50.0, 1, {"max_queue_size": 8, "timeout_ms": None,
                                                    "nan_policy": "allow", "pad_limit": 0.25})
    try:
        assert calls == Counter({"load": 1})
        assert replica.startup["native_build_s"] == 0.0
        assert replica.startup["backend"] == "torch"

        x = np.random.default_rng(0).standard_normal(16).astype(np.float32)
        body = json.dumps({"inputs": [x.tolist()]}).encode()
        answer = asyncio.run(replica(_Request("POST", body)))
        assert answer.status_code == 200
        np.testing.assert_allclose(json.loads(answer.body)["outputs"][0], cm(x[None])[0],
                                   rtol=1e-5, atol=1e-6)
        bad = asyncio.run(replica(_Request("POST", b'{"inputs": [[1, 2]]}')))
        assert bad.status_code == 400
        assert "input 'input' should have shape f32[16]" in json.loads(bad.body)["error"]
        metrics = json.loads(asyncio.run(replica(_Request("GET"))).body)
        # the announced lone request ran at once; nothing is left announced
        assert metrics["incoming"] == 0 and metrics["completed"] == 1
        assert metrics["latency_ms"]["p50"] < 50.0
        assert metrics["startup"]["native_build_s"] == 0.0 and metrics["threads"] == 1
        assert calls == Counter({"load": 1})
    finally:
        replica.batcher.close()


def test_ray_starts_lean_when_serve_starts_it_and_joins_as_asked():
    lean = ray_init_options(None)
    assert lean["include_dashboard"] is False
    assert lean["_system_config"]["enable_worker_prestart"] is False
    assert ray_init_options("ray://10.0.0.1:10001") == {"address": "ray://10.0.0.1:10001",
                                                         "logging_level": "warning"}


def test_serving_imports_no_bf16_support_for_a_model_without_bf16(artifact):
    """ml_dtypes takes ~1 s to import (its dtypes' ufuncs); a replica of an f32 model, the
    CLI and ``import rtinfer`` must not pay it."""
    path, _ = artifact
    code = ("import sys, numpy as np, rtinfer\n"
            "from rtinfer.serving.batcher import Batcher\n"
            f"b = Batcher(rtinfer.load({str(path)!r}), 4, 0.0)\n"
            "y = b(np.ones(16, np.float32))\n"
            "b.close()\n"
            "print(y.shape, 'ml_dtypes' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=path.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False", out.stdout
    # and a bf16 array still converts, importing it then
    from rtinfer.ir.types import DType

    bf16 = DType.bf16.np
    assert bf16.name == "bfloat16" and DType.from_numpy(bf16) is DType.bf16
    assert DType.bf16.bits == 16 and DType.from_numpy(np.float32) is DType.f32


def test_ready_in_counts_the_process_start():
    """`rtinfer serve`'s "ready in" counts from the process's start (the imports before
    serve_main run): process_age is the time since the process began."""
    from rtinfer.serving.deploy import process_age

    code = ("import time; time.sleep(1.0)\n"
            "from rtinfer.serving.deploy import process_age\n"
            "print(process_age())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    age = float(out.stdout.split()[-1])
    assert 1.0 <= age < 60.0  # the sleep, plus the interpreter's start and the import
    mine = process_age()
    assert mine is not None and mine > 0.0


class _FakeServe:
    """The part of ray.serve that _deploy uses: a non-blocking run, then statuses in turn."""

    def __init__(self, states: list[str], message: str = ""):
        self.states, self.message, self.ran = list(states), message, []

    def _run(self, app, _blocking, name, route_prefix):
        self.ran.append((app, _blocking, name, route_prefix))

    def status(self):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        app = type("App", (), {"status": state, "message": self.message})()
        return type("Status", (), {"applications": {"rtinfer": app}})()


def test_deploy_is_ready_when_the_application_runs_and_says_why_it_failed():
    from rtinfer.serving.deploy import _deploy
    from rtinfer.serving.errors import ServingError

    serve = _FakeServe(["DEPLOYING", "DEPLOYING", "ApplicationStatus.RUNNING"])
    _deploy(serve, "app")
    assert serve.ran == [("app", False, "rtinfer", "/")] and serve.states == [
        "ApplicationStatus.RUNNING"]
    failed = _FakeServe(["DEPLOYING", "DEPLOY_FAILED"], "RtinferReplica.__init__ raised")
    with pytest.raises(ServingError, match="did not start .*DEPLOY_FAILED.*__init__ raised"):
        _deploy(failed, "app")
    with pytest.raises(ServingError, match="not running after 0.2 s .*DEPLOYING"):
        _deploy(_FakeServe(["DEPLOYING"]), "app", timeout_s=0.2)


def test_rtinfer_serve_with_a_missing_artifact_fails_and_stops_its_ray(tmp_path):
    """The artifact is checked while the local Ray starts; a bad one is the error and the Ray
    started for it is stopped (nothing left running)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    from rtinfer.errors import RtinferError
    from rtinfer.serving.deploy import serve_main

    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    with pytest.raises(RtinferError, match=r"missing does not exist"):
        serve_main(str(tmp_path / "missing"), until=lambda: True)
    assert not ray.is_initialized()
