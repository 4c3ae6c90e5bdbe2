"""The native extension's oneDNN steps (cpp/native/dnnl_ops.cpp): add_conv and add_matmul with
their fused epilogues, run through hand-made plans and checked against torch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

INPUT, OUTPUT, ARENA = 0, 1, 3
TOL = {"rtol": 1e-4, "atol": 1e-4}

# fused.py's activation table: name -> (alpha, beta, torch reference)
ACTIVATIONS: dict[str, tuple[float, float, Callable[[torch.Tensor], torch.Tensor]]] = {
    "none": (0.0, 0.0, lambda y: y),
    "relu": (0.0, 0.0, F.relu),
    "leaky_relu": (0.1, 0.0, lambda y: F.leaky_relu(y, 0.1)),
    "clip": (-0.5, 0.75, lambda y: y.clamp(-0.5, 0.75)),
    "gelu": (0.0, 0.0, F.gelu),
    "gelu_tanh": (0.0, 0.0, lambda y: F.gelu(y, approximate="tanh")),
    "silu": (0.0, 0.0, F.silu),
    "sigmoid": (0.0, 0.0, torch.sigmoid),
    "hardswish": (0.0, 0.0, F.hardswish),
    "tanh": (0.0, 0.0, torch.tanh),
}


def epilogue(y: torch.Tensor, r: torch.Tensor | None, activation: str, mode: str) -> torch.Tensor:
    if mode == "pre":
        y = y + r
    y = ACTIVATIONS[activation][2](y)
    if mode == "post":
        y = y + r
    return y


def run_plan(native, inputs: list[torch.Tensor], out_shapes: list[list[int]],
             add_steps: Callable[..., object]) -> list[torch.Tensor]:
    """A plan with one input slot per input and one output slot per output; add_steps(plan,
    in_slots, out_slots) adds the steps."""
    plan = native.Plan()
    ins = [plan.add_slot(INPUT, 0, i) for i in range(len(inputs))]
    outs = [plan.add_slot(OUTPUT, 0, i) for i in range(len(out_shapes))]
    for shape in out_shapes:
        plan.add_output(torch.float32, list(shape))
    add_steps(plan, ins, outs)
    return plan.run(inputs, torch.get_num_threads())


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


# ---------------------------------------------------------------------------------------------
# convolution


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1).contiguous()


def from_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1)


def check_conv(native, x_shape, w_shape, *, bias=True, stride=(1, 1), pad_begin=(0, 0),
               pad_end=(0, 0), dilation=(1, 1), groups=1, activation="none", residual="none",
               src_nhwc=False, dst_nhwc=False, seed=0):
    x = rand(*x_shape, seed=seed)
    fan_in = w_shape[1] * w_shape[2] * (w_shape[3] if len(w_shape) == 4 else 1)
    w = rand(*w_shape, seed=seed + 1, scale=fan_in**-0.5)
    b = rand(w_shape[0], seed=seed + 2) if bias else None
    alpha, beta, _ = ACTIVATIONS[activation]

    conv = F.conv2d if len(x_shape) == 4 else F.conv1d
    pads = [p for i in reversed(range(len(pad_begin))) for p in (pad_begin[i], pad_end[i])]
    y = conv(F.pad(x, pads), w, b, stride=stride, dilation=dilation, groups=groups)
    r = rand(*y.shape, seed=seed + 3) if residual != "none" else None
    ref = epilogue(y, r, activation, residual)

    inputs = [to_nhwc(x) if src_nhwc else x]
    if r is not None:
        inputs.append(to_nhwc(r) if dst_nhwc else r)
    out_shape = list(to_nhwc(ref).shape if dst_nhwc else ref.shape)

    def steps(plan, ins, outs):
        impl = native.add_conv(plan, "conv", ins[0], outs[0], ins[1] if r is not None else -1,
                               list(x_shape), w, b, list(stride), list(pad_begin), list(pad_end),
                               list(dilation), groups, activation, alpha, beta, residual,
                               src_nhwc, dst_nhwc)
        assert isinstance(impl, str) and impl

    (out,) = run_plan(native, inputs, [out_shape], steps)
    torch.testing.assert_close(from_nhwc(out) if dst_nhwc else out, ref, **TOL)


def test_conv_odd_shape_strided_asymmetric_pads(native):
    check_conv(native, (1, 3, 17, 13), (4, 3, 5, 5), stride=(2, 2), pad_begin=(1, 2),
               pad_end=(2, 0))


def test_conv_rectangular_kernel_and_strides(native):
    check_conv(native, (1, 5, 11, 16), (7, 5, 3, 1), stride=(1, 3), pad_begin=(1, 0),
               pad_end=(1, 2), src_nhwc=True, dst_nhwc=True)


def test_conv_groups(native):
    check_conv(native, (1, 4, 9, 9), (6, 2, 3, 3), groups=2, pad_begin=(1, 1), pad_end=(1, 1))


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_conv_depthwise(native, nhwc, multiplier):
    check_conv(native, (1, 8, 10, 10), (8 * multiplier, 1, 3, 3), groups=8, stride=(2, 2),
               pad_begin=(1, 1), pad_end=(1, 1), activation="relu", src_nhwc=nhwc,
               dst_nhwc=nhwc)


def test_conv_dilation(native):
    check_conv(native, (1, 6, 15, 15), (8, 6, 3, 3), dilation=(2, 2), pad_begin=(2, 2),
               pad_end=(2, 2))


def test_conv_without_bias(native):
    check_conv(native, (1, 3, 8, 8), (5, 3, 3, 3), bias=False, activation="relu",
               residual="pre")


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_conv_activation(native, activation):
    check_conv(native, (1, 16, 7, 7), (16, 16, 3, 3), pad_begin=(1, 1), pad_end=(1, 1),
               activation=activation, src_nhwc=True, dst_nhwc=True)


@pytest.mark.parametrize("residual", ["pre", "post"])
@pytest.mark.parametrize("nhwc", [False, True])
def test_conv_residual(native, residual, nhwc):
    check_conv(native, (1, 16, 9, 9), (16, 16, 3, 3), pad_begin=(1, 1), pad_end=(1, 1),
               activation="relu", residual=residual, src_nhwc=nhwc, dst_nhwc=nhwc)


@pytest.mark.parametrize("src_nhwc", [False, True])
@pytest.mark.parametrize("dst_nhwc", [False, True])
def test_conv_layouts_batch_2(native, src_nhwc, dst_nhwc):
    check_conv(native, (2, 32, 12, 10), (24, 32, 3, 3), stride=(2, 2), pad_begin=(1, 1),
               pad_end=(1, 1), activation="silu", residual="pre", src_nhwc=src_nhwc,
               dst_nhwc=dst_nhwc)


@pytest.mark.parametrize("nwc", [False, True])
def test_conv1d(native, nwc):
    check_conv(native, (2, 6, 19), (10, 3, 5), groups=2, stride=(2,), pad_begin=(2,),
               pad_end=(1,), dilation=(2,), activation="gelu", residual="post", src_nhwc=nwc,
               dst_nhwc=nwc)


def test_conv_chain_through_the_arena(native):
    """Two steps sharing the arena and the scratch: stem conv -> depthwise conv, NHWC."""
    x = rand(1, 3, 16, 16)
    w1, b1 = rand(16, 3, 3, 3, seed=1, scale=0.2), rand(16, seed=2)
    w2, b2 = rand(16, 1, 3, 3, seed=3, scale=0.3), rand(16, seed=4)
    mid = F.relu(F.conv2d(x, w1, b1, stride=2, padding=1))
    ref = F.hardswish(F.conv2d(mid, w2, b2, padding=1, groups=16))

    plan = native.Plan()
    src = plan.add_slot(INPUT, 0, 0)
    tmp = plan.add_slot(ARENA, 128, -1)
    out = plan.add_slot(OUTPUT, 0, 0)
    plan.set_arena_bytes(128 + mid.numel() * 4)
    plan.add_output(torch.float32, [1, 8, 8, 16])
    native.add_conv(plan, "stem", src, tmp, -1, [1, 3, 16, 16], w1, b1, [2, 2], [1, 1], [1, 1],
                    [1, 1], 1, "relu", 0.0, 0.0, "none", False, True)
    native.add_conv(plan, "dw", tmp, out, -1, [1, 16, 8, 8], w2, b2, [1, 1], [1, 1], [1, 1],
                    [1, 1], 16, activation="hardswish", src_nhwc=True, dst_nhwc=True)
    assert plan.step_names == ["stem", "dw"]
    for _ in range(2):  # the second call reuses the pooled arena
        (y,) = plan.run([x], 2)
        torch.testing.assert_close(from_nhwc(y), ref, **TOL)


def test_conv_bad_arguments(native):
    plan = native.Plan()
    w = torch.zeros(4, 3, 3, 3)
    args = dict(plan=plan, name="conv_7", src=0, dst=1, residual=-1, src_shape=[1, 3, 8, 8],
                weight=w, bias=None, stride=[1, 1], pad_begin=[0, 0], pad_end=[0, 0],
                dilation=[1, 1], groups=1)
    with pytest.raises(ValueError, match="conv_7: groups=2"):
        native.add_conv(**{**args, "groups": 2})
    with pytest.raises(ValueError, match="conv_7: unknown activation 'swish'"):
        native.add_conv(**args, activation="swish")
    with pytest.raises(ValueError, match="conv_7: residual mode 'pre' needs a residual slot"):
        native.add_conv(**args, residual_mode="pre")
    with pytest.raises(ValueError, match="conv_7: .*does not fit"):
        native.add_conv(**{**args, "src_shape": [1, 3, 2, 2]})
    with pytest.raises(ValueError, match="conv_7: the weight must be a float32"):
        native.add_conv(**{**args, "weight": w.double()})
    with pytest.raises(ValueError, match="conv_7: conv src must be"):
        native.add_conv(**{**args, "src_shape": [1, 3, 8, 8, 8]})
    assert plan.num_steps == 0


# ---------------------------------------------------------------------------------------------
# matmul


def check_matmul(native, a_shape, b_shape, *, constant=True, bias=True, activation="none",
                 residual="none", transposed_weight=False, seed=0):
    a = rand(*a_shape, seed=seed)
    if transposed_weight:  # a linear layer's W.t(): a non-contiguous view
        b = rand(*reversed(b_shape), seed=seed + 1, scale=b_shape[-2] ** -0.5).t()
    else:
        b = rand(*b_shape, seed=seed + 1, scale=b_shape[-2] ** -0.5)
    c = rand(b_shape[-1], seed=seed + 2) if bias else None
    y = torch.matmul(a, b) + (c if c is not None else 0)
    r = rand(*y.shape, seed=seed + 3) if residual != "none" else None
    ref = epilogue(y, r, activation, residual)
    alpha, beta, _ = ACTIVATIONS[activation]

    inputs = [a] + ([] if constant else [b.contiguous()]) + ([r] if r is not None else [])

    def steps(plan, ins, outs):
        b_slot = -1 if constant else ins[1]
        r_slot = ins[-1] if r is not None else -1
        native.add_matmul(plan, "mm", ins[0], b_slot, outs[0], r_slot, list(a_shape),
                          list(b_shape), b if constant else None, c, activation, alpha, beta,
                          residual)

    (out,) = run_plan(native, inputs, [list(ref.shape)], steps)
    torch.testing.assert_close(out, ref, **TOL)


@pytest.mark.parametrize("m", [1, 128])
def test_matmul_linear(native, m):
    check_matmul(native, (m, 384), (384, 1152), transposed_weight=True, activation="gelu")


def test_matmul_linear_one_row(native):
    check_matmul(native, (1, 64), (64, 128), transposed_weight=True, activation="relu")


@pytest.mark.parametrize("constant", [True, False])
def test_matmul_odd_sizes(native, constant):
    check_matmul(native, (5, 7), (7, 33), constant=constant)
    check_matmul(native, (3, 33), (33, 7), constant=constant, bias=False)


def test_matmul_3d_a_with_2d_weight(native):
    check_matmul(native, (2, 9, 33), (33, 7), transposed_weight=True, residual="pre",
                 activation="tanh")


@pytest.mark.parametrize("a_shape,b_shape", [
    ((2, 3, 5, 8), (1, 3, 8, 6)),   # b broadcast over a's first batch dim
    ((2, 1, 5, 8), (1, 3, 8, 6)),   # both broadcast
    ((5, 8), (3, 8, 6)),            # a broadcast, lower rank
    ((4, 5, 8), (8, 6)),            # a non-constant 2-D b: a's batch folds into M
    ((2, 4, 16, 32), (2, 4, 32, 16)),  # attention's Q @ K^T
])
def test_matmul_batched_non_constant_b(native, a_shape, b_shape):
    check_matmul(native, a_shape, b_shape, constant=False, bias=False)
    check_matmul(native, a_shape, b_shape, constant=False, activation="sigmoid", residual="post")


def test_matmul_batched_constant_b(native):
    check_matmul(native, (3, 5, 8), (3, 8, 6), residual="pre", activation="relu")


@pytest.mark.parametrize("residual", ["none", "pre", "post"])
def test_matmul_residual(native, residual):
    check_matmul(native, (128, 96), (96, 64), activation="gelu_tanh", residual=residual)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_matmul_activation(native, activation):
    check_matmul(native, (9, 40), (40, 24), transposed_weight=True, activation=activation)


@pytest.mark.parametrize("activation,residual", [("none", "none"), ("gelu", "none"),
                                                 ("relu", "pre"), ("none", "pre"),
                                                 ("tanh", "none"), ("silu", "pre")])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gemm", ["aten", "brgemm"])
def test_matmul_through_aten_gemm_matches(native, monkeypatch, activation, residual, bias, gemm):
    """A constant-weight matmul may run as ATen's GEMM or torch's brgemm tiles plus the
    epilogue (where that is faster, e.g. oneDNN's f32 matmul on AVX2); forced here, it gives
    the reference's numbers with every epilogue it is offered for."""
    monkeypatch.setenv("RTINFER_GEMM", gemm)
    check_matmul(native, (64, 96), (96, 48), transposed_weight=True, bias=bias,
                 activation=activation, residual=residual)
    check_matmul(native, (2, 5, 33), (33, 7), bias=bias, activation=activation,
                 residual=residual)  # a's batch folds into the rows
    # brgemm's tiles: 130 rows are two row blocks (128 + 2), 100 columns end in a ragged panel
    check_matmul(native, (130, 40), (40, 100), bias=bias, activation=activation,
                 residual=residual)


@pytest.mark.parametrize("gemm,label", [("aten", "ATen GEMM"),
                                        ("brgemm", "torch oneDNN brgemm")])
def test_aten_gemm_step_is_named_and_post_residual_stays_on_onednn(native, monkeypatch, gemm,
                                                                   label):
    monkeypatch.setenv("RTINFER_GEMM", gemm)
    w = rand(16, 4)
    for mode, want in (("none", True), ("post", False)):
        plan = native.Plan()
        a, r = plan.add_slot(INPUT, 0, 0), plan.add_slot(INPUT, 0, 1)
        out = plan.add_slot(OUTPUT, 0, 0)
        native.add_matmul(plan, "mm", a, -1, out, r if mode != "none" else -1, [8, 16], [16, 4],
                          w, None, "relu", 0.0, 0.0, mode)
        assert (label in plan.step_names[0]) is want, (mode, plan.step_names)


def test_brgemm_tile_gelu_matches_torch_on_special_values(native, monkeypatch):
    """brgemm's GELU runs in each tile (erf as a rational function, as Eigen's and XLA's float
    erf): it matches torch's GELU over the whole range, far tails and tiny values included,
    and NaN stays NaN (infinities are left out, as for every smooth activation here)."""
    monkeypatch.setenv("RTINFER_CPU_ISA", native.level())
    monkeypatch.setenv("RTINFER_GEMM", "brgemm")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 72), torch.nn.GELU()).eval()
    x = torch.randn(70, 16) * 3
    x[3, :] = float("nan")
    with torch.no_grad():
        m[0].weight[7] = 0.0
        m[0].bias[7] = 1e-30
        m[0].weight[8] *= 40  # far into the tails: erf is +-1 there
    import rtinfer

    cm = rtinfer.compile(m, example_inputs=(x,), backend="native")
    steps = [name for name, _ in cm.module.profile(x, iters=1)]
    assert any("brgemm" in name for name in steps), steps
    got, want = cm(x), m(x)
    assert torch.isnan(want[3]).all() and torch.equal(torch.isnan(got), torch.isnan(want))
    # the GEMM's rounding (pre-activations up to about 100) bounds the agreement, not the erf
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-5)


def test_matmul_bad_arguments(native):
    plan = native.Plan()
    w = torch.zeros(8, 4)
    args = dict(plan=plan, name="fc_3", a=0, b=-1, dst=1, residual=-1, a_shape=[2, 8],
                b_shape=[8, 4], weight=w, bias=None)
    with pytest.raises(ValueError, match=r"fc_3: inner dimensions differ: \[2, 7\] @ \[8, 4\]"):
        native.add_matmul(**{**args, "a_shape": [2, 7]})
    with pytest.raises(ValueError, match="fc_3: batch dimensions do not broadcast"):
        native.add_matmul(**{**args, "a_shape": [2, 2, 8], "b_shape": [3, 8, 4], "b": 2,
                             "weight": None})
    with pytest.raises(ValueError, match=r"fc_3: the weight has shape \[8, 4\], b_shape says"):
        native.add_matmul(**{**args, "b_shape": [8, 5]})
    with pytest.raises(ValueError, match=r"fc_3: the bias must be \[4\]"):
        native.add_matmul(**{**args, "bias": torch.zeros(5)})
    with pytest.raises(ValueError, match="fc_3: b is neither a slot nor a constant weight"):
        native.add_matmul(**{**args, "weight": None})
    with pytest.raises(ValueError, match="fc_3: a residual slot was given with residual mode"):
        native.add_matmul(**{**args, "residual": 2})
    with pytest.raises(ValueError, match="fc_3: clip needs alpha"):
        native.add_matmul(**args, activation="clip", alpha=1.0, beta=0.0)
    assert plan.num_steps == 0


def test_concurrent_calls(native):
    """Calls from several threads at once: each gets its own memory objects and arena."""
    from concurrent.futures import ThreadPoolExecutor

    w, c = rand(48, 32, seed=1, scale=0.2), rand(48, seed=2)
    plan = native.Plan()
    src, out = plan.add_slot(INPUT, 0, 0), plan.add_slot(OUTPUT, 0, 0)
    tmp = plan.add_slot(ARENA, 0, -1)
    plan.set_arena_bytes(16 * 48 * 4)
    plan.add_output(torch.float32, [16, 48])
    native.add_matmul(plan, "fc1", src, -1, tmp, -1, [16, 32], [32, 48], w.t(), c, "relu")
    native.add_matmul(plan, "fc2", tmp, -1, out, -1, [16, 48], [48, 48],
                      rand(48, 48, seed=3, scale=0.1), None, "tanh")
    xs = [rand(16, 32, seed=10 + i) for i in range(8)]
    refs = [plan.run([x], 1)[0] for x in xs]

    def call(i: int) -> bool:
        return all(torch.equal(plan.run([xs[i % 8]], 1)[0], refs[i % 8]) for _ in range(200))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(call, range(8)))
    assert plan.pooled_arenas >= 1


@pytest.mark.parametrize("threads", [1, 2])
def test_planned_thread_count(native, threads):
    """threads= fixes the thread count oneDNN plans the primitive for; results do not depend on
    it."""
    a, w = rand(64, 256), rand(256, 192, seed=1, scale=1 / 16)
    x, k = rand(1, 32, 20, 20, seed=2), rand(32, 32, 3, 3, seed=3, scale=1 / 17)

    def steps(plan, ins, outs):
        native.add_matmul(plan, "fc", ins[0], -1, outs[0], -1, [64, 256], [256, 192], w, None,
                          threads=threads)
        native.add_conv(plan, "conv", ins[1], outs[1], -1, [1, 32, 20, 20], k, None, [1, 1],
                        [1, 1], [1, 1], [1, 1], 1, threads=threads)

    y, z = run_plan(native, [a, x], [[64, 192], [1, 32, 20, 20]], steps)
    torch.testing.assert_close(y, a @ w, **TOL)
    torch.testing.assert_close(z, F.conv2d(x, k, padding=1), **TOL)


def test_conv_whose_window_does_not_give_the_dst_shape_is_refused(native):
    # the dst slot is sized for dst_shape; writing another shape would run past it
    plan = native.Plan()
    src, dst = plan.add_slot(INPUT, 0, 0), plan.add_slot(INPUT, 0, 1)
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"gives an output of \[1, 4, 8, 8\], the dst is "
                                         r"\[1, 4, 6, 8\]"):
        native.add_conv(plan, "conv", src, dst, -1, [1, 3, 8, 8], w, None, [1, 1], [1, 1],
                        [1, 1], [1, 1], 1, dst_shape=[1, 4, 6, 8])
    native.add_conv(plan, "conv", src, dst, -1, [1, 3, 8, 8], w, None, [1, 1], [1, 1], [1, 1],
                    [1, 1], 1, dst_shape=[1, 4, 8, 8])
    x, y = torch.randn(1, 3, 8, 8), torch.empty(1, 4, 8, 8)
    plan.run([x, y], 1)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1),
                               rtol=1e-4, atol=1e-4)
