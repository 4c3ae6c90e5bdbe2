"""Quantize and dequantize: affine int quantization, ``real = scale * (q - zero_point)``.

``quantize`` encodes its parameters as attributes: ``scale`` (floats), ``zero_point`` (ints,
``[]`` = all zero) and ``axis`` (``[]`` per tensor with one scale, ``[a]`` per channel along
axis ``a`` with one scale per channel). Its output type carries them as ``QuantParams``;
``dequantize`` reads them back from its input type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.ops.common import need_float, need_no_quant, norm_axis
from rtinfer.ir.ops.registry import ELEMENTWISE, KEEP, Attr, get_op, op
from rtinfer.ir.types import DType, QuantParams, TensorType

QUANT_DTYPES = (DType.i8, DType.u8, DType.i32)


def quant_params(rank: int, scale, zero_point, axis) -> QuantParams:
    """The QuantParams that ``quantize``'s attributes describe, for an input of ``rank``."""
    if len(axis) > 1:
        raise IRError(f"axis must be [] (per tensor) or one axis, got {list(axis)}")
    if zero_point and len(zero_point) != len(scale):
        raise IRError(f"{len(zero_point)} zero points for {len(scale)} scales")
    zp = list(zero_point) or [0] * len(scale)
    if not axis:
        if len(scale) != 1:
            raise IRError(f"per-tensor quantization takes one scale, got {len(scale)}; give "
                          f"axis=[a] for per-channel")
        return QuantParams(np.float32(scale[0]), np.int64(zp[0]))
    return QuantParams(np.asarray(scale, np.float32), np.asarray(zp, np.int64),
                       norm_axis(axis[0], rank))


def _quantize_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    need_float(x, "x")
    need_no_quant(ins, "x")
    qp = quant_params(x.rank, attrs["scale"], attrs["zero_point"], attrs["axis"])
    info = np.iinfo(attrs["dtype"].np)
    if np.any(qp.zero_point < info.min) or np.any(qp.zero_point > info.max):
        raise IRError(f"zero points {qp.zero_point.tolist()} do not fit {attrs['dtype']}")
    return TensorType(attrs["dtype"], x.shape, qp)


def _broadcast(qp: QuantParams, rank: int) -> tuple[np.ndarray, np.ndarray]:
    if qp.axis is None:
        return qp.scale, qp.zero_point
    shape = [1] * rank
    shape[qp.axis] = -1
    return qp.scale.reshape(shape), qp.zero_point.reshape(shape)


def _quantize_ref(x: np.ndarray, scale, zero_point, axis, dtype: DType) -> np.ndarray:
    s, zp = _broadcast(quant_params(x.ndim, scale, zero_point, axis), x.ndim)
    with np.errstate(invalid="ignore"):
        q = np.rint(x.astype(np.float32) / s).astype(np.float64) + zp  # rint: half to even
    # NaN has no code: it becomes the zero point, the code of 0.0 (the native kernels do the
    # same; numpy's cast of NaN to an integer is undefined)
    q = np.where(np.isnan(q), np.broadcast_to(zp, q.shape), q)
    info = np.iinfo(dtype.np)
    return np.clip(q, info.min, info.max).astype(dtype.np)


op("quantize", ["x"], _quantize_infer, _quantize_ref,
   attrs={"scale": Attr("floats"), "zero_point": Attr("ints", ()), "axis": Attr("ints", ()),
          "dtype": Attr("dtype", DType.i8, QUANT_DTYPES)},
   traits=[ELEMENTWISE, KEEP],
   doc="q = saturate(round_half_even(x / scale) + zero_point) to dtype (ONNX QuantizeLinear: "
       "rounds before adding the zero point; NaN -> zero_point); axis=[] per tensor, [a] per "
       "channel; the output "
       "type carries the QuantParams")


def _dequantize_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    q = ins[0]
    if q.quant is None:
        raise IRError(f"input {q} has no quantization parameters")
    return TensorType(DType.f32, q.shape)


def _dequantize_ref(q: np.ndarray, in_types: list[TensorType]) -> np.ndarray:
    qp = in_types[0].quant
    if qp is None:
        raise IRError(f"dequantize: input {in_types[0]} has no quantization parameters")
    s, zp = _broadcast(qp, q.ndim)
    return ((q.astype(np.int64) - zp).astype(np.float32) * s).astype(np.float32)


op("dequantize", ["q"], _dequantize_infer, _dequantize_ref, traits=[ELEMENTWISE, KEEP],
   ref_types=True,
   doc="scale * (q - zero_point) -> f32, with the QuantParams of the input type")


# -- quantized heavy ops: qconv2d, qlinear, qmatmul (docs/int8.md) ----------------------------

# base op -> (the quantized op, the weight's per-channel axis: the output channel)
QUANTIZED_OPS: dict[str, tuple[str, int]] = {
    "conv2d": ("qconv2d", 0), "linear": ("qlinear", 0), "matmul": ("qmatmul", -1)}
# every layer op with a quantized form (the base op and its fused form) -> the base op
LAYER_BASE: dict[str, str] = {**{b: b for b in QUANTIZED_OPS},
                              **{f"fused_{b}": b for b in QUANTIZED_OPS}}
QUANT_OUT_ATTRS = {
    "out_dtype": Attr("dtype", DType.f32, (DType.u8, DType.i8, DType.f32)),
    "out_scale": Attr("float", 1.0),
    "out_zero_point": Attr("int", 0),
}


def quantized_output(out: TensorType, attrs: dict) -> TensorType:
    """The output type of a quantized op whose real output is ``out``."""
    if attrs["out_dtype"] == DType.f32:
        return out
    qp = quant_params(out.rank, [attrs["out_scale"]], [attrs["out_zero_point"]], [])
    info = np.iinfo(attrs["out_dtype"].np)
    if not info.min <= int(qp.zero_point) <= info.max:
        raise IRError(f"out_zero_point {int(qp.zero_point)} does not fit {attrs['out_dtype']}")
    return TensorType(attrs["out_dtype"], out.shape, qp)


def _check_act(t: TensorType, what: str) -> None:
    if t.dtype not in (DType.u8, DType.i8) or t.quant is None or t.quant.per_channel:
        raise IRError(f"{what} must be u8 or i8 quantized per tensor, got {t}")


def _check_weight(t: TensorType, axis: int, what: str) -> None:
    if t.dtype != DType.i8 or t.quant is None:
        raise IRError(f"{what} must be i8 with quantization parameters, got {t}")
    if np.any(t.quant.zero_point != 0):
        raise IRError(f"{what} must be quantized symmetrically (zero point 0), got {t}")
    if t.quant.per_channel and t.quant.axis != axis % t.rank:
        raise IRError(f"{what} is quantized along axis {t.quant.axis}; the output channel axis "
                      f"is {axis % t.rank}")


def _real_type(t: TensorType) -> TensorType:
    return t if t.quant is None else TensorType(DType.f32, t.shape)


def _dequant(x: np.ndarray | None, t: TensorType | None) -> np.ndarray | None:
    if x is None or t is None or t.quant is None:
        return x
    return _dequantize_ref(x, [t])


def _quantized_heavy(base: str) -> None:
    from rtinfer.ir.ops.fused import FUSED_OPS

    name, w_axis = QUANTIZED_OPS[base]
    fused = get_op(FUSED_OPS[base])
    n_base = 2  # x (a) and weight (b)
    attr_names = tuple(fused.attrs)

    def split(attrs: dict) -> dict:
        return {k: attrs[k] for k in attr_names}

    def real_inputs(ins: list[TensorType]) -> list[TensorType]:
        return [_real_type(t) for t in ins]

    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        if len(ins) < n_base:
            raise IRError(f"takes {fused.inputs[0]}, {fused.inputs[1]}, bias?, residual?; got "
                          f"{len(ins)} inputs")
        _check_act(ins[0], fused.inputs[0])
        b = ins[1]
        if base == "matmul" and (b.dtype == DType.u8 or (
                b.quant is not None and not b.quant.per_channel and b.quant.zero_point != 0)):
            _check_act(b, "b")  # activation x activation (attention's matmuls)
        else:
            _check_weight(b, w_axis, fused.inputs[1])
        if len(ins) > n_base and ins[n_base].quant is not None:
            raise IRError(f"the bias is real (f32), got {ins[n_base]}")
        if attrs["residual"] != "none" and len(ins) == n_base + 2:
            r = ins[-1]
            if r.quant is not None:
                _check_act(r, "the residual")
        real = fused.infer_types(real_inputs(ins), split(attrs))[0]
        return quantized_output(real, attrs)

    def ref(*args: Any, in_types: list[TensorType], **attrs: Any) -> np.ndarray:
        given = [a for a in args if a is not None]  # the optional inputs pass as None
        real = [_dequant(a, t) for a, t in zip(given, in_types, strict=True)]
        y = fused.evaluate(real, split(attrs))[0]
        if attrs["out_dtype"] == DType.f32:
            return y
        return _quantize_ref(y, [attrs["out_scale"]], [attrs["out_zero_point"]], [],
                             attrs["out_dtype"])

    op(name, list(fused.inputs), infer, ref, attrs={**fused.attrs, **QUANT_OUT_ATTRS},
       traits=[KEEP], ref_types=True, weight=fused.weight, cost=fused.cost,
       doc=f"int8 {base}: {FUSED_OPS[base]} of the dequantized x and weight (u8/i8 per tensor; "
           f"i8 symmetric weight, per tensor or per output channel), f32 bias, residual "
           f"quantized or f32, then quantize to out_dtype/out_scale/out_zero_point (f32: the "
           f"real output); made by lower-int8 (docs/int8.md)")


for _base in QUANTIZED_OPS:
    _quantized_heavy(_base)


# -- dynamic quantization: qlinear_dynamic (docs/int8.md) --------------------------------------

DYNAMIC_LEVELS = 255  # u8 codes of one row


def dynamic_row_params(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's (scale, zero point) of ``x`` ([..., K], f32) for asymmetric u8 codes: the
    row's range widened to contain 0, ``scale = (hi - lo) / 255`` (1 for an all-zero row) and
    ``zero_point = rint(-lo / scale)`` (0 exact). All in f32, as the native kernel computes it.

    A row holding a NaN or an infinity has no range: its scale is NaN (and its zero point 0),
    so every output of that row is NaN, as in an f32 linear over a NaN row; never a finite
    number made up from undefined codes."""
    x = x.astype(np.float32, copy=False)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x).all(axis=-1)
        lo = np.minimum(np.where(bad, 0, x.min(axis=-1)), np.float32(0))
        hi = np.maximum(np.where(bad, 0, x.max(axis=-1)), np.float32(0))
    scale = ((hi - lo) / np.float32(DYNAMIC_LEVELS)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    zp = np.clip(np.rint(-lo / scale), 0, DYNAMIC_LEVELS).astype(np.float32)
    return np.where(bad, np.float32(np.nan), scale).astype(np.float32), zp


def dynamic_row_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes u8, scale f32[...], zero_point f32[...])``: ``x`` quantized per row (the last
    axis) with its run-time parameters (``dynamic_row_params``); codes round half to even."""
    scale, zp = dynamic_row_params(x)
    with np.errstate(invalid="ignore"):
        q = np.rint(x.astype(np.float32, copy=False) / scale[..., None]) + zp[..., None]
    q = np.where(np.isnan(scale)[..., None], 0, q)  # a row without a range: codes 0
    return np.clip(q, 0, DYNAMIC_LEVELS).astype(np.uint8), scale, zp


def dynamic_row_fake_quant(x: np.ndarray) -> np.ndarray:
    """``x`` quantized per row and dequantized: ``(q - zero_point) * scale`` in f32."""
    q, scale, zp = dynamic_row_quantize(x)
    return ((q.astype(np.float32) - zp[..., None]) * scale[..., None]).astype(np.float32)


def _qlinear_dynamic() -> None:
    from rtinfer.ir.ops.fused import FUSED_OPS

    fused = get_op(FUSED_OPS["linear"])
    attr_names = tuple(fused.attrs)

    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        if len(ins) < 2:
            raise IRError(f"takes x, weight, bias?, residual?; got {len(ins)} inputs")
        x = ins[0]
        if x.dtype != DType.f32 or x.quant is not None:
            raise IRError(f"x must be f32 (it is quantized per row at run time), got {x}")
        if x.rank < 1:
            raise IRError(f"x must have a row axis, got {x}")
        _check_weight(ins[1], 0, "weight")
        for what, t in zip(("bias", "residual"), ins[2:], strict=False):
            if t.quant is not None or t.dtype != DType.f32:
                raise IRError(f"the {what} must be f32, got {t}")
        return fused.infer_types([x, _real_type(ins[1]), *ins[2:]],
                                 {k: attrs[k] for k in attr_names})[0]

    def ref(x: np.ndarray, weight: np.ndarray, *rest: np.ndarray | None,
            in_types: list[TensorType], **attrs: Any) -> np.ndarray:
        # rest: bias, residual (None where absent); "residual" is also an attribute's name
        given = [dynamic_row_fake_quant(x), _dequant(weight, in_types[1]),
                 *(a for a in rest if a is not None)]
        return fused.evaluate(given, {k: attrs[k] for k in attr_names})[0]

    op("qlinear_dynamic", list(fused.inputs), infer, ref, attrs=dict(fused.attrs),
       traits=[KEEP], ref_types=True, weight=fused.weight, cost=fused.cost,
       doc="int8 linear, activation quantized at run time per row (per token): each row of x "
           "to u8 with its own range (dynamic_row_params: asymmetric, 0 exact), times an i8 "
           "symmetric weight (per tensor or per output channel), then fused_linear's bias and "
           "epilogue in f32; f32 out. Reference: fused_linear(dequantize(quantize_rows(x)), "
           "dequantize(weight), bias, residual); made by insert-qdq's dynamic option")


_qlinear_dynamic()
