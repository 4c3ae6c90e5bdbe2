"""The native backend end to end: rtinfer.compile(backend="native") on real model shapes,
against eager torch; fallbacks, strict mode, threads, memory, symbolic dims."""

from __future__ import annotations

import gc
import resource
import threading

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer import models
from rtinfer.errors import BackendError

build = pytest.importorskip("rtinfer.kernels.build")


pytestmark = pytest.mark.usefixtures("native")


def compile_native(model, inputs, **kw):
    return rtinfer.compile(model, example_inputs=inputs, backend="native", cache=False, **kw)


def close(a, b, tol=1e-4):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(64, 128), torch.nn.Linear(128, 128),
                                  torch.nn.Linear(128, 10))

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_mlp_runs_natively_and_matches():
    torch.manual_seed(0)
    m = MLP().eval()
    x = torch.randn(1, 64)
    cm = compile_native(m, (x,))
    close(cm(x), m(x))
    assert cm.info.backend == "native"
    assert cm.info.fallbacks == []
    assert "native" in cm.report()


def test_resnet_block_layout_stays_nhwc():
    torch.manual_seed(0)
    m = models.resnet18(num_classes=10)
    models.randomize_batchnorm(m)
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    cm = compile_native(m, (x,))
    close(cm(x), m(x), 1e-3)
    stats = cm.module.stats
    assert stats.fallbacks == {}
    # the stem conv reads the NCHW image and writes NHWC (at avx512; below, one reorder of the
    # image to NHWC); from there every conv, the pool and the residual adds stay NHWC, and after
    # global average pooling [N, C, 1, 1] is the same in both
    stem = 1 if cm.module.ext.level() == "avx512" else 0
    # (the max pool after it runs in the same step unless RTINFER_STEM_POOL=0)
    stems = stats.kernels.get("conv stem", 0) + stats.kernels.get("conv stem+max_pool2d", 0)
    assert stems == stem, stats.kernels
    assert stats.kernels.get("reorder", 0) == 1 - stem, stats.kernels
    # a conv the race gave to a Winograd kernel is counted as "oneDNN conv -> ..."
    convs = sum(n for k, n in stats.kernels.items()
                if k == "oneDNN conv" or k.startswith("oneDNN conv -> "))
    assert convs == 20 - stem, stats.kernels


def test_mobilenet_depthwise():
    torch.manual_seed(0)
    m = models.mobilenet_v2(num_classes=10)
    models.randomize_batchnorm(m)
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    cm = compile_native(m, (x,))
    close(cm(x), m(x), 1e-3)
    assert cm.module.stats.fallbacks == {}


def test_minilm_real_weights_attention_reads_qkv_in_place():
    m = models.minilm()
    inputs = models.minilm_inputs(seq=32)
    cm = compile_native(m, inputs)
    want = m(**inputs).last_hidden_state
    got = cm(**inputs)
    close(got["last_hidden_state"] if isinstance(got, dict) else got.last_hidden_state, want)
    kernels = cm.module.stats.kernels
    assert kernels["attention"] == 6
    # the merged QKV projection is split by views: no copies for q, k, v
    assert kernels.get("copy", 0) <= 1, kernels


def test_unsupported_node_falls_back_and_is_listed():
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(torch.relu(x), dim=1) * 2

    x = torch.randn(2, 7)
    cm = compile_native(M(), (x,))
    close(cm(x), M()(x))
    assert "cumsum" in cm.info.fallbacks
    assert "cumsum" in cm.report()
    with pytest.raises(BackendError, match="cumsum"):
        compile_native(M(), (x,), strict=True)


def test_numpy_in_numpy_out_and_bad_input_named():
    m = MLP().eval()
    x = torch.randn(1, 64)
    cm = compile_native(m, (x,))
    y = cm(x.numpy())
    assert isinstance(y, np.ndarray)
    with pytest.raises(BackendError, match="expected f32\\[1,64\\]"):
        cm(torch.randn(1, 65))


def test_symbolic_batch_gets_a_plan_per_shape():
    m = MLP().eval()
    x = torch.randn(2, 64)
    cm = rtinfer.compile(m, example_inputs=(x,), backend="native", cache=False,
                         dynamic_dims={"x": {0: "B"}})
    for b in (1, 3, 5):
        xb = torch.randn(b, 64)
        close(cm(xb), m(xb))


def test_concurrent_calls_are_correct():
    torch.manual_seed(0)
    m = MLP().eval()
    cm = compile_native(m, (torch.randn(1, 64),))
    xs = [torch.randn(1, 64) for _ in range(8)]
    want = [m(x) for x in xs]
    errors = []

    def worker(k):
        try:
            for _ in range(200):
                i = (k * 7 + _) % len(xs)
                close(cm(xs[i]), want[i])
        except Exception as e:  # pragma: no cover (reported below)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_many_calls_do_not_grow_memory():
    m = MLP().eval()
    cm = compile_native(m, (torch.randn(1, 64),))
    x = torch.randn(1, 64)
    for _ in range(2000):
        cm(x)
    # two windows of 100,000 calls (about a second each): a leak grows the peak RSS in both
    # (by 4 MB at 40 bytes a call); a one-off peak from elsewhere in the process only in one
    growth = []
    for _ in range(2):
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(100_000):
            cm(x)
        gc.collect()
        growth.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    assert min(growth) < 4096, growth  # KiB
    assert cm.module._plans and all(p.pooled_arenas == 1 for p, _ in cm.module._plans.values())


def test_user_model_untouched():
    m = MLP().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    compile_native(m, (torch.randn(1, 64),))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_save_load_rebuilds_native_and_gives_identical_results(tmp_path):
    torch.manual_seed(0)
    m = MLP().eval()
    x = torch.randn(1, 64)
    cm = compile_native(m, (x,))
    loaded = rtinfer.load(cm.save(tmp_path / "mlp"))
    assert loaded.info.backend == "native"
    assert torch.equal(loaded(x), cm(x))
    assert rtinfer.load(tmp_path / "mlp", backend="torch").info.backend == "torch"


def test_thread_count_change_gets_its_own_plan():
    m = MLP().eval()
    x = torch.randn(4, 64)
    cm = compile_native(m, (x,))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        close(cm(x), m(x))
    finally:
        torch.set_num_threads(before)
    assert {threads for _, threads in cm.module._plans} >= {1}


def test_no_compiler_means_a_clear_message_and_the_torch_backend(monkeypatch):
    monkeypatch.setattr(build, "_modules", {})  # as on a machine that never built it
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    m = MLP().eval()
    x = torch.randn(1, 64)
    with pytest.warns(UserWarning, match="needs a C\\+\\+ compiler.*torch backend instead"):
        cm = compile_native(m, (x,))
    assert cm.info.backend == "torch"
    close(cm(x), m(x))
    with pytest.raises(build.NativeUnavailable, match="needs a C\\+\\+ compiler"):
        compile_native(m, (x,), strict=True)
    # and auto leaves it out
    from rtinfer.backends import auto_candidates

    assert "native" not in [c.name for c in auto_candidates("cpu")]


def test_bad_index_is_an_error_naming_the_step_and_the_model_keeps_working():
    emb = torch.nn.Embedding(10, 4).eval()
    ids = torch.tensor([[1, 2, 3]])
    cm = compile_native(emb, (ids,))
    with pytest.raises(IndexError, match="embedding.*index 12"):
        cm(torch.tensor([[1, 12, 3]]))
    close(cm(ids), emb(ids))  # the call's arena went back to the pool


def test_onnx_model_on_native(tmp_path):
    class ConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = torch.relu(self.conv(x)).mean(dim=(2, 3))
            return torch.softmax(self.fc(y), dim=-1)

    torch.manual_seed(0)
    m = ConvNet().eval()
    x = torch.randn(2, 3, 12, 12)
    path = tmp_path / "convnet.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17)
    cm = rtinfer.compile(str(path), backend="native", cache=False)
    assert cm.info.backend == "native" and cm.info.fallbacks == []
    close(cm(x.numpy()), m(x).detach())


def test_a_lowering_that_gives_up_leaves_no_stale_copies():
    # softmax over a non-last axis copies its transposed input, then falls back; the exp after
    # it needs the same copy and must not be handed the removed one
    class M(torch.nn.Module):
        def forward(self, x):
            t = x.transpose(1, 2)
            return torch.softmax(t, dim=1) + t.exp()

    x = torch.randn(2, 5, 7)
    cm = compile_native(M(), (x,))
    assert "softmax" in cm.info.fallbacks
    close(cm(x), M()(x))


def test_symbolic_dims_keep_elementwise_native():
    from rtinfer.ir import parse

    g = parse("func @f(%x: f32[B,3], %z: f32[3]) -> f32[B,3] {\n"
              "  %y = clip(%x) {min=-1.0, max=0.5}\n  %w = add(%y, %z)\n  return %w\n}")
    cm = rtinfer.compile(g, backend="native", cache=False, pipeline="O0")
    z = torch.randn(3)
    for b in (1, 4):
        x = torch.randn(b, 3)
        close(cm(x, z), x.clamp(-1, 0.5) + z)
    assert cm.info.fallbacks == []
    assert cm.module.stats.kernels == {"elementwise": 2}


def test_clip_without_bounds_is_identity_in_the_fallback_too():
    from rtinfer.ir import parse

    g = parse("func @f(%x: f32[2,3]) -> f32[2,3] {\n  %y = clip(%x) {min=-inf, max=inf}\n"
              "  %w = cumsum(%y) {axis=1}\n  return %w\n}")
    cm = rtinfer.compile(g, backend="torch", cache=False, pipeline="O0")
    x = torch.randn(2, 3)
    close(cm(x), x.cumsum(1))


@pytest.mark.parametrize("nd,pad", [(2, (1,)), (2, (1, 2)), (2, (0, 1, 2, 1)),
                                    (1, (2,)), (1, (1, 0))])
def test_conv_pads_in_every_form_the_ir_allows(nd, pad):
    # one value pads every side, one per axis pads both sides alike, 2*nd are begins then ends
    from rtinfer.ir import Graph, TensorType
    from rtinfer.ir.interpreter import interpret
    from rtinfer.ir.types import DType

    rng = np.random.default_rng(0)
    spatial = (7, 9)[:nd]
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (1, 3, *spatial)), "x")
    w = g.add_const(rng.standard_normal((4, 3, *(3,) * nd)).astype(np.float32))
    op = "conv2d" if nd == 2 else "conv1d"
    g.set_outputs([g.add_op(op, x, w, stride=(1,), pad=pad, dilation=(1,), groups=1)])
    cm = rtinfer.compile(g, backend="native", cache=False, pipeline="O0", strict=True)
    xin = rng.standard_normal((1, 3, *spatial)).astype(np.float32)
    close(cm(torch.from_numpy(xin)), interpret(g, xin))


class ExpandDepthwise(torch.nn.Module):
    """MobileNetV2's expansion (1x1 + ReLU6) and depthwise 3x3 (+ ReLU6), then a projection."""

    def __init__(self, stride, act=torch.nn.functional.relu6):
        super().__init__()
        self.act = act
        self.expand = torch.nn.Conv2d(16, 96, 1)
        self.dw = torch.nn.Conv2d(96, 96, 3, stride, 1, groups=96)
        self.project = torch.nn.Conv2d(96, 8, 1)

    def forward(self, x):
        y = self.act(self.expand(x))
        return self.project(torch.nn.functional.relu6(self.dw(y)))


@pytest.mark.parametrize("act", ["relu6", "hardswish"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("finite_fast", ["1", "0"])
def test_expansion_and_depthwise_fuse_where_onednn_fuses_them(native, monkeypatch, stride, act,
                                                              finite_fast):
    monkeypatch.setenv("RTINFER_FINITE_FAST", finite_fast)
    # odd sizes: the depthwise's right padding is partly unread at stride 2
    torch.manual_seed(0)
    m = ExpandDepthwise(stride, getattr(torch.nn.functional, act)).eval()
    x = torch.randn(1, 16, 113, 111)
    cm = compile_native(m, (x,))
    close(cm(x), m(x))
    kernels = cm.module.stats.kernels
    # oneDNN fuses where the expanded activation (4.8 MB here) is large against the L2 caches
    w = m.expand.weight.detach()
    impl = native.add_conv_dw(None, "probe", -1, -1, [1, 16, 113, 111], w, None, "none", 0.0,
                                  0.0, m.dw.weight.detach(), None, stride, "none", 0.0, 0.0,
                                  torch.get_num_threads())
    # a relu6 between the two would lose NaN inside oneDNN's fused pair: they run apart,
    # unless the finite fast path proves no NaN can reach it (the clipped block here)
    assert (cm.module.finite_bound is not None) == (finite_fast == "1")
    if impl.startswith("ref") or (act == "relu6" and finite_fast == "0"):
        assert "oneDNN conv+dw" not in kernels
    else:
        assert kernels["oneDNN conv+dw"] == 1 and kernels["oneDNN conv"] == 1, kernels


def test_expansion_read_twice_is_not_fused():
    class M(ExpandDepthwise):
        def forward(self, x):
            y = torch.nn.functional.relu6(self.expand(x))
            return self.dw(y).sum() + y.sum()

    torch.manual_seed(0)
    m = M(1).eval()
    x = torch.randn(1, 16, 113, 111)
    cm = compile_native(m, (x,))
    close(cm(x), m(x))
    assert "oneDNN conv+dw" not in cm.module.stats.kernels


@pytest.mark.parametrize("margin,serial", [(1e9, True), (0.0, False)])
def test_a_small_plan_runs_serial_when_parallel_is_not_faster(margin, serial, monkeypatch):
    """A small plan is raced 1 thread against torch's count when built; the serial plan is kept
    unless the parallel one is faster by more than SERIAL_MARGIN (forced here both ways: the
    race's outcome is the machine's). Either way the results match eager, the report says
    which and why, and the caller's thread count is what it was."""
    from rtinfer.backends import native_backend

    if torch.get_num_threads() < 2:
        pytest.skip("one thread: nothing to choose")
    monkeypatch.setattr(native_backend, "SERIAL_MARGIN", margin)
    torch.manual_seed(0)
    m = MLP().eval()
    x = torch.randn(3, 64)
    before = torch.get_num_threads()
    cm = compile_native(m, (x,))
    close(cm(x), m(x))
    assert torch.get_num_threads() == before  # a serial run puts the count back
    (_, run_threads), = cm.module._plans.values()
    assert (run_threads == 1) is serial
    line = next(ln for ln in cm.report().splitlines() if "native plan:" in ln)
    assert ("threads: 1 (a small plan: 1 thread" in line) is serial
    assert f"vs {before} threads" in line


def test_serial_choice_can_be_turned_off(monkeypatch):
    from rtinfer.backends import native_backend

    monkeypatch.setenv("RTINFER_SERIAL_SMALL", "0")
    monkeypatch.setattr(native_backend, "SERIAL_MARGIN", 1e9)
    cm = compile_native(MLP().eval(), (torch.randn(3, 64),))
    (_, run_threads), = cm.module._plans.values()
    assert run_threads == torch.get_num_threads()


def _bound_threads() -> list[str]:
    """The CPU lists of this process's threads bound to a single CPU."""
    import pathlib

    out = []
    for status in pathlib.Path("/proc/self/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        cpus = next(ln.split(":")[1].strip() for ln in text.splitlines()
                    if ln.startswith("Cpus_allowed_list"))
        if cpus.isdigit():
            out.append(cpus)
    return out


def test_parallel_plans_pin_workers_and_leave_the_callers_cpus_alone(monkeypatch):
    """Workers are bound one per CPU; the calling thread keeps the CPUs it had after a call."""
    import os

    from rtinfer.backends import native_backend

    threads = torch.get_num_threads()
    if threads < 2 or len(os.sched_getaffinity(0)) < threads:
        pytest.skip("needs at least two threads on two CPUs")
    monkeypatch.setattr(native_backend, "SERIAL_MARGIN", 0.0)  # keep the plan parallel
    before = os.sched_getaffinity(0)
    torch.manual_seed(0)
    m = MLP().eval()
    x = torch.randn(5, 64)
    cm = compile_native(m, (x,))
    close(cm(x), m(x))
    assert os.sched_getaffinity(0) == before
    line = next(ln for ln in cm.report().splitlines() if "native plan:" in ln)
    assert "threads pinned to CPUs" in line, line
    assert _bound_threads(), "no OpenMP worker is bound to one CPU"


def test_a_second_thread_pins_its_own_team(monkeypatch):
    """A thread other than the one that built the plan (a batcher's worker, a server thread)
    leads an OpenMP team of its own: its workers are bound one per CPU like the first team's,
    never created inside the caller's held CPU (which left them all on that one CPU, running
    ResNet-18 at half speed)."""
    import os

    from rtinfer.backends import native_backend

    threads = torch.get_num_threads()
    if threads < 2 or len(os.sched_getaffinity(0)) < threads:
        pytest.skip("needs at least two threads on two CPUs")
    monkeypatch.setattr(native_backend, "SERIAL_MARGIN", 0.0)  # keep the plan parallel
    torch.manual_seed(0)
    m = MLP().eval()
    x = torch.randn(5, 64)
    cm = compile_native(m, (x,))
    line = next(ln for ln in cm.report().splitlines() if "native plan:" in ln)
    first = line.split("threads pinned to CPUs ")[1].split(",")[0].strip()
    seen: dict[str, object] = {}

    def caller() -> None:
        seen["ok"] = all(torch.allclose(cm(x), m(x), rtol=1e-4, atol=1e-5) for _ in range(5))
        seen["bound"] = _bound_threads()  # while this thread and its team are alive

    t = threading.Thread(target=caller)
    t.start()
    t.join()
    assert seen["ok"]
    assert first not in seen["bound"], (first, seen["bound"])
    assert len(seen["bound"]) >= 2 * (threads - 1), seen["bound"]  # both teams' workers


def test_pinning_can_be_turned_off(monkeypatch):
    from rtinfer.backends import native_backend

    monkeypatch.setenv("RTINFER_PIN_THREADS", "0")
    monkeypatch.setattr(native_backend, "SERIAL_MARGIN", 0.0)
    cm = compile_native(MLP().eval(), (torch.randn(6, 64),))
    line = next(ln for ln in cm.report().splitlines() if "native plan:" in ln)
    assert "pinned" not in line


def test_concurrent_callers_keep_their_cpus(monkeypatch):
    """Only one run at a time holds its caller on the pinned CPU; every caller ends with the
    CPUs it had, and the results are right."""
    import os

    from rtinfer.backends import native_backend

    if torch.get_num_threads() < 2 or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least two threads on two CPUs")
    monkeypatch.setattr(native_backend, "SERIAL_MARGIN", 0.0)
    torch.manual_seed(0)
    m = MLP().eval()
    x = torch.randn(7, 64)
    want = m(x).detach()
    cm = compile_native(m, (x,))
    errors: list[str] = []

    def caller() -> None:
        before = os.sched_getaffinity(0)
        for _ in range(50):
            if not torch.allclose(cm(x), want, rtol=1e-4, atol=1e-5):
                errors.append("wrong result")
        if os.sched_getaffinity(0) != before:
            errors.append(f"affinity {os.sched_getaffinity(0)} != {before}")

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
