"""The native backend's own first-layer convolution (cpp/native/cpu_conv_stem.cpp): the image read
as NCHW, the output written NHWC with the bias and activation fused. The kernel alone against
torch's conv2d over windows, channel counts, activations, batches and thread counts, and whole
models through the backend, which picks the kernel for the image's convolution, at every CPU
level the host runs (the ``native`` fixture); the backend picks it at the avx512 level only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rtinfer
from rtinfer.models import mobilenet_v2, randomize_batchnorm, resnet18

INPUT, OUTPUT = 0, 1

ACTS = {
    "none": lambda y: y,
    "relu": F.relu,
    "clip": lambda y: y.clamp(-0.5, 0.75),  # alpha, beta below
    "leaky_relu": lambda y: F.leaky_relu(y, 0.1),
    "hardswish": F.hardswish,
}
ALPHA_BETA = {"clip": (-0.5, 0.75), "leaky_relu": (0.1, 0.0)}


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def run_stem(native, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, *,
             stride=(1, 1), pad_begin=(0, 0), pad_end=(0, 0), dilation=(1, 1),
             activation="none", threads: int = 1) -> torch.Tensor:
    """The stem step alone in a plan: x NCHW in, the NHWC output returned as NCHW."""
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh = (h + pad_begin[0] + pad_end[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pad_begin[1] + pad_end[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    plan = native.Plan()
    xs, ys = plan.add_slot(INPUT, 0, 0), plan.add_slot(OUTPUT, 0, 0)
    plan.add_output(torch.float32, [n, oh, ow, o])
    alpha, beta = ALPHA_BETA.get(activation, (0.0, 0.0))
    native.add_conv_stem(plan, "stem", xs, ys, list(x.shape), w, b, list(stride),
                         list(pad_begin), list(pad_end), list(dilation), activation, alpha,
                         beta, [n, o, oh, ow])
    return plan.run([x], threads)[0].permute(0, 3, 1, 2)


def reference(x, w, b, *, stride=(1, 1), pad_begin=(0, 0), pad_end=(0, 0), dilation=(1, 1),
              activation="none") -> torch.Tensor:
    xp = F.pad(x, (pad_begin[1], pad_end[1], pad_begin[0], pad_end[0]))
    return ACTS[activation](F.conv2d(xp, w, b, stride, 0, dilation))


CASES = {
    # name: (x shape, w shape, stride, pad_begin, pad_end, dilation, activation)
    "resnet18": ((1, 3, 64, 64), (64, 3, 7, 7), (2, 2), (3, 3), (3, 3), (1, 1), "relu"),
    "mobilenet_v2": ((1, 3, 48, 48), (32, 3, 3, 3), (2, 2), (1, 1), (1, 1), (1, 1), "clip"),
    "c1_o24_stride1": ((1, 1, 20, 23), (24, 1, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), "none"),
    "c4_o40_asym_pad": ((2, 4, 17, 29), (40, 4, 5, 3), (2, 1), (0, 2), (3, 1), (1, 1), "relu"),
    "c2_o72_dilated": ((1, 2, 21, 19), (72, 2, 3, 3), (1, 2), (2, 2), (2, 2), (2, 2),
                       "leaky_relu"),
    "c3_o16_hardswish": ((2, 3, 31, 33), (16, 3, 3, 3), (2, 2), (1, 1), (1, 1), (1, 1),
                         "hardswish"),
    "c3_o130_wide": ((1, 3, 13, 40), (130, 3, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), "none"),
    "window_wider_than_image": ((1, 3, 4, 3), (8, 3, 7, 7), (2, 2), (3, 3), (3, 3), (1, 1),
                                "relu"),
    "c3_o5_no_pad": ((1, 3, 9, 40), (5, 3, 2, 4), (1, 3), (0, 0), (0, 0), (1, 1), "none"),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_stem_kernel_matches_conv2d(native, case, threads):
    x_shape, w_shape, stride, pb, pe, dil, act = CASES[case]
    x, w, b = rand(*x_shape, seed=1), rand(*w_shape, seed=2) * 0.3, rand(w_shape[0], seed=3)
    kw = dict(stride=stride, pad_begin=pb, pad_end=pe, dilation=dil, activation=act)
    want = reference(x, w, b, **kw)
    got = run_stem(native, x, w, b, threads=threads, **kw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_stem_kernel_without_bias_keeps_nan_and_leaves_inputs_alone(native):
    x, w = rand(1, 3, 16, 16, seed=4), rand(24, 3, 3, 3, seed=5)
    x[0, 1, 5, 7] = float("nan")
    x0, w0 = x.clone(), w.clone()
    kw = dict(stride=(1, 1), pad_begin=(1, 1), pad_end=(1, 1), activation="relu")
    want = reference(x, w, None, **kw)
    got = run_stem(native, x, w, None, **kw)
    # relu is a NaN-keeping clamp, as eager's: the windows over the NaN stay NaN
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    fin = want.isfinite()
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-4, atol=1e-4)
    assert torch.equal(x.nan_to_num(), x0.nan_to_num()) and torch.equal(w, w0)


@pytest.mark.parametrize("bad, match", [
    (dict(activation="gelu"), "stem: .*fuses none, relu.*'gelu'"),
    (dict(dst_shape=[1, 8, 9, 9]), "stem: the window gives an output of \\[1, 8, 8, 8\\]"),
    (dict(stride=[0, 1]), "stem: stride and dilation must be >= 1"),
    (dict(w=torch.zeros(8, 2, 3, 3)), "stem: the weight \\[8, 2, 3, 3\\] does not fit src "
                                      "channels 3"),
    (dict(bias=torch.zeros(7)), "stem: the bias has 7 elements, expected 8"),
])
def test_stem_kernel_rejects_bad_arguments_by_name(native, bad, match):
    args = dict(w=torch.zeros(8, 3, 3, 3), bias=None, stride=[2, 2], activation="relu",
                dst_shape=[1, 8, 8, 8])
    args.update(bad)
    plan = native.Plan()
    with pytest.raises(ValueError, match=match):
        native.add_conv_stem(plan, "stem", 0, 1, [1, 3, 16, 16], args["w"], args["bias"],
                             args["stride"], [1, 1], [1, 1], [1, 1], args["activation"], 0.0,
                             0.0, args["dst_shape"])


def _compile(model: torch.nn.Module, x: torch.Tensor):
    cm = rtinfer.compile(model, example_inputs=(x,), backend="native", cache=False)
    assert cm.info.backend == "native"
    return cm


def _stem_steps(cm, x: torch.Tensor) -> list[str]:
    return [name for name, _ in cm.module.profile(x, iters=1)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("make, size", [(resnet18, 96), (mobilenet_v2, 64)])
def test_models_run_the_stem_kernel_and_match_eager(native, monkeypatch, make, size, threads):
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.setenv("RTINFER_SERIAL_SMALL", "0")  # keep the 2-thread plan
    torch.manual_seed(0)
    model = randomize_batchnorm(make()).eval()
    x = torch.randn(2, 3, size, size)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cm = _compile(model, x)
        with torch.no_grad():
            want = model(x)
        torch.testing.assert_close(cm(x), want, rtol=1e-3, atol=1e-3)
        names = _stem_steps(cm, x)
    finally:
        torch.set_num_threads(old)
    if native.level() == "avx512":
        # the image's convolution is the stem step; the image is not reordered to NHWC first
        assert names[0].endswith(": conv stem"), names[:3]
        assert not any("reorder" in n for n in names[:2]), names[:3]
        assert sum(n.endswith(": conv stem") for n in names) == 1
    else:
        # below AVX-512, oneDNN's path (reorder + its conv) is the faster and is kept
        assert names[0].endswith(": reorder") and names[1].endswith(": oneDNN conv"), names[:3]
        assert not any(n.endswith(": conv stem") for n in names)


def test_stem_kernel_is_not_chosen_for_many_channels_or_a_residual(native, monkeypatch):
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(8, 8, 3, 1, 1)
            self.b = torch.nn.Conv2d(8, 8, 3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.b(F.relu(self.a(x))) + x)

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 8, 20, 20)
    cm = _compile(model, x)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)
    assert not any(n.endswith(": conv stem") for n in _stem_steps(cm, x))
