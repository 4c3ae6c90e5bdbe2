"""merge-parallel-linears: linear layers that read the same input become one wider layer and a
``split`` (QKV merging).

    linear(x, w1, b1), ..., linear(x, wn, bn)
      -> split(linear(x, concat(w1, ..., wn), concat(b1, ..., bn)), [n1, ..., nn])

The same for ``matmul(x, w)`` with a constant 2-d ``w`` (weights joined on their output axis,
the last) and for ``fused_linear`` / ``fused_matmul`` whose epilogues are identical (the
activation is elementwise, so it commutes with the split). One GEMM with n times the columns
replaces n small ones: the input is read once and the kernel runs at a better shape. A layer
without a bias gets zeros when it joins layers that have one.

Run after fuse-epilogue: on ONNX captures the projections' biases are separate adds until then,
and a merge before it would leave the adds behind the split. Layers are grouped by op,
attributes (epilogue included) and weight dtype; a group of fewer than ``min-count`` layers is
left alone. Declines: the layers reading x differ (op, epilogue, dtype), one adds a residual
(each reads its own), a weight or bias is not a constant with data (elided or computed).
Numerics: each output column is the same dot product; BLAS blocking may round it differently.
Stats: groups (merged layers made), merged (layers merged into them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops import OPS
from rtinfer.pass_manager import Option, PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet


def out_axes() -> dict[str, int]:
    """Matrix layers (a weight role, no sliding window) -> the 2-d weight's output-feature
    axis, from the op table: linear's w is [N, K] (0), matmul's [K, N] (1)."""
    return {o.name: o.weight.axes(2)[0] for o in OPS
            if o.weight is not None and o.weight.input == 1 and "stride" not in o.attrs}


def _data(v: Value) -> np.ndarray | None:
    data = v.const_data if v.is_const else None
    return data if isinstance(data, np.ndarray) else None


def _why_not(n: Node, x: Value) -> str | None:
    """Why the layer ``n`` (one of x's users) cannot join a merge, if it cannot."""
    if n.op not in out_axes() or not n.inputs or n.inputs[0] is not x:
        return f"{n.op} does not read x as its input"
    w = n.inputs[1]
    if w is x:
        return f"{n.op} reads x as its weight too"
    if _data(w) is None or w.type.rank != 2:
        return f"{n.op} weight {w.type} is not a 2-d constant with data"
    if w.type.quant is not None or not w.type.dtype.is_float:
        return f"{n.op} weight {w.type} is not float"
    if len(n.inputs) > 3 or n.attrs.get("residual", "none") != "none":
        return f"{n.op} adds a residual"
    if len(n.inputs) > 2 and (_data(n.inputs[2]) is None or n.inputs[2].type.rank != 1):
        return f"{n.op} bias {n.inputs[2].type} is not a 1-d constant with data"
    return None


def _key(n: Node) -> tuple:
    return (n.op, tuple(sorted(n.attrs.items())), n.inputs[1].type.dtype)


def _group(lin: Node, x: Value) -> tuple[list[Node], list[str]]:
    """The layers reading x that merge with ``lin`` (graph order), and why the others do not."""
    key = _key(lin)
    group, reasons, seen = [], [], set()
    for n in x.users:
        if id(n) in seen or n.op not in out_axes():
            continue
        seen.add(id(n))
        why = _why_not(n, x)
        if why is None and _key(n) != key:
            why = f"{n.op} {dict(n.attrs) or ''} differs from {lin.op} {dict(lin.attrs) or ''}"
        if why is None:
            group.append(n)
        elif n is not lin:
            reasons.append(why)
    order = {id(n): i for i, n in enumerate(lin.graph.nodes)}
    return sorted(group, key=lambda n: order[id(n)]), reasons


def merge(min_count: int):
    def merge_parallel(rw: Rewriter, lin: Node, x: Value) -> Value | None:
        group, reasons = _group(lin, x)
        if lin not in group or group[0] is not lin:
            return None  # the group's first layer merges them all (its users come later)
        if len(group) < min_count:
            if reasons:
                return rw.decline("{} mergeable layer(s) read x (min-count {}): {}", len(group),
                                  min_count, "; ".join(reasons))
            return None
        axis = out_axes()[lin.op]
        ws = [_data(n.inputs[1]) for n in group]
        sizes = [int(w.shape[axis]) for w in ws]
        dt = ws[0].dtype
        ins: list[Value] = [x, rw.const(np.concatenate(ws, axis=axis))]
        if any(len(n.inputs) > 2 for n in group):
            bs = [_data(n.inputs[2]) if len(n.inputs) > 2 else np.zeros(s, dt)
                  for n, s in zip(group, sizes, strict=True)]
            ins.append(rw.const(np.concatenate(bs).astype(dt, copy=False)))
        attrs: dict[str, Any] = dict(lin.attrs)
        wide = rw.op(lin.op, *ins, **attrs)
        parts = rw.node("split", wide, axis=-1, sizes=sizes).outputs
        for n, part in zip(group[1:], parts[1:], strict=True):
            rw.replace(n.out, part)
            consts = [v.producer for v in n.inputs[1:]]
            rw.erase(n)
            for c in consts:
                rw.erase_if_dead(c)
        rw.ctx.stat("merged", len(group))
        return parts[0]
    return merge_parallel


def rules(min_count: int) -> RuleSet:
    return RuleSet("merge-parallel-linears", [
        # op(x, w1, b1), ..., op(x, wn, bn) -> split(op(x, [w1; ..; wn], [b1; ..; bn]))
        Rule("merge", P.op(tuple(out_axes()), P.var("x"), P.const("w"), ..., name="lin"),
             merge(min_count)),
    ])


@graph_pass("merge-parallel-linears",
            summary="merge linear/matmul layers with constant weights that share their input "
                    "into one wider layer and a split (QKV merging)",
            options={"min-count": Option(int, 2, "fewest layers worth merging")})
def merge_parallel_linears(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("merged", 0)
    ctx.stat("groups", rules(max(ctx.options["min-count"], 2)).apply(graph, ctx))
