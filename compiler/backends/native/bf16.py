"""bf16 layers (docs/bf16.md) as oneDNN bf16 steps: the f32 activation rounded into a bf16
arena buffer (a oneDNN reorder), then a bf16 convolution or matmul with the weight prepacked
bf16 once, the f32 bias and the fp32 steps' epilogue, writing f32. Where oneDNN runs without
AVX512_BF16 / AMX-BF16 the step declines and the node runs the torch backend's bf16 code
(compile(precision="bf16") never makes bf16 layers there: it compiles fp32 and says so)."""

from __future__ import annotations

import torch

from rtinfer.backends.native.conv import _conv_window
from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.ir.graph import Node
from rtinfer.ir.types import DType


def _weight_f32(cx: Lowerer, node: Node) -> torch.Tensor:
    """The bf16 weight as f32 (exact: every bf16 is an f32), the form the steps take."""
    w = cx.const_tensor(node.inputs[1])
    if w is None:
        raise cx.unsupported("the weight is not a constant")
    return w.float()


def _bias(cx: Lowerer, node: Node) -> torch.Tensor | None:
    if len(node.inputs) < 3:
        return None
    bias = cx.const_tensor(node.inputs[2])
    if bias is None:
        raise cx.unsupported("the bias is not a constant")
    return bias


def _need_bf16(cx: Lowerer) -> None:
    if cx.ext is not None and not cx.ext.onednn_has_bf16():
        raise cx.unsupported("oneDNN runs without AVX512_BF16 / AMX-BF16 here")


@lowers("bf16_conv2d")
def _bf16_conv2d(cx: Lowerer, node: Node) -> None:
    _need_bf16(cx)
    a = node.attrs
    if a.get("layout", "NCHW") != "NCHW":
        raise cx.unsupported("an NHWC-layout bf16 convolution")
    w, bias = _weight_f32(cx, node), _bias(cx, node)
    src = cx.as_nhwc(node.inputs[0])
    cx.need_f32(src)
    src16 = cx.scratch_view(src.shape, DType.bf16, nhwc=True)
    y = cx.new_value(node.out, nhwc=True)
    mode = a.get("residual", "none")
    residual = None
    if mode != "none":
        residual = cx.as_nhwc(node.inputs[3]) if y.nhwc else cx.plain(node.inputs[3])
    res_buf = residual.buf if residual is not None else -1
    stride, pad, dil = _conv_window(a, 2)
    args = (src.buf, src16.buf, y.buf, res_buf, list(src.shape), w, bias, stride, pad[:2],
            pad[2:], dil, int(a["groups"]), a.get("activation", "none"),
            float(a.get("alpha", 0.0)), float(a.get("beta", 0.0)), mode, y.nhwc, cx.threads,
            list(y.shape))
    cx.step("oneDNN bf16 conv", lambda ext, plan, name: ext.add_bf16_conv(plan, name, *args),
            [src.buf] + ([res_buf] if residual is not None else []), [src16.buf, y.buf])


@lowers("bf16_linear", "bf16_matmul")
def _bf16_matmul(cx: Lowerer, node: Node) -> None:
    _need_bf16(cx)
    w, bias = _weight_f32(cx, node), _bias(cx, node)
    if w.dim() != 2:
        raise cx.unsupported(f"a {w.dim()}-d weight (the bf16 matmul step takes [K, N])")
    x = cx.plain(node.inputs[0])
    cx.need_f32(x)
    if len(x.shape) < 2 and node.op == "bf16_matmul":
        raise cx.unsupported("a 1-d matmul operand")
    wt = w.t().contiguous() if node.op == "bf16_linear" else w  # [K, N]
    rows = 1
    for d in x.shape[:-1]:
        rows *= d
    x16 = cx.scratch_view((rows, x.shape[-1]), DType.bf16)
    y = cx.new_value(node.out)
    mode = node.attrs.get("residual", "none")
    residual = cx.plain(node.inputs[3]) if mode != "none" else None
    res_buf = residual.buf if residual is not None else -1
    a = node.attrs
    args = (x.buf, x16.buf, y.buf, res_buf, rows, wt, bias, a.get("activation", "none"),
            float(a.get("alpha", 0.0)), float(a.get("beta", 0.0)), mode, cx.threads)
    cx.step("oneDNN bf16 matmul",
            lambda ext, plan, name: ext.add_bf16_matmul(plan, name, *args),
            [x.buf] + ([res_buf] if residual is not None else []), [x16.buf, y.buf])
