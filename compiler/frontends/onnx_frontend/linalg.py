"""ONNX -> IR rules: linear algebra (MatMul, Gemm, Einsum)."""

from __future__ import annotations

from rtinfer.frontends.onnx_frontend.context import rule, scalar_op


@rule("MatMul")
def _matmul(cx, ins):
    return cx.op("matmul", ins[0], ins[1])


@rule("Gemm")
def _gemm(cx, ins):
    a, b = ins[:2]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = cx.attr("alpha", 1.0), cx.attr("beta", 1.0)
    ta, tb = cx.attr("transA", 0), cx.attr("transB", 0)
    bias_ok = c is None or (beta == 1.0 and c.is_const and c.type.rank == 1
                            and c.type.shape[0] == b.type.shape[0])
    if not ta and tb and alpha == 1.0 and b.is_const and bias_ok:
        # y = a @ b^T + c with a constant weight: the IR's linear(x, weight[O, I], bias[O])
        return cx.op("linear", a, b, c) if c is not None else cx.op("linear", a, b)
    if ta:
        a = cx.op("transpose", a, perm=[1, 0])
    if tb:
        b = cx.op("transpose", b, perm=[1, 0])
    y = cx.op("matmul", a, b)
    if alpha != 1.0:
        y = scalar_op(cx, "mul", y, alpha)
    if c is not None and beta != 0.0:
        y = cx.op("add", y, c if beta == 1.0 else scalar_op(cx, "mul", c, beta))
    return y


@rule("Einsum")
def _einsum(cx, ins):
    return cx.op("einsum", *ins, equation=cx.attr("equation"))
