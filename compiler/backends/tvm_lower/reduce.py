"""Lowerings of the reductions, scans and top-k."""

from __future__ import annotations

from rtinfer.backends.tvm_lower.context import LowerContext, LowerFn, lower_table, lowers, relax_ops


def _reduce(name: str) -> LowerFn:
    def lower(cx: LowerContext, x, axes, keepdims):
        fn = getattr(relax_ops(), name)
        return fn(x, list(axes) if axes else None, keepdims)
    return lower


for _n, _fn in [("reduce_sum", "sum"), ("reduce_mean", "mean"), ("reduce_max", "max"),
                ("reduce_min", "min"), ("reduce_prod", "prod")]:
    lowers(_n)(_reduce(_fn))

lower_table({
    "argmax": lambda cx, x, axis, keepdims: relax_ops().argmax(x, axis, keepdims),
    "argmin": lambda cx, x, axis, keepdims: relax_ops().argmin(x, axis, keepdims),
    "cumsum": lambda cx, x, axis: relax_ops().cumsum(x, axis),
    "cumprod": lambda cx, x, axis: relax_ops().cumprod(x, axis),
})


@lowers("topk")
def _topk(cx: LowerContext, x, k, axis, largest, sorted):
    from tvm import relax

    if not sorted:
        raise cx.unsupported("topk with sorted=False (the order of its results is the reference's)")
    both = cx.emit(relax_ops().topk(x, k, axis, "both", largest, "int64"))
    return [relax.TupleGetItem(both, 0), relax.TupleGetItem(both, 1)]
