"""Convolutions, pooling and resizing over ``[N, C, *spatial]`` tensors.

Spatial attributes (``stride``, ``dilation``, ``kernel``) take one value for every spatial axis
or one per axis. ``pad`` is ONNX's layout ``[begin_0, .., begin_n-1, end_0, .., end_n-1]``; one
value pads every side and ``n`` values pad both sides of each axis alike.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import sympy
import torch.nn.functional as F

from rtinfer.errors import IRError
from rtinfer.ir.ops import channel_maps
from rtinfer.ir.ops.common import (
    conv_out_dim,
    expand_ints,
    expand_pads,
    need_float,
    need_no_quant,
    need_rank,
    need_static,
    same_dtype,
    to_numpy,
    torch_float,
    upcast,
)
from rtinfer.ir.ops.costs import conv_cost
from rtinfer.ir.ops.layouts import LAYOUT_ATTR, with_layout
from rtinfer.ir.ops.registry import OPAQUE, OUT_FUSABLE, Attr, PortAxis, WeightRole, op
from rtinfer.ir.types import Dim, TensorType, dims_equal, make_dim

_SPATIAL = {1: "[N, C, W]", 2: "[N, C, H, W]", 3: "[N, C, D, H, W]"}


def _window(attrs: dict, nd: int) -> tuple[tuple[int, ...], ...]:
    """(stride, pads, dilation) expanded to ``nd`` spatial axes and checked."""
    stride = expand_ints(attrs["stride"], nd, "stride")
    dilation = expand_ints(attrs.get("dilation", (1,)), nd, "dilation")
    pads = expand_pads(attrs["pad"], nd)
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation):
        raise IRError(f"stride and dilation must be positive, got {list(stride)} and "
                      f"{list(dilation)}")
    return stride, pads, dilation


def _torch_pad(x, pads: tuple[int, ...]):
    """Apply ONNX-layout pads with F.pad (which lists the last axis first); returns the padded
    tensor and the symmetric padding left for the torch op to do."""
    nd = len(pads) // 2
    lo, hi = pads[:nd], pads[nd:]
    if lo == hi:
        return x, lo
    flat = [p for i in reversed(range(nd)) for p in (lo[i], hi[i])]
    return F.pad(x, flat), (0,) * nd


def _bias_check(b: TensorType | None, n: Dim) -> None:
    if b is not None and (b.rank != 1 or not dims_equal(b.shape[0], n)):
        raise IRError(f"bias must be [{n}], got {b}")


def _nc_groups(rank: int) -> list[frozenset[PortAxis]]:
    return [frozenset({("in", 0, ax), ("out", 0, ax)}) for ax in range(rank)]


# -- convolution ------------------------------------------------------------------------------


def _conv_attrs(nd: int) -> dict[str, Attr]:
    return {"stride": Attr("ints", (1,) * nd), "pad": Attr("ints", (0,) * (2 * nd)),
            "dilation": Attr("ints", (1,) * nd), "groups": Attr("int", 1)}


def _conv_common(ins: list[TensorType], attrs: dict, nd: int) -> tuple:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    dt = same_dtype(ins)
    need_float(x, "x")
    need_no_quant(ins)
    need_rank(x, nd + 2, f"x {_SPATIAL[nd]}")
    g = attrs["groups"]
    if g < 1:
        raise IRError(f"groups must be >= 1, got {g}")
    kernel = tuple(need_static(k, "kernel size") for k in w.shape[2:])
    return x, w, b, dt, g, kernel, _window(attrs, nd)


def _conv(nd: int) -> None:
    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        need_rank(ins[1], nd + 2, "weight [O, C/groups, *kernel]")
        x, w, b, dt, g, kernel, (stride, pads, dilation) = _conv_common(ins, attrs, nd)
        c, o = x.shape[1], w.shape[0]
        if not dims_equal(c, w.shape[1] * g):
            raise IRError(f"x has {c} channels but weight {w} with groups={g} expects "
                          f"{w.shape[1] * g}")
        if isinstance(o, int) and o % g:
            raise IRError(f"{o} output channels do not split into {g} groups")
        _bias_check(b, o)
        spatial = tuple(conv_out_dim(x.shape[2 + i], kernel[i], stride[i], pads[i],
                                     pads[nd + i], dilation[i]) for i in range(nd))
        return TensorType(dt, (x.shape[0], o) + spatial)

    def ref(x, w, b, stride, pad, dilation, groups):
        stride, pads, dilation = _window(dict(stride=stride, pad=pad, dilation=dilation), nd)
        xt, sym_pad = _torch_pad(torch_float(x), pads)
        fn = F.conv1d if nd == 1 else F.conv2d if nd == 2 else F.conv3d
        y = fn(xt, torch_float(w), torch_float(b), stride, sym_pad, dilation, groups)
        return to_numpy(y).astype(x.dtype, copy=False)

    def channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
        x, w = ins[0], ins[1]
        bias = {("in", 2, 0)} if len(ins) > 2 else set()
        batch = frozenset({("in", 0, 0), ("out", 0, 0)})
        g = attrs["groups"]
        if g == 1:
            return [batch, frozenset({("in", 0, 1), ("in", 1, 1)}),
                    frozenset({("in", 1, 0), ("out", 0, 1)} | bias)]
        if w.shape[1] == 1 and dims_equal(w.shape[0], x.shape[1]):  # depthwise
            return [batch, frozenset({("in", 0, 1), ("in", 1, 0), ("out", 0, 1)} | bias)]
        return [batch]  # grouped: channels couple per group, not index by index

    attrs = _conv_attrs(nd)
    if nd == 2:  # layout="NHWC": x and the result channels last (compiler/ir/ops/layouts.py)
        attrs["layout"] = LAYOUT_ATTR
        infer, ref, channels = with_layout(infer, ref, channels)
    op(f"conv{nd}d", ["x", "weight", "bias?"], infer, ref, attrs=attrs,
       traits=[OUT_FUSABLE], channels=channels, weight=WeightRole(1, out_axis=0, in_axis=1),
       cost=conv_cost, prune=channel_maps.CONV,
       doc=f"{nd}-d cross-correlation of x {_SPATIAL[nd]} with weight "
           f"[O, C/groups, {', '.join('k' * nd)}] (torch F.conv{nd}d, ONNX pads)"
           + ("; layout=NHWC: x and y channels last" if nd == 2 else ""))


def _conv_transpose(nd: int) -> None:
    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        need_rank(ins[1], nd + 2, "weight [C, O/groups, *kernel]")
        x, w, b, dt, g, kernel, (stride, pads, dilation) = _conv_common(ins, attrs, nd)
        opad = expand_ints(attrs["output_padding"], nd, "output_padding")
        c = x.shape[1]
        if not dims_equal(c, w.shape[0]):
            raise IRError(f"x has {c} channels but weight {w} expects {w.shape[0]}")
        if isinstance(c, int) and c % g:
            raise IRError(f"{c} input channels do not split into {g} groups")
        for p, s, d in zip(opad, stride, dilation, strict=True):
            if not 0 <= p < max(s, d):
                raise IRError(f"output_padding {list(opad)} must be smaller than stride or "
                              f"dilation")
        o = w.shape[1] * g
        _bias_check(b, o)
        spatial = []
        for i in range(nd):
            n = ((x.shape[2 + i] - 1) * stride[i] - pads[i] - pads[nd + i]
                 + dilation[i] * (kernel[i] - 1) + opad[i] + 1)
            if isinstance(n, int) and n < 1:
                raise IRError(f"output size {n} along spatial axis {i} is not positive")
            spatial.append(make_dim(n))
        return TensorType(dt, (x.shape[0], make_dim(o)) + tuple(spatial))

    def ref(x, w, b, stride, pad, output_padding, dilation, groups):
        stride, pads, dilation = _window(dict(stride=stride, pad=pad, dilation=dilation), nd)
        opad = expand_ints(output_padding, nd, "output_padding")
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
        y = fn(torch_float(x), torch_float(w), None, stride, 0, 0, groups, dilation)
        # full output, zero-extended by output_padding at the end, then cropped by the pads
        y = F.pad(y, [p for i in reversed(range(nd)) for p in (0, opad[i])])
        idx = tuple(slice(pads[i], y.shape[2 + i] - pads[nd + i]) for i in range(nd))
        y = y[(slice(None), slice(None)) + idx]
        if b is not None:
            y = y + torch_float(b).reshape((1, -1) + (1,) * nd)
        return to_numpy(y).astype(x.dtype, copy=False)

    def channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
        x, w = ins[0], ins[1]
        bias = {("in", 2, 0)} if len(ins) > 2 else set()
        batch = frozenset({("in", 0, 0), ("out", 0, 0)})
        g = attrs["groups"]
        if g == 1:
            return [batch, frozenset({("in", 0, 1), ("in", 1, 0)}),
                    frozenset({("in", 1, 1), ("out", 0, 1)} | bias)]
        if w.shape[1] == 1 and dims_equal(w.shape[0], x.shape[1]) and g == w.shape[0]:
            return [batch, frozenset({("in", 0, 1), ("in", 1, 0), ("out", 0, 1)} | bias)]
        return [batch]

    attrs = _conv_attrs(nd)
    attrs["output_padding"] = Attr("ints", (0,) * nd)
    op(f"conv_transpose{nd}d", ["x", "weight", "bias?"], infer, ref, attrs=attrs,
       traits=[OUT_FUSABLE], channels=channels, weight=WeightRole(1, out_axis=1, in_axis=0),
       prune=channel_maps.CONV_TRANSPOSE,
       doc=f"{nd}-d transposed convolution, weight [C, O/groups, *kernel] (torch "
           f"F.conv_transpose{nd}d; ONNX pads may be asymmetric)")


for _nd in (1, 2, 3):
    _conv(_nd)
    _conv_transpose(_nd)

# -- pooling ----------------------------------------------------------------------------------


def _pool_geometry(shape, attrs: dict, nd: int):
    kernel = expand_ints(attrs["kernel"], nd, "kernel")
    if any(k < 1 for k in kernel):
        raise IRError(f"kernel must be positive, got {list(kernel)}")
    a = dict(attrs)
    a["stride"] = attrs["stride"] or kernel
    stride, pads, dilation = _window(a, nd)
    out = tuple(conv_out_dim(shape[2 + i], kernel[i], stride[i], pads[i], pads[nd + i],
                             dilation[i], attrs["ceil_mode"]) for i in range(nd))
    return kernel, stride, pads, dilation, out


def _pool_ref(x: np.ndarray, attrs: dict, nd: int, kind: str) -> np.ndarray:
    """Pooling by strided slices of a padded array, one slice per kernel offset. Windows that
    run past the end padding (ceil_mode) ignore those positions, as torch does."""
    kernel, stride, pads, dilation, out = _pool_geometry(x.shape, attrs, nd)
    spatial = x.shape[2:]
    need = [(out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    widths = [(0, 0), (0, 0)] + [(pads[i], max(need[i] - spatial[i] - pads[i], 0))
                                 for i in range(nd)]

    def windows(a: np.ndarray, reduce) -> np.ndarray:
        acc = None
        for off in itertools.product(*(range(k) for k in kernel)):
            idx = tuple(slice(off[i] * dilation[i], off[i] * dilation[i] + need[i] - (
                kernel[i] - 1) * dilation[i], stride[i]) for i in range(nd))
            s = a[(slice(None), slice(None)) + idx]
            acc = s if acc is None else reduce(acc, s)
        return acc

    if kind == "max":
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        return windows(np.pad(x, widths, constant_values=fill), np.maximum).astype(x.dtype)
    xs = np.pad(upcast(x), widths)
    # the divisor counts the window positions inside the input (and inside its padding with
    # count_include_pad), never those past the end padding
    valid = []
    for i in range(nd):
        p = np.arange(xs.shape[2 + i])
        lo, hi = pads[i], pads[i] + spatial[i]
        if attrs["count_include_pad"]:
            lo, hi = 0, hi + pads[nd + i]
        valid.append(((p >= lo) & (p < hi)).astype(xs.dtype))
    mask = functools.reduce(np.multiply.outer, valid).reshape((1, 1) + xs.shape[2:])
    return (windows(xs, np.add) / windows(mask, np.add)).astype(x.dtype)


def _pool(nd: int, kind: str) -> None:
    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        x = ins[0]
        need_rank(x, nd + 2, f"x {_SPATIAL[nd]}")
        quant = None
        if kind == "max":
            if x.dtype.is_int and x.quant is not None:
                quant = x.quant  # max commutes with a positive-scale affine map
                if quant.axis is not None and quant.axis % x.rank > 1:
                    raise IRError("max pooling of a tensor quantized along a spatial axis")
        else:
            need_float(x, "x")
        *_, out = _pool_geometry(x.shape, attrs, nd)
        return TensorType(x.dtype, x.shape[:2] + out, quant)

    def ref(x, **attrs):
        return _pool_ref(x, attrs, nd, kind)

    attrs = {"kernel": Attr("ints"), "stride": Attr("ints", ()),
             "pad": Attr("ints", (0,) * (2 * nd))}
    if kind == "max":
        attrs["dilation"] = Attr("ints", (1,) * nd)
    attrs["ceil_mode"] = Attr("bool", False)
    if kind == "avg":
        attrs["count_include_pad"] = Attr("bool", True)
    what = ("maximum" if kind == "max" else "average")
    channels = lambda ins, a: _nc_groups(2)  # noqa: E731
    if nd == 2:
        attrs["layout"] = LAYOUT_ATTR
        infer, ref, channels = with_layout(infer, ref, channels)
    op(f"{kind}_pool{nd}d", ["x"], infer, ref, attrs=attrs, traits=[OUT_FUSABLE],
       channels=channels,
       doc=f"{nd}-d {what} pooling over x {_SPATIAL[nd]}; stride [] means stride = kernel "
           f"(torch F.{kind}_pool{nd}d)")


for _nd in (1, 2, 3):
    _pool(_nd, "max")
    _pool(_nd, "avg")


def _adaptive_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    need_rank(x, 4, f"x {_SPATIAL[2]}")
    need_float(x, "x")
    size = expand_ints(attrs["output_size"], 2, "output_size")
    if any(s < 1 for s in size):
        raise IRError(f"output_size must be positive, got {list(size)}")
    return x.with_shape(x.shape[:2] + size)


def _adaptive_ref(x: np.ndarray, output_size: tuple[int, ...]) -> np.ndarray:
    y = F.adaptive_avg_pool2d(torch_float(x), expand_ints(output_size, 2, "output_size"))
    return to_numpy(y).astype(x.dtype, copy=False)


_adaptive = with_layout(_adaptive_infer, _adaptive_ref, lambda ins, a: _nc_groups(2))
op("adaptive_avg_pool2d", ["x"], _adaptive[0], _adaptive[1],
   attrs={"output_size": Attr("ints"), "layout": LAYOUT_ATTR}, traits=[OUT_FUSABLE],
   channels=_adaptive[2],
   doc="average pooling to a fixed output_size [oh, ow] (torch F.adaptive_avg_pool2d)")


def _global_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    need_rank(ins[0], 4, f"x {_SPATIAL[2]}")
    need_float(ins[0], "x")
    return ins[0].with_shape(ins[0].shape[:2] + (1, 1))


_global = with_layout(_global_infer,
                      lambda x: upcast(x).mean(axis=(2, 3), keepdims=True).astype(x.dtype),
                      lambda ins, a: _nc_groups(2))
op("global_avg_pool2d", ["x"], _global[0], _global[1], attrs={"layout": LAYOUT_ATTR},
   traits=[OUT_FUSABLE], channels=_global[2],
   doc="mean over H and W, keeping them as size 1: [N, C, H, W] -> [N, C, 1, 1]")

# -- resizing ---------------------------------------------------------------------------------

_TORCH_MODE = {("nearest", 1): "nearest", ("nearest", 2): "nearest", ("nearest", 3): "nearest",
               ("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear"}


def _interp_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    need_float(x, "x")
    need_no_quant(ins, "x")
    nd = x.rank - 2
    if nd not in (1, 2, 3):
        raise IRError(f"x must be [N, C, *spatial] with 1 to 3 spatial axes, got {x}")
    size, scale = attrs["size"], attrs["scale"]
    if bool(size) == bool(scale):
        raise IRError("give exactly one of size and scale")
    if attrs["mode"] == "nearest" and attrs["align_corners"]:
        raise IRError("align_corners applies to mode 'linear' only")
    if size:
        out = expand_ints(size, nd, "size")
        if any(s < 1 for s in out):
            raise IRError(f"size must be positive, got {list(size)}")
    else:
        scales = tuple(scale) * nd if len(scale) == 1 else tuple(scale)
        if len(scales) != nd or any(s <= 0 for s in scales):
            raise IRError(f"scale needs 1 or {nd} positive values, got {list(scale)}")
        # torch: out = floor(in * scale), in double precision for static sizes
        out = tuple(math.floor(d * s) if isinstance(d, int)
                    else make_dim(sympy.floor(d * sympy.Rational(repr(s))))
                    for d, s in zip(x.shape[2:], scales, strict=True))
        if any(isinstance(d, int) and d < 1 for d in out):
            raise IRError(f"scale {list(scale)} gives an empty output for {x}")
    return x.with_shape(x.shape[:2] + tuple(out))


def _interp_ref(x: np.ndarray, size, scale, mode: str, align_corners: bool) -> np.ndarray:
    nd = x.ndim - 2
    kw = {"align_corners": align_corners} if mode == "linear" else {}
    if size:
        kw["size"] = expand_ints(size, nd, "size")
    else:
        kw["scale_factor"] = tuple(scale) * nd if len(scale) == 1 else tuple(scale)
    y = F.interpolate(torch_float(x), mode=_TORCH_MODE[mode, nd], **kw)
    return to_numpy(y).astype(x.dtype, copy=False)


op("interpolate", ["x"], _interp_infer, _interp_ref,
   attrs={"size": Attr("ints", ()), "scale": Attr("floats", ()),
          "mode": Attr("str", "nearest", ("nearest", "linear")),
          "align_corners": Attr("bool", False)},
   traits=[OPAQUE], channels=lambda ins, a: _nc_groups(2),
   doc="resize the spatial axes to size, or by scale (out = floor(in * scale)); nearest or "
       "(bi/tri)linear (torch F.interpolate)")


# ONNX Resize, axis by axis (the interpolation is separable): each output index maps to a source
# coordinate by coordinate_transformation_mode, and mixes the input elements around it with the
# mode's coefficients (nearest: 1 of 2; linear: 2; cubic: 4, Keys' kernel with coefficient a;
# antialias widens linear/cubic kernels by 1/scale when downsampling).
_COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                "asymmetric", "tf_crop_and_resize")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def resize_geometry(shape, attrs: dict) -> tuple[tuple, tuple]:
    """(output shape, scale per axis); scales give floor(in * scale), sizes give scale
    size / in, both given are used as is."""
    rank = len(shape)
    scales, sizes = tuple(attrs["scales"]), tuple(attrs["sizes"])
    if not scales and not sizes:
        raise IRError("give scales or sizes")
    if (scales and len(scales) != rank) or (sizes and len(sizes) != rank):
        raise IRError(f"scales {list(scales)} and sizes {list(sizes)} need one value per axis "
                      f"of a rank-{rank} input")
    if any(v <= 0 for v in scales) or any(v < 0 for v in sizes):
        raise IRError(f"scales must be positive and sizes non-negative, got {list(scales)}, "
                      f"{list(sizes)}")
    if sizes:
        out = sizes
        if not scales:
            scales = tuple(o / d if isinstance(d, int) and d else
                           (1.0 if dims_equal(d, o) else None) for o, d in zip(
                               sizes, shape, strict=True))
    else:
        roi = attrs["roi"] or (0.0,) * rank + (1.0,) * rank
        crop = attrs["coordinate_transformation_mode"] == "tf_crop_and_resize"
        out = []
        for i, (d, sc) in enumerate(zip(shape, scales, strict=True)):
            f = sc * (roi[rank + i] - roi[i]) if crop else sc
            if isinstance(d, int):
                out.append(math.floor(d * f))
            elif f == 1:
                out.append(d)
            else:
                out.append(make_dim(sympy.floor(d * sympy.Rational(repr(f)))))
        out = tuple(out)
    return out, scales


def _resize_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    need_no_quant(ins, "x")
    if x.dtype.is_float is False and x.dtype.is_int is False:
        raise IRError(f"x must be numeric, got {x.dtype}")
    if attrs["antialias"] and attrs["mode"] == "nearest":
        raise IRError("antialias applies to modes linear and cubic")
    if attrs["roi"] and len(attrs["roi"]) != 2 * x.rank:
        raise IRError(f"roi needs {2 * x.rank} values (starts then ends), got "
                      f"{list(attrs['roi'])}")
    out, scales = resize_geometry(x.shape, attrs)
    if None in scales:
        raise IRError(f"sizes {list(attrs['sizes'])} resize a symbolic dim of {x}; give scales")
    return x.with_shape(out)


def _resize_coeffs(r: np.ndarray, scale: float, attrs: dict) -> np.ndarray:
    """[n_out, n] interpolation weights for fractional offsets r in (0, 1] (1: on a pixel)."""
    mode, a = attrs["mode"], attrs["cubic_coeff_a"]
    on_pixel = r == 1.0
    if mode == "nearest":
        nm = attrs["nearest_mode"]
        right = {"round_prefer_floor": r > 0.5, "round_prefer_ceil": r >= 0.5,
                 "floor": np.zeros_like(on_pixel), "ceil": np.ones_like(on_pixel)}[nm]
        right = right | on_pixel
        return np.stack([~right, right], axis=-1).astype(np.float64)
    if not attrs["antialias"] or scale >= 1:
        if mode == "linear":
            return np.stack([1 - r, r], axis=-1)
        return np.stack([_keys(r + 1, a), _keys(r, a), _keys(1 - r, a), _keys(2 - r, a)], axis=-1)
    half = 1 if mode == "linear" else 2  # the kernel's support, stretched by 1 / scale
    start = int(np.floor(-half / scale) + 1)
    taps = np.arange(start, 2 - start)
    args = (taps[None, :] - r[:, None]) * scale
    w = np.clip(1 - np.abs(args), 0, 1) if mode == "linear" else _keys(args, a)
    return w / w.sum(axis=-1, keepdims=True)


def _keys(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def resize_axis(x: np.ndarray, axis: int, scale: float, n_out: int, roi, attrs: dict):
    n_in = x.shape[axis]
    y = np.arange(n_out, dtype=np.float64)
    ctm = attrs["coordinate_transformation_mode"]
    width = scale * n_in  # the unrounded output length
    if ctm == "align_corners":
        src = np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)
    elif ctm == "asymmetric":
        src = y / scale
    elif ctm == "tf_crop_and_resize":
        lo, hi = roi
        src = (np.full(n_out, (hi - lo) * (n_in - 1) / 2) if width == 1
               else y * (hi - lo) * (n_in - 1) / (width - 1)) + lo * (n_in - 1)
    elif ctm == "pytorch_half_pixel":
        src = np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        src = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric: the ROI's center maps to the output's center
        src = n_in / 2 * (1 - n_out / width) + (y + 0.5) / scale - 0.5
    base = np.floor(src)
    r = np.where(src == base, 1.0, src - base)  # prefer the pixel on the left
    w = _resize_coeffs(r, scale, attrs)
    n = w.shape[1]
    # the n taps nearest src, ties to the lower index (on a pixel, it is the right one of 2)
    frac = src - base
    if n % 2 == 0:
        first = base + np.where(frac == 0, -(n // 2), 1 - n // 2)
    else:
        first = base + np.where(frac <= 0.5, -(n // 2), 1 - n // 2)
    taps = first[:, None] + np.arange(n)[None, :]
    if attrs["exclude_outside"]:
        w = np.where((taps < 0) | (taps >= n_in), 0.0, w)
        s = w.sum(axis=-1, keepdims=True)
        w = w / np.where(s == 0, 1.0, s)
    picked = np.take(x, np.clip(taps, 0, n_in - 1).astype(np.intp), axis=axis)
    out = (picked * w.reshape((1,) * axis + w.shape + (1,) * (x.ndim - axis - 1))).sum(
        axis=axis + 1)
    if ctm == "tf_crop_and_resize":
        outside = ((src < 0) | (src > n_in - 1)).reshape(
            (1,) * axis + (n_out,) + (1,) * (x.ndim - axis - 1))
        out = np.where(outside, attrs["extrapolation_value"], out)
    return out


def _resize_ref(x: np.ndarray, **attrs) -> np.ndarray:
    out, scales = resize_geometry(x.shape, attrs)
    rank = x.ndim
    roi = attrs["roi"] or (0.0,) * rank + (1.0,) * rank
    y = x.astype(np.float64)
    for ax in range(rank):
        if out[ax] == y.shape[ax] and math.isclose(scales[ax], 1.0) and (
                roi[ax], roi[rank + ax]) == (0.0, 1.0):
            continue
        y = resize_axis(y, ax, float(scales[ax]), int(out[ax]), (roi[ax], roi[rank + ax]),
                         attrs)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        y = np.clip(np.round(y), info.min, info.max)
    return y.astype(x.dtype)


op("resize", ["x"], _resize_infer, _resize_ref,
   attrs={"scales": Attr("floats", ()), "sizes": Attr("ints", ()),
          "mode": Attr("str", "nearest", ("nearest", "linear", "cubic")),
          "coordinate_transformation_mode": Attr("str", "half_pixel", _COORD_MODES),
          "nearest_mode": Attr("str", "round_prefer_floor", _NEAREST_MODES),
          "cubic_coeff_a": Attr("float", -0.75), "exclude_outside": Attr("bool", False),
          "extrapolation_value": Attr("float", 0.0), "antialias": Attr("bool", False),
          "roi": Attr("floats", ())},
   traits=[OPAQUE],
   doc="ONNX Resize over every axis: scales (out = floor(in * scale)) or sizes (scale = size "
       "/ in) or both, one per axis; modes nearest (nearest_mode), linear, cubic "
       "(cubic_coeff_a, exclude_outside), antialias; roi for tf_crop_and_resize")
