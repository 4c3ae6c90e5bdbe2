"""rtinfer's own CPU kernels (cpp/native/cpu_*.cpp), each in a one-step plan built by hand,
against torch: layer/RMS norm, softmax, attention, pooling, reductions, embedding, strided copies
and the driver of generated elementwise functions."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

build = pytest.importorskip("rtinfer.kernels.build")

INPUT, OUTPUT, CONST, ARENA, ALIAS = range(5)


def run_step(native, add, inputs, out, *args, threads=2, **kw):
    """A plan of one step: add(plan, name, *input slots, output slot, *args) over `inputs`
    (contiguous tensors) into a fresh tensor shaped like `out`, run once."""
    plan = native.Plan()
    ins = [plan.add_slot(INPUT, 0, i) for i in range(len(inputs))]
    y = plan.add_slot(OUTPUT, 0, 0)
    plan.add_output(out.dtype, list(out.shape))
    add(plan, "test", *ins, y, *args, **kw)
    return plan.run([t.contiguous() for t in inputs], threads)[0]


def close(got, want, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, equal_nan=True)


# -- layer norm / RMS norm ----------------------------------------------------------------------


@pytest.mark.parametrize("rows,cols", [(128, 384), (3, 7), (1, 1), (5, 1000)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(native, rows, cols, affine):
    torch.manual_seed(0)
    x = torch.randn(rows, cols) * 3 + 1
    g, b = (torch.randn(cols), torch.randn(cols)) if affine else (None, None)
    y = run_step(native, native.add_layer_norm, [x], x, rows, cols, g, b, 1e-5, False)
    close(y, F.layer_norm(x, (cols,), g, b, 1e-5))


@pytest.mark.parametrize("rows,cols", [(128, 384), (3, 7)])
def test_rms_norm_matches_the_formula(native, rows, cols):
    torch.manual_seed(1)
    x, g = torch.randn(rows, cols), torch.randn(cols)
    y = run_step(native, native.add_layer_norm, [x], x, rows, cols, g, None, 1e-6, True)
    want = x / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6).float() * g
    close(y, want)


# -- softmax ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,cols", [(4, 1000), (3, 7), (1, 1), (64, 128)])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_matches_torch(native, rows, cols, log):
    torch.manual_seed(2)
    x = torch.randn(rows, cols) * 10
    x[0, : cols // 2] = -math.inf  # masked entries give exactly 0 (log: -inf)
    y = run_step(native, native.add_softmax, [x], x, rows, cols, log)
    close(y, F.log_softmax(x, -1) if log else F.softmax(x, -1))


def test_softmax_special_values_as_torch(native):
    """NaN and +inf spread to their row, a row of -inf is NaN, and scores more than 87 below
    the row's max give 0 (torch: a denormal), at every level (AVX2 has its own exp for x - max)."""
    rows = [[1.0, math.nan, 2.0], [1.0, math.inf, 2.0], [-math.inf] * 3, [math.inf, math.inf, 0.0],
            [0.0, -200.0, -90.0], [-1e30, 3.0, 2.0], [50.0, -50.0, 49.0]]
    x = torch.tensor([r + [0.5] * 13 for r in rows])  # 16 columns: the vector loops run
    x[4:, 3:] = -1000.0
    for log in (False, True):
        y = run_step(native, native.add_softmax, [x], x, x.shape[0], x.shape[1], log)
        close(y, F.log_softmax(x, -1) if log else F.softmax(x, -1))


# -- attention ----------------------------------------------------------------------------------


def attention(native, q, k, v, *, mask=None, causal=False, scale=None, layout="bshd",
              threads=2):
    """Run add_attention on q [B,H,Sq,D], k/v [B,H,Skv,D] (torch layout) stored as `layout`:
    "bshd": q, k and v packed side by side in one [B, S, 3*H*D] tensor (a fused projection,
    read through alias slots), y written as [B, Sq, H*D]; "bhsd": contiguous [B, H, S, D]."""
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    plan = native.Plan()
    if layout == "bshd":
        assert Sq == Skv
        packed = torch.cat([t.transpose(1, 2).reshape(B, Sq, H * D) for t in (q, k, v)], -1)
        inputs = [packed.contiguous()]
        base = plan.add_slot(INPUT, 0, 0)
        slots = [plan.add_slot(ALIAS, i * H * D * 4, base) for i in range(3)]
        in_strides = [[Sq * 3 * H * D, D, 3 * H * D]] * 3
        y_shape, y_strides = [B, Sq, H * D], [Sq * H * D, D, H * D]
    else:
        inputs = [q.contiguous(), k.contiguous(), v.contiguous()]
        slots = [plan.add_slot(INPUT, 0, i) for i in range(3)]
        in_strides = [[H * Sq * D, Sq * D, D]] + [[H * Skv * D, Skv * D, D]] * 2
        y_shape, y_strides = [B, H, Sq, D], [H * Sq * D, Sq * D, D]
    mask_slot, mask_kind, mask_strides = -1, 0, [0, 0, 0, 0]
    if mask is not None:
        m4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        mask_strides = [0 if m4.shape[i] == 1 else m4.stride(i) for i in range(4)]
        inputs.append(m4.contiguous())
        mask_slot = plan.add_slot(INPUT, 0, len(inputs) - 1)
        mask_kind = 1 if mask.dtype == torch.bool else 2
    y = plan.add_slot(OUTPUT, 0, 0)
    plan.add_output(torch.float32, y_shape)
    native.add_attention(plan, "attn", *slots, mask_slot, y, B, H, Sq, Skv, D, *in_strides,
                         y_strides, mask_kind, mask_strides,
                         scale if scale is not None else 1 / math.sqrt(D), causal)
    out = plan.run(inputs, threads)[0]
    return out.view(B, Sq, H, D).transpose(1, 2) if layout == "bshd" else out


SHAPES = [(1, 12, 128, 128, 32), (2, 3, 7, 7, 5), (1, 2, 1, 1, 8), (2, 2, 33, 33, 64),
          (1, 1, 17, 17, 128), (1, 2, 40, 40, 80)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("variant", ["plain", "causal", "bool", "float"])
def test_attention_matches_sdpa(native, shape, layout, variant):
    B, H, Sq, Skv, D = shape
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(B, H, s, D, generator=g) for s in (Sq, Skv, Skv))
    kw, mask = {}, None
    if variant == "causal":
        kw["is_causal"] = True
    elif variant == "bool":  # per (b, q, k), broadcast over heads
        mask = torch.rand(B, 1, Sq, Skv, generator=g) > 0.3
        mask[..., 0] = True
        kw["attn_mask"] = mask
    elif variant == "float":  # [q, k], broadcast over batch and heads
        mask = torch.randn(Sq, Skv, generator=g)
        kw["attn_mask"] = mask
    want = F.scaled_dot_product_attention(q, k, v, **kw)
    got = attention(native, q, k, v, mask=mask, causal=variant == "causal", layout=layout)
    close(got, want)


def test_attention_cross_lengths_scale_and_key_broadcast_mask(native):
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 19, 16), torch.randn(2, 3, 19, 16)
    mask = torch.randn(2, 1, 1, 19)  # a padding mask: broadcast over heads and queries
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    close(attention(native, q, k, v, mask=mask, scale=0.3, layout="bhsd"), want)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # top-left aligned
    close(attention(native, q, k, v, causal=True, layout="bhsd"), causal)


def test_attention_fully_masked_rows_give_zeros_as_torch(native):
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    bool_mask = torch.ones(6, 6, dtype=torch.bool)
    bool_mask[2] = False
    float_mask = torch.zeros(6, 6)
    float_mask[4] = -math.inf
    for mask in (bool_mask, float_mask):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        got = attention(native, q, k, v, mask=mask, layout="bhsd")
        close(got, want)
        assert torch.all(got[:, :, 2 if mask.dtype == torch.bool else 4] == 0)


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_padding_mask_matches_sdpa(native, full, causal):
    # a padded batch: keys past each sequence's length masked off (the kernel leaves out the
    # keys no query row sees); as a [B, 1, 1, S] key mask or, as Hugging Face builds it for
    # sdpa, a full [B, 1, S, S] one; with a causal limit too
    g = torch.Generator().manual_seed(7)
    B, H, S, D = 3, 4, 128, 32
    q, k, v = (torch.randn(B, H, S, D, generator=g) for _ in range(3))
    keys = torch.arange(S) < torch.tensor([10, 77, 128])[:, None]  # [B, S]
    mask = keys[:, None, None, :]
    if full:
        mask = mask & torch.ones(B, 1, S, S, dtype=torch.bool)
    want_mask = mask & torch.ones(S, S, dtype=torch.bool).tril() if causal else mask
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=want_mask)
    close(attention(native, q, k, v, mask=mask, causal=causal, layout="bhsd"), want)
    close(attention(native, q, k, v, mask=mask, causal=causal, layout="bhsd", threads=1), want)


def test_attention_padding_keeps_eagers_nan_from_padded_values(native):
    # a NaN in a masked key's value row reaches eager's output (probability 0 times NaN): the
    # kernel must not leave that key out
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    mask = (torch.arange(16) < 5)[None, None, None, :]
    v[0, 1, 12, 3] = math.nan
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention(native, q, k, v, mask=mask, layout="bhsd")
    assert torch.isnan(want[0, 1]).any() and not torch.isnan(want[0, 0]).any()
    close(got, want)


def test_attention_single_thread_and_many_threads_agree(native):
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 2, 50, 32) for _ in range(3))
    one = attention(native, q, k, v, layout="bhsd", threads=1)
    many = attention(native, q, k, v, layout="bhsd", threads=4)
    close(one, many, atol=0, rtol=0)  # the query split changes no arithmetic


def test_one_plan_runs_from_several_threads_at_once(native):
    torch.manual_seed(6)
    B, H, S, D = 1, 4, 64, 32
    plan = native.Plan()
    qs = [plan.add_slot(INPUT, 0, i) for i in range(3)]
    y = plan.add_slot(OUTPUT, 0, 0)
    plan.add_output(torch.float32, [B, H, S, D])
    st = [H * S * D, S * D, D]
    native.add_attention(plan, "attn", *qs, -1, y, B, H, S, S, D, st, st, st, st, 0,
                         [0, 0, 0, 0], 1 / math.sqrt(D), False)
    cases = [[torch.randn(B, H, S, D) for _ in range(3)] for _ in range(4)]
    wants = [F.scaled_dot_product_attention(*c) for c in cases]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(20):
                close(plan.run(cases[i], 2)[0], wants[i])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# -- pooling ------------------------------------------------------------------------------------


def pool_out(size, k, s, p, d, ceil):
    eff = d * (k - 1) + 1
    num = size + 2 * p - eff
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + p:  # torch: the last window must start inside
        out -= 1
    return out


POOLS = [
    # kind, kernel, stride, pad, dilation, ceil_mode, count_include_pad
    ("max", (3, 3), (2, 2), (1, 1), (1, 1), False, True),
    ("max", (3, 3), (2, 2), (0, 0), (1, 1), True, True),
    ("max", (2, 3), (1, 2), (1, 0), (2, 1), False, True),
    ("max", (3, 2), (2, 2), (1, 1), (2, 2), True, True),
    ("avg", (3, 3), (2, 2), (1, 1), (1, 1), False, True),
    ("avg", (3, 3), (2, 2), (1, 1), (1, 1), False, False),
    ("avg", (3, 3), (2, 2), (1, 1), (1, 1), True, True),
    ("avg", (3, 3), (2, 2), (1, 1), (1, 1), True, False),
    ("avg", (2, 2), (2, 2), (0, 0), (1, 1), True, True),
    ("avg", (3, 1), (3, 1), (1, 0), (1, 1), True, False),
]


@pytest.mark.parametrize("cfg", POOLS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("nhwc,C", [(False, 19), (True, 19), (True, 87)])
def test_pool2d_matches_torch(native, cfg, nhwc, C):
    # NHWC runs channel blocks of 64, 16, 4 and 1: 87 takes each
    kind, k, s, p, d, ceil, cip = cfg
    torch.manual_seed(7)
    N, H, W = 2, 10, 9
    x = torch.randn(N, C, H, W)
    if kind == "max":
        want = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil)
    else:
        want = F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=cip)
    OH, OW = pool_out(H, k[0], s[0], p[0], d[0], ceil), pool_out(W, k[1], s[1], p[1], d[1], ceil)
    assert want.shape[2:] == (OH, OW)
    xin = x.permute(0, 2, 3, 1) if nhwc else x
    out = torch.empty(N, OH, OW, C) if nhwc else torch.empty(N, C, OH, OW)
    y = run_step(native, native.add_pool2d, [xin], out, N, C, H, W, OH, OW, list(k), list(s),
                 list(p), list(d), kind, cip, nhwc)
    close(y.permute(0, 3, 1, 2) if nhwc else y, want)


def test_avg_pool_with_asymmetric_padding_counts_the_end_pad(native):
    # ONNX AveragePool pads [0, 0, 1, 1], count_include_pad=1: F.pad then pool without padding
    torch.manual_seed(8)
    x = torch.randn(1, 3, 5, 5)
    want = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 2)
    y = run_step(native, native.add_pool2d, [x], torch.empty(1, 3, 3, 3), 1, 3, 5, 5, 3, 3,
                 [2, 2], [2, 2], [0, 0], [1, 1], "avg", True, False, pad_end=[1, 1])
    close(y, want)


def test_max_pool_propagates_nan(native):
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 1] = math.nan
    y = run_step(native, native.add_pool2d, [x], torch.empty(1, 1, 2, 2), 1, 1, 4, 4, 2, 2,
                 [2, 2], [2, 2], [0, 0], [1, 1], "max", True, False)
    close(y, F.max_pool2d(x, 2, 2))


def test_max_pool_nhwc_propagates_nan_in_every_channel_block(native):
    x = torch.zeros(1, 87, 4, 4)
    for c in (0, 63, 64, 79, 80, 83, 84, 86):  # a channel of each block
        x[0, c, 1, c % 4] = math.nan
    want = F.max_pool2d(x, 2, 2)
    y = run_step(native, native.add_pool2d, [x.permute(0, 2, 3, 1)], torch.empty(1, 2, 2, 87),
                 1, 87, 4, 4, 2, 2, [2, 2], [2, 2], [0, 0], [1, 1], "max", True, True)
    close(y.permute(0, 3, 1, 2), want)


# -- reductions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("dims", [(2, 49, 2048), (3, 1000, 1), (4, 7, 5), (1, 1, 3), (1, 300, 600)])
def test_reduce_matches_torch(native, kind, dims):
    torch.manual_seed(9)
    outer, extent, inner = dims
    x = torch.randn(outer, extent, inner)
    want = {"sum": x.sum(1), "mean": x.mean(1), "max": x.amax(1), "min": x.amin(1)}[kind]
    y = run_step(native, native.add_reduce, [x], want, outer, extent, inner, kind)
    close(y, want, atol=1e-4 if kind == "sum" else 1e-5)


@pytest.mark.parametrize("kind", ["max", "min"])
def test_reduce_max_min_propagate_nan(native, kind):
    x = torch.randn(2, 40, 3)
    x[0, 17, 1] = math.nan
    x[1, 3, 0] = math.nan
    want = x.amax(1) if kind == "max" else x.amin(1)
    close(run_step(native, native.add_reduce, [x], want, 2, 40, 3, kind), want)
    flat = x.permute(0, 2, 1).contiguous()
    want = flat.amax(-1) if kind == "max" else flat.amin(-1)
    close(run_step(native, native.add_reduce, [flat], want, 6, 40, 1, kind), want)


# -- embedding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_embedding_gathers_rows(native, index_dtype):
    torch.manual_seed(10)
    w = torch.randn(50, 24)
    idx = torch.tensor([[0, 49, 7], [-1, 3, -50]], dtype=index_dtype)
    out = torch.empty(2, 3, 24)
    y = run_step(native, native.add_embedding, [w, idx], out, 6, 24, 50, index_dtype)
    close(y, torch.from_numpy(np.take(w.numpy(), idx.numpy(), axis=0)), atol=0, rtol=0)


@pytest.mark.parametrize("bad", [50, -51, 1 << 40])
def test_embedding_out_of_range_raises_index_error_naming_the_step(native, bad):
    w, idx = torch.randn(50, 4), torch.tensor([1, bad, 2])
    with pytest.raises(IndexError, match=rf"test: index {bad} \(at position 1\)"):
        run_step(native, native.add_embedding, [w, idx], torch.empty(3, 4), 3, 4, 50,
                 torch.int64)


# -- strided copy -------------------------------------------------------------------------------


def copy(native, x, view, out_shape=None, out_strides=None, out_offset=0, out=None):
    """add_copy of `view` (a strided view of contiguous `x`) into `out` (or a fresh contiguous
    tensor of the view's shape)."""
    sizes = list(view.shape)
    if out is None:
        out = torch.empty(sizes, dtype=x.dtype)
        out_strides = list(out.stride())
    plan = native.Plan()
    xs, ys = plan.add_slot(INPUT, 0, 0), plan.add_slot(INPUT, 0, 1)
    native.add_copy(plan, "copy", xs, ys, x.element_size(), sizes, list(view.stride()),
                    view.storage_offset(), out_strides, out_offset)
    plan.run([x, out], 2)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.float16, torch.int64])
# (1, 3, 61, 67): three long rows, each split in uneven pieces across the threads
@pytest.mark.parametrize("shape", [(1, 64, 56, 56), (2, 3, 5, 7), (1, 17, 33, 40),
                                   (1, 3, 61, 67), (1, 3, 224, 224)])
def test_copy_nchw_nhwc_both_ways(native, dtype, shape):
    x = (torch.randn(shape) * 50).to(dtype)
    nhwc = copy(native, x, x.permute(0, 2, 3, 1))
    assert torch.equal(nhwc, x.permute(0, 2, 3, 1).contiguous())
    back = copy(native, nhwc, nhwc.permute(0, 3, 1, 2))
    assert torch.equal(back, x)


def test_copy_every_permutation_with_short_rows(native):
    """Every order of a tensor with short dims (3, 2): the copies whose output rows are short
    walk the input's contiguous dim and write whole rows, whatever dims sit in between."""
    import itertools

    x = torch.randn(3, 20, 2, 37)
    for perm in itertools.permutations(range(4)):
        view = x.permute(*perm)
        assert torch.equal(copy(native, x, view), view.contiguous()), perm
    y = torch.randn(2, 5, 3, 40)
    view = y[:, 1:4].permute(0, 3, 1, 2)  # an offset and a sliced outer dim
    assert torch.equal(copy(native, y, view), view.contiguous())


def test_copy_transposes_slices_with_steps_and_expands(native):
    x = torch.randn(6, 40, 50)
    for view in (x.transpose(1, 2), x.permute(2, 0, 1), x[1:5:2, 3::3, ::7],
                 x[:, :1, :].expand(6, 30, 50), x[2, 5, :1].expand(9, 4), x[:, 7], x.mT[..., 2:9]):
        assert torch.equal(copy(native, x, view), view.contiguous())


def test_copy_concatenates_into_offsets(native):
    a, b = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    out = torch.empty(2, 8, 4)
    plan = native.Plan()
    sa, sb, so = (plan.add_slot(INPUT, 0, i) for i in range(3))
    native.add_copy(plan, "cat0", sa, so, 4, [2, 3, 4], [12, 4, 1], 0, [32, 4, 1], 0)
    native.add_copy(plan, "cat1", sb, so, 4, [2, 5, 4], [20, 4, 1], 0, [32, 4, 1], 12)
    plan.run([a, b, out], 2)
    assert torch.equal(out, torch.cat([a, b], 1))


def test_copy_of_a_single_element_and_of_nothing(native):
    x = torch.arange(10.0)
    assert torch.equal(copy(native, x, x[3:4].view(1, 1)), torch.tensor([[3.0]]))
    assert copy(native, x, x[:0]).numel() == 0


# -- elementwise driver -------------------------------------------------------------------------

AXPY = """
#include <cstdint>
extern "C" void test_axpy(const char* const* ins, char* out, int64_t begin, int64_t end) {
  const float* a = (const float*)ins[0];
  const float* b = (const float*)ins[1];
  for (int64_t i = begin; i < end; ++i) ((float*)out)[i] = 2.0f * a[i] + b[i];
}
"""


@pytest.mark.parametrize("n", [1, 100, 70001])
def test_elementwise_runs_the_function_over_chunks(native, n):
    from rtinfer.kernels import codegen

    fn = codegen.compile_functions({"test_axpy": AXPY})["test_axpy"]
    a, b = torch.randn(n), torch.randn(n)
    plan = native.Plan()
    sa, sb = plan.add_slot(INPUT, 0, 0), plan.add_slot(INPUT, 0, 1)
    y = plan.add_slot(OUTPUT, 0, 0)
    plan.add_output(torch.float32, [n])
    native.add_elementwise(plan, "axpy", fn, [sa, sb], y, n)
    for threads in (1, 2, 3):
        close(plan.run([a, b], threads)[0], 2 * a + b, atol=0, rtol=0)


def test_elementwise_runs_generated_code_with_broadcasting(native):
    from rtinfer.ir import interpret, parse
    from rtinfer.kernels import codegen

    g = parse("""
        func @main(%x: f32[128,384], %b: f32[384]) -> f32[128,384] {
          %r = fused_elementwise(%x, %b) {body=func @f(%0: f32[128,384], %1: f32[384])
                                              -> f32[128,384] {
              %2 = add(%0, %1)
              %3 = gelu(%2)
              return %3
            }}
          return %r
        }
        """.strip() + "\n")
    gen = codegen.generate(g.nodes[-1])
    fn = codegen.compile_functions({gen.name: gen.source})[gen.name]
    x, b = torch.randn(128, 384), torch.randn(384)
    want = torch.from_numpy(interpret(g, x.numpy(), b.numpy()))
    plan = native.Plan()
    sx, sb = plan.add_slot(INPUT, 0, 0), plan.add_slot(INPUT, 0, 1)
    y = plan.add_slot(OUTPUT, 0, 0)
    plan.add_output(torch.float32, [128, 384])
    native.add_elementwise(plan, "gelu", fn, [sx, sb], y, 128 * 384)
    for threads in (1, 2, 3):  # 3 threads split the rows mid-row
        close(plan.run([x, b], threads)[0], want, atol=1e-6, rtol=1e-5)
