"""Convolutions as oneDNN steps: NHWC activations, prepacked weights, the fused epilogue as
post-ops; a 1x1 convolution and the depthwise one after it as one step where oneDNN fuses them;
a CNN's first convolution as rtinfer's own stem kernel, with the max pool after it fused in."""

from __future__ import annotations

import os

import torch

from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.backends.native.pool import pool_window
from rtinfer.ir.graph import Node
from rtinfer.ir.ops.common import expand_ints, expand_pads
from rtinfer.ir.types import DType


def _conv_window(a: dict, nd: int) -> tuple[list[int], list[int], list[int]]:
    """A conv's (stride, pads in ONNX layout, dilation), each expanded to ``nd`` axes."""
    return (list(expand_ints(a["stride"], nd, "stride")), list(expand_pads(a["pad"], nd)),
            list(expand_ints(a["dilation"], nd, "dilation")))


def _dw_partner(cx: Lowerer, node: Node) -> Node | None:
    """The depthwise 3x3 convolution (stride 1 or 2, padding 1) that alone reads this 1x1
    convolution's output, when both have constant weights and no residual."""
    def plain_conv(n: Node) -> bool:
        return (n.op in ("conv2d", "fused_conv2d") and n.attrs.get("layout", "NCHW") == "NCHW"
                and n.attrs.get("residual", "none") == "none"
                and all(v.is_const for v in n.inputs[1:3]))

    if cx.ext is None or not plain_conv(node) or cx.graph.is_output(node.out):
        return None
    stride, pad, dil = _conv_window(node.attrs, 2)
    w = node.inputs[1].type.shape
    if (stride, pad, dil, node.attrs["groups"]) != ([1, 1], [0] * 4, [1, 1], 1) \
            or tuple(w[2:]) != (1, 1) or len(node.out.uses) != 1:
        return None
    dw, slot = node.out.uses[0]
    if slot != 0 or not plain_conv(dw):
        return None
    stride, pad, dil = _conv_window(dw.attrs, 2)
    o = w[0]
    if (tuple(dw.inputs[1].type.shape) != (o, 1, 3, 3) or dw.attrs["groups"] != o
            or stride not in ([1, 1], [2, 2]) or pad != [1] * 4 or dil != [1, 1]):
        return None
    return dw


def _conv_dw(cx: Lowerer, node: Node) -> bool:
    """A 1x1 convolution and the depthwise convolution after it as one oneDNN step, where
    oneDNN fuses the pair for real (MobileNetV2's first expansion: the 4.8 MB expanded
    activation is never written whole). False: lower the two apart."""
    dw = _dw_partner(cx, node)
    if dw is None:
        return False
    src = cx.as_nhwc(node.inputs[0])
    cx.need_f32(src)
    w, dw_w = cx.const_tensor(node.inputs[1]), cx.const_tensor(dw.inputs[1])
    b = cx.const_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    dw_b = cx.const_tensor(dw.inputs[2]) if len(dw.inputs) > 2 else None
    a, da = node.attrs, dw.attrs
    stride = int(_conv_window(da, 2)[0][0])
    epilogues = (a.get("activation", "none"), float(a.get("alpha", 0.0)),
                 float(a.get("beta", 0.0)), dw_w, dw_b, stride,
                 da.get("activation", "none"), float(da.get("alpha", 0.0)),
                 float(da.get("beta", 0.0)), cx.threads)
    try:
        impl = cx.ext.add_conv_dw(None, "probe", -1, -1, list(src.shape), w, b, *epilogues)
    except (RuntimeError, ValueError):
        return False
    if impl.startswith("ref"):
        return False
    y = cx.new_value(dw.out, nhwc=True)
    args = (src.buf, y.buf, list(src.shape), w, b, *epilogues)
    cx.step("oneDNN conv+dw", lambda ext, plan, name: ext.add_conv_dw(plan, name, *args),
            [src.buf], [y.buf])
    cx.fused_away.add(id(dw))
    return True


# activations the stem kernel fuses (cpp/native/cpu_conv_stem.cpp); others go to oneDNN
_STEM_ACTIVATIONS = frozenset({"none", "relu", "clip", "leaky_relu", "hardswish"})
_STEM_MAX_CHANNELS = 4
# The CPU levels where the stem kernel beats reorder + oneDNN. Measured (224x224 image, batch 1,
# the two interleaved, medians of 300; rough, a shared 2-core Xeon): at avx512 it takes 0.76x
# (ResNet-18's 7x7 3->64), 0.84x (the same 3->32, pruned) and 0.40x (MobileNetV2's 3x3 3->32)
# of oneDNN's time on 2 threads. At avx2 oneDNN's jit kernel runs near the FMA peak and the stem
# kernel takes 1.0-1.1x of its time (it wins only at 3->24), so oneDNN keeps the layer there.
_STEM_LEVELS = frozenset({"avx512"})


def _conv_stem(cx: Lowerer, node: Node) -> bool:
    """A first-layer convolution (at most 4 input channels, the image read as NCHW) as rtinfer's
    own direct kernel, which writes NHWC: oneDNN needs the image reordered to NHWC first and,
    with AVX-512, runs ic=3 below the FMA peak; a max pool that alone reads its output runs in
    the same step. False: lower it the usual way."""
    if cx.ext is None or cx.ext.level() not in _STEM_LEVELS:
        return False
    a = node.attrs
    x = cx.view(node.inputs[0])
    if (a.get("layout", "NCHW") != "NCHW" or a.get("residual", "none") != "none"
            or int(a["groups"]) != 1 or a.get("activation", "none") not in _STEM_ACTIVATIONS
            or len(x.shape) != 4 or x.shape[1] > _STEM_MAX_CHANNELS or not x.contiguous
            or x.dtype is not DType.f32):
        return False
    w = cx.const_tensor(node.inputs[1])
    bias = cx.const_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    if w is None or w.dtype != torch.float32 or (len(node.inputs) > 2 and (
            bias is None or bias.dtype != torch.float32)):
        return False
    stride, pad, dil = _conv_window(a, 2)
    stem = (list(x.shape), w, bias, stride, pad[:2], pad[2:], dil, a.get("activation", "none"),
            float(a.get("alpha", 0.0)), float(a.get("beta", 0.0)))
    pool = _stem_pool_partner(cx, node)
    if pool is not None:
        y = cx.new_value(pool.out, nhwc=True)
        args = (x.buf, y.buf, *stem, *_stem_pool_window(cx, node, pool), list(y.shape))
        cx.step("conv stem+max_pool2d",
                lambda ext, plan, name: ext.add_conv_stem_pool(plan, name, *args),
                [x.buf], [y.buf])
        cx.fused_away.add(id(pool))
        return True
    y = cx.new_value(node.out, nhwc=True)
    args = (x.buf, y.buf, *stem, list(y.shape))
    cx.step("conv stem", lambda ext, plan, name: ext.add_conv_stem(plan, name, *args),
            [x.buf], [y.buf])
    return True


# The stem step with the max pool after it, against the two steps (224x224 image, 7x7/2 stem +
# 3x3/2 pool, avx512, interleaved, medians of 300-400; rough, a shared 2-core Xeon): 0.87-0.95x
# of their time at 3->32 and 0.87-1.0x at 3->64, on 1 and 2 threads. The gain is less than the
# pool step's whole time: the stem step's stores already overlapped its FMAs, and the pool's
# picks remain. In the 50%-pruned ResNet-18 the step takes 0.43-0.45 ms against 0.47-0.49 for
# stem + pool, the whole plan 1.5-3% less.


def _stem_pool_partner(cx: Lowerer, node: Node) -> Node | None:
    """The max pool that alone reads this stem convolution's output (ResNet's 3x3/2), which
    the stem step then computes too: the stem output is never written whole.
    $RTINFER_STEM_POOL=0 keeps the two steps apart (comparisons, bisecting)."""
    if os.environ.get("RTINFER_STEM_POOL", "1").strip() == "0":
        return None
    if cx.graph.is_output(node.out) or len(node.out.uses) != 1:
        return None
    pool, slot = node.out.uses[0]
    if (pool.op != "max_pool2d" or slot != 0 or len(pool.outputs) != 1
            or pool.attrs.get("layout", "NCHW") != "NCHW"):
        return None
    return pool


def _stem_pool_window(cx: Lowerer, node: Node, pool: Node) -> tuple[list[int], ...]:
    """The pool's (kernel, stride, pad_begin, pad_end, dilation) over the stem output; ceil_mode
    widens pad_end to cover the windows its extra output row/column adds (their taps past the
    stem output are skipped, as torch does)."""
    kernel, stride, pad, dil = pool_window(pool)
    size, out = cx.shape(node.out)[2:], cx.shape(pool.out)[2:]
    pad_end = [max(pad[2 + i], (out[i] - 1) * stride[i] + dil[i] * (kernel[i] - 1) + 1
                   - size[i] - pad[i]) for i in range(2)]
    return kernel, stride, pad[:2], pad_end, dil


@lowers("conv2d", "fused_conv2d")
def _conv2d(cx: Lowerer, node: Node) -> None:
    if _conv_dw(cx, node) or _conv_stem(cx, node):
        return
    a = node.attrs
    x = cx.view(node.inputs[0])
    w = cx.const_tensor(node.inputs[1])
    if w is None:
        raise cx.unsupported("the weight is not a constant")
    cx.need_f32(x)
    bias = cx.const_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and bias is None:
        raise cx.unsupported("the bias is not a constant")
    mode = a.get("residual", "none")
    act, alpha, beta = a.get("activation", "none"), a.get("alpha", 0.0), a.get("beta", 0.0)
    stride, pad, dil = _conv_window(a, 2)
    if a.get("layout", "NCHW") == "NHWC":
        # the IR itself is channels-last: x is a plain [N, H, W, C] buffer
        xp = cx.plain(node.inputs[0])
        n, h, wd, c = xp.shape
        src_shape, src_nhwc, src = [n, c, h, wd], True, xp
        y = cx.new_value(node.out)
        residual = cx.plain(node.inputs[3]) if mode != "none" else None
        dst_nhwc = True
        yn, yh, yw, yc = y.shape
        dst_shape = [yn, yc, yh, yw]
    else:
        # oneDNN's fast convolutions read NHWC (an NCHW source takes its reference kernel:
        # 5 s for ResNet-18's stem), so the image is reordered once
        src = cx.as_nhwc(node.inputs[0])
        src_shape, src_nhwc = list(src.shape), True
        y = cx.new_value(node.out, nhwc=True)
        residual = None
        if mode != "none":
            residual = cx.as_nhwc(node.inputs[3]) if y.nhwc else cx.plain(node.inputs[3])
        dst_nhwc = y.nhwc
        dst_shape = list(y.shape)
    res_buf = residual.buf if residual is not None else -1
    args = (src.buf, y.buf, res_buf, src_shape, w, bias, stride, pad[:2], pad[2:], dil,
            int(a["groups"]), act, float(alpha), float(beta), mode, src_nhwc, dst_nhwc,
            cx.threads, dst_shape)
    cx.step("oneDNN conv", lambda ext, plan, name: ext.add_conv(plan, name, *args),
            [src.buf] + ([res_buf] if residual is not None else []), [y.buf])


@lowers("conv1d", "fused_conv1d")
def _conv1d(cx: Lowerer, node: Node) -> None:
    a = node.attrs
    x = cx.plain(node.inputs[0])
    cx.need_f32(x)
    w = cx.const_tensor(node.inputs[1])
    bias = cx.const_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    if w is None or (len(node.inputs) > 2 and bias is None):
        raise cx.unsupported("the weight or bias is not a constant")
    mode = a.get("residual", "none")
    y = cx.new_value(node.out)
    residual = cx.plain(node.inputs[3]) if mode != "none" else None
    res_buf = residual.buf if residual is not None else -1
    stride, pad, dil = _conv_window(a, 1)
    args = (x.buf, y.buf, res_buf, list(x.shape), w, bias, stride, pad[:1], pad[1:],
            dil, int(a["groups"]), a.get("activation", "none"),
            float(a.get("alpha", 0.0)), float(a.get("beta", 0.0)), mode, False, False,
            cx.threads, list(y.shape))
    cx.step("oneDNN conv", lambda ext, plan, name: ext.add_conv(plan, name, *args),
            [x.buf] + ([res_buf] if residual is not None else []), [y.buf])
