"""qlinear_dynamic (docs/int8.md) on the native backend: one step (``int8_dynamic.cpp``) that
quantizes each row of the f32 activation to u8 with its run-time range, multiplies the codes by
the prepacked s8 weight in a oneDNN u8 x s8 -> s32 matmul, and applies row scale x column scale,
the zero-point correction, the bias and the epilogue in f32.

    fp32_ms, dynamic_ms = time_dynamic_layer(node)   # a linear layer and its dynamic form

The codes agree with the reference (``rtinfer.ir.ops.quant.dynamic_row_quantize``) bit for bit;
the output within f32 rounding of the sums (the kernel adds integers exactly, the reference
rounds each product in f32).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.backends.native.quant import _bias, _weight, weight_max
from rtinfer.backends.native.timing import _interleaved, _plan
from rtinfer.errors import Unsupported
from rtinfer.ir.graph import Graph, Node
from rtinfer.ir.ops.fused import EPILOGUE_ATTRS
from rtinfer.ir.ops.quant import LAYER_BASE
from rtinfer.ir.types import DType, QuantParams, TensorType
from rtinfer.kernels import build


@lowers("qlinear_dynamic")
def _qlinear_dynamic(cx: Lowerer, node: Node) -> None:
    w, w_scales = _weight(cx, node.inputs[1])  # [N, K], scales along N
    x = cx.plain(node.inputs[0])
    cx.need_f32(x)
    if len(x.shape) < 1 or x.shape[-1] != w.shape[1]:
        raise cx.unsupported(f"an input of shape {x.shape} for a {list(w.shape)} weight")
    a = node.attrs
    mode = a.get("residual", "none")
    res_buf = -1
    if mode != "none":
        r = cx.plain(node.inputs[-1])
        cx.need_f32(r)
        res_buf = cx.base_pointer(r)
    bias = _bias(cx, node)
    y = cx.new_value(node.out)
    rows = math.prod(x.shape[:-1])
    args = (cx.base_pointer(x), y.buf, res_buf, rows, w.t().contiguous(), w_scales, bias,
            a.get("activation", "none"), float(a.get("alpha", 0.0)), float(a.get("beta", 0.0)),
            mode, cx.threads)
    reads = [args[0]] + ([res_buf] if res_buf >= 0 else [])
    cx.step("int8 dynamic linear",
            lambda ext, plan, name: ext.add_qlinear_dynamic(plan, name, *args), reads, [y.buf])


def time_dynamic_layer(node: Node, level: str | None = None, budget_s: float = 0.2,
                       rounds: int = 9) -> tuple[float, float]:
    """(fp32 ms, dynamic int8 ms): the medians of the linear layer ``node`` (``linear`` or
    ``fused_linear`` with a constant weight, static shapes) and of its ``qlinear_dynamic``
    form, each a one-node native plan timed in interleaved rounds (as ``time_layer``). The
    dynamic plan reads and writes f32, so its time includes quantizing the activation."""
    if LAYER_BASE.get(node.op) != "linear":
        raise Unsupported(node.op, "time_dynamic_layer takes a linear layer", node.name)
    wdata = node.inputs[1].const_data
    if wdata is None or wdata.dtype != np.float32:
        raise Unsupported(node.op, "time_dynamic_layer needs a constant f32 weight", node.name)
    if not all(v.type.is_static for v in node.inputs):
        raise Unsupported(node.op, "time_dynamic_layer needs static shapes", node.name)
    rest = [v for v in node.inputs[2:]]
    if any(v.is_const and v.const_data is None for v in rest):
        raise Unsupported(node.op, "time_dynamic_layer needs a constant bias", node.name)
    shapes = [tuple(int(d) for d in node.inputs[0].type.shape)]
    residual = node.attrs.get("residual", "none") != "none"
    if residual:
        shapes.append(tuple(int(d) for d in node.out.type.shape))
    attrs = {k: node.attrs.get(k, a.default) for k, a in EPILOGUE_ATTRS.items()}
    bias = [node.inputs[2].const_data] if len(node.inputs) > 2 and node.inputs[2].is_const \
        else []

    fp = Graph("time_linear_fp32")
    ins = [fp.add_input(TensorType(DType.f32, s), f"in{i}") for i, s in enumerate(shapes)]
    fp.set_outputs([fp.add_op("fused_linear", ins[0], fp.add_const(wdata),
                              *[fp.add_const(b) for b in bias], *ins[1:], **attrs)])

    qmax = weight_max(level)
    scale = np.maximum(np.abs(wdata).max(axis=1), 1e-12).astype(np.float32) / qmax
    wq = np.clip(np.rint(wdata / scale[:, None]), -qmax, qmax).astype(np.int8)
    q = Graph("time_linear_dynamic")
    qins = [q.add_input(TensorType(DType.f32, s), f"in{i}") for i, s in enumerate(shapes)]
    wc = q.add_const(wq, quant=QuantParams(scale, np.zeros_like(scale, np.int64), 0))
    q.set_outputs([q.add_op("qlinear_dynamic", qins[0], wc, *[q.add_const(b) for b in bias],
                            *qins[1:], **attrs)])

    ext = build.load(level=level)
    threads = torch.get_num_threads()
    plans = {"fp32": _plan(fp, shapes, ext, threads), "dynamic": _plan(q, shapes, ext, threads)}
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(s, generator=gen) for s in shapes]
    secs = _interleaved({k: (lambda k=k: plans[k].run(inputs, threads)) for k in plans},
                        rounds, budget_s)
    return secs["fp32"] * 1e3, secs["dynamic"] * 1e3


__all__ = ["time_dynamic_layer"]
