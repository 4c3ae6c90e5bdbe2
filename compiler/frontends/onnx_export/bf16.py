"""ONNX export rules of the bf16 layers (docs/bf16.md): the computation their reference is,

    Cast(Cast(x, bfloat16), float), Cast(weight, float) -> the fused op's rule (f32)

so ONNX Runtime computes what the interpreter does: x rounded to bf16 (Cast rounds to nearest
even), the bf16 weight widened exactly, the layer and its epilogue in f32.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site
from rtinfer.ir.ops.bf16 import BF16_OPS
from rtinfer.ir.ops.fused import FUSED_OPS
from rtinfer.ir.types import DType, TensorType


def _bf16(base: str, rules: dict[str, Rule]) -> Rule:
    fused = FUSED_OPS[base]

    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        real = [e.cast(e.cast(x[0], DType.bf16), DType.f32), e.cast(x[1], DType.f32), *x[2:]]
        types = [s.in_types[0], TensorType(DType.f32, s.in_types[1].shape), *s.in_types[2:]]
        return rules[fused](e, Site(s.node, s.name, types, list(s.out_types), s.attrs), real)
    return rule


def bf16_rules(rules: dict[str, Rule]) -> dict[str, Rule]:
    """The rules of bf16_conv2d, bf16_linear and bf16_matmul, emitting through ``rules`` (the
    whole table, which holds the fused ops' rules)."""
    return {name: _bf16(base, rules) for base, name in BF16_OPS.items()}
