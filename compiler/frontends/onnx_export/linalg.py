"""ONNX export rules: linear algebra (matmul, bmm, linear)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site, simple


def _linear(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    if s.x.rank == 2:  # x @ w.T + b
        return e.op("Gemm", x, {"transB": 1})
    y = e.op("MatMul", [x[0], e.op("Transpose", [x[1]], {"perm": [1, 0]})])
    return e.op("Add", [y, x[2]]) if len(x) > 2 else y


RULES: dict[str, Rule] = {
    "matmul": simple("MatMul"),
    "bmm": simple("MatMul"),
    "linear": _linear,  # Gemm for 2-d x, else MatMul + Add
}
