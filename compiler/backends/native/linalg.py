"""linear and matmul (and their fused forms) as oneDNN matmul steps."""

from __future__ import annotations

from rtinfer.backends.native.lowerer import Lowerer, lowers
from rtinfer.backends.native.plan import View, contiguous_strides
from rtinfer.ir.graph import Node, Value


def _matmul_step(cx: Lowerer, node: Node, a: View, b: View | None, weight, b_shape,
                 bias, residual_in: Value | None, attrs: dict) -> None:
    y = cx.new_value(node.out)
    residual = cx.plain(residual_in) if residual_in is not None else None
    res_buf = residual.buf if residual is not None else -1
    mode = attrs.get("residual", "none")
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
