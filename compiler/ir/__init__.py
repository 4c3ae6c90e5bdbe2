"""rtinfer's graph IR: types, values, nodes, graphs, the op table, text form, verifier and
reference interpreter."""

from rtinfer.ir.constants import ElidedTensor, tensor_digest
from rtinfer.ir.equality import structural_diff, structural_equal
from rtinfer.ir.graph import NO_PROVENANCE, Graph, Node, Provenance, Value
from rtinfer.ir.interpreter import interpret, interpret_values, random_inputs
from rtinfer.ir.parser import parse, parse_type
from rtinfer.ir.printer import format_node, print_graph
from rtinfer.ir.types import DType, QuantParams, TensorType, make_dim, sym
from rtinfer.ir.verifier import verify

__all__ = [
    "NO_PROVENANCE", "DType", "ElidedTensor", "Graph", "Node", "Provenance", "QuantParams",
    "TensorType", "Value", "format_node", "interpret", "interpret_values", "make_dim", "parse",
    "parse_type", "print_graph", "random_inputs", "structural_diff", "structural_equal", "sym",
    "tensor_digest", "verify",
]
