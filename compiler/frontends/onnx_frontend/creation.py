"""ONNX -> IR rules: tensors built from attributes and shapes (Constant, ConstantOfShape, Range,
EyeLike, OneHot, Trilu, the Hann, Hamming and Blackman windows)."""

from __future__ import annotations

import numpy as np

from rtinfer.frontends.onnx_frontend.context import pos_axis, rule
from rtinfer.ir.types import DType


@rule("Constant")
def _constant(cx, ins):
    from onnx import numpy_helper

    a = cx.node.attribute[0]
    if a.name == "value":
        cx.dtype(a.t.data_type, "Constant")
        return cx.const(numpy_helper.to_array(a.t))
    v = cx.attr(a.name)
    if a.name == "value_float":
        return cx.const(np.float32(v))
    if a.name == "value_floats":
        return cx.const(np.array(v, np.float32))
    if a.name == "value_int":
        return cx.const(np.int64(v))
    if a.name == "value_ints":
        return cx.const(np.array(v, np.int64))
    raise cx.unsupported(f"unsupported dtype: Constant {a.name}")


@rule("ConstantOfShape")
def _constant_of_shape(cx, ins):
    from onnx import numpy_helper

    shape = cx.ints(ins[0], "ConstantOfShape's shape")
    t = cx.attrs.get("value")
    value = numpy_helper.to_array(t).reshape(-1) if t is not None else np.zeros(1, np.float32)
    if t is not None:
        cx.dtype(t.data_type, "ConstantOfShape")
    return cx.const(np.full(shape, value[0], dtype=value.dtype))


@rule("Range")
def _range(cx, ins):
    start, limit, delta = (cx.array(v, "Range's bounds") for v in ins)
    return cx.const(np.arange(start, limit, delta).astype(start.dtype))


@rule("EyeLike")
def _eye_like(cx, ins):
    n, m = cx.static_shape(ins[0])
    dt = cx.dtype(cx.attr("dtype"), "EyeLike") if "dtype" in cx.attrs else ins[0].type.dtype
    return cx.const(np.eye(n, m, k=cx.attr("k", 0), dtype=dt.np))


@rule("Trilu")
def _trilu(cx, ins):
    x = ins[0]
    k = cx.ints(ins[1], "Trilu's k")[0] if len(ins) > 1 and ins[1] is not None else 0
    n, m = cx.static_shape(x)[-2:]
    ones = np.ones((n, m), dtype=bool)
    mask = np.triu(ones, k) if cx.attr("upper", 1) else np.tril(ones, k)
    return cx.op("where", cx.const(mask), x, cx.scalar(0, x))


@rule("OneHot")
def _one_hot(cx, ins):
    idx, depth, values = ins
    d = int(np.asarray(cx.array(depth, "OneHot's depth")).reshape(-1)[0])
    r = idx.type.rank + 1
    axis = pos_axis(cx.attr("axis", -1), r)
    idx = cx.op("cast", idx, dtype=DType.i64) if idx.type.dtype != DType.i64 else idx
    # negative indices count from depth
    idx = cx.op("where", cx.op("less", idx, cx.const(np.int64(0))),
                cx.op("add", idx, cx.const(np.int64(d))), idx)
    shape = [1] * r
    shape[axis] = d
    ar = cx.const(np.arange(d, dtype=np.int64).reshape(shape))
    hot = cx.op("equal", cx.op("unsqueeze", idx, axes=[axis]), ar)
    off = cx.op("gather", values, cx.const(np.int64(0)))
    on = cx.op("gather", values, cx.const(np.int64(1)))
    return cx.op("where", hot, on, off)


def _window(cx, ins, terms: list[float]) -> object:
    """``sum_j terms[j] * cos(2 pi j n / N)``, n = 0..size-1, N = size (periodic) or size - 1:
    the cosine-sum windows (Hann, Hamming, Blackman), computed here as a constant."""
    sizes = cx.ints(ins[0], f"{cx.node.op_type}'s size")
    if len(sizes) != 1 or sizes[0] < 0:
        raise cx.invalid(f"size must be one non-negative integer, got {sizes}")
    size = sizes[0]
    if size > 2**24:  # built here as a constant: a corrupted size must not exhaust memory
        raise cx.unsupported(f"a window of {size} samples (at most 2**24)")
    n = np.arange(size, dtype=np.float64)
    denom = size if cx.attr("periodic", 1) else size - 1
    w = sum(t * np.cos(2 * np.pi * j * n / denom) for j, t in enumerate(terms)) if denom else \
        np.ones(size)  # a symmetric window of one sample
    return cx.const(np.asarray(w).astype(cx.dtype(cx.attr("output_datatype", 1),
                                                  "output_datatype").np))


@rule("HannWindow")
def _hann_window(cx, ins):
    return _window(cx, ins, [0.5, -0.5])  # sin^2(pi n / N) = (1 - cos(2 pi n / N)) / 2


@rule("HammingWindow")
def _hamming_window(cx, ins):
    return _window(cx, ins, [25 / 46, -21 / 46])  # alpha = 25/46, beta = 1 - alpha


@rule("BlackmanWindow")
def _blackman_window(cx, ins):
    return _window(cx, ins, [0.42, -0.5, 0.08])
