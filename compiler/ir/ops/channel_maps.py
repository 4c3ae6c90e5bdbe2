"""Channel pruning hooks (``OpDef.prune``) of the ops whose channels do not map index to index
(concat, split, slice, reshape, flatten, a multi-head attention's heads), whose attributes
hold channel counts (reshape shapes, split sizes, slice bounds, a depthwise convolution's
groups, a multi-head attention's num_heads), whose channels couple per group (a grouped
convolution's), or that reduce over channels (a LayerNorm's
hidden size, pruned only when asked).

``links`` functions return ``IndexLink`` s: element ``a_idx[k]`` of port axis ``a`` is the
same channel as element ``b_idx[k]`` of port axis ``b`` (``b`` None: elements no other port
reads). ``attrs`` functions take the kept (sorted, old) indices of each port axis pruning
shrinks and return the node's new attributes. Each op's entry names its hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rtinfer.ir.ops.registry import IndexLink, PortAxis, PruneHook
from rtinfer.ir.types import Dim, TensorType, dims_equal

Kept = dict[PortAxis, np.ndarray]


def _axis(a: int, rank: int) -> int:
    return a % rank if rank else 0


# -- reshape / flatten ------------------------------------------------------------------------


def merge_links(src: Sequence[Dim], dst: Sequence[Dim]) -> list[IndexLink]:
    """Channel pruning through a row-major reshape from ``src`` to ``dst``: where several axes
    merge into one, channel c of the outermost maps to the block of c's features (a flatten
    into a linear: each channel is a block of H*W features); where one axis splits into
    several, a block of channels maps to one index of the outermost new axis (heads). Axes
    inside a block are not linked, so they are never pruned; axes that stay whole are
    ``channel_groups``' business."""
    links: list[IndexLink] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        i0, j0 = i, j
        if not isinstance(src[i], int) or not isinstance(dst[j], int):
            if not dims_equal(src[i], dst[j]):
                return links  # a symbolic segment of several axes: nothing linked past it
            i, j = i + 1, j + 1
            continue
        pi, pj = src[i], dst[j]
        i, j = i + 1, j + 1
        while pi != pj:  # grow the smaller side until both cover the same elements
            if pi < pj:
                if i >= len(src) or not isinstance(src[i], int):
                    return links
                pi, i = pi * src[i], i + 1
            else:
                if j >= len(dst) or not isinstance(dst[j], int):
                    return links
                pj, j = pj * dst[j], j + 1
        ins = [a for a in range(i0, i) if src[a] != 1]
        outs = [b for b in range(j0, j) if dst[b] != 1]
        if len(ins) > 1 and len(outs) == 1:  # merge
            a, inner = ins[0], pi // src[ins[0]]
            links.append((("in", 0, a), np.repeat(np.arange(src[a]), inner),
                          ("out", 0, outs[0]), np.arange(pi)))
        elif len(ins) == 1 and len(outs) > 1:  # split
            b, inner = outs[0], pj // dst[outs[0]]
            links.append((("in", 0, ins[0]), np.arange(pj), ("out", 0, b), np.arange(pj) // inner))
    return links


def _reshape_links(ins: list[TensorType], outs: list[TensorType], attrs: dict
                   ) -> list[IndexLink]:
    return merge_links(ins[0].shape, outs[0].shape)


def _reshape_attrs(ins: list[TensorType], attrs: dict, kept: Kept) -> dict[str, Any]:
    shape = list(attrs["shape"])
    for (side, _, axis), idx in kept.items():
        if side == "out" and isinstance(shape[axis], int) and shape[axis] >= 0:
            shape[axis] = len(idx)  # -1 and symbolic dims follow by themselves
    return {**attrs, "shape": tuple(shape)}


RESHAPE = PruneHook(links=_reshape_links, attrs=_reshape_attrs)
FLATTEN = PruneHook(links=_reshape_links)

# -- concat / split ---------------------------------------------------------------------------


def _offset_links(parts: list[TensorType], part_side: str, whole_side: str, axis: int
                  ) -> list[IndexLink]:
    """Channel j of part k is channel offset_k + j of the whole."""
    links: list[IndexLink] = []
    offset = 0
    for k, t in enumerate(parts):
        n = t.shape[axis]
        if not isinstance(n, int):
            return links
        links.append(((part_side, k, axis), np.arange(n), (whole_side, 0, axis),
                      offset + np.arange(n)))
        offset += n
    return links


def _concat_links(ins: list[TensorType], outs: list[TensorType], attrs: dict
                  ) -> list[IndexLink]:
    return _offset_links(ins, "in", "out", _axis(attrs["axis"], ins[0].rank))


def _split_links(ins: list[TensorType], outs: list[TensorType], attrs: dict
                 ) -> list[IndexLink]:
    return _offset_links(outs, "out", "in", _axis(attrs["axis"], ins[0].rank))


def _split_attrs(ins: list[TensorType], attrs: dict, kept: Kept) -> dict[str, Any]:
    axis = _axis(attrs["axis"], ins[0].rank)
    sizes = list(attrs["sizes"])
    if -1 in sizes:  # the rest, made explicit: the kept counts replace every size below
        sizes[sizes.index(-1)] = ins[0].shape[axis] - sum(s for s in sizes if s != -1)
    return {**attrs, "sizes": tuple(len(kept[("out", k, axis)]) if ("out", k, axis) in kept
                                    else int(n) for k, n in enumerate(sizes))}


CONCAT = PruneHook(links=_concat_links)
SPLIT = PruneHook(links=_split_links, attrs=_split_attrs)

# -- slice ------------------------------------------------------------------------------------


def _unit_slices(ins: list[TensorType], attrs: dict) -> list[tuple[int, int, int] | None]:
    """Per sliced axis: (axis, start, end) clamped like ONNX Slice for step 1 on a static
    axis, else None (such slices block pruning along their axis)."""
    starts, ends = attrs["starts"], attrs["ends"]
    axes = attrs["axes"] or tuple(range(len(starts)))
    steps = attrs["steps"] or (1,) * len(starts)
    out: list[tuple[int, int, int] | None] = []
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        axis = _axis(a, ins[0].rank)
        d = ins[0].shape[axis]
        if st != 1 or not isinstance(d, int):
            out.append(None)
            continue
        s, e = (min(max(v + d if v < 0 else v, 0), d) for v in (s, e))
        out.append((axis, s, max(s, e)))
    return out


def _slice_links(ins: list[TensorType], outs: list[TensorType], attrs: dict
                 ) -> list[IndexLink]:
    """Output channel j is input channel start + j; the channels outside the slice are read
    by no other port."""
    links: list[IndexLink] = []
    for sl in _unit_slices(ins, attrs):
        if sl is None:
            continue
        axis, s, e = sl
        links.append((("out", 0, axis), np.arange(e - s), ("in", 0, axis), np.arange(s, e)))
        rest = np.setdiff1d(np.arange(ins[0].shape[axis]), np.arange(s, e))
        if rest.size:
            links.append((("in", 0, axis), rest, None, None))
    return links


def _slice_attrs(ins: list[TensorType], attrs: dict, kept: Kept) -> dict[str, Any]:
    """The kept channels' slice: [kept before start, kept before end)."""
    starts, ends = list(attrs["starts"]), list(attrs["ends"])
    for k, sl in enumerate(_unit_slices(ins, attrs)):
        if sl is not None and ("in", 0, sl[0]) in kept:
            idx = kept[("in", 0, sl[0])]
            starts[k], ends[k] = (int(np.searchsorted(idx, v)) for v in sl[1:])
    return {**attrs, "starts": tuple(starts), "ends": tuple(ends)}


SLICE = PruneHook(links=_slice_links, attrs=_slice_attrs)

# -- convolution ------------------------------------------------------------------------------


def _conv_channel_axis(ins: list[TensorType], attrs: dict) -> int:
    return ins[0].rank - 1 if attrs.get("layout") == "NHWC" else 1


def _conv_links(ins: list[TensorType], outs: list[TensorType], attrs: dict
                ) -> list[IndexLink]:
    """A grouped (not depthwise) convolution, weight [O, C/g, *kernel]: input channel
    k*C/g + j of every group k reads the weight's column j, and output channel k*O/g + i is
    one channel with output channel i of group 0, so an index goes from every group at once:
    each group shrinks alike and ``groups`` stays. Plain and depthwise convolutions couple
    index to index (``channel_groups``)."""
    x, w, g = ins[0], ins[1], attrs["groups"]
    axis = _conv_channel_axis(ins, attrs)
    c, o, cg = x.shape[axis], w.shape[0], w.shape[1]
    if g == 1 or not all(isinstance(d, int) for d in (c, o, cg)) or (cg == 1 and o == c):
        return []
    og = o // g
    links: list[IndexLink] = [
        (("in", 0, axis), np.arange(c), ("in", 1, 1), np.arange(c) % cg),
        (("out", 0, axis), np.arange(o), ("out", 0, axis), np.arange(o) % og),
        (("out", 0, axis), np.arange(o), ("in", 1, 0), np.arange(o))]
    if len(ins) > 2:
        links.append((("out", 0, axis), np.arange(o), ("in", 2, 0), np.arange(o)))
    return links


def _conv_attrs(ins: list[TensorType], attrs: dict, kept: Kept) -> dict[str, Any]:
    """A depthwise convolution has one group per input channel: its groups shrink with them.
    A grouped one loses the same indices from every group (``_conv_links``): its groups stay."""
    axis = _conv_channel_axis(ins, attrs)
    depthwise = attrs["groups"] > 1 and attrs["groups"] == ins[0].shape[axis]
    if depthwise and ("out", 0, axis) in kept:
        return {**attrs, "groups": len(kept[("out", 0, axis)])}
    return attrs


CONV = PruneHook(links=_conv_links, attrs=_conv_attrs)
# a transposed convolution's weight is [C, O/g, *kernel]: a grouped one stays blocked
CONV_TRANSPOSE = PruneHook(attrs=_conv_attrs)

# -- multi-head attention over [..., S, H*D] -----------------------------------------------


def _mha_links(ins: list[TensorType], outs: list[TensorType], attrs: dict
               ) -> list[IndexLink]:
    """Whole heads: every feature of head h of q is one channel with the first (so is k's,
    which ``channel_groups`` pairs with q's feature by feature), and head h of v (and of the
    output, paired with v) is the same channel as head h of q: a head goes from q, k, v and
    the output at once, and ``num_heads`` stays a divisor."""
    h = attrs["num_heads"]
    q, v = ins[0].shape[-1], ins[2].shape[-1]
    if not isinstance(q, int) or not isinstance(v, int) or q % h or v % h:
        return []
    e, ev = q // h, v // h
    qa, va = ("in", 0, ins[0].rank - 1), ("in", 2, ins[2].rank - 1)
    return [(qa, np.arange(q), qa, np.arange(q) // e * e),
            (va, np.arange(v), qa, np.arange(v) // ev * e)]


def _mha_attrs(ins: list[TensorType], attrs: dict, kept: Kept) -> dict[str, Any]:
    q = ("in", 0, ins[0].rank - 1)
    if q not in kept:
        return attrs
    return {**attrs, "num_heads": len(kept[q]) // (ins[0].shape[-1] // attrs["num_heads"])}


MULTI_HEAD_ATTENTION = PruneHook(links=_mha_links, attrs=_mha_attrs)

# -- layer_norm / rms_norm --------------------------------------------------------------------


def _last_axes_reduced(ins: list[TensorType], attrs: dict) -> list[PortAxis]:
    """The normalized axes axis..rank-1: their statistics (mean, variance) read every channel,
    so removing one changes the others (a transformer's hidden size)."""
    x = ins[0]
    return [("in", 0, ax) for ax in range(_axis(attrs["axis"], x.rank), x.rank)]


LAST_AXES_NORM = PruneHook(reduces=_last_axes_reduced)

__all__ = ["CONCAT", "CONV", "CONV_TRANSPOSE", "FLATTEN", "LAST_AXES_NORM",
           "MULTI_HEAD_ATTENTION", "RESHAPE", "SLICE", "SPLIT", "merge_links"]
