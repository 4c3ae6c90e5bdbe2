"""ONNX export rules: reductions, arg-reductions, scans and top-k."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rtinfer.errors import Unsupported
from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site, simple


def _reduce(op_type: str) -> Rule:
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        axes = s.attrs["axes"]  # [] (no axes input) reduces every axis
        return e.op(op_type, [x[0], e.ints(axes) if axes else None],
                    {"keepdims": int(s.attrs["keepdims"])})
    return rule


def _arg(op_type: str) -> Rule:
    return simple(op_type, lambda a: {"axis": a["axis"], "keepdims": int(a["keepdims"])})


def _cumprod(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # CumProd needs opset 26: out[.., i, ..] = prod_j where(j <= i, x[.., j, ..], 1), with i on
    # a new axis in front of the scanned one (needs its length static)
    rank, axis = s.x.rank, s.attrs["axis"] % s.x.rank
    n = s.x.shape[axis]
    if not isinstance(n, int):
        raise Unsupported(s.node.op, f"cumprod along the symbolic dim {n}")
    mask = np.tril(np.ones((n, n), bool)).reshape((n, n) + (1,) * (rank - axis - 1))
    xe = e.op("Unsqueeze", [x[0], e.ints([axis])])
    picked = e.op("Where", [e.const(mask), xe, e.scalar(1, s.x.dtype)])
    return e.op("ReduceProd", [picked, e.ints([axis + 1])], {"keepdims": 0})


RULES: dict[str, Rule] = {
    "reduce_sum": _reduce("ReduceSum"),
    "reduce_mean": _reduce("ReduceMean"),
    "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"),
    "reduce_prod": _reduce("ReduceProd"),
    "argmax": _arg("ArgMax"),
    "argmin": _arg("ArgMin"),
    "cumprod": _cumprod,
    "topk": lambda e, s, x: e.op("TopK", [x[0], e.ints([s.attrs["k"]])], {
        "axis": s.attrs["axis"], "largest": int(s.attrs["largest"]),
        "sorted": int(s.attrs["sorted"])}, n_out=2),
    "cumsum": lambda e, s, x: e.op("CumSum", [x[0], e.const(np.int64(s.attrs["axis"]))]),
}
