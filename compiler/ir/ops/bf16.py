"""bf16 compute: ``bf16_conv2d``, ``bf16_linear``, ``bf16_matmul`` (docs/bf16.md).

Each is its ``fused_<base>`` (same inputs and attributes: bias, residual, epilogue) computed with
the activation and the weight rounded to bf16, products accumulated in f32, and an f32 output:

    y = fused_<base>(bf16(x), f32(weight), bias, residual)     bf16(): round to nearest even

The weight is a ``bf16`` constant (the rounding is done once, by ``to-bf16``); the activation,
the bias, the residual and the output are f32, so a bf16 layer drops into an f32 graph with no
casts around it. The reference rounds ``x`` and then runs the f32 fused op: the interpreter is
the oracle the bf16 kernels (oneDNN's AMX / AVX512_BF16 ones) match within their f32
accumulation order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.ops import fused  # noqa: F401  (declares the fused ops these are made from)
from rtinfer.ir.ops.registry import OPAQUE, get_op, op
from rtinfer.ir.types import DType, TensorType

# base op -> the bf16 op (what to-bf16 rewrites, with the fused form of the base op)
BF16_OPS: dict[str, str] = {"conv2d": "bf16_conv2d", "linear": "bf16_linear",
                            "matmul": "bf16_matmul"}
# every layer op to-bf16 rewrites -> its base op
BF16_LAYER_BASE: dict[str, str] = {**{b: b for b in BF16_OPS},
                                   **{f"fused_{b}": b for b in BF16_OPS}}


def round_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to the nearest bf16 (ties to even; NaN stays NaN), as f32."""
    return np.asarray(x, np.float32).astype(DType.bf16.np).astype(np.float32)


def _bf16_heavy(base: str) -> None:
    fdef = get_op(f"fused_{base}")
    name = BF16_OPS[base]

    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        if len(ins) < 2:
            raise IRError(f"takes {fdef.inputs[0]}, {fdef.inputs[1]}, bias?, residual?; got "
                          f"{len(ins)} inputs")
        if ins[0].dtype != DType.f32 or ins[0].quant is not None:
            raise IRError(f"{fdef.inputs[0]} must be f32 (the kernel rounds it to bf16), got "
                          f"{ins[0]}")
        if ins[1].dtype != DType.bf16:
            raise IRError(f"{fdef.inputs[1]} must be bf16 (to-bf16 rounds the weight once), "
                          f"got {ins[1]}")
        for t, what in zip(ins[2:], ("the bias", "the residual"), strict=False):
            if t.dtype != DType.f32:
                raise IRError(f"{what} must be f32, got {t}")
        real = [ins[0], TensorType(DType.f32, ins[1].shape), *ins[2:]]
        return fdef.infer_types(real, attrs)[0]

    def ref(*args: Any, **attrs: Any) -> np.ndarray:
        given = [a for a in args if a is not None]  # the optional inputs pass as None
        real = [round_bf16(given[0]), np.asarray(given[1]).astype(np.float32), *given[2:]]
        return fdef.evaluate(real, attrs)[0]

    op(name, list(fdef.inputs), infer, ref, attrs=dict(fdef.attrs), traits=[OPAQUE],
       weight=fdef.weight, cost=fdef.cost,
       doc=f"bf16 {base}: fused_{base} of x rounded to bf16 (nearest even) and the bf16 weight, "
           f"accumulated in f32: f32 bias, residual and output; made by to-bf16 "
           f"(docs/bf16.md)")


for _base in BF16_OPS:
    _bf16_heavy(_base)
