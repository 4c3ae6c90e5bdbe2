"""The native backend's own first-layer convolution (cpp/native/cpu_conv_stem.cpp): the image read
as NCHW, the output written NHWC with the bias and activation fused. The kernel alone against
torch's conv2d over windows, channel counts, activations, batches and thread counts, and whole
models through the backend, which picks the kernel for the image's convolution, at every CPU
level the host runs (the ``native`` fixture); the backend picks it at the avx512 level only.
The stem and the max pool after it as one step (add_conv_stem_pool) likewise: against torch's
conv2d then max_pool2d, and in ResNet-18 and its pruned form, unless RTINFER_STEM_POOL=0."""

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
        # the image's convolution is the stem step (with ResNet's max pool after it fused in);
        # the image is not reordered to NHWC first
        stem = ": conv stem+max_pool2d" if make is resnet18 else ": conv stem"
        assert names[0].endswith(stem), names[:3]
        assert not any("reorder" in n for n in names[:2]), names[:3]
        assert sum(n.endswith(stem) for n in names) == 1
    else:
        # below AVX-512, oneDNN's path (reorder + its conv) is the faster and is kept
        assert names[0].endswith(": reorder") and names[1].endswith(": oneDNN conv"), names[:3]
        assert not any(": conv stem" in n for n in names)


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


# -- the stem and the max pool after it as one step (add_conv_stem_pool) --------------------------

def pool_window(size: tuple[int, int], kernel, stride, pad, dilation, ceil_mode: bool):
    """(pool output size, pad_end) as the lowering passes them: ceil_mode's extra row/column
    arrives as a wider pad_end."""
    out, pad_end = [], []
    for i in range(2):
        span = dilation[i] * (kernel[i] - 1) + 1
        o = (size[i] + 2 * pad[i] - span) // stride[i] + 1
        if ceil_mode:
            o = -(-(size[i] + 2 * pad[i] - span) // stride[i]) + 1
            if (o - 1) * stride[i] >= size[i] + pad[i]:  # torch: no window starts in the pad
                o -= 1
        out.append(o)
        pad_end.append(max(pad[i], (o - 1) * stride[i] + span - size[i] - pad[i]))
    return out, pad_end


def run_stem_pool(native, x, w, b, conv: dict, pool: dict, threads: int = 1) -> torch.Tensor:
    """The fused step alone in a plan: x NCHW in, the NHWC pool output returned as NCHW."""
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = conv["stride"], conv["pad"], conv["dilation"]
    size = ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
    (poh, pow_), pad_end = pool_window(size, pool["kernel"], pool["stride"], pool["pad"],
                                       pool["dilation"], pool["ceil_mode"])
    plan = native.Plan()
    xs, ys = plan.add_slot(INPUT, 0, 0), plan.add_slot(OUTPUT, 0, 0)
    plan.add_output(torch.float32, [n, poh, pow_, o])
    alpha, beta = ALPHA_BETA.get(conv["act"], (0.0, 0.0))
    native.add_conv_stem_pool(plan, "stem", xs, ys, list(x.shape), w, b, list(conv["stride"]),
                              list(conv["pad"]), list(conv["pad"]), list(conv["dilation"]),
                              conv["act"], alpha, beta, list(pool["kernel"]),
                              list(pool["stride"]), list(pool["pad"]), pad_end,
                              list(pool["dilation"]), [n, o, poh, pow_])
    return plan.run([x], threads)[0].permute(0, 3, 1, 2)


def stem_pool_reference(x, w, b, conv: dict, pool: dict) -> torch.Tensor:
    y = ACTS[conv["act"]](F.conv2d(x, w, b, conv["stride"], conv["pad"], conv["dilation"]))
    return F.max_pool2d(y, pool["kernel"], pool["stride"], pool["pad"], pool["dilation"],
                        ceil_mode=pool["ceil_mode"])


def _conv(stride, pad, act, dilation=(1, 1)) -> dict:
    return dict(stride=stride, pad=pad, dilation=dilation, act=act)


def _pool(kernel, stride, pad, dilation=(1, 1), ceil_mode=False) -> dict:
    return dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil_mode=ceil_mode)


RESNET_POOL = _pool((3, 3), (2, 2), (1, 1))
POOL_CASES = {
    # name: (x shape, w shape, conv, pool)
    "resnet18_pruned_3to32": ((1, 3, 64, 64), (32, 3, 7, 7), _conv((2, 2), (3, 3), "relu"),
                              RESNET_POOL),
    "resnet18_3to64": ((1, 3, 64, 64), (64, 3, 7, 7), _conv((2, 2), (3, 3), "relu"),
                       RESNET_POOL),
    "odd_3to19_ceil": ((1, 3, 37, 41), (19, 3, 5, 5), _conv((2, 2), (2, 2), "leaky_relu"),
                       _pool((3, 3), (2, 2), (1, 1), ceil_mode=True)),
    "c1_to24_pool_pad0": ((1, 1, 30, 27), (24, 1, 3, 3), _conv((1, 1), (1, 1), "none"),
                          _pool((2, 2), (2, 2), (0, 0))),
    "pool_dilation2": ((1, 3, 33, 35), (16, 3, 3, 3), _conv((1, 1), (1, 1), "hardswish"),
                       _pool((3, 3), (1, 1), (1, 1), dilation=(2, 2))),
    "batch2_c4_ceil_pad0": ((2, 4, 29, 31), (40, 4, 3, 3), _conv((2, 2), (1, 1), "clip"),
                            _pool((3, 3), (2, 2), (0, 0), ceil_mode=True)),
    "asym_pool_stride_over_kernel": ((2, 3, 26, 40), (72, 3, 3, 3),
                                     _conv((1, 2), (1, 0), "relu", dilation=(2, 1)),
                                     _pool((3, 2), (4, 1), (1, 1), ceil_mode=True)),
    "pool_1x1": ((1, 2, 15, 15), (8, 2, 3, 3), _conv((1, 1), (0, 0), "none"),
                 _pool((1, 1), (2, 2), (0, 0))),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_stem_pool_kernel_matches_conv2d_then_max_pool2d(native, case, threads):
    x_shape, w_shape, conv, pool = POOL_CASES[case]
    x, w, b = rand(*x_shape, seed=1), rand(*w_shape, seed=2) * 0.3, rand(w_shape[0], seed=3)
    want = stem_pool_reference(x, w, b, conv, pool)
    got = run_stem_pool(native, x, w, b, conv, pool, threads)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_stem_pool_kernel_propagates_nan_and_leaves_inputs_alone(native):
    x, w, b = rand(2, 3, 40, 40, seed=4), rand(32, 3, 7, 7, seed=5) * 0.3, rand(32, seed=6)
    x[1, 2, 17, 9] = float("nan")
    x0, w0, b0 = x.clone(), w.clone(), b.clone()
    conv = _conv((2, 2), (3, 3), "relu")
    want = stem_pool_reference(x, w, b, conv, RESNET_POOL)
    got = run_stem_pool(native, x, w, b, conv, RESNET_POOL, threads=2)
    # relu keeps NaN and the max picks it, as eager: the pool windows over the NaN stay NaN
    assert torch.equal(got.isnan(), want.isnan()) and got[1].isnan().any()
    assert not got[0].isnan().any()
    fin = want.isfinite()
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-4, atol=1e-4)
    assert torch.equal(x.nan_to_num(), x0.nan_to_num()) and torch.equal(w, w0)
    assert torch.equal(b, b0)


@pytest.mark.parametrize("bad, match", [
    (dict(dst_shape=[1, 8, 5, 5]),
     "stem: the stem output \\[1, 8, 8, 8\\] max-pooled gives \\[1, 8, 4, 4\\], the dst is "
     "\\[1, 8, 5, 5\\]"),
    (dict(kernel=[0, 3]), "stem: the max pool's kernel, stride and dilation must be >= 1"),
    (dict(pad_end=[1]), "stem: the max pool's .* need 2 values each"),
    (dict(kernel=[11, 3]), "stem: the max pool's kernel \\[11, 3\\] does not fit the padded "
                           "stem output \\[1, 8, 8, 8\\]"),
    (dict(activation="gelu"), "stem: .*fuses none, relu.*'gelu'"),
])
def test_stem_pool_kernel_rejects_bad_arguments_by_name(native, bad, match):
    args = dict(kernel=[3, 3], pad_end=[1, 1], activation="relu", dst_shape=[1, 8, 4, 4])
    args.update(bad)
    plan = native.Plan()
    with pytest.raises(ValueError, match=match):
        native.add_conv_stem_pool(plan, "stem", 0, 1, [1, 3, 16, 16], torch.zeros(8, 3, 3, 3),
                                  None, [2, 2], [1, 1], [1, 1], [1, 1], args["activation"], 0.0,
                                  0.0, args["kernel"], [2, 2], [1, 1], args["pad_end"], [1, 1],
                                  args["dst_shape"])


def _avx512_only(native, monkeypatch) -> None:
    if native.level() != "avx512":
        pytest.skip("the stem kernel is picked at the avx512 level only (checked above)")
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.setenv("RTINFER_SERIAL_SMALL", "0")


@pytest.mark.parametrize("fuse", ["default", "0"])
@pytest.mark.parametrize("pruned", [False, True])
def test_resnet18_fuses_stem_and_max_pool(native, monkeypatch, pruned, fuse):
    _avx512_only(native, monkeypatch)
    if fuse == "default":
        monkeypatch.delenv("RTINFER_STEM_POOL", raising=False)
    else:
        monkeypatch.setenv("RTINFER_STEM_POOL", fuse)
    torch.manual_seed(0)
    model = randomize_batchnorm(resnet18()).eval()
    x = torch.randn(2, 3, 96, 96)
    if pruned:
        model = rtinfer.prune(model, example_inputs=x, ratio=0.5, importance="l2", round_to=8)
        model.eval()
    cm = _compile(model, x)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(cm(x), want, rtol=1e-3, atol=1e-3)
    names = _stem_steps(cm, x)
    if fuse == "default":
        # the image's convolution and the max pool are one step; no pool step follows it
        assert names[0].endswith(": conv stem+max_pool2d"), names[:3]
        assert not any(n.endswith("max_pool2d") for n in names[1:]), names[:3]
    else:
        assert names[0].endswith(": conv stem") and names[1].endswith(": max_pool2d"), names[:3]
        assert not any("stem+max_pool2d" in n for n in names)


def test_stem_and_ceil_mode_pool_fuse_through_the_backend(native, monkeypatch):
    _avx512_only(native, monkeypatch)
    monkeypatch.delenv("RTINFER_STEM_POOL", raising=False)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 19, 5, 2, 2), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                                torch.nn.Conv2d(19, 8, 1)).eval()
    x = torch.randn(1, 1, 38, 43)
    cm = _compile(model, x)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)
    assert _stem_steps(cm, x)[0].endswith(": conv stem+max_pool2d")


def test_stem_output_read_twice_keeps_its_own_step(native, monkeypatch):
    _avx512_only(native, monkeypatch)
    monkeypatch.delenv("RTINFER_STEM_POOL", raising=False)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, 2, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = F.relu(self.conv(x))
            return F.max_pool2d(y, 3, 2, 1), y.mean((2, 3))

    model, x = Net().eval(), torch.randn(1, 3, 32, 32)
    cm = _compile(model, x)
    with torch.no_grad():
        for got, want in zip(cm(x), model(x), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    names = _stem_steps(cm, x)
    assert names[0].endswith(": conv stem") and not any("stem+max_pool2d" in n for n in names)
