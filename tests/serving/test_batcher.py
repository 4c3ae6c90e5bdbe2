"""rtinfer.serving.Batcher: batching under concurrency, exact splitting, padding, validation,
error isolation, timeouts, back-pressure, asyncio and shutdown, on small real compiled models."""

from __future__ import annotations

import asyncio
import ctypes
import glob
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.errors import IndexOutOfRangeError
from rtinfer.serving import (
    Batcher,
    BatcherClosed,
    InvalidRequest,
    Overloaded,
    RequestTimeout,
    ServingError,
    bucket_sizes,
)


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 4)).eval()


@pytest.fixture(scope="module")
def mlp():
    return _mlp()


@pytest.fixture(scope="module")
def compiled(mlp):
    return rtinfer.compile(mlp, example_inputs=torch.randn(2, 16), backend="torch",
                           dynamic_dims={"input": {0: "B"}})


def _examples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def _concurrently(fn, n: int) -> list:
    """``fn(i)`` for i < n on n threads released together; results (or exceptions) by i."""
    out: list = [None] * n
    go = threading.Barrier(n)

    def run(i: int) -> None:
        go.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


class _Gated:
    """A compiled model whose calls wait for ``gate`` (and count themselves): lets a test hold
    the worker inside a call while it queues requests behind it."""

    def __init__(self, cm, delay_s: float = 0.0):
        self.cm, self.ir, self.input_names = cm, cm.ir, cm.input_names
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.delay_s = delay_s

    def hold(self) -> None:
        """Calls from now on wait until ``gate`` is set (the warm-up calls went through)."""
        self.entered.clear()
        self.gate.clear()

    def __call__(self, *args):
        self.entered.set()
        self.gate.wait(10)
        time.sleep(self.delay_s)
        return self.cm(*args)


def test_bucket_sizes():
    assert bucket_sizes(16) == [1, 2, 4, 8, 16]
    assert bucket_sizes(12) == [1, 2, 4, 8, 12]
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(16, static_batch=4) == [4]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(compiled, mlp):
    xs = _examples(48)
    with Batcher(compiled, max_batch_size=16, max_wait_ms=50) as b:
        results = _concurrently(lambda i: b(xs[i]), len(xs))
        m = b.metrics()
    assert m["completed"] == 48 and m["failed"] == 0
    assert max(m["batch_size_histogram"]) > 1, m  # batching happened
    assert sum(k * v for k, v in m["batch_size_histogram"].items()) == 48
    assert set(m["bucket_histogram"]) <= {1, 2, 4, 8, 16}
    eager = mlp(torch.from_numpy(xs)).detach().numpy()
    for i, y in enumerate(results):
        assert isinstance(y, np.ndarray) and y.shape == (4,), y
        # the same numbers as the compiled model on that example alone, and as eager
        np.testing.assert_allclose(y, compiled(xs[i:i + 1])[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(y, eager[i], rtol=1e-5, atol=1e-5)
    assert m["latency_ms"]["count"] == 48 and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"]


def test_padding_rows_never_leak(compiled):
    gated = _Gated(compiled)
    xs = _examples(3, seed=1)
    with Batcher(gated, max_batch_size=8, max_wait_ms=1) as b:
        gated.hold()
        first = threading.Thread(target=b, args=(xs[0],))
        first.start()  # holds the worker, so the next three queue up and run as one batch
        assert gated.entered.wait(5)
        results = []
        threads = [threading.Thread(target=lambda x=x: results.append((x, b(x)))) for x in xs]
        for t in threads:
            t.start()
        deadline = time.time() + 5
        while b.metrics()["queue_depth"] < 3 and time.time() < deadline:
            time.sleep(0.005)
        gated.gate.set()
        for t in threads + [first]:
            t.join(10)
        m = b.metrics()
    # three requests padded to the bucket of four: one call, three answers
    assert m["batch_size_histogram"] == {1: 1, 3: 1} and m["bucket_histogram"] == {1: 1, 4: 1}
    assert len(results) == 3
    for x, y in results:
        assert y.shape == (4,)
        np.testing.assert_allclose(y, compiled(x[None])[0], rtol=1e-6, atol=1e-6)
    # answers are copies: writing one does not touch another's
    results[0][1][:] = 0
    assert np.abs(results[1][1]).sum() > 0


def test_warmup_plans_every_bucket_on_the_native_backend(mlp, monkeypatch):
    cm = rtinfer.compile(mlp, example_inputs=torch.randn(2, 16), backend="native",
                         dynamic_dims={"input": {0: "B"}})
    if cm.info.backend != "native":
        pytest.skip("native backend unavailable here")
    runs: list[int] = []
    native_call = type(cm.module).__call__

    def counted(self, *tensors):
        runs.append(tensors[0].shape[0])
        return native_call(self, *tensors)

    monkeypatch.setattr(type(cm.module), "__call__", counted)
    with Batcher(cm, max_batch_size=8) as b:
        shapes = {key[0] for key in cm.module._plans}
        assert {((n, 16),) for n in b.buckets} <= shapes  # planned before any request
        # one forward pass (the smallest size: the model runs); the others only planned
        assert runs == [1]
        xs = _examples(8, seed=4)
        results = _concurrently(lambda i: b(xs[i]), 8)
        ref = mlp(torch.from_numpy(np.stack(xs))).detach().numpy()
        # the planned-only sizes give the eager answers on their first real call
        for i, y in enumerate(results):
            np.testing.assert_allclose(y, ref[i], rtol=1e-5, atol=1e-5)
        assert set(runs[1:]) <= set(b.buckets)
    # a server's start: the smallest size now, the others planned on a background thread
    cm = rtinfer.compile(mlp, example_inputs=torch.randn(2, 16), backend="native",
                         dynamic_dims={"input": {0: "B"}})
    runs.clear()
    with Batcher(cm, max_batch_size=8, warmup="background") as b:
        assert runs == [1]
        assert b.planned(timeout_s=60)
        assert {((n, 16),) for n in b.buckets} <= {key[0] for key in cm.module._plans}
        x = _examples(1, seed=5)[0]
        np.testing.assert_allclose(b(x), mlp(torch.from_numpy(x)[None])[0].detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ServingError, match="warmup='soon'"):
        Batcher(cm, max_batch_size=8, warmup="soon")


def test_bad_requests_get_their_own_error_and_the_rest_of_the_batch_runs(compiled):
    xs = _examples(8, seed=2)
    bad = {1: np.zeros((3, 16), np.float32), 3: np.zeros(15, np.float32),
           5: np.zeros(16, np.complex64), 7: [[1.0, 2.0], [3.0]]}
    with Batcher(compiled, max_batch_size=8, max_wait_ms=30) as b:
        results = _concurrently(lambda i: b(bad.get(i, xs[i])), 8)
        m = b.metrics()
    for i, r in enumerate(results):
        if i in bad:
            assert isinstance(r, InvalidRequest), r
            assert "input 'input'" in str(r)
        else:
            np.testing.assert_allclose(r, compiled(xs[i:i + 1])[0], rtol=1e-6, atol=1e-6)
    assert "rank 1" in str(results[1]) and "got rank 2 shape [3, 16]" in str(results[1])
    assert "axis 0 is 15, not 16" in str(results[3])
    assert "complex64" in str(results[5])
    assert m["invalid"] == 4 and m["completed"] == 4


def test_inputs_convert_when_the_kind_allows(compiled):
    with Batcher(compiled, max_batch_size=4, max_wait_ms=0) as b:
        ints = list(range(16))  # JSON-like nested lists of ints feed an f32 input
        np.testing.assert_allclose(b(ints), compiled(np.arange(16, dtype=np.float32)[None])[0],
                                   rtol=1e-6)
        y = b(torch.ones(16))  # torch in, torch out
        assert isinstance(y, torch.Tensor) and y.shape == (4,)
        x = _examples(1)[0]
        before = x.copy()
        b(x)
        np.testing.assert_array_equal(x, before)  # the caller's array is untouched


def test_nan_policy(compiled):
    x = _examples(1)[0]
    x[3] = np.nan
    with Batcher(compiled, max_batch_size=2, max_wait_ms=0, nan_policy="reject") as b:
        with pytest.raises(InvalidRequest, match=r"input 'input' holds 1 NaN"):
            b(x)
    with Batcher(compiled, max_batch_size=2, max_wait_ms=0) as b:
        assert np.isnan(b(x)).any()  # "allow": the model's own answer
    with pytest.raises(ServingError, match="nan_policy='drop'"):
        Batcher(compiled, nan_policy="drop")


def test_a_failing_request_does_not_fail_its_batch():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3).eval()
    cm = rtinfer.compile(emb, example_inputs=torch.zeros(2, 5, dtype=torch.long),
                         backend="torch", dynamic_dims={"input": {0: "B"}})
    ids = [np.arange(i, i + 5) % 10 for i in range(6)]
    ids[2] = np.array([0, 1, 2, 3, 40])  # passes validation, fails inside the model
    with Batcher(cm, max_batch_size=8, max_wait_ms=30) as b:
        results = _concurrently(lambda i: b(ids[i]), 6)
    assert isinstance(results[2], IndexOutOfRangeError) and "index 40" in str(results[2])
    for i in (0, 1, 3, 4, 5):
        np.testing.assert_array_equal(results[i], emb(torch.from_numpy(ids[i]))
                                      .detach().numpy())


def test_timeouts(compiled):
    gated = _Gated(compiled)
    with Batcher(gated, max_batch_size=1, max_wait_ms=0) as b:
        gated.hold()
        first = threading.Thread(target=b, args=(_examples(1)[0],))
        first.start()
        assert gated.entered.wait(5)
        t0 = time.perf_counter()
        with pytest.raises(RequestTimeout, match="timed out after"):
            b(_examples(1)[0], timeout_ms=50)  # queued behind the held call
        assert time.perf_counter() - t0 < 2
        gated.gate.set()
        first.join(10)
        np.testing.assert_allclose(b(_examples(1)[0], timeout_ms=5000),
                                   compiled(_examples(1))[0], rtol=1e-6)
        m = b.metrics()
    assert m["timed_out"] == 1 and m["completed"] == 2


def test_back_pressure(compiled):
    gated = _Gated(compiled)
    with Batcher(gated, max_batch_size=1, max_wait_ms=0, max_queue_size=2) as b:
        gated.hold()
        x = _examples(1)[0]
        threads = [threading.Thread(target=b, args=(x,))]
        threads[0].start()
        assert gated.entered.wait(5)
        threads += [threading.Thread(target=b, args=(x,)) for _ in range(2)]
        for t in threads[1:]:
            t.start()
        deadline = time.time() + 5
        while b.metrics()["queue_depth"] < 2 and time.time() < deadline:
            time.sleep(0.005)
        with pytest.raises(Overloaded, match="max_queue_size=2"):
            b(x)
        gated.gate.set()
        for t in threads:
            t.join(10)
        m = b.metrics()
    assert m["overloaded"] == 1 and m["completed"] == 3


def test_asyncio_submit(compiled):
    xs = _examples(24, seed=3)

    async def main(b: Batcher) -> list:
        return await asyncio.gather(*(b.submit(x) for x in xs))

    with Batcher(compiled, max_batch_size=8, max_wait_ms=20) as b:
        results = asyncio.run(main(b))
        m = b.metrics()
    assert max(m["batch_size_histogram"]) > 1
    for x, y in zip(xs, results, strict=True):
        np.testing.assert_allclose(y, compiled(x[None])[0], rtol=1e-6, atol=1e-6)


def test_asyncio_submit_times_out(compiled):
    gated = _Gated(compiled)

    async def main(b: Batcher) -> None:
        with pytest.raises(RequestTimeout):
            await b.submit(_examples(1)[0], timeout_ms=30)

    with Batcher(gated, max_batch_size=1, max_wait_ms=0) as b:
        gated.hold()
        first = threading.Thread(target=b, args=(_examples(1)[0],))
        first.start()
        assert gated.entered.wait(5)
        asyncio.run(main(b))
        gated.gate.set()
        first.join(10)


def test_several_inputs_by_position_and_name():
    class Two(torch.nn.Module):
        def forward(self, x, y):
            return x * 2 + y, x.sum(-1)

    cm = rtinfer.compile(Two(), example_inputs=(torch.randn(2, 3), torch.randn(2, 3)),
                         backend="torch", dynamic_dims={"x": {0: "B"}, "y": {0: "B"}})
    x, y = np.arange(3, dtype=np.float32), np.ones(3, np.float32)
    with Batcher(cm, max_batch_size=4, max_wait_ms=0) as b:
        a, s = b(x, y)
        np.testing.assert_allclose(a, x * 2 + y)
        np.testing.assert_allclose(s, x.sum())
        a2, _ = b(y=y, x=x)
        np.testing.assert_allclose(a2, a)
        with pytest.raises(InvalidRequest, match="missing input.*'y'"):
            b(x)
        with pytest.raises(InvalidRequest, match="unknown input.*'z'"):
            b(x, y, z=x)


def test_models_without_a_batch_axis_are_refused_and_static_ones_use_their_size(mlp):
    class Total(torch.nn.Module):
        def forward(self, x):
            return x.sum()

    cm = rtinfer.compile(Total(), example_inputs=torch.randn(2, 3), backend="torch",
                         dynamic_dims={"x": {0: "B"}})
    with pytest.raises(ServingError, match=r"output 0 \(f32\[\]\) does not have the batch axis"):
        Batcher(cm)
    with pytest.raises(ServingError, match="compiled model"):
        Batcher(mlp)
    static = rtinfer.compile(mlp, example_inputs=torch.randn(4, 16), backend="torch")
    with pytest.warns(UserWarning, match=r"static batch of 4, so requests run 4 at a time, not "
                                         r"up to 16; compile it with dynamic_dims=\{'input': "):
        b = Batcher(static, max_batch_size=16, max_wait_ms=0)
    with b:
        assert b.buckets == [4] and b.max_batch_size == 4
        x = _examples(1)[0]
        np.testing.assert_allclose(b(x), mlp(torch.from_numpy(x)[None])[0].detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ServingError, match="max_batch_size=0"):
        Batcher(static, max_batch_size=0)


def test_close(compiled):
    b = Batcher(compiled, max_batch_size=2, max_wait_ms=0)
    x = _examples(1)[0]
    b(x)
    b.close()
    assert b.closed
    with pytest.raises(BatcherClosed):
        b(x)
    gated = _Gated(compiled)
    b = Batcher(gated, max_batch_size=1, max_wait_ms=0)
    gated.hold()
    results = []
    threads = [threading.Thread(target=lambda: results.append(_try(b, x))) for _ in range(3)]
    threads[0].start()
    assert gated.entered.wait(5)
    for t in threads[1:]:
        t.start()
    deadline = time.time() + 5
    while b.metrics()["queue_depth"] < 2 and time.time() < deadline:
        time.sleep(0.005)
    closer = threading.Thread(target=b.close, kwargs={"drain": False})
    closer.start()
    time.sleep(0.05)
    gated.gate.set()
    closer.join(10)
    for t in threads:
        t.join(10)
    # the running request is answered; the two queued ones are told the batcher closed
    assert sum(isinstance(r, np.ndarray) for r in results) == 1
    assert sum(isinstance(r, BatcherClosed) for r in results) == 2


def _try(b: Batcher, x: np.ndarray):
    try:
        return b(x)
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return e


def test_padding_is_limited_to_a_quarter_of_the_bucket(compiled):
    gated = _Gated(compiled)
    xs = _examples(5, seed=4)
    with Batcher(gated, max_batch_size=8, max_wait_ms=1) as b:
        gated.hold()
        first = threading.Thread(target=b, args=(xs[0],))
        first.start()
        assert gated.entered.wait(5)
        results = _concurrently_after(b, xs, gated)
        first.join(10)
        m = b.metrics()
    # five queued: 8 rows would be 3/8 padding, so four run as one bucket and one after
    assert m["batch_size_histogram"] == {1: 2, 4: 1} and m["bucket_histogram"] == {1: 2, 4: 1}
    for x, y in zip(xs, results, strict=True):
        np.testing.assert_allclose(y, compiled(x[None])[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ServingError, match="pad_limit=2"):
        Batcher(compiled, pad_limit=2)


def _concurrently_after(b: Batcher, xs: np.ndarray, gated: _Gated) -> list:
    """Queue one request per row of ``xs`` behind the held call, then release it."""
    results: list = [None] * len(xs)

    def run(i: int) -> None:
        results[i] = b(xs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    deadline = time.time() + 5
    while b.metrics()["queue_depth"] < len(xs) and time.time() < deadline:
        time.sleep(0.005)
    gated.gate.set()
    for t in threads:
        t.join(10)
    return results


def test_an_announced_lone_request_does_not_wait_for_company(compiled):
    # max_wait_ms is long: a request that waited for it would take over a second
    with Batcher(compiled, max_batch_size=8, max_wait_ms=1500.0) as batcher:
        x = _examples(1)[0]
        t0 = time.perf_counter()
        with batcher.expecting():
            y = batcher(x)
        assert time.perf_counter() - t0 < 1.0
        np.testing.assert_allclose(y, compiled(x[None])[0], rtol=1e-5, atol=1e-6)
        assert batcher.metrics()["incoming"] == 0


def test_the_worker_waits_for_announced_requests_still_being_prepared(compiled):
    xs = _examples(3)
    with Batcher(compiled, max_batch_size=8, max_wait_ms=5000.0) as batcher:
        prepared = threading.Event()

        def announced(x: np.ndarray) -> np.ndarray:
            with batcher.expecting():
                prepared.wait(5)  # its body still being decoded
                return batcher(x)

        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(announced, x) for x in xs]
            while batcher.metrics()["incoming"] < 3:
                time.sleep(0.01)
            t0 = time.perf_counter()
            prepared.set()
            ys = [f.result(10) for f in futures]
        # all three in one call, run as soon as the last was queued (not after max_wait_ms)
        assert time.perf_counter() - t0 < 2.5
        for x, y in zip(xs, ys, strict=True):
            np.testing.assert_allclose(y, compiled(x[None])[0], rtol=1e-5, atol=1e-6)
        m = batcher.metrics()
        assert m["batch_size_histogram"] == {3: 1} and m["incoming"] == 0


def test_an_announced_request_that_is_refused_is_no_longer_expected(compiled):
    with Batcher(compiled, max_batch_size=8, max_wait_ms=1500.0) as batcher:
        with pytest.raises(InvalidRequest), batcher.expecting():
            batcher(np.zeros(3, np.float32))
        assert batcher.metrics()["incoming"] == 0
        t0 = time.perf_counter()
        with batcher.expecting():
            batcher(_examples(1)[0])
        assert time.perf_counter() - t0 < 1.0


def test_the_worker_runs_the_model_with_the_makers_thread_count(compiled):
    # OpenMP keeps its thread count per thread; a new thread starts from the process default
    libs = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*"))
    if not libs:
        pytest.skip("torch is not built with GNU OpenMP here")
    gomp = ctypes.CDLL(libs[0])
    seen = []

    class Probe:
        """The compiled model, recording OpenMP's thread count in the thread running it."""

        ir, input_names = compiled.ir, compiled.input_names

        def __call__(self, *xs):
            seen.append(gomp.omp_get_max_threads())
            return compiled(*xs)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Batcher(Probe(), max_batch_size=2, max_wait_ms=1.0, warmup=False) as batcher:
            batcher(_examples(1)[0])
            assert batcher.metrics()["threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
