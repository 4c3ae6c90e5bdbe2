"""The HTTP bodies of rtinfer.serving (JSON, .npy, .npz) and the status each error answers,
checked without a web server."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from rtinfer.cli import main
from rtinfer.serving import InvalidRequest, Overloaded, RequestTimeout, ServingError
from rtinfer.serving.codec import JSON, NPY, NPZ, decode, encode, media_type
from rtinfer.serving.deploy import status_of


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_json_round_trip():
    d = decode(b'{"inputs": [[1, 2, 3], [[0.5]]]}', "application/json; charset=utf-8",
               ["x", "y"])
    assert d.args == ([1, 2, 3], [[0.5]]) and d.named == {} and d.fmt == JSON
    d = decode(b'{"inputs": {"y": [1], "x": [2]}}', None, ["x", "y"])
    assert d.named == {"y": [1], "x": [2]}
    body, ctype = encode((np.array([1.5, 2.0], np.float32), np.array([[1]])), JSON)
    assert ctype == JSON and json.loads(body) == {"outputs": [[1.5, 2.0], [[1]]]}


def test_json_keeps_every_float32_and_non_finite_value():
    """Whichever JSON library writes the answer, a client reading it as float32 gets the
    model's numbers bit for bit, and NaN/infinity stay NaN/infinity (never ``null``); a
    request may hold the NaN literals Python's json takes."""
    x = np.random.default_rng(0).standard_normal((4, 33)).astype(np.float32)
    body, _ = encode((x, np.arange(3, dtype=np.int64)), JSON)
    out = json.loads(body)["outputs"]
    assert np.array_equal(np.asarray(out[0], np.float32), x) and out[1] == [0, 1, 2]
    body, _ = encode((np.array([1.0, np.nan, -np.inf], np.float32),), JSON)
    y = np.asarray(json.loads(body)["outputs"][0], np.float32)
    assert np.isnan(y[1]) and y[2] == -np.inf and y[0] == 1.0
    d = decode(b'{"inputs": [[NaN, 1.0, Infinity]]}', None, ["x"])
    assert np.isnan(d.args[0][0]) and d.args[0][1:] == [1.0, float("inf")]


def test_numpy_bodies():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = decode(_npy(a), "application/x-npy", ["x"])
    np.testing.assert_array_equal(d.args[0], a)
    assert d.fmt == NPY
    buf = io.BytesIO()
    np.savez(buf, y=a, x=a + 1)
    d = decode(buf.getvalue(), NPZ, ["x", "y"])
    np.testing.assert_array_equal(d.named["x"], a + 1)
    buf = io.BytesIO()
    np.savez(buf, a, a * 2)
    d = decode(buf.getvalue(), NPZ, ["x", "y"])
    np.testing.assert_array_equal(d.args[1], a * 2)
    body, ctype = encode(a, NPY)
    assert ctype == NPY
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), a)
    body, ctype = encode((a, a[0]), NPY)  # two outputs: an archive
    with np.load(io.BytesIO(body)) as z:
        assert ctype == NPZ and sorted(z.files) == ["out_0", "out_1"]
        np.testing.assert_array_equal(z["out_1"], a[0])


@pytest.mark.parametrize("body, ctype, names, message", [
    (b"{not json", JSON, ["x"], "not valid JSON"),
    (b'{"outputs": []}', JSON, ["x"], '"inputs"'),
    (b'{"inputs": 3}', JSON, ["x"], "should be a list"),
    (b"\x93NUMPY garbage", NPY, ["x"], "not a valid .npy"),
    (_npy(np.zeros(2)), NPY, ["x", "y"], "takes 2 inputs"),
    (_npy(np.array([object()], dtype=object)), NPY, ["x"], "not a valid .npy"),
    (b"abc", "text/plain", ["x"], "unsupported content type 'text/plain'"),
])
def test_bad_bodies_are_invalid_requests(body, ctype, names, message):
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(".", r"\.")):
        decode(body, ctype, names)


def test_status_codes():
    assert media_type("Application/NPY") == NPY
    assert status_of(InvalidRequest("x")) == 400
    assert status_of(Overloaded("x")) == 429
    assert status_of(RequestTimeout("x")) == 408
    assert status_of(ServingError("the model failed")) == 500


def test_serve_command_reports_a_bad_artifact_without_starting_ray(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "rtinfer: error:" in err and "missing does not exist" in err
    assert main(["serve", "--help"]) == 0
    assert "--max-batch-size" in capsys.readouterr().out


def test_importing_rtinfer_does_not_import_ray():
    code = "import sys, rtinfer; rtinfer.serving.Batcher; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_deployment_checks_options_and_the_artifact_before_ray_starts(tmp_path):
    import torch

    import rtinfer
    from rtinfer.errors import ArtifactError

    with pytest.raises(ArtifactError, match="does not exist"):
        rtinfer.serving.deployment(tmp_path / "missing")
    with pytest.raises(ServingError, match="max_batch_size=0"):
        rtinfer.serving.deployment(tmp_path / "missing", max_batch_size=0)
    with pytest.raises(ServingError, match="num_replicas=0"):
        rtinfer.serving.deployment(tmp_path / "missing", num_replicas=0)

    class Total(torch.nn.Module):
        def forward(self, x):
            return x.sum()

    cm = rtinfer.compile(Total(), example_inputs=torch.randn(2, 3), backend="torch",
                         dynamic_dims={"x": {0: "B"}})
    with pytest.raises(ServingError, match="output 0 .* does not have the batch axis"):
        rtinfer.serving.deployment(cm.save(tmp_path / "total"))
