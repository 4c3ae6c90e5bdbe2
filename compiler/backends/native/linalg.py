"""linear and matmul (and their fused forms) as oneDNN matmul steps, or as rtinfer's own GEMV
step (cpp/native/cpu_gemv.cpp) for a constant weight and a few rows."""

from __future__ import annotations

import math
import os

from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.backends.native.plan import View, contiguous_strides
from rtinfer.ir.graph import Node, Value

# The GEMV step takes a constant [K, N] weight with at most GEMV_MAX_ROWS rows (the product of
# x's leading dims) and at most GEMV_MAX_WEIGHT elements; the rest stays on oneDNN. Measured
# (rough: a shared, loaded 2-core AVX-512 Xeon; one-step plans, interleaved medians in us,
# oneDNN 3.2 -> gemv; 1 thread, where 2-thread runs were swamped by preemption):
#                         avx512 (brg:avx512_core)     avx2 (gemm:jit, RTINFER_CPU_ISA=avx2)
#   rows x K x N          weights in L2 | in L3        in L2 | in L3
#   1 x 512 x 1000        64 -> 50   207 -> 145        40 -> 49    102 -> 98
#   1 x 256 x 256         3.6 -> 2.8  11 -> 8.5       3.6 -> 3.6   9.7 -> 8.9
#   2 x 512 x 1000        59 -> 49    363 -> 357       61 -> 48    118 -> 84
#   4 x 1280 x 1000      409 -> 391   665 -> 616      296 -> 249   685 -> 642
#   4 x 1024 x 1024      179 -> 173   385 -> 443      223 -> 174   535 -> 491
#   8 x 512 x 1000        78 -> 79    151 -> 172       78 -> 96    202 -> 200
# so up to 4 rows, and at 8 no gain. In the models (the classifier's profile step, weights
# evicted by the convolutions; threads 1 / 2): ResNet-18's 512 x 1000 avx512 223 -> 201 /
# 124 -> 107, avx2 196 -> 229 (a loss at 1 thread) / 131 -> 115; the benchmark MLP 64-128-128-10
# (per-call overhead) 2.7 -> 1.2-1.7 us over its three steps, 7.5 -> 5.5 us a call. But
# MobileNetV2's 1280 x 1000 (5 MB) lost: 543 -> 723 us (avx2: 367 -> 559), and a cold call
# 532 -> 570 us even with prefetch. Past L2-sized weights (2 MB a core here) oneDNN streams
# from memory as fast or faster, so the GEMV step stops at 4 MB (two cores' L2).
GEMV_MAX_ROWS = 4
GEMV_MAX_WEIGHT = 1 << 20
# the activations the GEMV epilogue computes (the rest of fused.py's table stays on oneDNN)
GEMV_ACTIVATIONS = frozenset({"none", "relu", "leaky_relu", "clip", "gelu", "gelu_tanh"})


def _gemv_rows(cx: Lowerer, a: View, weight, attrs: dict) -> int | None:
    """The rows of a matmul the GEMV step takes (a 2-d constant weight, a supported activation,
    few rows), else None. $RTINFER_GEMM=onednn or =aten keeps it on the oneDNN step (as for
    the ATen race in dnnl_ops.cpp), =gemv takes the GEMV step at any row count."""
    forced = os.environ.get("RTINFER_GEMM", "")
    if weight is None or weight.dim() != 2 or forced in ("onednn", "aten"):
        return None
    if attrs.get("activation", "none") not in GEMV_ACTIVATIONS:
        return None
    if a.shape[-1] != weight.shape[0]:
        return None  # the oneDNN step's builder names the mismatch
    rows = math.prod(a.shape[:-1])
    if forced != "gemv" and (rows > GEMV_MAX_ROWS or weight.numel() > GEMV_MAX_WEIGHT):
        return None
    return rows


def _matmul_step(cx: Lowerer, node: Node, a: View, b: View | None, weight, b_shape,
                 bias, residual_in: Value | None, attrs: dict) -> None:
    y = cx.new_value(node.out)
    residual = cx.plain(residual_in) if residual_in is not None else None
    res_buf = residual.buf if residual is not None else -1
    mode = attrs.get("residual", "none")
    rows = _gemv_rows(cx, a, weight, attrs)
    if rows is not None:
        K, N = (int(d) for d in weight.shape)
        gargs = (a.buf, y.buf, res_buf, rows, K, N, weight, bias,
                 attrs.get("activation", "none"), float(attrs.get("alpha", 0.0)),
                 float(attrs.get("beta", 0.0)), mode)
        cx.step("gemv", lambda ext, plan, name: ext.add_gemv(plan, name, *gargs),
                [a.buf] + ([res_buf] if residual else []), [y.buf])
        return
    args = (a.buf, b.buf if b is not None else -1, y.buf, res_buf, list(a.shape), list(b_shape),
            weight, bias, attrs.get("activation", "none"), float(attrs.get("alpha", 0.0)),
            float(attrs.get("beta", 0.0)), mode, cx.threads)
    reads = [a.buf] + ([b.buf] if b is not None else []) + ([res_buf] if residual else [])
    cx.step("oneDNN matmul", lambda ext, plan, name: ext.add_matmul(plan, name, *args), reads,
            [y.buf])


@lowers("linear", "fused_linear")
def _linear(cx: Lowerer, node: Node) -> None:
    x = cx.plain(node.inputs[0])
    cx.need_f32(x)
    w = cx.const_tensor(node.inputs[1])
    if w is None:
        raise cx.unsupported("the weight is not a constant")
    bias = None
    if len(node.inputs) > 2:
        bias = cx.const_tensor(node.inputs[2])
        if bias is None:
            raise cx.unsupported("the bias is not a constant")
    if len(x.shape) < 2:
        x = View(x.buf, (1,) + x.shape, x.dtype, contiguous_strides((1,) + x.shape), x.offset)
        if len(node.out.type.shape) < 2:
            raise cx.unsupported("a 1-d linear")
    wt = w.t()  # [K, N]
    residual = node.inputs[3] if len(node.inputs) > 3 else None
    _matmul_step(cx, node, x, None, wt, tuple(wt.shape), bias, residual, node.attrs)


@lowers("matmul", "fused_matmul")
def _matmul(cx: Lowerer, node: Node) -> None:
    a = cx.plain(node.inputs[0])
    cx.need_f32(a)
    if len(a.shape) < 2 or len(node.inputs[1].type.shape) < 2:
        raise cx.unsupported("a 1-d matmul operand")
    w = cx.const_tensor(node.inputs[1])
    b = None if w is not None else cx.plain(node.inputs[1])
    b_shape = tuple(w.shape) if w is not None else b.shape
    bias = None
    if len(node.inputs) > 2:
        bias = cx.const_tensor(node.inputs[2])
        if bias is None:
            raise cx.unsupported("the bias is not a constant")
    residual = node.inputs[3] if len(node.inputs) > 3 else None
    _matmul_step(cx, node, a, b, w, b_shape, bias, residual, node.attrs)
