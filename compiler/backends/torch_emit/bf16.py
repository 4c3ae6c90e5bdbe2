"""Emitters of the bf16 layers (``bf16_conv2d``, ``bf16_linear``, ``bf16_matmul``; docs/bf16.md):
the activation is cast to bf16 and the base op runs in ATen's bf16 kernels (oneDNN's AMX /
AVX512_BF16 ones in torch), its result cast back to f32; bias, residual and activation are
added in f32, as the reference does.

ATen's CPU bf16 kernels accumulate in f32 but write bf16, so the base op's output carries one
more rounding than the reference (relative 2**-9 at most); the bias is added after that rounding
so it is not rounded too.
"""

from __future__ import annotations

import torch

from rtinfer.backends.torch_emit.context import EmitContext, Emitter, emits
from rtinfer.ir.ops import get_op
from rtinfer.ir.ops.bf16 import BF16_OPS


def _to_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16)  # round to nearest even, as the reference's rounding


def _to_f32_plus_bias(y: torch.Tensor, bias: torch.Tensor | None, channel_axis: int
                      ) -> torch.Tensor:
    y = y.float()
    if bias is None:
        return y
    shape = [1] * y.dim()
    shape[channel_axis] = -1
    return y + bias.reshape(shape)


def _bf16_emitter(base: str) -> Emitter:
    from rtinfer.backends.torch_emit.fused import add_epilogue, base_op

    base_attrs = tuple(get_op(base).attrs)

    def emit(cx: EmitContext, x, w, bias, residual, /, **attrs):
        own = {k: attrs[k] for k in base_attrs if k in attrs}
        y = base_op(cx, base, cx.call(_to_bf16, x), w, None, own)
        axis = 1 if base == "conv2d" and attrs.get("layout", "NCHW") == "NCHW" else -1
        y = cx.call(_to_f32_plus_bias, y, bias, axis)
        return add_epilogue(cx, y, residual, attrs, done_pre=False, done_act=False)
    return emit


for _base, _name in BF16_OPS.items():
    emits(_name)(_bf16_emitter(_base))
