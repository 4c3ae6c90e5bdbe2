"""ONNX -> IR rules: reductions (Reduce*, ArgMax, ArgMin), scans (CumSum, CumProd) and TopK."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rtinfer.frontends.onnx_frontend.context import Rule, pos_axis, rule


def _reduce_axes(cx, ins) -> list[int] | None:
    """Axes of a Reduce* node (attribute, or input since opset 18); None: reduce nothing."""
    if len(ins) > 1 and ins[1] is not None:
        axes = cx.ints(ins[1], "axes")
    else:
        axes = list(cx.attr("axes", []))
    if not axes and cx.attr("noop_with_empty_axes", 0):
        return None
    return axes or list(range(ins[0].type.rank))


def _reduction(pre: Callable | None, ir_op: str, post: Callable | None = None) -> Rule:
    def convert(cx, ins):
        x = ins[0]
        axes = _reduce_axes(cx, ins)
        if axes is None:
            return cx.op("identity", x)
        y = pre(cx, x) if pre else x
        y = cx.op(ir_op, y, axes=axes, keepdims=bool(cx.attr("keepdims", 1)))
        return post(cx, y) if post else y
    return convert


REDUCTIONS: dict[str, Rule] = {
    "ReduceSum": _reduction(None, "reduce_sum"),
    "ReduceMean": _reduction(None, "reduce_mean"),
    "ReduceMax": _reduction(None, "reduce_max"),
    "ReduceMin": _reduction(None, "reduce_min"),
    "ReduceProd": _reduction(None, "reduce_prod"),
    # sum |x|; sqrt(sum x^2); sum x^2; log(sum x); log(sum exp(x))
    "ReduceL1": _reduction(lambda cx, x: cx.op("abs", x), "reduce_sum"),
    "ReduceL2": _reduction(lambda cx, x: cx.op("mul", x, x), "reduce_sum",
                           lambda cx, y: cx.op("sqrt", y)),
    "ReduceSumSquare": _reduction(lambda cx, x: cx.op("mul", x, x), "reduce_sum"),
    "ReduceLogSum": _reduction(None, "reduce_sum", lambda cx, y: cx.op("log", y)),
    "ReduceLogSumExp": _reduction(lambda cx, x: cx.op("exp", x), "reduce_sum",
                                  lambda cx, y: cx.op("log", y)),
}
for _k, _v in REDUCTIONS.items():
    rule(_k)(_v)


@rule("ArgMax", "ArgMin")
def _arg(cx, ins):
    x = ins[0]
    name = "argmax" if cx.node.op_type == "ArgMax" else "argmin"
    axis, keep = pos_axis(cx.attr("axis", 0), x.type.rank), bool(cx.attr("keepdims", 1))
    if not cx.attr("select_last_index", 0):
        return cx.op(name, x, axis=axis, keepdims=keep)
    # last index of the extreme = n - 1 - (first index in the reversed tensor)
    n = cx.static_shape(x)[axis]
    rev = cx.op("slice", x, starts=[-1], ends=[-(2**63)], axes=[axis], steps=[-1])
    i = cx.op(name, rev, axis=axis, keepdims=keep)
    return cx.op("sub", cx.const(np.int64(n - 1)), i)


@rule("CumSum")
def _cumsum(cx, ins):
    x = ins[0]
    axis = pos_axis(cx.ints(ins[1], "axis")[0], x.type.rank)

    def flip(v):
        return cx.op("slice", v, starts=[-1], ends=[-(2**63)], axes=[axis], steps=[-1])

    y = flip(x) if cx.attr("reverse", 0) else x
    s = cx.op("cumsum", y, axis=axis)
    if cx.attr("exclusive", 0):
        s = cx.op("sub", s, y)
    return flip(s) if cx.attr("reverse", 0) else s


@rule("CumProd")
def _cumprod(cx, ins):
    x = ins[0]
    axis = pos_axis(cx.ints(ins[1], "axis")[0], x.type.rank)

    def flip(v):
        return cx.op("slice", v, starts=[-1], ends=[-(2**63)], axes=[axis], steps=[-1])

    y = flip(x) if cx.attr("reverse", 0) else x
    if cx.attr("exclusive", 0):  # shift right by one, a 1 coming in: [1, y0, .., y(n-2)]
        pads = [0] * (2 * x.type.rank)
        pads[axis] = 1
        y = cx.op("slice", cx.op("pad", y, pads=pads, value=1.0), starts=[0], ends=[-1],
                  axes=[axis])
    p = cx.op("cumprod", y, axis=axis)
    return flip(p) if cx.attr("reverse", 0) else p


@rule("TopK")
def _topk(cx, ins):
    k = cx.ints(ins[1], "TopK's k")[0]
    return cx.ops("topk", ins[0], k=k, axis=cx.attr("axis", -1),
                  largest=bool(cx.attr("largest", 1)), sorted=bool(cx.attr("sorted", 1)))
