"""ONNX export rules: convolution, pooling and resizing."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from rtinfer.errors import Unsupported
from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site, channels_last, simple
from rtinfer.ir.ops.common import expand_ints, expand_pads


def _conv(transpose: bool) -> Rule:
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        nd = s.x.rank - 2
        a = s.attrs
        attrs = {"kernel_shape": list(s.in_types[1].shape[2:]),
                 "strides": list(expand_ints(a["stride"], nd, "stride")),
                 "pads": list(expand_pads(a["pad"], nd)),
                 "dilations": list(expand_ints(a["dilation"], nd, "dilation")),
                 "group": a["groups"]}
        if transpose:
            attrs["output_padding"] = list(expand_ints(a["output_padding"], nd, "output_padding"))
        return e.op("ConvTranspose" if transpose else "Conv", x, attrs)
    return rule


def _pool(kind: str) -> Rule:
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        nd = s.x.rank - 2
        a = s.attrs
        kernel = expand_ints(a["kernel"], nd, "kernel")
        attrs = {"kernel_shape": list(kernel),
                 "strides": list(expand_ints(a["stride"] or kernel, nd, "stride")),
                 "pads": list(expand_pads(a["pad"], nd)), "ceil_mode": int(a["ceil_mode"])}
        if kind == "max":
            attrs["dilations"] = list(expand_ints(a["dilation"], nd, "dilation"))
            return e.op("MaxPool", x, attrs)
        attrs["count_include_pad"] = int(a["count_include_pad"])
        return e.op("AveragePool", x, attrs)
    return rule


def _adaptive_avg_pool(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    oh, ow = expand_ints(s.attrs["output_size"], 2, "output_size")
    if (oh, ow) == (1, 1):
        return e.op("GlobalAveragePool", x)
    h, w = s.x.shape[2:]
    if not isinstance(h, int) or not isinstance(w, int):
        raise Unsupported(s.node.op, f"adaptive pooling of symbolic spatial dims {s.x}")
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        return e.op("AveragePool", x, {"kernel_shape": k, "strides": k})

    def averaging(n: int, m: int) -> np.ndarray:
        # torch's windows: [floor(i n / m), ceil((i + 1) n / m)) for output i
        a = np.zeros((m, n), np.float64)
        for i in range(m):
            lo, hi = (i * n) // m, -(-(i + 1) * n // m)
            a[i, lo:hi] = 1.0 / (hi - lo)
        return a.astype(s.x.dtype.np)

    # y = A_h @ x @ A_w^T over the last two axes
    rows = e.op("MatMul", [e.const(averaging(h, oh)), x[0]])
    return e.op("MatMul", [rows, e.const(averaging(w, ow).T)])


def _interpolate(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    a, nd = s.attrs, s.x.rank - 2
    if a["mode"] == "nearest":  # torch: src = floor(dst / scale)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}
    else:
        attrs = {"mode": "linear", "coordinate_transformation_mode":
                 "align_corners" if a["align_corners"] else "pytorch_half_pixel"}
    attrs["axes"] = list(range(2, 2 + nd))
    if a["size"]:
        sizes = e.ints(expand_ints(a["size"], nd, "size"))
        return e.op("Resize", [x[0], None, None, sizes], attrs)
    scale = tuple(a["scale"]) * nd if len(a["scale"]) == 1 else tuple(a["scale"])
    return e.op("Resize", [x[0], None, e.const(np.asarray(scale, np.float32))], attrs)


def _resize(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    a = dict(s.attrs)
    scales, sizes, roi = a.pop("scales"), a.pop("sizes"), a.pop("roi")
    attrs = {k: int(v) if isinstance(v, bool) else v for k, v in a.items()}
    roi_t = e.const(np.asarray(roi, np.float32)) if roi else None
    if sizes:
        if scales and any(not isinstance(d, int) or math.floor(d * f) != o
                          for d, f, o in zip(s.x.shape, scales, sizes, strict=True)):
            raise Unsupported(s.node.op, "resize with sizes and scales that disagree (ONNX "
                              "takes one)")
        if not scales:
            return e.op("Resize", [x[0], roi_t, None, e.ints(sizes)], attrs)
    return e.op("Resize", [x[0], roi_t, e.const(np.asarray(scales, np.float32))], attrs)


RULES: dict[str, Rule] = {
    "conv1d": _conv(False),
    "conv2d": channels_last(_conv(False)),
    "conv_transpose1d": _conv(True),
    "conv_transpose2d": _conv(True),
    "conv3d": _conv(False),
    "conv_transpose3d": _conv(True),
    "max_pool3d": _pool("max"),
    "avg_pool3d": _pool("avg"),
    "max_pool1d": _pool("max"),
    "max_pool2d": channels_last(_pool("max")),
    "avg_pool1d": _pool("avg"),
    "avg_pool2d": channels_last(_pool("avg")),
    "adaptive_avg_pool2d": channels_last(_adaptive_avg_pool),
    "global_avg_pool2d": channels_last(simple("GlobalAveragePool")),
    "interpolate": _interpolate,
    "resize": _resize,
}
