"""fold-constants: evaluate nodes whose inputs are all constants, at compile time.

    op(const a, const b, ...) {attrs}  ->  const op.ref(a, b, ...)      (the op table's reference)
    shape(x: T[2,3,4])                 ->  const i64[3] dense<[2, 3, 4]>  (x's shape is static)

The second rule is what makes exporters' shape arithmetic fold: ``shape -> gather -> concat ->
reshape`` chains on static shapes become constants one node at a time, and the driver revisits
each constant's users. Results must have the node's static type (a const cannot carry
quantization parameters, so quantized results stay, as do ``quantize``/``dequantize`` on
weights: int8 lowering matches those Q/DQ pairs).

Declines: constants printed elided (no data to evaluate), results of more than ``max-size``
elements (materializing e.g. ``expand`` of a scalar would grow the model: weight transforms of
that size are still folded by raising the option), evaluation errors. Inputs left dead are
``dce``'s to remove. Stats: folded.
"""

from __future__ import annotations

import numpy as np

from rtinfer.errors import RtinferError
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops import KEEP, OPS
from rtinfer.ir.types import DType, TensorType
from rtinfer.pass_manager import Option, PassContext, graph_pass
from rtinfer.rewrite import OpPattern, P, Rewriter, Rule, RuleSet

DEFAULT_MAX_SIZE = 1 << 24  # elements: 64 MiB of f32

def _all_const(node: Node) -> bool:
    return bool(node.inputs) and all(v.is_const for v in node.inputs)


def _static(t: TensorType) -> bool:
    return all(isinstance(d, int) for d in t.shape)


def _foldable() -> OpPattern:
    """Every op in the table but those kept for lowering (Q/DQ pairs on weights are what int8
    lowering matches: they stay even on constants); read when the pass runs, so ops declared
    later fold too."""
    return P.op(frozenset(o.name for o in OPS if o.name != "const" and not o.has(KEEP)), ...,
                name="node",
                where=_all_const)


SHAPE_OF_STATIC = P.op("shape", P.var("x", where=lambda v: _static(v.type)))


def _fold(max_size: int):
    def evaluate(rw: Rewriter, node: Node) -> list[Value] | None:
        arrays = [v.const_data for v in node.inputs]
        if any(isinstance(a, ElidedTensor) for a in arrays):
            return rw.decline("an input constant is elided (its data was left out of the IR)")
        for t in (v.type for v in node.outputs):
            if not _static(t):
                return rw.decline("result type {} is not static", t)
            if t.quant is not None:
                return rw.decline("result type {} is quantized (a const carries no quantization "
                                  "parameters)", t)
            if t.numel > max_size:
                return rw.decline("result of {} elements exceeds max-size={}", t.numel, max_size)
        try:
            results = node.opdef.evaluate(arrays, node.attrs, [v.type for v in node.inputs])
        except (RtinferError, ValueError, TypeError, IndexError, ArithmeticError) as e:
            return rw.decline("evaluation failed: {}", str(e))  # not e: its frames hold arrays
        outs = []
        for v, r in zip(node.outputs, results, strict=True):
            if r.shape != tuple(v.type.shape) or DType.from_numpy(r.dtype) != v.type.dtype:
                return rw.decline("the reference gave {}{} for {}", r.dtype, list(r.shape), v.type)
            outs.append(rw.const(np.ascontiguousarray(r)))
        return outs

    return evaluate


def shape_of_static(rw: Rewriter, x: Value) -> Value:
    return rw.const(np.asarray(x.type.shape, dtype=np.int64))


@graph_pass("fold-constants", summary="evaluate nodes whose inputs are all constants",
            options={"max-size": Option(int, DEFAULT_MAX_SIZE,
                                        "largest result materialized, in elements")})
def fold_constants(graph: Graph, ctx: PassContext) -> None:
    rules = RuleSet("fold-constants", [
        # shape(x) -> const x.shape                  (x's type is static)
        Rule("shape-of-static", SHAPE_OF_STATIC, shape_of_static),
        # op(const a, ...) -> const op.ref(a, ...)
        Rule("evaluate", _foldable(), _fold(ctx.options["max-size"])),
    ])
    ctx.stat("folded", rules.apply(graph, ctx))
