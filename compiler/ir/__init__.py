"""rtinfer's graph IR: types, values, nodes, graphs, the op table, text form, verifier and
reference interpreter."""

from rtinfer.ir.graph import NO_PROVENANCE, Graph, Node, Provenance, Value
from rtinfer.ir.types import DType, QuantParams, TensorType, make_dim, sym

__all__ = [
    "NO_PROVENANCE", "DType", "Graph", "Node", "Provenance", "QuantParams", "TensorType", "Value",
    "make_dim", "sym",
]
