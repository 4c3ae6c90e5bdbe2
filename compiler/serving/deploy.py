"""``rtinfer.serving.deployment``: a compiled artifact served over HTTP by Ray Serve replicas.

    app = rtinfer.serving.deployment("artifact_dir", max_batch_size=16, max_wait_ms=2.0,
                                     num_replicas=2)
    serve.run(app, route_prefix="/")          # POST / {"inputs": [...]} -> {"outputs": [...]}

Each replica loads the artifact once with ``rtinfer.load`` (its checksums are verified; nothing
is captured or optimized again) and batches the requests it is given with a ``Batcher``. Ray is
imported only here, when a deployment is made: importing rtinfer does not import it.

A request's body is read and decoded inside ``Batcher.expecting``: the batcher then knows
which requests are on their way, so a lone request runs at once and under load the requests
decoded while the model runs make the next batch (no ``max_wait_ms`` spent waiting for nobody).

Startup: ``rtinfer serve`` starts Ray lean (no dashboard, no idle workers started ahead, no
metrics export) and reports its phases; each replica reports in ``GET /`` (``startup``) what
its load cost: seconds, and seconds of native extension build (0 when the cache is warm).

Threads: each replica reserves ``threads_per_replica`` CPUs from Ray (``num_cpus``) and runs
torch and OpenMP with that many threads, so Ray never places more threads on a node than it
has cores. The default divides the cluster's CPUs (this machine's where Ray is not started)
among the replicas.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from rtinfer.artifact import read_artifact
from rtinfer.compile import load
from rtinfer.errors import RtinferError
from rtinfer.kernels.build import build_seconds
from rtinfer.serving import codec
from rtinfer.serving.batcher import Batcher, check_options
from rtinfer.serving.errors import (
    BatcherClosed,
    InvalidRequest,
    Overloaded,
    RequestTimeout,
    ServingError,
)
from rtinfer.serving.signature import Signature

# the status each error answers with; other rtinfer errors (the model failed) answer 500
STATUS = ((InvalidRequest, 400), (Overloaded, 429), (RequestTimeout, 408), (BatcherClosed, 503))


def status_of(error: RtinferError) -> int:
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 500


class RtinferReplica:
    """One Ray Serve replica: the artifact loaded once, a batcher in front of it. ``POST``
    answers a request (``rtinfer.serving.codec`` formats); ``GET`` answers this replica's
    batcher metrics as JSON."""

    def __init__(self, artifact_dir: str, max_batch_size: int, max_wait_ms: float,
                 threads: int, batcher_options: dict[str, Any]):
        import torch

        # before the model is built: the native backend's plans are made for this count
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        built = build_seconds()
        self.model = load(artifact_dir)
        t1 = time.perf_counter()
        # the larger batch sizes are planned while the replica already answers
        self.batcher = Batcher(self.model, max_batch_size, max_wait_ms, warmup="background",
                               **batcher_options)
        self.ready_s = time.perf_counter() - t0
        # what the serving path cost to start: a warm cache builds nothing native
        self.startup = {"load_s": t1 - t0, "warmup_s": self.ready_s - (t1 - t0),
                        "native_build_s": build_seconds() - built,
                        "backend": self.model.info.backend}
        self.input_names = list(self.model.input_names)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        if request.method == "GET":
            return JSONResponse({**self.batcher.metrics(), "ready_s": self.ready_s,
                                 "startup": self.startup})
        if request.method != "POST":
            return Response(codec.error_body(f"method {request.method} is not allowed; POST "
                                             f"the inputs"), status_code=405,
                            media_type=codec.JSON)
        try:
            with self.batcher.expecting():
                decoded = codec.decode(await request.body(),
                                       request.headers.get("content-type"), self.input_names)
                outputs = await self.batcher.submit(*decoded.args, **decoded.named)
            body, media = codec.encode(outputs, decoded.fmt)
            return Response(body, media_type=media)
        except RtinferError as e:
            return Response(codec.error_body(str(e)), status_code=status_of(e),
                            media_type=codec.JSON)

    def metrics(self) -> dict[str, Any]:
        return self.batcher.metrics()

    def __del__(self) -> None:
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close(drain=False, timeout_s=5)


def _import_ray(serve: bool = False) -> Any:
    """Ray itself, or with ``serve`` Ray Serve (Serve's import, the larger part, can run
    beside ``ray.init``); a clear error where they are not installed."""
    try:
        import ray

        if serve:
            from ray import serve as ray_serve

            return ray_serve
    except ImportError as e:
        raise ServingError(f"Ray Serve is not installed ({e}); pip install 'rtinfer[serve]' "
                           f"(or 'ray[serve]')") from None
    return ray


def _import_serve() -> Any:
    return _import_ray(serve=True)


def _cluster_cpus() -> int:
    import ray

    if ray.is_initialized():
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(1, os.cpu_count() or 1)


def deployment(artifact_dir: str | os.PathLike, max_batch_size: int = 16,
               max_wait_ms: float = 2.0, num_replicas: int = 2, *,
               threads_per_replica: int | None = None, max_queue_size: int = 1024,
               timeout_ms: float | None = None, nan_policy: str = "allow",
               pad_limit: float = 0.25, name: str = "rtinfer") -> Any:
    """A Ray Serve application serving the artifact ``artifact_dir`` (``CompiledModel.save``)
    with ``num_replicas`` replicas, each batching with ``Batcher(max_batch_size, max_wait_ms,
    max_queue_size=..., timeout_ms=..., nan_policy=..., pad_limit=...)``. The options and the
    artifact are checked here first (the artifact read and verified), so a bad option or a
    missing or corrupted artifact is an error before anything starts. Run it with
    ``ray.serve.run(app, route_prefix="/")``."""
    check_options(max_batch_size, max_wait_ms, max_queue_size, timeout_ms, pad_limit)
    if type(num_replicas) is not int or num_replicas < 1:
        raise ServingError(f"num_replicas={num_replicas!r}: expected an integer >= 1")
    if threads_per_replica is not None and (type(threads_per_replica) is not int
                                            or threads_per_replica < 1):
        raise ServingError(f"threads_per_replica={threads_per_replica!r}: expected an integer "
                           f">= 1")
    root = Path(artifact_dir).resolve()
    graph, _ = read_artifact(root)
    # the batcher's own check of the model (a batch axis on every input and output), before
    # any replica starts
    Signature(graph, [v.name or "" for v in graph.inputs], nan_policy)
    serve = _import_serve()

    threads = threads_per_replica or max(1, _cluster_cpus() // num_replicas)
    options = {"max_queue_size": max_queue_size, "timeout_ms": timeout_ms,
               "nan_policy": nan_policy, "pad_limit": pad_limit}
    replica = serve.deployment(
        name=name, num_replicas=num_replicas,
        # the batcher queues and refuses with 429 itself; Ray's own cap per replica must not
        # keep requests away from it (a cap below max_batch_size would forbid full batches)
        max_ongoing_requests=max_queue_size + max_batch_size,
        ray_actor_options={"num_cpus": threads},
    )(RtinferReplica)
    return replica.bind(str(root), max_batch_size, max_wait_ms, threads, options)


def serve_main(artifact_dir: str, *, replicas: int = 2, host: str = "127.0.0.1",
               port: int = 8000, max_batch_size: int = 16, max_wait_ms: float = 2.0,
               address: str | None = None, stdout: TextIO = sys.stdout,
               until: Any = None) -> int:
    """``rtinfer serve``: start Ray locally (or join ``address``), serve the artifact on
    ``http://host:port/`` until interrupted (or until ``until()`` is true), then shut Serve
    down."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    # the process's own start (Python, importing torch and rtinfer) comes before this call:
    # counted too, so that "ready in" is the time since the command was typed
    before = process_age()
    phases = {"start": before} if before is not None else {}
    ray = _import_ray()
    started = not ray.is_initialized()
    checked: dict[str, Any] = {}
    check = None
    if started and not address:
        # the artifact is read and checked while the local Ray starts (ray.init mostly waits
        # for its processes): a bad artifact or option then stops that Ray and is the error,
        # before Serve starts; joining a cluster, the threads per replica are counted from the
        # cluster's CPUs, which are known once joined
        def run_check() -> None:
            try:
                checked["app"] = deployment(artifact_dir, max_batch_size, max_wait_ms, replicas)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                checked["error"] = e
        check = threading.Thread(target=run_check, name="rtinfer-check", daemon=True)
        check.start()
    phases["imports"] = time.perf_counter() - t0  # ray's, here, and rtinfer's serving code
    if started:
        t = time.perf_counter()
        ray.init(**ray_init_options(address))
        phases["ray"] = time.perf_counter() - t
    restore = _stop_on_signals()  # after ray.init, which installs SIGTERM handlers of its own
    serve = None
    try:
        t = time.perf_counter()
        if check is not None:
            check.join()
            if "error" in checked:
                raise checked["error"]
            app = checked["app"]
        else:
            app = deployment(artifact_dir, max_batch_size, max_wait_ms, replicas)
        # what the check (with Serve's import) added after Ray was up
        phases["check"] = time.perf_counter() - t
        serve = _import_serve()
        t = time.perf_counter()
        serve.start(http_options={"host": host, "port": port})
        phases["serve"] = time.perf_counter() - t
        t = time.perf_counter()
        _deploy(serve, app)
        phases["replicas"] = time.perf_counter() - t
        took = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
        stdout.write(f"rtinfer: serving {artifact_dir} at http://{host}:{port}/ with {replicas} "
                     f"replica(s), ready in {time.perf_counter() - t0 + (before or 0.0):.1f} s "
                     f"({took}); Ctrl-C stops\n")
        stdout.flush()
        while until is None or not until():
            time.sleep(0.2)
    except KeyboardInterrupt:
        stdout.write("rtinfer: stopping\n")
    finally:
        restore()
        if serve is not None:
            serve.shutdown()
        if started:
            ray.shutdown()
    return 0


def _deploy(serve: Any, app: Any, timeout_s: float = 600.0) -> None:
    """``serve.run(app)``, ready as soon as every replica is: ``serve.run`` polls the
    application's status once a second, which cost up to a second of every start."""
    run = getattr(serve, "_run", None)
    if run is None:  # a Serve without the non-blocking form
        serve.run(app, name="rtinfer", route_prefix="/")
        return
    run(app, _blocking=False, name="rtinfer", route_prefix="/")
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get("rtinfer")
        state = str(getattr(status, "status", ""))
        if state.endswith("RUNNING"):
            return
        if state.endswith(("DEPLOY_FAILED", "UNHEALTHY")):
            raise ServingError(f"the rtinfer application did not start ({state}): "
                               f"{getattr(status, 'message', '')}")
        if time.monotonic() > deadline:
            raise ServingError(f"the rtinfer application was not running after {timeout_s:g} "
                               f"s (status {state or 'unknown'})")
        time.sleep(0.05)


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere)."""
    try:
        # field 22 of /proc/self/stat, after the command name in parentheses (which may hold
        # spaces): the start time in clock ticks since boot
        stat = Path("/proc/self/stat").read_text()
        started = int(stat[stat.rindex(")") + 2:].split()[19]) / os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started)


def ray_init_options(address: str | None) -> dict[str, Any]:
    """``ray.init``'s arguments for serving: joining ``address``, only that; starting Ray here,
    a lean local instance: no dashboard, no Python workers started ahead for idle CPUs (each
    costs a second of CPU while the replicas start; Serve starts the processes it needs), no
    metrics export."""
    if address:
        return {"address": address, "logging_level": "warning"}
    return {"include_dashboard": False, "logging_level": "warning",
            "_system_config": {"enable_worker_prestart": False,
                               "prestart_worker_first_driver": False,
                               "enable_metrics_collection": False}}


def _stop_on_signals() -> Any:
    """SIGTERM (a service manager's stop) and SIGINT stop the server as Ctrl-C does, Serve shut
    down on the way out; SIGINT too because a background job of a non-interactive shell starts
    with it ignored. Returns what puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, h) for sig, h in old.items()]


__all__ = ["RtinferReplica", "deployment", "process_age", "ray_init_options", "serve_main",
           "status_of"]
