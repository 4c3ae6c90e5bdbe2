"""ONNX export rules: normalization and softmax."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_graphsurgeon as gs

from rtinfer.frontends.onnx_export.context import (
    Emitter,
    Rule,
    Site,
    axis_attr,
    channels_last,
    simple,
)
from rtinfer.ir.ops.common import norm_axis
from rtinfer.ir.types import Dim, DType


def _param(e: Emitter, x: list[gs.Tensor], i: int, dims: Sequence[Dim], value: float,
           dt: DType) -> gs.Tensor:
    """Optional input ``i``, or a constant standing in for it (ONNX needs scale and bias)."""
    return x[i] if len(x) > i else e.filled(dims, value, dt)


def _batch_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    c, dt = s.x.shape[1], s.x.dtype
    return e.op("BatchNormalization",
                [x[0], _param(e, x, 3, [c], 1.0, dt), _param(e, x, 4, [c], 0.0, dt), x[1], x[2]],
                {"epsilon": s.attrs["eps"]})


def _layer_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    axis = norm_axis(s.attrs["axis"], s.x.rank)
    gamma = _param(e, x, 1, s.x.shape[axis:], 1.0, s.x.dtype)
    return e.op("LayerNormalization", [x[0], gamma] + x[2:3],
                {"axis": axis, "epsilon": s.attrs["eps"]})


def _rms_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    axis, dt = norm_axis(s.attrs["axis"], s.x.rank), s.x.dtype
    if e.opset >= 23:
        gamma = _param(e, x, 1, s.x.shape[axis:], 1.0, dt)
        return e.op("RMSNormalization", [x[0], gamma], {"axis": axis,
                                                        "epsilon": s.attrs["eps"]})
    # x / sqrt(mean(x^2 over axis..) + eps) * gamma
    ms = e.op("ReduceMean", [e.op("Mul", [x[0], x[0]]), e.ints(range(axis, s.x.rank))],
              {"keepdims": 1})
    rms = e.op("Sqrt", [e.op("Add", [ms, e.scalar(s.attrs["eps"], dt)])])
    y = e.op("Div", [x[0], rms])
    return e.op("Mul", [y, x[1]]) if len(x) > 1 else y


def _channel_param(e: Emitter, p: gs.Tensor, rank: int) -> gs.Tensor:
    """A per-channel [C] vector shaped [C, 1, ...] to broadcast against [N, C, *spatial]."""
    return p if rank <= 2 else e.op("Unsqueeze", [p, e.ints(range(1, rank - 1))])


def _group_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # [N, C, ...] -> [N, G, -1]; normalize over the last axis; back to x's shape; affine
    dt = s.x.dtype
    xr = e.op("Reshape", [x[0], e.ints([0, s.attrs["groups"], -1])])
    last = e.ints([2])
    d = e.op("Sub", [xr, e.op("ReduceMean", [xr, last], {"keepdims": 1})])
    var = e.op("ReduceMean", [e.op("Mul", [d, d]), last], {"keepdims": 1})
    y = e.op("Div", [d, e.op("Sqrt", [e.op("Add", [var, e.scalar(s.attrs["eps"], dt)])])])
    y = e.op("Reshape", [y, e.op("Shape", [x[0]])])
    if len(x) > 1:
        y = e.op("Mul", [y, _channel_param(e, x[1], s.x.rank)])
    if len(x) > 2:
        y = e.op("Add", [y, _channel_param(e, x[2], s.x.rank)])
    return y


def _instance_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    c, dt = s.x.shape[1], s.x.dtype
    return e.op("InstanceNormalization",
                [x[0], _param(e, x, 1, [c], 1.0, dt), _param(e, x, 2, [c], 0.0, dt)],
                {"epsilon": s.attrs["eps"]})


RULES: dict[str, Rule] = {
    "batch_norm": channels_last(_batch_norm),
    "layer_norm": _layer_norm,
    "rms_norm": _rms_norm,  # RMSNormalization (opset 23) or its formula
    "group_norm": _group_norm,
    "instance_norm": _instance_norm,
    "softmax": simple("Softmax", axis_attr),
    "log_softmax": simple("LogSoftmax", axis_attr),
    "hardmax": simple("Hardmax", axis_attr),
}
