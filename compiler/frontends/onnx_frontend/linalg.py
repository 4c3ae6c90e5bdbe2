"""ONNX -> IR rules: linear algebra (MatMul, Gemm, Einsum)."""

from __future__ import annotations

from rtinfer.frontends.onnx_frontend.context import rule, scalar_op


@rule("MatMul")
def _matmul(cx, ins):
    return cx.op("matmul", ins[0], ins[1])


def _check_gemm_shapes(cx, a, b, ta: int, tb: int) -> None:
    """A and B are matrices whose inner dims agree once transA/transB apply (ONNX Runtime
    refuses the node otherwise; the error names the flags, the likeliest fault)."""
    for name, v in (("A", a), ("B", b)):
        if v.type.rank != 2:
            raise cx.invalid(f"input {name} has type {v.type}; Gemm takes matrices")
    k_a = a.type.shape[0 if ta else 1]
    k_b = b.type.shape[1 if tb else 0]
    if isinstance(k_a, int) and isinstance(k_b, int) and k_a != k_b:
        raise cx.invalid(f"A {a.type} (transA={int(bool(ta))}) and B {b.type} "
                         f"(transB={int(bool(tb))}) disagree on the inner dim: {k_a} vs {k_b}")


@rule("Gemm")
def _gemm(cx, ins):
    a, b = ins[:2]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = cx.attr("alpha", 1.0), cx.attr("beta", 1.0)
    ta, tb = cx.attr("transA", 0), cx.attr("transB", 0)
    _check_gemm_shapes(cx, a, b, ta, tb)
    bias_ok = c is None or (beta == 1.0 and c.is_const and c.type.rank == 1
                            and c.type.shape[0] == b.type.shape[0])
    # a constant weight, or an int8 one read through dequantize (QDQ models)
    const_w = b.is_const or (b.producer is not None and b.producer.op == "dequantize"
                             and b.producer.inputs[0].is_const)
    if not ta and tb and alpha == 1.0 and const_w and bias_ok:
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
