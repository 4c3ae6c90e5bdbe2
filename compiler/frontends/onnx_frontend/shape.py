"""ONNX -> IR rules: shapes and data movement (Shape, Reshape, Squeeze, Transpose, Concat,
Split, Slice, Gather*, Scatter*, Pad, Tile, SpaceToDepth, DepthToSpace, CenterCropPad,
Compress, ReverseSequence).

The converter remembers the dims a ``Shape`` of a symbolic tensor holds (``cx.conv.dims``) and
carries them through Gather, Slice, Unsqueeze and Concat, so that a Reshape or Expand built from
them gets symbolic dims rather than a run-time shape."""

from __future__ import annotations

import numpy as np

from rtinfer.frontends.onnx_frontend.context import pos_axis, rule
from rtinfer.ir.types import numel


@rule("Shape")
def _shape(cx, ins):
    x = ins[0]
    r = x.type.rank
    start, end = cx.attr("start", 0), cx.attr("end", r)
    # Shape clamps start and end into [0, rank], so any value is valid here
    start = max(0, min(r, pos_axis(start, r, check=False)))
    end = max(0, min(r, pos_axis(end, r, check=False)))
    dims = tuple(x.type.shape[start:end])
    if all(isinstance(d, int) for d in dims):
        return cx.const(np.array(dims, dtype=np.int64))
    s = cx.op("shape", x)
    if (start, end) != (0, r):
        s = cx.op("slice", s, starts=[start], ends=[end])
    cx.conv.dims[s] = dims
    return s


@rule("Size")
def _size(cx, ins):
    return cx.const(np.int64(np.prod(cx.static_shape(ins[0]))))


@rule("Reshape")
def _reshape(cx, ins):
    x, shape = ins
    target = cx.shape_vector(shape, "Reshape's shape")
    if not cx.attr("allowzero", 0):  # a 0 copies the input's dim at the same position
        if any(isinstance(d, int) and d == 0 for d in target[x.type.rank:]):
            raise cx.invalid(f"shape {target} copies (0) a dim past the input's rank "
                             f"{x.type.rank}")
        target = [x.type.shape[i] if isinstance(d, int) and d == 0 else d
                  for i, d in enumerate(target)]
    return cx.op("reshape", x, shape=target)


@rule("Flatten")
def _flatten(cx, ins):
    x = ins[0]
    r = x.type.rank
    axis = pos_axis(cx.attr("axis", 1), r, end_ok=True)
    return cx.op("reshape", x, shape=[numel(x.type.shape[:axis]), numel(x.type.shape[axis:])])


@rule("Squeeze")
def _squeeze(cx, ins):
    x = ins[0]
    if len(ins) > 1 and ins[1] is not None:
        axes = cx.ints(ins[1], "Squeeze's axes")
    else:
        axes = list(cx.attr("axes", []))
    return cx.op("squeeze", x, axes=[pos_axis(a, x.type.rank) for a in axes])


@rule("Unsqueeze")
def _unsqueeze(cx, ins):
    x = ins[0]
    axes = cx.ints(ins[1], "Unsqueeze's axes") if len(ins) > 1 else list(cx.attr("axes"))
    r = x.type.rank + len(axes)
    out = cx.op("unsqueeze", x, axes=sorted(pos_axis(a, r) for a in axes))
    if x in cx.conv.dims:
        cx.conv.dims[out] = cx.conv.dims[x]
    return out


@rule("Transpose")
def _transpose(cx, ins):
    x = ins[0]
    perm = cx.attr("perm", None) or list(reversed(range(x.type.rank)))
    return cx.op("transpose", x, perm=list(perm))


@rule("Expand")
def _expand(cx, ins):
    x, shape = ins
    target = cx.shape_vector(shape, "Expand's shape")
    # ONNX Expand broadcasts both ways: the result has the broadcast of x's shape and target
    r = max(len(target), x.type.rank)
    xs = [1] * (r - x.type.rank) + list(x.type.shape)
    ts = [1] * (r - len(target)) + list(target)
    out = [a if isinstance(b, int) and b == 1 else b for a, b in zip(xs, ts, strict=True)]
    return cx.op("expand", x, shape=out)


@rule("Concat")
def _concat(cx, ins):
    vals = [v for v in ins if v is not None]
    axis = pos_axis(cx.attr("axis"), vals[0].type.rank)
    out = cx.op("concat", *vals, axis=axis)
    if (axis == 0 and all(v.is_const or v in cx.conv.dims for v in vals)
            and vals[0].type.rank == 1 and vals[0].type.dtype.is_int):  # a shape vector
        dims = []
        for v in vals:
            dims += cx.conv.dims[v] if v in cx.conv.dims else cx.ints(v, "")
        cx.conv.dims[out] = tuple(dims)
    return out


@rule("Split")
def _split(cx, ins):
    x = ins[0]
    axis = pos_axis(cx.attr("axis", 0), x.type.rank)
    n = len(cx.node.output)
    if len(ins) > 1 and ins[1] is not None:
        sizes = cx.ints(ins[1], "Split's sizes")
    elif cx.attr("split"):
        sizes = list(cx.attr("split"))
    else:
        d = x.type.shape[axis]
        if not isinstance(d, int):
            raise cx.unsupported(f"Split of symbolic dim {d} without sizes")
        k = cx.attr("num_outputs", n)
        chunk = -(-d // k)
        sizes = [chunk] * (d // chunk) + ([d % chunk] if d % chunk else [])
    return cx.ops("split", x, axis=axis, sizes=sizes)


@rule("Slice")
def _slice(cx, ins):
    x = ins[0]
    starts, ends = cx.ints(ins[1], "Slice's starts"), cx.ints(ins[2], "Slice's ends")
    axes = cx.ints(ins[3], "Slice's axes") if len(ins) > 3 and ins[3] is not None else []
    steps = cx.ints(ins[4], "Slice's steps") if len(ins) > 4 and ins[4] is not None else []
    axes = [pos_axis(a, x.type.rank) for a in axes]
    out = cx.op("slice", x, starts=starts, ends=ends, axes=axes, steps=steps)
    if x in cx.conv.dims and not steps:
        cx.conv.dims[out] = tuple(cx.conv.dims[x][slice(starts[0], ends[0])])
    return out


@rule("Gather")
def _gather(cx, ins):
    x, idx = ins
    axis = pos_axis(cx.attr("axis", 0), x.type.rank)
    out = cx.op("gather", x, idx, axis=axis)
    if x in cx.conv.dims and idx.is_const:
        dims = cx.conv.dims[x]
        cx.conv.dims[out] = tuple(dims[i] for i in np.asarray(idx.const_data).reshape(-1))
    return out


@rule("GatherElements")
def _gather_elements(cx, ins):
    x = ins[0]
    return cx.op("gather_elements", x, ins[1], axis=pos_axis(cx.attr("axis", 0), x.type.rank))


@rule("Pad")
def _pad(cx, ins):
    x = ins[0]
    r = x.type.rank
    pads = cx.ints(ins[1], "Pad's pads")
    value = 0.0
    if len(ins) > 2 and ins[2] is not None:
        value = float(np.asarray(cx.array(ins[2], "Pad's constant_value")).reshape(-1)[0]) \
            if cx.array(ins[2], "").size else 0.0
    if len(ins) > 3 and ins[3] is not None:  # pads for the given axes only
        axes = [pos_axis(a, r) for a in cx.ints(ins[3], "Pad's axes")]
        full = [0] * (2 * r)
        for j, a in enumerate(axes):
            full[a], full[r + a] = pads[j], pads[len(axes) + j]
        pads = full
    mode = cx.attr("mode", "constant")
    if mode == "wrap":
        raise cx.unsupported("Pad mode 'wrap'")
    if any(p < 0 for p in pads):  # negative pads crop
        starts = [max(0, -p) for p in pads[:r]]
        ends = [-max(0, -p) if p < 0 else 2**63 - 1 for p in pads[r:]]
        x = cx.op("slice", x, starts=starts, ends=ends, axes=list(range(r)))
        pads = [max(0, p) for p in pads]
    return cx.op("pad", x, pads=pads, mode=mode, value=value)


@rule("Tile")
def _tile(cx, ins):
    return cx.op("tile", ins[0], repeats=cx.ints(ins[1], "Tile's repeats"))


@rule("SpaceToDepth", "DepthToSpace")
def _space_depth(cx, ins):
    x = ins[0]
    n, c, h, w = x.type.shape
    b = cx.attr("blocksize")
    if cx.node.op_type == "SpaceToDepth":
        y = cx.op("reshape", x, shape=[n, c, h // b, b, w // b, b])
        # DCR: out channel = (bh * b + bw) * c + ch; CRD: ch * b * b + bh * b + bw
        perm = [0, 3, 5, 1, 2, 4] if cx.attr("mode", "DCR") == "DCR" else [0, 1, 3, 5, 2, 4]
        y = cx.op("transpose", y, perm=perm)
        return cx.op("reshape", y, shape=[n, c * b * b, h // b, w // b])
    if cx.attr("mode", "DCR") == "DCR":
        y = cx.op("reshape", x, shape=[n, b, b, c // (b * b), h, w])
        y = cx.op("transpose", y, perm=[0, 3, 4, 1, 5, 2])
    else:
        y = cx.op("reshape", x, shape=[n, c // (b * b), b, b, h, w])
        y = cx.op("transpose", y, perm=[0, 1, 4, 2, 5, 3])
    return cx.op("reshape", y, shape=[n, c // (b * b), h * b, w * b])


@rule("ScatterElements", "Scatter")
def _scatter_elements(cx, ins):
    return cx.op("scatter_elements", *ins[:3], axis=cx.attr("axis", 0),
                 reduction=cx.attr("reduction", "none"))


@rule("ScatterND")
def _scatter_nd(cx, ins):
    return cx.op("scatter_nd", *ins[:3], reduction=cx.attr("reduction", "none"))


@rule("GatherND")
def _gather_nd(cx, ins):
    return cx.op("gather_nd", ins[0], ins[1], batch_dims=cx.attr("batch_dims", 0))


@rule("CenterCropPad")
def _center_crop_pad(cx, ins):
    # per axis: a larger dim is cropped around its centre (the extra odd element comes off the
    # end), a smaller one zero-padded around it (the extra odd element goes on the end)
    x = ins[0]
    r = x.type.rank
    target = cx.ints(ins[1], "CenterCropPad's shape")
    axes = [pos_axis(a, r) for a in cx.attr("axes", list(range(r)))]
    if len(target) != len(axes):
        raise cx.invalid(f"shape has {len(target)} entries for {len(axes)} axes")
    dims = cx.static_shape(x)
    starts, ends, pads = [0] * r, list(dims), [0] * (2 * r)
    for a, size in zip(axes, target, strict=True):
        if size < 0:
            raise cx.invalid(f"shape {target} has a negative size")
        d = dims[a] - size
        if d > 0:
            starts[a], ends[a] = d // 2, dims[a] - (d - d // 2)
        elif d < 0:
            pads[a], pads[r + a] = -d // 2, -d - (-d // 2)
    if starts != [0] * r or ends != list(dims):
        x = cx.op("slice", x, starts=starts, ends=ends, axes=list(range(r)))
    return cx.op("pad", x, pads=pads) if any(pads) else cx.op("identity", x)


@rule("Compress")
def _compress(cx, ins):
    # the slices along axis (of the flattened input without one) where condition is true:
    # a gather of the true positions, which fix the output's shape
    x = ins[0]
    cond = np.asarray(cx.array(ins[1], "Compress's condition")).reshape(-1).astype(bool)
    axis = cx.attr("axis")
    if axis is None:
        x = cx.op("reshape", x, shape=[numel(x.type.shape)])
        axis = 0
    axis = pos_axis(axis, x.type.rank)
    dim = x.type.shape[axis]
    if isinstance(dim, int) and cond.size > dim:
        raise cx.invalid(f"condition has {cond.size} entries, more than the {dim} of axis "
                         f"{axis}")
    return cx.op("gather", x, cx.const(np.flatnonzero(cond).astype(np.int64)), axis=axis)


@rule("ReverseSequence")
def _reverse_sequence(cx, ins):
    # batch b's first sequence_lens[b] steps along time_axis reversed, the rest kept: a gather
    # along time_axis whose indices (lens - 1 - t below lens, t after) the lengths fix
    x = ins[0]
    lens = cx.ints(ins[1], "ReverseSequence's sequence_lens")
    batch_axis, time_axis = cx.attr("batch_axis", 1), cx.attr("time_axis", 0)
    if {batch_axis, time_axis} != {0, 1}:
        raise cx.invalid(f"batch_axis {batch_axis} and time_axis {time_axis} must be 0 and 1")
    dims = cx.static_shape(x)
    steps = dims[time_axis]
    if len(lens) != dims[batch_axis] or any(not 0 <= n <= steps for n in lens):
        raise cx.invalid(f"sequence_lens {lens} must hold one length in [0, {steps}] per "
                         f"batch entry ({dims[batch_axis]})")
    t = np.arange(steps)
    rows = np.stack([np.where(t < n, n - 1 - t, t) for n in lens])  # [batch, time]
    idx = rows if batch_axis == 0 else rows.T
    idx = np.broadcast_to(idx.reshape(idx.shape + (1,) * (len(dims) - 2)), dims)
    return cx.op("gather_elements", x, cx.const(idx.astype(np.int64)), axis=time_axis)
