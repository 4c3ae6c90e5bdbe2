"""Shape and data-movement ops: reshape, transpose, concat, slice, gather, pad, cast-free moves.

These are injective: each output element reads one input element, so they also carry
quantization parameters through (per-channel ones only when the channel axis survives intact).
Symbolic dims follow the arithmetic (``reshape [B, S, 384] -> [-1, 384]`` gives ``[B*S, 384]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sympy

from rtinfer.errors import IndexOutOfRangeError, IRError
from rtinfer.ir.ops import channel_maps
from rtinfer.ir.ops.common import (
    concrete_shape,
    fmt_shapes,
    need_no_quant,
    norm_axes,
    norm_axis,
    prefix_axis_map,
    same_dtype,
)
from rtinfer.ir.ops.registry import INJECTIVE, OPAQUE, Attr, PortAxis, op
from rtinfer.ir.types import Dim, DType, QuantParams, TensorType, dims_equal, make_dim, numel

# |index| at or past this is ONNX's "to the end" sentinel (INT64_MAX / INT64_MIN)
SLICE_END_MAX = 2**62


def _carry_quant(x: TensorType, axis_map: dict[int, int] | None, what: str) -> QuantParams | None:
    """The output's quantization: per-tensor passes through; per-channel follows its axis."""
    q = x.quant
    if q is None or q.axis is None:
        return q
    ax = q.axis % x.rank
    if axis_map is None or ax not in axis_map:
        raise IRError(f"{what} moves or resizes axis {ax}, along which the input is quantized "
                      f"per channel")
    return QuantParams(q.scale, q.zero_point, axis_map[ax])


def _out(x: TensorType, shape: Sequence[Dim], axis_map: dict[int, int] | None,
         what: str) -> TensorType:
    return TensorType(x.dtype, tuple(shape), _carry_quant(x, axis_map, what))


def _map_channels(axis_map_fn):
    """A channel fn from ``axis_map_fn(in_types, attrs) -> {in axis: out axis}``."""
    def channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
        return [frozenset({("in", 0, i), ("out", 0, j)})
                for i, j in sorted(axis_map_fn(ins, attrs).items())]
    return channels


def _need_index(t: TensorType, what: str = "indices") -> None:
    if t.dtype not in (DType.i32, DType.i64):
        raise IRError(f"{what} must be i32 or i64, got {t.dtype}")


def check_indices(op: str, indices: np.ndarray, size: int, negative: bool) -> None:
    """Raise ``IndexOutOfRangeError`` naming ``op`` and the first bad index unless every index
    lies in [-size, size) (``negative``: numpy take, ONNX Gather) or [0, size) (torch's
    embedding, index_select and gather, which raise IndexError for a negative index)."""
    idx = np.asarray(indices)
    lo = -size if negative else 0
    bad = (idx < lo) | (idx >= size)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        allowed = f"[{lo}, {size - 1}]" if size else "none (the axis is empty)"
        raise IndexOutOfRangeError(f"{op}: index {int(idx[pos])} at position {list(pos)} is out "
                                   f"of range for an axis of size {size} (allowed: {allowed})")


def _fmt(shape: Sequence[Dim]) -> str:
    return fmt_shapes([shape])


# -- reshape family ---------------------------------------------------------------------------


def _reshape_shape(x: TensorType, shape: Sequence[Dim]) -> tuple[Dim, ...]:
    negs = [i for i, d in enumerate(shape) if isinstance(d, int) and d < 0]
    if any(shape[i] != -1 for i in negs) or len(negs) > 1:
        raise IRError(f"shape {list(shape)} may hold at most one -1 and no other negative dim")
    total = x.numel
    if not negs:
        if not dims_equal(numel(shape), total):
            raise IRError(f"cannot reshape {x} ({total} elements) to {_fmt(shape)} "
                          f"({numel(shape)} elements)")
        return tuple(shape)
    known = numel([d for i, d in enumerate(shape) if i != negs[0]])
    if known == 0:
        raise IRError(f"-1 in shape {list(shape)} is ambiguous with a zero-size dim")
    if isinstance(total, int) and isinstance(known, int):
        q = sympy.Integer(total // known) if total % known == 0 else sympy.Rational(total, known)
    else:
        q = sympy.sympify(total) / known  # sympy's canonical form cancels common factors
    if not (q.is_integer and q.is_nonnegative):
        raise IRError(f"cannot reshape {x} ({total} elements) to {list(shape)}: {total} is not "
                      f"a multiple of {known}")
    out = list(shape)
    out[negs[0]] = make_dim(q)
    return tuple(out)


def _reshape_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    shape = _reshape_shape(x, attrs["shape"])
    return _out(x, shape, prefix_axis_map(x.shape, shape), "reshape")


def _reshape_map(ins: list[TensorType], attrs: dict) -> dict[int, int]:
    return prefix_axis_map(ins[0].shape, _reshape_shape(ins[0], attrs["shape"]))


op("reshape", ["x"], _reshape_infer,
   lambda x, shape: x.reshape(concrete_shape(shape, x.size)),
   attrs={"shape": Attr("shape")}, traits=[INJECTIVE], channels=_map_channels(_reshape_map),
   prune=channel_maps.RESHAPE,
   doc="row-major reshape; shape may hold symbolic dims and one -1 (0 is a zero-size dim, "
       "not ONNX's copy)")


def _flatten_shape(x: TensorType, attrs: dict) -> tuple[Dim, ...]:
    if x.rank == 0:
        return (1,)
    a = norm_axis(attrs["axis"], x.rank)
    e = norm_axis(attrs["end_axis"], x.rank, "end_axis")
    if a > e:
        raise IRError(f"axis {attrs['axis']} comes after end_axis {attrs['end_axis']} "
                      f"for rank {x.rank}")
    return x.shape[:a] + (numel(x.shape[a:e + 1]),) + x.shape[e + 1:]


def _flatten_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    shape = _flatten_shape(x, attrs)
    return _out(x, shape, prefix_axis_map(x.shape, shape), "flatten")


def _flatten_ref(x: np.ndarray, axis: int, end_axis: int) -> np.ndarray:
    return x.reshape(_flatten_shape(TensorType.of(x), {"axis": axis, "end_axis": end_axis}))


op("flatten", ["x"], _flatten_infer, _flatten_ref,
   attrs={"axis": Attr("int", 1), "end_axis": Attr("int", -1)}, traits=[INJECTIVE],
   channels=_map_channels(lambda ins, a: prefix_axis_map(ins[0].shape,
                                                         _flatten_shape(ins[0], a))),
   prune=channel_maps.FLATTEN,
   doc="merge axes axis..end_axis into one (torch.flatten(x, axis, end_axis)); "
       "[N, C, H, W] -> [N, C*H*W] by default")


def _squeeze_axes(x: TensorType, axes) -> tuple[int, ...]:
    if not axes:
        return tuple(i for i, d in enumerate(x.shape) if d == 1)
    axes = norm_axes(axes, x.rank)
    for a in axes:
        if x.shape[a] != 1:
            raise IRError(f"cannot squeeze axis {a} of {x}: its size is {x.shape[a]}, not 1")
    return axes


def _squeeze_map(x: TensorType, axes) -> dict[int, int]:
    drop = _squeeze_axes(x, axes)
    kept = [i for i in range(x.rank) if i not in drop]
    return {i: j for j, i in enumerate(kept)}


def _squeeze_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    m = _squeeze_map(x, attrs["axes"])
    return _out(x, [x.shape[i] for i in sorted(m)], m, "squeeze")


op("squeeze", ["x"], _squeeze_infer,
   lambda x, axes: x.reshape([d for i, d in enumerate(x.shape)
                              if i not in _squeeze_axes(TensorType.of(x), axes)]),
   attrs={"axes": Attr("ints", ())}, traits=[INJECTIVE],
   channels=_map_channels(lambda ins, a: _squeeze_map(ins[0], a["axes"])),
   doc="drop size-1 axes (all static size-1 axes when axes=[])")


def _unsqueeze_map(x: TensorType, axes) -> tuple[tuple[int, ...], dict[int, int]]:
    if not axes:
        raise IRError("unsqueeze needs at least one axis")
    new = norm_axes(axes, x.rank + len(axes))
    kept = [j for j in range(x.rank + len(axes)) if j not in new]
    return new, dict(enumerate(kept))


def _unsqueeze_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    new, m = _unsqueeze_map(x, attrs["axes"])
    shape: list[Dim] = [1] * (x.rank + len(new))
    for i, j in m.items():
        shape[j] = x.shape[i]
    return _out(x, shape, m, "unsqueeze")


op("unsqueeze", ["x"], _unsqueeze_infer,
   lambda x, axes: np.expand_dims(x, tuple(a % (x.ndim + len(axes)) for a in axes)),
   attrs={"axes": Attr("ints")}, traits=[INJECTIVE],
   channels=_map_channels(lambda ins, a: _unsqueeze_map(ins[0], a["axes"])[1]),
   doc="insert size-1 axes at positions axes of the output (ONNX Unsqueeze)")


def _transpose_perm(x: TensorType, perm) -> tuple[int, ...]:
    if not perm:
        return tuple(reversed(range(x.rank)))
    if sorted(p % x.rank if x.rank else p for p in perm) != list(range(x.rank)) or any(
            not -x.rank <= p < x.rank for p in perm):
        raise IRError(f"perm {list(perm)} is not a permutation of the {x.rank} axes of {x}")
    return tuple(p % x.rank for p in perm)


def _transpose_map(ins: list[TensorType], attrs: dict) -> dict[int, int]:
    return {p: j for j, p in enumerate(_transpose_perm(ins[0], attrs["perm"]))}


def _transpose_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    perm = _transpose_perm(x, attrs["perm"])
    return _out(x, [x.shape[p] for p in perm], _transpose_map(ins, attrs), "transpose")


op("transpose", ["x"], _transpose_infer,
   lambda x, perm: np.transpose(x, perm or None).copy(),
   attrs={"perm": Attr("ints", ())}, traits=[INJECTIVE], channels=_map_channels(_transpose_map),
   doc="out axis j is input axis perm[j] (perm=[] reverses the axes)")


def _expand_shape(x: TensorType, shape: Sequence[Dim]) -> tuple[Dim, ...]:
    if len(shape) < x.rank:
        raise IRError(f"cannot expand {x} to fewer dims {list(shape)}")
    lead = len(shape) - x.rank
    out = []
    for j, t in enumerate(shape):
        d = x.shape[j - lead] if j >= lead else None
        if isinstance(t, int) and t < 0:
            if t != -1 or d is None:
                raise IRError(f"bad entry {t} at position {j} of expand shape {list(shape)}")
            out.append(d)
        elif d is None or d == 1 or dims_equal(d, t):
            out.append(t)
        else:
            raise IRError(f"cannot expand {x} to {list(shape)}: dim {d} is neither 1 nor {t}")
    return tuple(out)


def _expand_map(x: TensorType, shape: Sequence[Dim]) -> dict[int, int]:
    lead = len(shape) - x.rank
    return {i: i + lead for i in range(x.rank) if x.shape[i] != 1}


def _expand_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    shape = _expand_shape(x, attrs["shape"])
    return _out(x, shape, _expand_map(x, shape), "expand")


def _expand_ref(x: np.ndarray, shape) -> np.ndarray:
    lead = len(shape) - x.ndim
    out = []
    for j, t in enumerate(shape):
        d = x.shape[j - lead] if j >= lead else None
        if isinstance(t, int) and t >= 0:
            out.append(t)
        elif d is not None and (t == -1 or d != 1):
            out.append(d)  # -1, or a symbolic dim the input already has
        else:
            raise IRError(f"expand shape {list(shape)}: cannot evaluate entry {t}; substitute "
                          f"the symbols' values (subs_dims) first")
    return np.broadcast_to(x, out).copy()


op("expand", ["x"], _expand_infer, _expand_ref, attrs={"shape": Attr("shape")},
   traits=[INJECTIVE],
   channels=_map_channels(lambda ins, a: _expand_map(ins[0], a["shape"])),
   doc="broadcast x to shape (numpy broadcast_to; -1 keeps the input's dim, as torch expand)")

# -- concat / split ---------------------------------------------------------------------------


def _concat_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    if not ins:
        raise IRError("concat needs at least one input")
    dt = same_dtype(ins)
    x = ins[0]
    if any(t.rank != x.rank for t in ins):
        raise IRError(f"inputs must share one rank, got {', '.join(map(str, ins))}")
    if x.rank == 0:
        raise IRError("cannot concatenate 0-d tensors")
    axis = norm_axis(attrs["axis"], x.rank)
    for t in ins[1:]:
        for i in range(x.rank):
            if i != axis and not dims_equal(t.shape[i], x.shape[i]):
                raise IRError(f"inputs differ off the concat axis {axis}: "
                              f"{', '.join(map(str, ins))}")
    if any(t.quant != x.quant for t in ins):
        raise IRError("inputs are quantized differently; requantize them to one scale first")
    shape = list(x.shape)
    shape[axis] = make_dim(sum(t.shape[axis] for t in ins))
    m = {i: i for i in range(x.rank) if i != axis}
    return TensorType(dt, tuple(shape), _carry_quant(x, m, "concat"))


def _concat_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    axis = norm_axis(attrs["axis"], ins[0].rank)
    return [frozenset({("out", 0, i)} | {("in", k, i) for k in range(len(ins))})
            for i in range(ins[0].rank) if i != axis]


op("concat", ["*xs"], _concat_infer, lambda xs, axis: np.concatenate(xs, axis=axis),
   attrs={"axis": Attr("int")}, traits=[INJECTIVE], channels=_concat_channels,
   prune=channel_maps.CONCAT,
   doc="join the inputs along axis (they match on every other axis)")


def _split_sizes(d: Dim, sizes: Sequence[int]) -> list[Dim]:
    if not sizes or any(s < -1 for s in sizes) or list(sizes).count(-1) > 1:
        raise IRError(f"sizes {list(sizes)} must be non-negative with at most one -1")
    known = sum(s for s in sizes if s >= 0)
    if -1 in sizes:
        rest = make_dim(d - known) if not isinstance(d, int) or d >= known else None
        if rest is None:
            raise IRError(f"sizes {list(sizes)} exceed the split dim {d}")
        return [rest if s == -1 else s for s in sizes]
    if not dims_equal(d, known):
        raise IRError(f"sizes {list(sizes)} add up to {known}, not the split dim {d}")
    return list(sizes)


def _split_infer(ins: list[TensorType], attrs: dict) -> list[TensorType]:
    x = ins[0]
    axis = norm_axis(attrs["axis"], x.rank)
    m = {i: i for i in range(x.rank) if i != axis}
    q = _carry_quant(x, m, "split")
    outs = []
    for s in _split_sizes(x.shape[axis], attrs["sizes"]):
        shape = list(x.shape)
        shape[axis] = s
        outs.append(TensorType(x.dtype, tuple(shape), q))
    return outs


def _split_ref(x: np.ndarray, axis: int, sizes) -> list[np.ndarray]:
    sizes = _split_sizes(x.shape[axis], sizes)
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _split_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    axis = norm_axis(attrs["axis"], ins[0].rank)
    n = len(attrs["sizes"])
    return [frozenset({("in", 0, i)} | {("out", k, i) for k in range(n)})
            for i in range(ins[0].rank) if i != axis]


op("split", ["x"], _split_infer, _split_ref,
   attrs={"axis": Attr("int"), "sizes": Attr("ints")}, traits=[INJECTIVE],
   channels=_split_channels, prune=channel_maps.SPLIT,
   doc="cut x along axis into len(sizes) outputs (one size may be -1: the rest)")

# -- slice ------------------------------------------------------------------------------------


def slice_params(rank: int, attrs: dict) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) per sliced axis, checked."""
    starts, ends = attrs["starts"], attrs["ends"]
    axes = attrs["axes"] or tuple(range(len(starts)))
    steps = attrs["steps"] or (1,) * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise IRError(f"starts, ends, axes and steps differ in length: {list(starts)}, "
                      f"{list(ends)}, {list(axes)}, {list(steps)}")
    if 0 in steps:
        raise IRError("slice steps must be non-zero")
    naxes = [norm_axis(a, rank) for a in axes]
    if len(set(naxes)) != len(naxes):
        raise IRError(f"repeated axis in {list(axes)}")
    return list(zip(naxes, starts, ends, steps, strict=True))


def _clamp(v: int, d, lo, hi, clamp: bool = True):
    if v >= SLICE_END_MAX:
        return hi
    if v <= -SLICE_END_MAX:
        return lo
    if v < 0:
        v = d + v
    return sympy.Max(lo, sympy.Min(v, hi)) if clamp else v


def slice_range(d: Dim, start: int, end: int, step: int):
    """ONNX Slice on one axis of size d: (clamped start, clamped end, length).

    For a symbolic d the clamping is exact where sympy can decide it from d >= 1; otherwise the
    indices are assumed in range (``[1:-1]`` of ``S`` has length ``S-2``, ``[0:5]`` has 5), as
    a result check at run time would catch.
    """
    if isinstance(d, int):  # the common case, without sympy
        if step > 0:
            s = min(max(start + d if start < 0 else start, 0), d)
            e = min(max(end + d if end < 0 else end, 0), d)
            return s, e, max(0, -(-(e - s) // step))
        s = min(max(start + d if start < 0 else start, 0), d - 1)
        e = min(max(end + d if end < 0 else end, -1), d - 1)
        return s, e, max(0, -(-(s - e) // -step))
    for clamp in (True, False):
        if step > 0:
            s, e = _clamp(start, d, 0, d, clamp), _clamp(end, d, 0, d, clamp)
            n = sympy.ceiling(sympy.Rational(1, step) * (e - s))
        else:
            s, e = _clamp(start, d, 0, d - 1, clamp), _clamp(end, d, -1, d - 1, clamp)
            n = sympy.ceiling(sympy.Rational(1, -step) * (s - e))
        n = sympy.Max(0, n)
        if not n.has(sympy.Min, sympy.Max):
            break
        n = n.args[1] if n.args[0] == 0 else n.args[0]  # assume the length is not negative
        if not n.has(sympy.Min, sympy.Max):
            break
    return s, e, n


def _slice_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    shape = list(x.shape)
    for axis, start, end, step in slice_params(x.rank, attrs):
        n = slice_range(x.shape[axis], start, end, step)[2]
        if isinstance(n, sympy.Basic) and n.has(sympy.Min, sympy.Max):
            raise IRError(f"slice [{start}:{end}:{step}] of axis {axis} of {x}: cannot tell "
                          f"the length for symbolic {x.shape[axis]}")
        shape[axis] = make_dim(n)
    m = {i: i for i in range(x.rank) if dims_equal(shape[i], x.shape[i])}
    return _out(x, shape, m, "slice")


def _slice_ref(x: np.ndarray, starts, ends, axes, steps) -> np.ndarray:
    idx = [slice(None)] * x.ndim
    params = slice_params(x.ndim, dict(starts=starts, ends=ends, axes=axes, steps=steps))
    for axis, start, end, step in params:
        s, e, _ = (int(v) for v in slice_range(x.shape[axis], start, end, step))
        idx[axis] = slice(s, e if e >= 0 else None, step)
    return x[tuple(idx)].copy()


def _slice_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    sliced = {a for a, *_ in slice_params(ins[0].rank, attrs)}
    return [frozenset({("in", 0, i), ("out", 0, i)}) for i in range(ins[0].rank)
            if i not in sliced]


op("slice", ["x"], _slice_infer, _slice_ref,
   attrs={"starts": Attr("ints"), "ends": Attr("ints"), "axes": Attr("ints", ()),
          "steps": Attr("ints", ())},
   traits=[INJECTIVE], channels=_slice_channels,
   prune=channel_maps.SLICE,
   doc="ONNX Slice: x[start:end:step] per axis, negative indices count from the end, out of "
       "range ones clamp, INT64_MAX/MIN mean 'to the end'; axes=[] is 0..n-1, steps=[] all 1; "
       "on a symbolic dim, indices are assumed in range")

# -- gather -----------------------------------------------------------------------------------


def _gather_map(x: TensorType, idx: TensorType, axis: int) -> dict[int, int]:
    m = {i: i for i in range(axis)}
    m.update({i: i + idx.rank - 1 for i in range(axis + 1, x.rank)})
    return m


def _gather_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x, idx = ins
    _need_index(idx)
    if x.rank == 0:
        raise IRError("cannot gather from a 0-d tensor")
    axis = norm_axis(attrs["axis"], x.rank)
    shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    return _out(x, shape, _gather_map(x, idx, axis), "gather")


def _gather_channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]]:
    m = _gather_map(ins[0], ins[1], norm_axis(attrs["axis"], ins[0].rank))
    return [frozenset({("in", 0, i), ("out", 0, j)}) for i, j in m.items()]


def _gather_ref(x: np.ndarray, indices: np.ndarray, axis: int,
                negative_indices: bool = True) -> np.ndarray:
    check_indices("gather", indices, x.shape[axis], negative_indices)
    return np.take(x, indices, axis=axis)


op("gather", ["x", "indices"], _gather_infer, _gather_ref,
   attrs={"axis": Attr("int", 0), "negative_indices": Attr("bool", True)},
   traits=[INJECTIVE], channels=_gather_channels,
   doc="numpy take: out = x[..., indices, ...] along axis; indices in [-n, n) with "
       "negative_indices (counting from the end, as ONNX Gather and x[idx]), else in [0, n) "
       "(torch.index_select); any other index is an error")


def _gather_elements_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x, idx = ins
    _need_index(idx)
    if idx.rank != x.rank:
        raise IRError(f"indices must have the rank of x, got {idx} for {x}")
    norm_axis(attrs["axis"], x.rank)
    return TensorType(x.dtype, idx.shape, _carry_quant(x, None, "gather_elements"))


def _gather_elements_ref(x: np.ndarray, indices: np.ndarray, axis: int,
                         negative_indices: bool = True) -> np.ndarray:
    check_indices("gather_elements", indices, x.shape[axis], negative_indices)
    return np.take_along_axis(x, indices, axis=axis)


op("gather_elements", ["x", "indices"], _gather_elements_infer, _gather_elements_ref,
   attrs={"axis": Attr("int", 0), "negative_indices": Attr("bool", True)}, traits=[INJECTIVE],
   doc="out[i][j][k] = x[i][indices[i][j][k]][k] for axis=1 (torch.gather, ONNX "
       "GatherElements); indices in [-n, n) with negative_indices (ONNX), else [0, n) "
       "(torch.gather); any other index is an error")


def _embedding_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    w, idx = ins
    if w.rank != 2:
        raise IRError(f"weight must be [num_embeddings, dim], got {w}")
    _need_index(idx)
    return _out(w, idx.shape + (w.shape[1],), {1: idx.rank}, "embedding")


def _embedding_ref(weight: np.ndarray, indices: np.ndarray) -> np.ndarray:
    check_indices("embedding", indices, weight.shape[0], False)
    return np.take(weight, indices, axis=0)


op("embedding", ["weight", "indices"], _embedding_infer, _embedding_ref,
   traits=[INJECTIVE],
   channels=lambda ins, a: [frozenset({("in", 0, 1), ("out", 0, ins[1].rank)})],
   doc="rows of weight [V, D] picked by indices: out[..., :] = weight[indices[...]]; indices "
       "in [0, V) as torch's embedding (a negative one is an error)")

# -- pad / tile -------------------------------------------------------------------------------


def _pad_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x = ins[0]
    pads, mode = attrs["pads"], attrs["mode"]
    if len(pads) != 2 * x.rank or any(p < 0 for p in pads):
        raise IRError(f"pads must be {2 * x.rank} non-negative values (begins then ends) for "
                      f"{x}, got {list(pads)}")
    if mode == "constant" and x.quant is not None:
        raise IRError("constant pad of a quantized tensor: dequantize first (value is real)")
    shape = []
    for i, d in enumerate(x.shape):
        lo, hi = pads[i], pads[x.rank + i]
        if (lo or hi) and isinstance(d, int) and (
                (mode == "reflect" and max(lo, hi) >= d) or (mode == "edge" and d == 0)):
            raise IRError(f"{mode} pad of {max(lo, hi)} needs axis {i} of {x} to be larger")
        shape.append(make_dim(d + lo + hi))
    m = {i: i for i in range(x.rank) if pads[i] == pads[x.rank + i] == 0}
    return _out(x, shape, m, "pad")


def _pad_ref(x: np.ndarray, pads, mode: str, value: float) -> np.ndarray:
    widths = list(zip(pads[:x.ndim], pads[x.ndim:], strict=True))
    if mode == "constant":
        return np.pad(x, widths, constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, widths, mode=mode)


op("pad", ["x"], _pad_infer, _pad_ref,
   attrs={"pads": Attr("ints"), "mode": Attr("str", "constant", ("constant", "reflect", "edge")),
          "value": Attr("float", 0.0)},
   traits=[INJECTIVE],
   channels=lambda ins, a: [frozenset({("in", 0, i), ("out", 0, i)}) for i in range(ins[0].rank)
                            if a["pads"][i] == a["pads"][ins[0].rank + i] == 0],
   doc="pad with pads [begin_0, .., begin_r-1, end_0, .., end_r-1] (ONNX layout); modes "
       "constant (value), reflect, edge")


def _tile_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x, reps = ins[0], attrs["repeats"]
    if len(reps) != x.rank or any(r < 0 for r in reps):
        raise IRError(f"repeats must be {x.rank} non-negative values for {x}, got {list(reps)}")
    m = {i: i for i in range(x.rank) if reps[i] == 1}
    return _out(x, [make_dim(d * r) for d, r in zip(x.shape, reps, strict=True)], m, "tile")


op("tile", ["x"], _tile_infer, lambda x, repeats: np.tile(x, repeats),
   attrs={"repeats": Attr("ints")}, traits=[INJECTIVE],
   channels=lambda ins, a: [frozenset({("in", 0, i), ("out", 0, i)})
                            for i, r in enumerate(a["repeats"]) if r == 1],
   doc="repeat x repeats[i] times along each axis i (numpy tile, one repeat per axis)")

# -- shape ------------------------------------------------------------------------------------

op("shape", ["x"], lambda ins, a: TensorType(DType.i64, (ins[0].rank,)),
   lambda x: np.asarray(x.shape, dtype=np.int64), traits=[OPAQUE],
   doc="the dims of x as an i64 vector (folds to a constant only for static shapes)")

# -- scatter / gather_nd ----------------------------------------------------------------------

_REDUCTIONS = ("none", "add", "mul", "max", "min")
_UFUNC = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_elements_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x, idx, upd = ins
    _need_index(idx)
    same_dtype([x, upd], "x and updates")
    if not (idx.rank == upd.rank == x.rank) or any(
            not dims_equal(a, b) for a, b in zip(idx.shape, upd.shape, strict=True)):
        raise IRError(f"indices {idx} and updates {upd} must share one shape of the rank of {x}")
    norm_axis(attrs["axis"], x.rank)
    need_no_quant(ins, "x and updates")
    return TensorType(x.dtype, x.shape)


def _scatter_elements_ref(x, indices, updates, axis: int, reduction: str) -> np.ndarray:
    out = x.copy()
    axis = axis % x.ndim
    idx = np.where(indices < 0, indices + x.shape[axis], indices)
    full = list(np.indices(idx.shape, sparse=True))
    full[axis] = idx
    where = tuple(np.broadcast_arrays(*full))
    if reduction == "none":
        out[where] = updates  # later duplicates win, as a sequential loop
    else:
        _UFUNC[reduction].at(out, where, updates)
    return out


op("scatter_elements", ["x", "indices", "updates"], _scatter_elements_infer,
   _scatter_elements_ref,
   attrs={"axis": Attr("int", 0), "reduction": Attr("str", "none", _REDUCTIONS)},
   traits=[OPAQUE],
   doc="a copy of x with out[..., indices[i, j, k], ...] = updates[i, j, k] along axis (or "
       "combined by reduction add/mul/max/min); the inverse of gather_elements (ONNX "
       "ScatterElements, torch scatter / scatter_reduce)")


def _scatter_nd_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x, idx, upd = ins
    _need_index(idx)
    same_dtype([x, upd], "x and updates")
    if idx.rank < 1 or not isinstance(idx.shape[-1], int) or idx.shape[-1] > x.rank:
        raise IRError(f"indices {idx} must end in a static dim of at most the rank of {x}")
    want = idx.shape[:-1] + x.shape[idx.shape[-1]:]
    if len(want) != upd.rank or any(
            not dims_equal(a, b) for a, b in zip(want, upd.shape, strict=True)):
        raise IRError(f"updates must be {_fmt(want)} for indices {idx} into {x}, got {upd}")
    need_no_quant(ins, "x and updates")
    return TensorType(x.dtype, x.shape)


def _scatter_nd_ref(x, indices, updates, reduction: str) -> np.ndarray:
    out = x.copy()
    k = indices.shape[-1]
    where = tuple(np.moveaxis(indices, -1, 0)) if k else ()
    if reduction == "none":
        out[where] = updates
    else:
        _UFUNC[reduction].at(out, where, updates)
    return out


op("scatter_nd", ["x", "indices", "updates"], _scatter_nd_infer, _scatter_nd_ref,
   attrs={"reduction": Attr("str", "none", _REDUCTIONS)}, traits=[OPAQUE],
   doc="a copy of x with out[indices[i, :]] = updates[i] (indices [..., k] address the first k "
       "axes of x), or combined by reduction (ONNX ScatterND)")


def _gather_nd_infer(ins: list[TensorType], attrs: dict) -> TensorType:
    x, idx = ins
    _need_index(idx)
    b = attrs["batch_dims"]
    if idx.rank < 1 or not isinstance(idx.shape[-1], int) or not 0 <= b < min(x.rank, idx.rank):
        raise IRError(f"indices {idx} must end in a static dim and batch_dims={b} must be "
                      f"below both ranks")
    k = idx.shape[-1]
    if b + k > x.rank:
        raise IRError(f"indices address {b} + {k} axes of {x}")
    if any(not dims_equal(a, c) for a, c in zip(x.shape[:b], idx.shape[:b], strict=True)):
        raise IRError(f"the {b} batch dims of {x} and {idx} differ")
    return TensorType(x.dtype, idx.shape[:-1] + x.shape[b + k:],
                      _carry_quant(x, None, "gather_nd"))


def _gather_nd_ref(x, indices, batch_dims: int) -> np.ndarray:
    b = batch_dims
    lead = x.shape[:b]
    n = int(np.prod(lead))
    xs = x.reshape((n,) + x.shape[b:])
    ids = indices.reshape((n,) + indices.shape[b:])
    outs = [xs[i][tuple(np.moveaxis(ids[i], -1, 0))] for i in range(n)]
    out = np.stack(outs) if outs else np.empty((0,), x.dtype)
    return out.reshape(indices.shape[:-1] + x.shape[b + indices.shape[-1]:])


op("gather_nd", ["x", "indices"], _gather_nd_infer, _gather_nd_ref,
   attrs={"batch_dims": Attr("int", 0)}, traits=[INJECTIVE],
   doc="out[i] = x[indices[i, :]]: the last axis of indices addresses the first k axes of x "
       "(after batch_dims shared leading axes) (ONNX GatherND)")
