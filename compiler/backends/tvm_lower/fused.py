"""Lowerings of the fused ops: the base op and its epilogue, each step the table's own
lowering, in one Primitive function (``grouped``); a fused elementwise body node by node."""

from __future__ import annotations

from typing import Any

from rtinfer.backends.tvm_lower import nn  # noqa: F401  (the base ops' entries, read below)
from rtinfer.backends.tvm_lower.context import LOWERINGS, LowerContext, LowerFn, lowers, relax_ops
from rtinfer.backends.tvm_lower.driver import lower_node
from rtinfer.errors import Unsupported
from rtinfer.ir.graph import Graph
from rtinfer.ir.ops import get_op
from rtinfer.ir.ops.fused import activation_op


def _epilogue(cx: LowerContext, y: Any, residual: Any, attrs: dict) -> Any:
    """act(y + r), act(y) + r or act(y), each step the table's own lowering."""
    R = relax_ops()
    if attrs["residual"] == "pre":
        y = cx.emit(R.add(y, residual))
    act = activation_op(attrs["activation"], attrs["alpha"], attrs["beta"])
    if act is not None:
        name, act_attrs = act
        y = cx.emit(LOWERINGS[name](cx, y, **get_op(name).complete_attrs(act_attrs)))
    if attrs["residual"] == "post":
        y = cx.emit(R.add(y, residual))
    return y


def _fused(base: str) -> LowerFn:
    base_attr_names = tuple(get_op(base).attrs)

    def lower(cx: LowerContext, x, w, bias, residual, /, **attrs):
        base_attrs = {k: attrs[k] for k in base_attr_names}
        if base == "matmul":
            y = cx.emit(LOWERINGS[base](cx, x, w))
            if bias is not None:
                y = cx.emit(relax_ops().add(y, bias))
        else:
            y = cx.emit(LOWERINGS[base](cx, x, w, bias, **base_attrs))
        return _epilogue(cx, y, residual, attrs)
    return lower


# a fused op's kernel is its base op's with an epilogue: as slow untuned as the base op's
for _base in ("conv1d", "conv2d", "linear", "matmul"):
    lowers(f"fused_{_base}", grouped=True,
           slow_untuned=LOWERINGS[_base].slow_untuned)(_fused(_base))


@lowers("fused_elementwise", grouped=True)
def _fused_elementwise(cx: LowerContext, xs: list, body: Graph):
    node = cx.node
    env = {id(v): x for v, x in zip(body.inputs, xs, strict=True)}
    for inner in body.nodes:
        if inner.op != "const" and inner.op not in LOWERINGS:
            raise Unsupported(node.op, f"the body's op {inner.op} has no lowering", node.name)
        lower_node(cx, inner, env)
    cx.node = node
    return [env[id(v)] for v in body.outputs]
