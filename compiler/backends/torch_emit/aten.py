"""``aten_call``: the captured ATen overload, called as it was in the eager model."""

from __future__ import annotations

from typing import Any

import torch

from rtinfer.backends.torch_emit.context import EmitContext, emits
from rtinfer.ir.ops.aten import decode_args, fill_args, resolve_target


@emits("aten_call")
def _aten_call(cx: EmitContext, xs: list[Any], *, target: str, args: str, in_types: tuple,
               out_types: tuple) -> Any:
    overload = resolve_target(target)
    pos, kw = decode_args(args, len(xs))
    out = cx.tracer.create_proxy("call_function", overload, tuple(fill_args(pos, xs)),
                                 fill_args(kw, xs))
    returns = overload._schema.returns
    if len(returns) == 1 and isinstance(returns[0].type, torch.TensorType):
        return out
    return [out[i] for i in range(len(out_types))]
