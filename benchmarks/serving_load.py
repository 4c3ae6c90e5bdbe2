"""Closed-loop HTTP load test of rtinfer's Ray Serve deployment against eager PyTorch and ONNX
Runtime behind Ray Serve's own ``@serve.batch``, on the same local Ray setup.

    .venv/bin/python benchmarks/serving_load.py --model mlp --clients 1,4,16,64 \
        --requests 400 --seconds 20 --out benchmarks/results/serving-mlp

N clients each send one request (one example, JSON ``{"inputs": [...]}``), wait for the answer
and send the next, to 127.0.0.1 only; each N stops after ``--requests`` answers or
``--seconds``, whichever comes first. The systems run one after another (never side by side):

    rtinfer          rtinfer.serving.deployment (the artifact loaded, Batcher in each replica)
                     models: mlp, resnet18, minilm (all-MiniLM-L6-v2, seq 128, int64 ids)
    rtinfer-nobatch  the same with max_batch_size=1: one request per model call
    torch            the eager model, @serve.batch
    onnxruntime      the model exported to ONNX (dynamic batch), @serve.batch

Every system gets the same replicas, CPUs per replica and threads per replica, the same
max batch size and wait.

``--transport inprocess`` leaves Ray and HTTP out: N threads of this process call rtinfer's
``Batcher`` (``rtinfer``) or the compiled model directly, one example per call
(``rtinfer-nobatch``), with ``--cpus`` threads for the model. It shows what batching itself
earns where a request costs no transport (over HTTP on a small machine, the proxy and the
replica's per-request work can cost more CPU than the model; then every server tops out at
the same rate, batching or not). Prints a table (throughput in requests/s, p50/p99 latency in ms per
system and N), and with ``--out DIR`` writes DIR/serving.json, DIR/serving.md and, where
matplotlib is installed, DIR/serving.png.
"""

from __future__ import annotations

import argparse
import http.client
import inspect
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402 - the benchmark's models, beside this script

import rtinfer  # noqa: E402
from rtinfer.serving.codec import NPY, NPZ  # noqa: E402
from rtinfer.serving.deploy import ray_init_options  # noqa: E402

SYSTEMS = ("rtinfer", "rtinfer-nobatch", "torch", "onnxruntime")


class _BatchedServer:
    """A Ray Serve replica answering the rtinfer JSON protocol with ``@serve.batch`` in front of
    a batched callable ``run(list of stacked inputs) -> stacked output`` (made by ``make``)."""

    def __init__(self, make: Any, arg: Any, threads: int, max_batch_size: int,
                 max_wait_ms: float):
        from ray import serve

        torch.set_num_threads(threads)
        self.run = make(arg, threads)
        # @serve.batch's options are per instance: wrap the bound method here
        self.batched = serve.batch(max_batch_size=max_batch_size,
                                   batch_wait_timeout_s=max_wait_ms / 1000.0)(self._batch)

    async def _batch(self, examples: list[list[np.ndarray]]) -> list[Any]:
        stacked = [np.stack([ex[i] for ex in examples]) for i in range(len(examples[0]))]
        out = self.run(stacked)
        return [out[i] for i in range(len(examples))]

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        body = await request.body()
        if request.headers.get("content-type", "").startswith(NPZ):
            # the same binary body rtinfer's deployment takes: np.savez of the inputs in order
            with np.load(io.BytesIO(body), allow_pickle=False) as z:
                example = [z[f"arr_{i}"] for i in range(len(self.run.dtypes))]
            out = await self.batched(example)
            buf = io.BytesIO()
            np.save(buf, out, allow_pickle=False)
            return Response(buf.getvalue(), media_type=NPY)
        payload = json.loads(body)
        example = [np.asarray(x, dtype=d) for x, d in zip(payload["inputs"], self.run.dtypes,
                                                          strict=True)]
        return JSONResponse({"outputs": [(await self.batched(example)).tolist()]})


def _make_torch(model: torch.nn.Module, threads: int) -> Any:
    def run(stacked: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(*(torch.from_numpy(x) for x in stacked)).numpy()

    return run


def _make_ort(path: str, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(stacked: list[np.ndarray]) -> np.ndarray:
        return sess.run(None, dict(zip(names, stacked, strict=True)))[0]

    return run


def _with_dtypes(make: Any, dtypes: list[str]) -> Any:
    """``make`` whose callable also names the input dtypes (JSON lists -> arrays)."""

    def made(arg: Any, threads: int) -> Any:
        run = make(arg, threads)
        run.dtypes = dtypes
        return run

    return made


def _export_onnx(w: workloads.Workload, path: Path) -> None:
    torch.onnx.export(w.model, w.inputs, str(path), dynamo=False, opset_version=17,
                      input_names=list(w.input_names), output_names=["output"],
                      dynamic_axes={n: {0: "B"} for n in [*w.input_names, "output"]})


def _app(system: str, w: workloads.Workload, artifact: Path, onnx_path: Path, args: Any,
         threads: int) -> Any:
    from ray import serve

    if system.startswith("rtinfer"):
        batch = 1 if system == "rtinfer-nobatch" else args.max_batch_size
        return rtinfer.serving.deployment(artifact, batch, args.max_wait_ms, args.replicas,
                                          threads_per_replica=threads, name=system)
    dtypes = [str(x.numpy().dtype) for x in w.inputs]
    make, arg = ((_make_torch, w.model) if system == "torch" else (_make_ort, str(onnx_path)))
    server = serve.deployment(name=system, num_replicas=args.replicas,
                              max_ongoing_requests=1024 + args.max_batch_size,
                              ray_actor_options={"num_cpus": threads})(_BatchedServer)
    return server.bind(_with_dtypes(make, dtypes), arg, threads, args.max_batch_size,
                       args.max_wait_ms)


def closed_loop(caller: Callable[[], tuple[Callable[[], bool], Callable[[], None]]],
                clients: int, requests: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads in closed loops, each with its own ``call`` from ``caller()``
    (``call()`` sends one request and says whether it was answered; ``close()`` ends the
    thread's connection); at most ``requests`` answers and ``seconds`` of wall time in all."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    issued = [0]

    def client() -> None:
        call, close = caller()
        try:
            while time.perf_counter() < stop:
                with lock:
                    if issued[0] >= requests:
                        return
                    issued[0] += 1
                t0 = time.perf_counter()
                ok = call()
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        lat.append(dt)
                    else:
                        errors[0] += 1
        finally:
            close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"clients": clients, "answered": len(lat), "errors": errors[0], "wall_s": wall,
            "throughput": len(lat) / wall if wall else 0.0,
            "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else None}


def load_test(port: int, body: bytes, clients: int, requests: int, seconds: float,
              content_type: str = "application/json") -> dict[str, Any]:
    """``clients`` closed loops over keep-alive connections to 127.0.0.1:``port``."""

    def caller() -> tuple[Callable[[], bool], Callable[[], None]]:
        conn = [http.client.HTTPConnection("127.0.0.1", port, timeout=30)]

        def call() -> bool:
            try:
                conn[0].request("POST", "/", body, {"Content-Type": content_type})
                r = conn[0].getresponse()
                r.read()
                return r.status == 200
            except (OSError, http.client.HTTPException):
                conn[0].close()
                conn[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                return False

        return call, lambda: conn[0].close()

    return closed_loop(caller, clients, requests, seconds)


def inprocess_test(fn: Any, example: tuple[torch.Tensor, ...], clients: int, requests: int,
                   seconds: float) -> dict[str, Any]:
    """``clients`` threads calling ``fn(*example)`` in closed loops."""

    def caller() -> tuple[Callable[[], bool], Callable[[], None]]:
        def call() -> bool:
            fn(*example)
            return True

        return call, lambda: None

    return closed_loop(caller, clients, requests, seconds)


def run_inprocess(cm: Any, w: workloads.Workload, systems: list[str], clients: list[int],
                  args: Any) -> list[dict[str, Any]]:
    """rtinfer's Batcher against direct calls of the compiled model, in this process."""
    from rtinfer.serving import Batcher

    torch.set_num_threads(args.cpus)
    one = tuple(x[:1] for x in w.inputs)  # one example, with the batch axis
    example = tuple(x[0] for x in w.inputs)  # one example, as a request holds it
    rows: list[dict[str, Any]] = []
    for system in systems:
        if system not in ("rtinfer", "rtinfer-nobatch"):
            print(f"{system}: not run in process (its @serve.batch needs Ray Serve)")
            continue
        batcher = (Batcher(cm, max_batch_size=args.max_batch_size,
                           max_wait_ms=args.max_wait_ms) if system == "rtinfer" else None)
        try:
            with torch.inference_mode():
                call, arg = (batcher, example) if batcher is not None else (cm, one)
                inprocess_test(call, arg, 2, 20, 10)  # warm
                for n in clients:
                    r = {"system": system, **inprocess_test(call, arg, n, args.requests,
                                                            args.seconds)}
                    rows.append(r)
                    print(_table([r]).splitlines()[-1], flush=True)
        finally:
            if batcher is not None:
                batcher.close()
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| system | N | answered | errors | req/s | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}"
        lines.append(f"| {r['system']} | {r['clients']} | {r['answered']} | {r['errors']} | "
                     f"{r['throughput']:.1f} | {p50} | {p99} |")
    return "\n".join(lines)


def batching_gain(rows: list[dict[str, Any]], clients: int = 16) -> str | None:
    """rtinfer with batching against one request per call at N = ``clients``: the throughput
    ratio (target >= 1.5x) and the p99 ratio (target <= 2x); None without both rows."""
    by = {r["system"]: r for r in rows if r["clients"] == clients and r["p99_ms"] is not None}
    if "rtinfer" not in by or "rtinfer-nobatch" not in by:
        return None
    b, one = by["rtinfer"], by["rtinfer-nobatch"]
    speed = b["throughput"] / one["throughput"] if one["throughput"] else float("inf")
    p99 = b["p99_ms"] / one["p99_ms"]
    met = "met" if speed >= 1.5 and p99 <= 2.0 else "NOT met"
    return (f"batching at N={clients}: {speed:.2f}x the throughput of one request per call, "
            f"p99 {p99:.2f}x (target >= 1.5x at <= 2x: {met})")


def _plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system and r["p99_ms"] is not None]
        a.plot([r["clients"] for r in mine], [r["throughput"] for r in mine], "o-", label=system)
        b.plot([r["clients"] for r in mine], [r["p99_ms"] for r in mine], "o-", label=system)
    for ax, label in ((a, "requests/s"), (b, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "resnet18", "minilm"])
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--clients", default="1,4,16,64", help="values of N")
    p.add_argument("--requests", type=int, default=400, help="answers per N at most (400)")
    p.add_argument("--seconds", type=float, default=20.0, help="wall time per N at most (20)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray's CPUs")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--backend", default="auto", help="rtinfer's backend (auto)")
    p.add_argument("--port", type=int, default=18000)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--body", choices=["json", "npz"], default="json",
                   help="request body: JSON lists, or np.savez of the inputs (large tensors)")
    p.add_argument("--transport", choices=["http", "inprocess"], default="http",
                   help="HTTP through Ray Serve, or threads calling in this process")
    args = p.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        p.error(f"unknown systems {unknown}")
    clients = [int(n) for n in args.clients.split(",")]
    threads = max(1, args.cpus // args.replicas)

    import ray
    from ray import serve

    w = workloads.build(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="rtinfer-serving-"))
    t0 = time.perf_counter()
    # batch 2, not 1: torch.export specializes a dim of size 1 even when it is marked dynamic
    names = list(inspect.signature(w.model.forward).parameters)[:len(w.inputs)]
    cm = rtinfer.compile(w.model, example_inputs=tuple(torch.cat([x, x]) for x in w.inputs),
                         backend=args.backend, dynamic_dims={n: {0: "B"} for n in names})
    artifact = cm.save(tmp / "artifact")
    print(f"compiled {w.description} with rtinfer ({cm.info.backend}) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    onnx_path = tmp / "model.onnx"
    if args.transport == "inprocess":
        rows = run_inprocess(cm, w, systems, clients, args)
        return _finish(args, w, cm, rows, {"transport": "in process", "cpus": args.cpus,
                                           "threads": args.cpus})
    if "onnxruntime" in systems:
        _export_onnx(w, onnx_path)
    if args.body == "npz":
        buf = io.BytesIO()
        np.savez(buf, *[x[0].numpy() for x in w.inputs])
        body, content_type = buf.getvalue(), NPZ
    else:
        body = json.dumps({"inputs": [x[0].tolist() for x in w.inputs]}).encode()
        content_type = "application/json"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=args.cpus, log_to_driver=False,
             **{**ray_init_options(None), "logging_level": "error"})
    rows: list[dict[str, Any]] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        for system in systems:
            serve.run(_app(system, w, artifact, onnx_path, args, threads), name=system,
                      route_prefix="/")
            load_test(args.port, body, 2, 20, 10, content_type)  # warm replicas, connections
            for n in clients:
                r = {"system": system, **load_test(args.port, body, n, args.requests,
                                                   args.seconds, content_type)}
                rows.append(r)
                print(_table([r]).splitlines()[-1], flush=True)
            serve.delete(system)
    finally:
        serve.shutdown()
        ray.shutdown()
    return _finish(args, w, cm, rows, {"transport": "HTTP, Ray Serve",
                                       "replicas": args.replicas, "cpus": args.cpus,
                                       "threads_per_replica": threads, "body": args.body})


def _finish(args: Any, w: workloads.Workload, cm: Any, rows: list[dict[str, Any]],
            setup: dict[str, Any]) -> int:
    meta = {"model": w.description, **setup, "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms, "rtinfer_backend": cm.info.backend,
            "requests_per_n": args.requests, "seconds_per_n": args.seconds}
    gain = batching_gain(rows)
    text = (f"# Serving load test: {w.description}\n\n" + ", ".join(
        f"{k}={v}" for k, v in meta.items()) + "\n\n" + _table(rows) + "\n"
        + (f"\n{gain}\n" if gain else ""))
    print("\n" + text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "serving.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
        (args.out / "serving.md").write_text(text)
        if not _plot(rows, args.out / "serving.png"):
            print("matplotlib is not installed: no serving.png (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
