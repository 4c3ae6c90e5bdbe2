"""ONNX export rules: the fused ops, spelled out again through the rules of the ops they fuse.

These rules emit through other rules of the table, so they are made for it: ``fused_rules(rules)``
closes over the whole table (``rules`` of the package), which holds them too."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from rtinfer.errors import Unsupported
from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Value
from rtinfer.ir.ops import get_op
from rtinfer.ir.ops.fused import FUSED_OPS, activation_op


def _fused(base: str, rules: dict[str, Rule]) -> Rule:
    """fused_<base>: the base op's rule, + bias, then the epilogue through the rules of add and
    the activation (act(y + r), act(y) + r or act(y))."""
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        base_def = get_op(base)
        inline = base_def.inputs[-1] == "bias?"  # conv and linear take the bias themselves
        n = 3 if inline else 2
        site = Site(s.node, s.name, s.in_types[:n], [s.out],
                    {k: s.attrs[k] for k in base_def.attrs})
        y = rules[base](e, site, x[:n])
        if not inline and len(x) > 2:
            y = e.op("Add", [y, x[2]])
        if s.attrs["residual"] == "pre":
            y = e.op("Add", [y, x[3]])
        act = activation_op(s.attrs["activation"], s.attrs["alpha"], s.attrs["beta"])
        if act is not None:
            name, attrs = act
            y = rules[name](e, Site(s.node, s.name, [s.out], [s.out],
                                    get_op(name).complete_attrs(attrs)), [y])
        if s.attrs["residual"] == "post":
            y = e.op("Add", [y, x[3]])
        return y
    return rule


def _fused_elementwise(rules: dict[str, Rule]) -> Rule:
    """fused_elementwise: the body's nodes, inlined through their own rules."""
    def inline(e: Emitter, s: Site, x: list[gs.Tensor]) -> list[gs.Tensor]:
        body = s.attrs["body"]
        tensors: dict[Value, gs.Tensor] = dict(zip(body.inputs, x, strict=True))
        for n in body.nodes:
            if n.op == "const":
                data = n.attrs["value"]
                if isinstance(data, ElidedTensor):
                    raise Unsupported(s.node.op,
                                      "a constant of the body was elided from the IR text")
                tensors[n.out] = e.const(data)
                continue
            rule = rules.get(n.op)
            if rule is None:
                raise Unsupported(s.node.op, f"the body's op {n.op} has no ONNX export rule")
            site = Site(n, s.name, [v.type for v in n.inputs], [v.type for v in n.outputs],
                        n.attrs)
            res = rule(e, site, [tensors[v] for v in n.inputs])
            tensors.update(zip(n.outputs, res if isinstance(res, (list, tuple)) else [res],
                               strict=True))
        return [tensors[v] for v in body.outputs]
    return inline


def fused_rules(rules: dict[str, Rule]) -> dict[str, Rule]:
    """The rules of the fused ops, emitting through ``rules`` (the whole table)."""
    return {
        # fused heavy ops (fuse-epilogue), spelled out again
        **{fused: _fused(base, rules) for base, fused in FUSED_OPS.items()},
        "fused_elementwise": _fused_elementwise(rules),  # fuse-elementwise: the body, inlined
    }
