"""lower-int8 (fold-qdq): QDQ chains become the quantized fused ops (docs/int8.md).

    quantize(op(dequantize(xq), dequantize(wq), b, [dequantize(rq) | r]))
      -> qop(xq, wq, b, [rq | r]) {op's attrs, out_dtype/out_scale/out_zero_point of the quantize}
    op(dequantize(xq), dequantize(wq), ...)            (no quantize is the only reader)
      -> qop(xq, wq, ...) {out_dtype=f32}
    quantize(p(dequantize(q)))   with the quantize's parameters equal to q's
      -> p(q)                                  p: max_pool2d and the data-movement ops
    quantize(dequantize(q))      with equal parameters
      -> q

op is conv2d, linear, matmul or their fused forms; qop is qconv2d, qlinear or qmatmul. wq is an
int8 constant with symmetric QuantParams (per tensor, or per output channel); for matmul, b may
also be a quantized activation (attention). Each rewrite is exact: the quantized op's reference
is the QDQ chain it replaces, so the interpreter's answer does not change by a bit.

Declines (the chain stays QDQ and runs in fp32): the activation is quantized per channel, the
weight has zero points or is quantized along another axis, the bias is not f32. Stats: rewrites,
lowered (quantized ops in the result). Dead dequantize nodes are removed at the end.
"""

from __future__ import annotations

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops.fused import EPILOGUE_ATTRS
from rtinfer.ir.ops.quant import LAYER_BASE, QUANTIZED_OPS
from rtinfer.ir.types import DType
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.passes.quant.calibrate import PASS_THROUGH
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet

BASE_OF = LAYER_BASE
QUANTIZED_OPS_NAMES = frozenset(q for q, _ in QUANTIZED_OPS.values())
INT8 = (DType.u8, DType.i8)


def _dequantized(v: Value) -> Value | None:
    """``q`` where ``v = dequantize(q)``."""
    p = v.producer
    return p.inputs[0] if p is not None and p.op == "dequantize" else None


def _per_tensor_act(q: Value | None) -> bool:
    return q is not None and q.type.dtype in INT8 and q.type.quant is not None \
        and not q.type.quant.per_channel


def _only_quantize_reader(out: Value) -> Node | None:
    """The ``quantize`` (per tensor, to u8/i8) that is the only reader of ``out``."""
    g = out.producer.graph
    if g.is_output(out) or len(out.users) != 1:
        return None
    user = out.users[0]
    if user.op != "quantize":
        return None
    t = user.out.type
    return user if t.dtype in INT8 and not t.quant.per_channel else None


def _weight_ok(base: str, wq: Value) -> str | None:
    """Why ``wq`` cannot be the quantized op's weight, if it cannot."""
    t = wq.type
    if base == "matmul" and _per_tensor_act(wq) and not wq.is_const:
        return None  # activation x activation
    if not wq.is_const or t.dtype != DType.i8 or t.quant is None:
        return f"the weight is not an int8 constant ({t})"
    if (t.quant.zero_point != 0).any():
        return "the weight has zero points (oneDNN takes symmetric int8 weights)"
    axis = QUANTIZED_OPS[base][1] % t.rank
    if t.quant.per_channel and t.quant.axis != axis:
        return f"the weight is quantized along axis {t.quant.axis}, not the output channels"
    return None


def lower_heavy(rw: Rewriter, h: Node) -> Value | None:
    base = BASE_OF[h.op]
    xq, wq = _dequantized(h.inputs[0]), _dequantized(h.inputs[1])
    if not _per_tensor_act(xq):
        return rw.decline("{} input is not dequantize(u8/i8 per tensor)", h.op)
    if wq is None:
        return rw.decline("{} weight is not dequantize(int8)", h.op)
    why = _weight_ok(base, wq)
    if why is not None:
        return rw.decline(why)
    ins = [xq, wq]
    if len(h.inputs) > 2:
        bias = h.inputs[2]
        if bias.type.dtype != DType.f32:
            return rw.decline("the bias is {}, not f32", bias.type.dtype)
        ins.append(bias)
    if len(h.inputs) > 3:
        r = h.inputs[3]
        rq = _dequantized(r)
        ins.append(rq if _per_tensor_act(rq) else r)
    attrs = dict(h.attrs)
    for k, a in EPILOGUE_ATTRS.items():
        attrs.setdefault(k, a.default)
    quant = _only_quantize_reader(h.out)
    qop = QUANTIZED_OPS[base][0]
    if quant is None:
        return rw.op(qop, *ins, **attrs, out_dtype=DType.f32)
    qp = quant.out.type.quant
    new = rw.op(qop, *ins, **attrs, out_dtype=quant.out.type.dtype,
                out_scale=float(qp.scale), out_zero_point=int(qp.zero_point))
    rw.replace(quant.out, new)
    rw.erase(quant)
    return None  # h is dead now: the driver erases it

def pass_through(rw: Rewriter, quant: Node, p: Node) -> Value | None:
    qs = [_dequantized(v) for v in p.inputs]
    want = quant.out.type
    first = qs[0]
    if first is None or not _per_tensor_act(first):
        return rw.decline("{} does not read a dequantized u8/i8 tensor", p.op)
    # data inputs of the op other than the first (shape operands) stay as they are
    for i, q in enumerate(qs):
        if q is None:
            if p.op == "concat":
                return rw.decline("concat input {} is not dequantized", i)
            continue
        if q.type.dtype != want.dtype or q.type.quant != want.quant:
            return rw.decline("{} input {} has parameters {} but the output is quantized as "
                              "{}", p.op, i, q.type, want)
    if len(p.out.users) != 1 or p.graph.is_output(p.out):
        return rw.decline("{} output has other readers (they need real values)", p.op)
    ins = [q if q is not None else v for q, v in zip(qs, p.inputs, strict=True)]
    return rw.op(p.op, *ins, **p.attrs)


def fold_pair(rw: Rewriter, quant: Node, dq: Node) -> Value | None:
    q = dq.inputs[0]
    if q.type != quant.out.type:
        return rw.decline("a requantization: {} -> {}", q.type, quant.out.type)
    return q


RULES = RuleSet("lower-int8", [
    # quantize(dequantize(q)) -> q          (the same parameters)
    Rule("fold", P.op("quantize", P.op("dequantize", P.any(), name="dq"), name="quant"),
         fold_pair),
    # quantize(p(dequantize(q), ...)) -> p(q, ...)
    Rule("pass-through", P.op("quantize", P.op(tuple(sorted(PASS_THROUGH)), ..., name="p"),
                              name="quant"), pass_through),
    # [quantize](op(dequantize(xq), dequantize(wq), b, r)) -> qop(xq, wq, b, r)
    Rule("heavy", P.op(tuple(BASE_OF), ..., name="h"), lower_heavy),
])


@graph_pass("lower-int8", summary="fold QDQ chains into qconv2d/qlinear/qmatmul and run "
                                  "pooling and data movement on the integers")
def lower_int8(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("rewrites", RULES.apply(graph, ctx))
    ctx.stat("lowered", sum(n.op in QUANTIZED_OPS_NAMES for n in graph.nodes))
    rw = Rewriter(graph, ctx)
    for node in reversed(list(graph.nodes)):  # readers first, so chains of dead nodes go too
        if node.op in ("dequantize", "const"):
            rw.erase_if_dead(node)
