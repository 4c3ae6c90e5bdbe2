"""Normalizations (inference form) and softmax. References compute in f32 for f16/bf16."""

from __future__ import annotations

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.ops import channel_maps
from rtinfer.ir.ops.common import (
    need_float,
    need_no_quant,
    norm_axis,
    same_dtype,
    upcast,
)
from rtinfer.ir.ops.layouts import LAYOUT_ATTR, with_layout
from rtinfer.ir.ops.registry import OPAQUE, Attr, PortAxis, op
from rtinfer.ir.types import Dim, TensorType, dims_equal


def _need_vector(t: TensorType | None, n: Dim, what: str) -> None:
    if t is not None and (t.rank != 1 or not dims_equal(t.shape[0], n)):
        raise IRError(f"{what} must be [{n}], got {t}")


def _float_inputs(ins: list[TensorType]) -> None:
    same_dtype(ins)
    need_float(ins[0], "x")
    need_no_quant(ins)


def _affine(y: np.ndarray, gamma, beta, shape) -> np.ndarray:
    if gamma is not None:
        y = y * upcast(gamma).reshape(shape)
    if beta is not None:
        y = y + upcast(beta).reshape(shape)
    return y


def _channel_groups(ins: list[TensorType], params: range) -> list[frozenset[PortAxis]]:
    """Axis 1 couples with the per-channel parameter inputs; other axes flow straight."""
    groups = []
    for ax in range(ins[0].rank):
        g = {("in", 0, ax), ("out", 0, ax)}
        if ax == 1:
            g |= {("in", i, 0) for i in params if i < len(ins)}
        groups.append(frozenset(g))
    return groups


def _param_shape(rank: int) -> tuple[int, ...]:
    return (1, -1) + (1,) * (rank - 2)


# -- batch_norm -------------------------------------------------------------------------------


def _bn_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    _float_inputs(ins)
    if x.rank < 2:
        raise IRError(f"x must be [N, C, ...], got {x}")
    for t, what in zip(ins[1:], ("mean", "var", "gamma", "beta"), strict=False):
        _need_vector(t, x.shape[1], what)
    return x.with_shape(x.shape)


def _bn_ref(x, mean, var, gamma, beta, eps: float) -> np.ndarray:
    s = _param_shape(x.ndim)
    y = (upcast(x) - upcast(mean).reshape(s)) / np.sqrt(upcast(var).reshape(s) + eps)
    return _affine(y, gamma, beta, s).astype(x.dtype, copy=False)


_bn = with_layout(_bn_infer, _bn_ref, lambda ins, a: _channel_groups(ins, range(1, 5)))
op("batch_norm", ["x", "mean", "var", "gamma?", "beta?"], _bn[0], _bn[1],
   attrs={"eps": Attr("float", 1e-5), "layout": LAYOUT_ATTR}, traits=[OPAQUE],
   channels=_bn[2],
   doc="(x - mean) / sqrt(var + eps) * gamma + beta per channel (axis 1), inference form; "
       "layout=NHWC: channels last")

# -- layer_norm / rms_norm --------------------------------------------------------------------


def _last_axes_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    _float_inputs(ins)
    axis = norm_axis(attrs["axis"], x.rank)
    tail = x.shape[axis:]
    for t, what in zip(ins[1:], ("gamma", "beta"), strict=False):
        if t.rank != len(tail) or not all(map(dims_equal, t.shape, tail)):
            raise IRError(f"{what} must have the normalized shape "
                          f"[{','.join(map(str, tail))}], got {t}")
    return x.with_shape(x.shape)


def _last_axes_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    x = ins[0]
    axis = norm_axis(attrs["axis"], x.rank)
    groups = []
    for ax in range(x.rank):
        g = {("in", 0, ax), ("out", 0, ax)}
        if ax >= axis:
            g |= {("in", i, ax - axis) for i in range(1, len(ins))}
        groups.append(frozenset(g))
    return groups


def _ln_ref(x, gamma, beta, axis: int, eps: float) -> np.ndarray:
    axes = tuple(range(axis % x.ndim, x.ndim))
    xf = upcast(x)
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (xf - mean) / np.sqrt(var + eps)
    tail = x.shape[axis % x.ndim:]
    return _affine(y, gamma, beta, tail).astype(x.dtype, copy=False)


op("layer_norm", ["x", "gamma?", "beta?"], _last_axes_infer, _ln_ref,
   attrs={"axis": Attr("int", -1), "eps": Attr("float", 1e-5)}, traits=[OPAQUE],
   channels=_last_axes_channels, prune=channel_maps.LAST_AXES_NORM,
   doc="normalize over axes axis..rank-1 (biased variance), then * gamma + beta; gamma and "
       "beta have shape x.shape[axis:] (torch F.layer_norm)")


def _rms_ref(x, gamma, axis: int, eps: float) -> np.ndarray:
    axes = tuple(range(axis % x.ndim, x.ndim))
    xf = upcast(x)
    y = xf / np.sqrt((xf * xf).mean(axis=axes, keepdims=True) + eps)
    return _affine(y, gamma, None, x.shape[axis % x.ndim:]).astype(x.dtype, copy=False)


op("rms_norm", ["x", "gamma?"], _last_axes_infer, _rms_ref,
   attrs={"axis": Attr("int", -1), "eps": Attr("float", 1e-6)}, traits=[OPAQUE],
   channels=_last_axes_channels, prune=channel_maps.LAST_AXES_NORM,
   doc="x / sqrt(mean(x^2 over axes axis..rank-1) + eps) * gamma (torch F.rms_norm)")

# -- group_norm / instance_norm ---------------------------------------------------------------


def _per_channel_infer(ins: list[TensorType], groups: int, min_rank: int) -> TensorType:
    x = ins[0]
    _float_inputs(ins)
    if x.rank < min_rank:
        raise IRError(f"x must be [N, C{', *spatial' if min_rank > 2 else ', ...'}], got {x}")
    if groups < 1:
        raise IRError(f"groups must be >= 1, got {groups}")
    if isinstance(x.shape[1], int) and x.shape[1] % groups:
        raise IRError(f"{x.shape[1]} channels do not split into {groups} groups")
    for t, what in zip(ins[1:], ("gamma", "beta"), strict=False):
        _need_vector(t, x.shape[1], what)
    return x.with_shape(x.shape)


def _gn_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    return _per_channel_infer(ins, attrs["groups"], 2)


def _in_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    return _per_channel_infer(ins, 1, 3)


def _group_norm(x, gamma, beta, groups: int, eps: float) -> np.ndarray:
    n, c = x.shape[:2]
    xf = upcast(x).reshape(n, groups, -1)
    mean = xf.mean(axis=2, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((xf - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return _affine(y, gamma, beta, _param_shape(x.ndim)).astype(x.dtype, copy=False)


op("group_norm", ["x", "gamma?", "beta?"], _gn_infer, _group_norm,
   attrs={"groups": Attr("int"), "eps": Attr("float", 1e-5)}, traits=[OPAQUE],
   channels=lambda ins, a: _channel_groups(ins, range(1, 3)),
   doc="normalize each group of C/groups channels (with all spatial positions), then "
       "per-channel gamma, beta (torch F.group_norm)")


def _instance_norm(x, gamma, beta, eps: float) -> np.ndarray:
    return _group_norm(x, gamma, beta, x.shape[1], eps)


op("instance_norm", ["x", "gamma?", "beta?"], _in_infer, _instance_norm,
   attrs={"eps": Attr("float", 1e-5)}, traits=[OPAQUE],
   channels=lambda ins, a: _channel_groups(ins, range(1, 3)),
   doc="normalize each (sample, channel) over its spatial positions, then per-channel "
       "gamma, beta (torch F.instance_norm without running stats)")

# -- softmax ----------------------------------------------------------------------------------


def _softmax_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    need_float(x, "x")
    need_no_quant(ins, "x")
    norm_axis(attrs["axis"], x.rank)
    return x.with_shape(x.shape)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    xf = upcast(x)
    z = xf - xf.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _softmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    return np.exp(_log_softmax(x, axis)).astype(x.dtype, copy=False)


def _log_softmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    return _log_softmax(x, axis).astype(x.dtype, copy=False)


def _all_axes(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    return [frozenset({("in", 0, ax), ("out", 0, ax)}) for ax in range(ins[0].rank)]


op("softmax", ["x"], _softmax_infer, _softmax_ref, attrs={"axis": Attr("int", -1)},
   traits=[OPAQUE], channels=_all_axes, doc="exp(x) / sum(exp(x)) along axis")
op("log_softmax", ["x"], _softmax_infer, _log_softmax_ref, attrs={"axis": Attr("int", -1)},
   traits=[OPAQUE], channels=_all_axes, doc="x - log(sum(exp(x))) along axis")


def _hardmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    i = np.expand_dims(np.argmax(x, axis=axis), axis)  # the first maximum wins a tie
    out = np.zeros_like(x)
    np.put_along_axis(out, i, 1, axis=axis)
    return out


op("hardmax", ["x"], _softmax_infer, _hardmax_ref, attrs={"axis": Attr("int", -1)},
   traits=[OPAQUE], channels=_all_axes,
   doc="1 at the first maximum along axis, 0 elsewhere (ONNX Hardmax)")
