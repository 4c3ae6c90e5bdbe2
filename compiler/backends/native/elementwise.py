"""Elementwise ops and fused elementwise bodies: C++ generated per model
(``rtinfer.kernels.codegen``), one function per result."""

from __future__ import annotations

import math

from rtinfer.backends.native.lowerer import LOWERINGS, Lowerer
from rtinfer.backends.native.plan import nhwc_shape
from rtinfer.ir.graph import Node
from rtinfer.ir.ops import BROADCAST, ELEMENTWISE, OPS
from rtinfer.kernels import codegen


def _elementwise(cx: Lowerer, node: Node) -> None:
    ins = [cx.view(v) for v in node.inputs]
    out_shapes = [cx.shape(v) for v in node.outputs]
    out_shape = out_shapes[0]
    full = [v for v in ins if v.shape == out_shape]
    # NHWC when every full-size input is NHWC and the rest are scalars; else plain
    nhwc = len(out_shape) == 4 and bool(full) and all(v.nhwc for v in full) and all(
        v.numel == 1 for v in ins if v.shape != out_shape) and all(
        s == out_shape for s in out_shapes)
    if nhwc:  # the body sees the physical [N, H, W, C] order
        ins_p = [v if v.nhwc else cx.plain(v) for v in ins]
        phys = [nhwc_shape(v.shape) if v.nhwc else v.shape for v in ins_p]
    else:
        ins_p = [cx.plain(v) for v in ins]
        phys = [v.shape for v in ins_p]
    gens = []
    for i, shape in enumerate(out_shapes):  # one function per result
        try:
            gens.append(codegen.generate(node, phys, nhwc_shape(shape) if nhwc else shape,
                                         output=i))
        except ValueError as e:  # (an op or dtype without C++ raises Unsupported itself)
            raise cx.unsupported(str(e)) from None
    bufs = [cx.base_pointer(v) for v in ins_p]
    for (fname, source), v, shape in zip(gens, node.outputs, out_shapes, strict=True):
        y = cx.new_value(v, nhwc=nhwc)
        cx.ew_sources[fname] = source
        n = math.prod(shape)

        def make(ext, plan, name, fname=fname, y=y, n=n):
            ext.add_elementwise(plan, name, cx.ew_functions[fname], bufs, y.buf, n)

        cx.step("elementwise", make, bufs, [y.buf])


def register_leftovers() -> None:
    """The generated code lowers every elementwise or broadcast op no other family lowers,
    the fused bodies and casts: called once the other families have filled ``LOWERINGS``."""
    for opdef in OPS:
        if (ELEMENTWISE in opdef.traits or BROADCAST in opdef.traits) \
                and opdef.name not in LOWERINGS:
            LOWERINGS[opdef.name] = _elementwise
    LOWERINGS.setdefault("fused_elementwise", _elementwise)
    LOWERINGS.setdefault("cast", _elementwise)


__all__ = ["register_leftovers"]
