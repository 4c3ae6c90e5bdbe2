"""2-d pooling and reductions: rtinfer's own kernels, reading NHWC activations as they lie."""

from __future__ import annotations

import math

from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.backends.native.plan import View
from rtinfer.ir.graph import Node
from rtinfer.ir.ops.common import expand_ints, expand_pads
from rtinfer.ir.types import DType


def pool_window(node: Node, nd: int = 2) -> tuple[list[int], list[int], list[int], list[int]]:
    """A pool node's (kernel, stride, pad [begin..., end...], dilation), expanded to ``nd``."""
    a = node.attrs
    kernel = list(expand_ints(a["kernel"], nd, "kernel"))
    stride = list(expand_ints(a["stride"] or kernel, nd, "stride"))
    pad = list(expand_pads(a["pad"], nd))
    dil = list(expand_ints(a.get("dilation", (1,)), nd, "dilation"))
    return kernel, stride, pad, dil


def _pool_input(cx: Lowerer, node: Node, ints: bool = False) -> View:
    """A pool's input as it lies: NHWC (from a conv) or plain NCHW; f32, or (``ints``) u8/i8
    codes too."""
    if node.attrs.get("layout", "NCHW") != "NCHW":
        raise cx.unsupported("an NHWC-attributed pool")
    x = cx.view(node.inputs[0])
    x = x if x.nhwc and x.offset == 0 else cx.plain(node.inputs[0])
    if not (ints and x.dtype in (DType.u8, DType.i8)):
        cx.need_f32(x)
    return x


@lowers("max_pool2d", "avg_pool2d")
def _pool2d(cx: Lowerer, node: Node) -> None:
    x = _pool_input(cx, node, ints=node.op == "max_pool2d")
    kernel, stride, pad, dil = pool_window(node)
    y = cx.new_value(node.out, nhwc=x.nhwc)  # a 1x1 result is the same bytes either way
    if x.dtype is not DType.f32:
        # int8 codes: max commutes with the (increasing) affine map, so the output keeps the
        # input's QuantParams; rtinfer's own int8 max pooling (cpp/native/int8_pool.cpp)
        args = (x.buf, y.buf, str(x.dtype), list(x.shape), list(y.shape), kernel, stride,
                pad[:2], dil, x.nhwc, cx.threads)
        cx.step("int8 max_pool2d",
                lambda ext, plan, name: ext.add_pool_int8(plan, name, *args), [x.buf], [y.buf])
        return
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    kind = "max" if node.op == "max_pool2d" else "avg"
    args = (x.buf, y.buf, n, c, h, w, oh, ow, kernel, stride, pad[:2], dil, kind,
            bool(node.attrs.get("count_include_pad", True)), x.nhwc, pad[2:])
    cx.step(f"{kind}_pool2d", lambda ext, plan, name: ext.add_pool2d(plan, name, *args),
            [x.buf], [y.buf])


@lowers("global_avg_pool2d")
def _global_avg_pool(cx: Lowerer, node: Node) -> None:
    x = _pool_input(cx, node)
    n, c, h, w = x.shape
    y = cx.new_value(node.out)
    outer, extent, inner = (n, h * w, c) if x.nhwc else (n * c, h * w, 1)
    args = (x.buf, y.buf, outer, extent, inner, "mean")
    cx.step("reduce mean", lambda ext, plan, name: ext.add_reduce(plan, name, *args),
            [x.buf], [y.buf])


@lowers("reduce_sum", "reduce_mean", "reduce_max", "reduce_min")
def _reduce(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    rank = len(x.shape)
    if rank == 0:  # a 0-d input (axis 0 allowed, as in torch): the torch fallback copies it
        raise cx.unsupported("a reduction of a 0-d tensor")
    axes = sorted({a % rank for a in node.attrs["axes"]} if node.attrs["axes"]
                  else set(range(rank)))
    kind = node.op.removeprefix("reduce_")
    if x.dtype is not DType.f32:
        raise cx.unsupported(f"a {x.dtype} reduction")
    if x.nhwc and axes == [2, 3]:
        n, c, h, w = x.shape
        outer, extent, inner = n, h * w, c
    else:
        if axes != list(range(axes[0], axes[-1] + 1)):
            raise cx.unsupported("a reduction over non-adjacent axes")
        x = cx.plain(node.inputs[0])
        outer = math.prod(x.shape[:axes[0]])
        extent = math.prod(x.shape[axes[0]:axes[-1] + 1])
        inner = math.prod(x.shape[axes[-1] + 1:])
    y = cx.new_value(node.out)
    args = (x.buf, y.buf, outer, extent, inner, kind)
    cx.step(f"reduce {kind}", lambda ext, plan, name: ext.add_reduce(plan, name, *args),
            [x.buf], [y.buf])
