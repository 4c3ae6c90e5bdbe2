"""ONNX export rules: shape and data movement."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site, axis_attr, simple
from rtinfer.ir.ops.common import norm_axis
from rtinfer.ir.types import Dim, TensorType, dims_equal


def _reshape_to(e: Emitter, x: gs.Tensor, x_type: TensorType,
                shape: Sequence[Dim]) -> gs.Tensor:
    """Reshape to the (resolved) output shape; symbolic dims equal to the input's dim at the
    same position are copied (0), one other symbolic dim becomes -1, the rest are computed."""
    dims = list(shape)
    if 0 in dims:  # a literal zero-size dim: spell every dim out
        return e.op("Reshape", [x, e.shape(dims)], {"allowzero": 1})
    target: list[Dim] = []
    for i, d in enumerate(dims):
        copy = not isinstance(d, int) and i < x_type.rank and dims_equal(d, x_type.shape[i])
        target.append(0 if copy else d)
    unknown = [i for i, d in enumerate(target) if not isinstance(d, int)]
    if len(unknown) == 1:
        target[unknown[0]] = -1
    return e.op("Reshape", [x, e.shape(target)])


def _reshape(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    return _reshape_to(e, x[0], s.x, s.out.shape)


def _squeeze(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    axes = s.attrs["axes"] or [i for i, d in enumerate(s.x.shape) if d == 1]
    if not axes:
        return e.op("Identity", x)
    return e.op("Squeeze", [x[0], e.ints([norm_axis(a, s.x.rank) for a in axes])])


def _unsqueeze(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    return e.op("Unsqueeze", [x[0], e.ints(s.attrs["axes"])])


def _transpose(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    perm = [p % s.x.rank for p in s.attrs["perm"]] or list(reversed(range(s.x.rank)))
    return e.op("Transpose", x, {"perm": perm})


def _expand(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # ONNX Expand broadcasts both ways: 1 keeps the input's dim
    shape, lead = s.out.shape, s.out.rank - s.x.rank
    target = [1 if j >= lead and dims_equal(d, s.x.shape[j - lead]) else d
              for j, d in enumerate(shape)]
    return e.op("Expand", [x[0], e.shape(target)])


def _split(e: Emitter, s: Site, x: list[gs.Tensor]) -> list[gs.Tensor]:
    axis = norm_axis(s.attrs["axis"], s.x.rank)
    sizes = e.shape([t.shape[axis] for t in s.out_types])
    return e.op("Split", [x[0], sizes], {"axis": axis}, n_out=len(s.out_types))


def _slice(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    a = s.attrs
    axes = a["axes"] or range(len(a["starts"]))
    steps = a["steps"] or [1] * len(a["starts"])
    lim = np.iinfo(np.int64)
    clamp = [int(np.clip(v, lim.min, lim.max)) for v in a["starts"]], \
            [int(np.clip(v, lim.min, lim.max)) for v in a["ends"]]
    return e.op("Slice", [x[0], e.ints(clamp[0]), e.ints(clamp[1]), e.ints(axes),
                          e.ints(steps)])


def _pad(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    mode = s.attrs["mode"]
    value = e.scalar(s.attrs["value"], s.x.dtype) if mode == "constant" else None
    return e.op("Pad", [x[0], e.ints(s.attrs["pads"]), value], {"mode": mode})


RULES: dict[str, Rule] = {
    "reshape": _reshape,
    "flatten": _reshape,  # torch-style axis..end_axis: a Reshape to the inferred shape
    "squeeze": _squeeze,
    "unsqueeze": _unsqueeze,
    "transpose": _transpose,
    "expand": _expand,
    "concat": simple("Concat", axis_attr),
    "split": _split,
    "slice": _slice,
    "gather": simple("Gather", axis_attr),
    "gather_elements": simple("GatherElements", axis_attr),
    "gather_nd": simple("GatherND", lambda a: {"batch_dims": a["batch_dims"]}),
    "scatter_elements": simple("ScatterElements", lambda a: {"axis": a["axis"],
                                                             "reduction": a["reduction"]}),
    "scatter_nd": simple("ScatterND", lambda a: {"reduction": a["reduction"]}),
    "einsum": simple("Einsum", lambda a: {"equation": a["equation"]}),
    "embedding": simple("Gather", lambda a: {"axis": 0}),
    "pad": _pad,
    "tile": lambda e, s, x: e.op("Tile", [x[0], e.ints(s.attrs["repeats"])]),
    "shape": simple("Shape"),
}
