"""Activation layouts of spatial ops: ``layout="NCHW"`` (the default) or ``"NHWC"`` (channels last).

An op declared over ``[N, C, *spatial]`` gets the channels-last form by wrapping its inference,
reference and channel flow with ``with_layout``: with ``layout="NHWC"`` input 0 and output 0 are
``[N, *spatial, C]``, and the op means

    op_nhwc(x, ...) = transpose(op_nchw(transpose(x, to_channels_first), ...), to_channels_last)

Weights and per-channel parameters keep their shapes (a conv weight stays ``[O, C/g, kh, kw]``):
the attribute is about activations only. The ``layout`` pass converts graphs between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.ops.registry import Attr, ChannelFn, InferFn, PortAxis
from rtinfer.ir.types import TensorType

LAYOUTS = ("NCHW", "NHWC")
LAYOUT_ATTR = Attr("str", "NCHW", LAYOUTS)


def to_channels_first(rank: int) -> tuple[int, ...]:
    """The transpose perm taking ``[N, *spatial, C]`` to ``[N, C, *spatial]``."""
    return (0, rank - 1, *range(1, rank - 1))


def to_channels_last(rank: int) -> tuple[int, ...]:
    """The transpose perm taking ``[N, C, *spatial]`` to ``[N, *spatial, C]``."""
    return (0, *range(2, rank), 1)


def permute_type(t: TensorType, perm: Sequence[int]) -> TensorType:
    if t.quant is not None and t.quant.axis is not None:
        raise IRError(f"layout NHWC of a per-channel quantized tensor {t} is not supported")
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm), t.quant)


def _nhwc(attrs: dict) -> bool:
    return attrs.get("layout", "NCHW") == "NHWC"


def with_layout(infer: InferFn, ref: Callable[..., Any], channels: ChannelFn | None = None
                ) -> tuple[InferFn, Callable[..., Any], ChannelFn | None]:
    """``(infer, ref, channels)`` of an NCHW op, extended to the ``layout`` attribute."""

    def infer_l(ins: list[TensorType], attrs: dict) -> Any:
        if not _nhwc(attrs):
            return infer(ins, attrs)
        x = ins[0]
        if x.rank < 3:
            raise IRError(f"layout NHWC needs x of rank 3 or more, got {x}")
        out = infer([permute_type(x, to_channels_first(x.rank))] + list(ins[1:]), attrs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        outs[0] = permute_type(outs[0], to_channels_last(outs[0].rank))
        return outs if isinstance(out, (list, tuple)) else outs[0]

    def ref_l(*args: Any, layout: str = "NCHW", **attrs: Any) -> Any:
        if layout == "NCHW":
            return ref(*args, **attrs)
        x = np.asarray(args[0])
        y = ref(np.ascontiguousarray(np.transpose(x, to_channels_first(x.ndim))), *args[1:],
                **attrs)
        if isinstance(y, (list, tuple)):
            first = np.asarray(y[0])
            return [np.ascontiguousarray(np.transpose(first, to_channels_last(first.ndim))),
                    *y[1:]]
        y = np.asarray(y)
        return np.ascontiguousarray(np.transpose(y, to_channels_last(y.ndim)))

    if channels is None:
        return infer_l, ref_l, None

    def channels_l(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
        if not _nhwc(attrs):
            return channels(ins, attrs)
        x = ins[0]
        cf_ins = [permute_type(x, to_channels_first(x.rank))] + list(ins[1:])
        out_rank = infer_l(ins, attrs)
        out_rank = (out_rank[0] if isinstance(out_rank, list) else out_rank).rank
        # NCHW axis a sits at position to_channels_last(rank).index(a) in NHWC
        pos_in = {a: j for j, a in enumerate(to_channels_last(x.rank))}
        pos_out = {a: j for j, a in enumerate(to_channels_last(out_rank))}

        def move(p: PortAxis) -> PortAxis:
            port, i, ax = p
            if i == 0:
                return port, i, (pos_in if port == "in" else pos_out)[ax]
            return p

        return [frozenset(move(p) for p in g) for g in channels(cf_ins, attrs)]

    return infer_l, ref_l, channels_l
