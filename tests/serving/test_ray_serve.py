"""rtinfer.serving.deployment end to end on a local Ray instance (``ray.init(num_cpus=2)``),
over HTTP on 127.0.0.1: answers equal the compiled model's, a bad request gets a 4xx with a
message and the replicas keep serving. One Ray start (about 20 s) serves the module."""

from __future__ import annotations

import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import rtinfer
from rtinfer.serving.deploy import ray_init_options

from .mlp import mlp_artifact

serve = pytest.importorskip("ray.serve")
ray = pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    artifact, cm = mlp_artifact(tmp_path_factory.mktemp("serving"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the lean start `rtinfer serve` uses
    ray.init(num_cpus=2, **ray_init_options(None))
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = rtinfer.serving.deployment(artifact, max_batch_size=8, max_wait_ms=5.0,
                                         num_replicas=2)
        serve.run(app, name="rtinfer", route_prefix="/")
        yield f"http://127.0.0.1:{port}/", cm
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("content-type", "")


def _json(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [x.tolist()]}).encode()


def test_http_answers_equal_the_compiled_model_and_bad_requests_get_4xx(server):
    url, cm = server
    xs = np.random.default_rng(0).standard_normal((24, 16)).astype(np.float32)
    # concurrent JSON requests, each answered with its own example's outputs
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: _post(url, _json(x)), xs))
    for x, (status, body, _) in zip(xs, answers, strict=True):
        assert status == 200, body
        np.testing.assert_allclose(json.loads(body)["outputs"][0], cm(x[None])[0],
                                   rtol=1e-5, atol=1e-6)
    # a bad request: 400 with a message naming the input and the shape
    status, body, ctype = _post(url, _json(np.zeros(3, np.float32)))
    assert status == 400 and ctype.startswith("application/json")
    assert "input 'input' should have shape f32[16]" in json.loads(body)["error"]
    status, body, _ = _post(url, b"{oops")
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    # ... and the replicas keep serving; a binary .npy body is answered in .npy
    buf = io.BytesIO()
    np.save(buf, xs[0])
    status, body, ctype = _post(url, buf.getvalue(), "application/x-npy")
    assert status == 200 and ctype == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(body)), cm(xs[:1])[0], rtol=1e-5, atol=1e-6)
    with urllib.request.urlopen(url, timeout=30) as r:  # GET: a replica's batcher metrics
        metrics = json.loads(r.read())
    assert metrics["buckets"] == [1, 2, 4, 8, 16][:4] and metrics["threads"] == 1
    # loaded from the artifact: nothing native was built on the serving path
    assert metrics["startup"]["native_build_s"] == 0.0


@pytest.mark.slow
def test_a_killed_replica_is_replaced_while_the_other_answers(server):
    url, cm = server
    x = np.ones(16, np.float32)
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::")]
    assert len(replicas) == 2
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    ray.kill(victim, no_restart=True)
    deadline, ok = time.time() + 60, 0
    while time.time() < deadline:
        status, body, _ = _post(url, _json(x))
        ok += status == 200
        live = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::")]
        if len(live) == 2 and replicas[0]["name"] not in {a["name"] for a in live} and ok > 3:
            break
        time.sleep(0.2)
    assert ok > 3 and len(live) == 2, live
    np.testing.assert_allclose(json.loads(_post(url, _json(x))[1])["outputs"][0],
                               cm(x[None])[0], rtol=1e-5, atol=1e-6)
