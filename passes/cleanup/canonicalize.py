"""canonicalize: algebraic identities, and one spelling for what can be written several ways.

Every rule is exact (bit-identical results) except ``x + 0 -> x``, which may turn a ``+0.0``
result into ``-0.0`` (``-0.0 + 0.0 = +0.0``). The canonical spellings, chosen for later passes:

- constants on the right of commutative ops: ``add(c, x) -> add(x, c)``, so a pattern written
  with its constant on the right (bias adds, scales) sees one spelling;
- ``sub(x, c) -> add(x, -c)``: bias adds are adds, whichever sign the exporter wrote, so
  fold-batchnorm and fuse-epilogue look for ``add`` only (exact: IEEE defines ``x - c`` as
  ``x + (-c)``; integers wrap alike);
- ``div(x, c) -> mul(x, 1/c)`` only when every ``1/c`` is exact (c a power of two, 1/c a normal
  number): then the product is bit-identical. Otherwise ``x * fl(1/c)`` can be an ulp off
  ``x / c``, and canonicalize stays exact, so the division stays;
- ``flatten -> reshape`` to the flatten's (possibly symbolic) output shape: one op for every
  row-major reshape, so ``reshape(reshape(x))`` also merges flattens.

A rule whose replacement would change the matched value's type (``x * 1`` where the ones
broadcast ``x`` to a larger shape) is declined by the driver. Stats: rewritten (per rule: the
match report).
"""

from __future__ import annotations

import numpy as np

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops import COMMUTATIVE, OPS
from rtinfer.ir.types import DType
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet

x = P.var("x")


def _same_type(node: Node) -> bool:
    """The node's output has its first input's type (a no-op reshape, expand, ...)."""
    return node.out.type == node.inputs[0].type


def _perm(node: Node) -> tuple[int, ...]:
    rank = node.inputs[0].type.rank
    perm = node.attrs["perm"]
    return tuple(p % rank for p in perm) if perm else tuple(reversed(range(rank)))


def _axes(axes, rank: int) -> tuple[int, ...]:
    return tuple(sorted(a % rank for a in axes))


# -- casts ------------------------------------------------------------------------------------

# significant bits of each float; magnitude bits of each integer (every integer of that many bits
# is exact in a float with at least as many significant bits)
_FLOAT_BITS = {DType.f16: 11, DType.bf16: 8, DType.f32: 24, DType.f64: 53}
_INT_BITS = {DType.bool: 1, DType.u8: 8, DType.i8: 7, DType.i16: 15, DType.i32: 31, DType.i64: 63,
             DType.u16: 16, DType.u32: 32, DType.u64: 64}
_FLOAT_RANGE = {DType.f16: 15, DType.bf16: 127, DType.f32: 127, DType.f64: 1023}  # max exponent


def represents(wide: DType, narrow: DType) -> bool:
    """Every value of ``narrow`` is exactly a value of ``wide``."""
    if wide is narrow or narrow is DType.bool:
        return True
    if narrow in _FLOAT_BITS:
        return (wide in _FLOAT_BITS and _FLOAT_BITS[wide] >= _FLOAT_BITS[narrow]
                and _FLOAT_RANGE[wide] >= _FLOAT_RANGE[narrow])
    if wide in _FLOAT_BITS:
        return _FLOAT_BITS[wide] >= _INT_BITS[narrow]
    if wide is DType.bool:
        return False
    lo_n, hi_n = np.iinfo(narrow.np).min, np.iinfo(narrow.np).max
    lo_w, hi_w = np.iinfo(wide.np).min, np.iinfo(wide.np).max
    return bool(lo_w <= lo_n and hi_n <= hi_w)


def _lossless_inner(node: Node) -> bool:
    inner = node.inputs[0].producer  # ``where`` runs before the inputs are matched
    if inner is None or inner.op != "cast":
        return False
    src = inner.inputs[0].type
    return src.quant is None and represents(inner.attrs["dtype"], src.dtype)


# -- actions ----------------------------------------------------------------------------------


def merge_reshapes(rw: Rewriter, x: Value, r: Node) -> Value:
    return rw.op("reshape", x, **r.attrs)


def compose_transposes(rw: Rewriter, x: Value, inner: Node, outer: Node) -> Value:
    # out axis j of the outer is axis p2[j] of the inner's output, which is axis p1[p2[j]] of x
    p1, p2 = _perm(inner), _perm(outer)
    perm = tuple(p1[j] for j in p2)
    if perm == tuple(range(len(perm))):
        return x
    return rw.op("transpose", x, perm=perm)


def merge_casts(rw: Rewriter, x: Value, outer: Node) -> Value:
    if x.type.dtype is outer.attrs["dtype"]:
        return x
    return rw.op("cast", x, dtype=outer.attrs["dtype"])


def squeeze_unsqueeze(x: Value, inner: Node, outer: Node) -> Value | None:
    rank = outer.inputs[0].type.rank
    if _axes(inner.attrs["axes"], rank) != _axes(outer.attrs["axes"], rank):
        return None
    return x


def unsqueeze_squeeze(x: Value, inner: Node, outer: Node) -> Value | None:
    if not inner.attrs["axes"]:  # all size-1 axes: which ones depends on x's dims
        return None
    rank = x.type.rank
    if _axes(inner.attrs["axes"], rank) != _axes(outer.attrs["axes"], rank):
        return None
    return x


def sub_const_to_add(rw: Rewriter, x: Value, c: Value) -> Value | None:
    data = c.const_data
    if not isinstance(data, np.ndarray):
        return rw.decline("the constant is elided (its data was left out of the IR)")
    with np.errstate(over="ignore"):
        return rw.op("add", x, rw.const(np.negative(data)))


def _exact_reciprocal(c: np.ndarray) -> bool:
    """1/c is exact and a normal number of c's dtype for every element: c is a power of two."""
    c64 = np.asarray(c, dtype=np.float64)
    if not np.all(np.isfinite(c64)) or np.any(c64 == 0):
        return False
    mant, _ = np.frexp(c64)
    r64 = 1.0 / c64
    r = r64.astype(c.dtype)
    import ml_dtypes  # on first use: its import is slow (see rtinfer.ir.types)

    info = ml_dtypes.finfo(c.dtype)
    return bool(np.all(np.abs(mant) == 0.5) and np.all(r.astype(np.float64) == r64)
                and np.all(np.abs(r64) >= float(info.tiny)))


def div_to_mul(rw: Rewriter, x: Value, c: Value) -> Value | None:
    data = c.const_data
    if not isinstance(data, np.ndarray):
        return rw.decline("the constant is elided (its data was left out of the IR)")
    if data.dtype.kind != "f" and data.dtype.name != "bfloat16":
        return None  # integer division truncates: no reciprocal
    if not _exact_reciprocal(data):
        return rw.decline("1/c is not exact (c is not a power of two): x * fl(1/c) can differ "
                          "from x / c by an ulp")
    return rw.op("mul", x, rw.const((1.0 / data.astype(np.float64)).astype(data.dtype)))


def constant_to_the_right(rw: Rewriter, n: Node) -> Value:
    return rw.op(n.op, n.inputs[1], n.inputs[0], **n.attrs)


def flatten_to_reshape(rw: Rewriter, x: Value, f: Node) -> Value:
    return rw.op("reshape", x, shape=f.out.type.shape)


def _no_op_slice(node: Node) -> bool:
    steps = node.attrs["steps"]
    return _same_type(node) and all(s > 0 for s in steps)


def _zero_spatial_pad(node: Node) -> bool:
    """A constant-zero pad of only the spatial axes of an NC... tensor, no negative pads."""
    pads, rank = node.attrs["pads"], node.inputs[0].type.rank
    return (node.attrs["mode"] == "constant" and node.attrs["value"] == 0.0
            and all(p >= 0 for p in pads) and not any(pads[a] or pads[rank + a] for a in (0, 1)))


def pad_into_conv(rw: Rewriter, x: Value, p: Node, conv: Node) -> Value | None:
    if conv.attrs.get("layout", "NCHW") != "NCHW":
        return rw.decline("an NHWC convolution (its spatial axes are 1..n)")
    rank, nd = x.type.rank, x.type.rank - 2
    pads = p.attrs["pads"]
    own = list(conv.attrs["pad"])
    if len(own) != 2 * nd:
        own = [own[0]] * (2 * nd) if len(own) == 1 else own + own
    new = [own[i] + pads[2 + i] for i in range(nd)] + [own[nd + i] + pads[rank + 2 + i]
                                                        for i in range(nd)]
    return rw.op(conv.op, x, *conv.inputs[1:], **{**conv.attrs, "pad": tuple(new)})


def _const_left(node: Node) -> bool:
    a, b = node.inputs
    return a.is_const and not b.is_const


def _commutative_ops() -> frozenset[str]:
    return frozenset(o.name for o in OPS if o.has(COMMUTATIVE) and len(o.inputs) == 2)


def _rules() -> list[Rule]:
    c = P.const("c")
    return [
        # x * 1 -> x, 1 * x -> x          (mul is commutative: both operand orders match)
        Rule("mul-one", x * 1.0, lambda x: x),
        # x + 0 -> x                      (the sign of a zero result may flip: -0 + 0 = +0)
        Rule("add-zero", x + 0.0, lambda x: x),
        # x - 0 -> x
        Rule("sub-zero", x - 0.0, lambda x: x),
        # x / 1 -> x
        Rule("div-one", x / 1.0, lambda x: x),
        # -(-x) -> x
        Rule("neg-neg", P.op("neg", -x), lambda x: x),
        # identity(x) -> x
        Rule("identity", P.op("identity", x), lambda x: x),
        # reshape(x) -> x, expand(x) -> x, cast(x) -> x     (to x's own shape or dtype)
        Rule("no-op-reshape", P.op(("reshape", "expand", "cast"), x, where=_same_type),
             lambda x: x),
        # slice(x) -> x                   (the full range of every axis, forward)
        Rule("no-op-slice", P.op("slice", x, where=_no_op_slice), lambda x: x),
        # pad(x, 0...) -> x
        Rule("no-op-pad", P.op("pad", x, attrs={"pads": lambda p: not any(p)}), lambda x: x),
        # transpose(x, identity) -> x
        Rule("no-op-transpose", P.op("transpose", x, where=lambda n: _perm(n) == tuple(
            range(len(_perm(n))))), lambda x: x),
        # flatten(x, a, e) -> reshape(x, shape of the result)
        Rule("flatten-to-reshape", P.op("flatten", x, name="f"), flatten_to_reshape),
        # reshape(reshape(x, s1), s2) -> reshape(x, s2)
        Rule("reshape-reshape", P.op("reshape", P.op("reshape", x), name="r"), merge_reshapes),
        # transpose(transpose(x, p1), p2) -> transpose(x, p1∘p2),  (p1∘p2)[j] = p1[p2[j]]
        Rule("transpose-transpose",
             P.op("transpose", P.op("transpose", x, name="inner"), name="outer"),
             compose_transposes),
        # cast(cast(x, d1), d2) -> cast(x, d2)   when d1 holds every value of x's dtype exactly
        Rule("cast-cast", P.op("cast", P.op("cast", x), name="outer", where=_lossless_inner),
             merge_casts),
        # squeeze(unsqueeze(x, a), a) -> x
        Rule("squeeze-unsqueeze",
             P.op("squeeze", P.op("unsqueeze", x, name="inner"), name="outer"),
             squeeze_unsqueeze),
        # unsqueeze(squeeze(x, a), a) -> x   (a given: squeeze{axes=[]} depends on x's dims)
        Rule("unsqueeze-squeeze",
             P.op("unsqueeze", P.op("squeeze", x, name="inner"), name="outer"),
             unsqueeze_squeeze),
        # conv(pad(x, zeros around the spatial axes), w, b) -> conv(x, w, b){pad += those}
        #                                 (TF "SAME" padding as exporters spell it)
        Rule("pad-into-conv",
             P.op(("conv1d", "conv2d", "conv3d"), P.op("pad", x, name="p",
                                                       where=_zero_spatial_pad), ...,
                  name="conv"),
             pad_into_conv),
        # x - c -> x + (-c)
        Rule("sub-const-to-add", P.op("sub", x, c), sub_const_to_add),
        # x / c -> x * (1/c)              (c a power of two: exact)
        Rule("div-const-to-mul", P.op("div", x, c), div_to_mul),
        # op(c, x) -> op(x, c)            (op commutative, c a constant, x not)
        Rule("constant-to-the-right",
             P.op(_commutative_ops(), P.any(), P.any(), name="n", where=_const_left),
             constant_to_the_right),
    ]


@graph_pass("canonicalize", summary="algebraic identities and one canonical spelling "
                                    "(constants right, sub/div by constants as add/mul)")
def canonicalize(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("rewritten", RuleSet("canonicalize", _rules()).apply(graph, ctx))

