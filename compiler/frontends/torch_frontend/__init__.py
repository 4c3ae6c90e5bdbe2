"""The PyTorch frontend: ``torch.export`` a module, decompose to core ATen, walk the FX graph.

    capture_torch(model, example_inputs, dynamic_dims=None) -> Graph

Each ATen overload maps to one converter in ``CONVERTERS`` (``"aten.add.Tensor" -> fn``), declared
in the module of its family, as the op table is split: ``elementwise``, ``reduce``, ``nn``
(linear algebra, convolution, pooling, normalization, attention), ``shape``, ``creation``. A
converter takes the conversion context (``context.Ctx``) and the op's arguments bound by name from
the ATen schema (tensors already turned into IR values, SymInts into sympy dims, Python scalars as
they are) and returns the IR value(s) for the node. Before converting anything, every node is
checked against the table so that one ``UnsupportedOpsError`` lists all the ops a model needs
(``capture``).

The exported program's pytree specs and input names are kept in ``graph.meta["torch"]``;
``unflatten_outputs(graph, arrays)`` rebuilds the eager output structure (tuple, dict,
``ModelOutput``) from the graph's flat outputs.
"""

from rtinfer.frontends.torch_frontend import (  # noqa: F401  (each declares its converters)
    creation,
    elementwise,
    nn,
    reduce,
    scatter,
    shape,
)
from rtinfer.frontends.torch_frontend.capture import (
    capture_torch,
    example_args,
    flatten_inputs,
    unflatten_outputs,
)
from rtinfer.frontends.torch_frontend.context import CONVERTERS, KEEP_OPS, converts, ir_dtype

__all__ = ["CONVERTERS", "KEEP_OPS", "capture_torch", "converts", "example_args", "flatten_inputs",
           "ir_dtype", "unflatten_outputs"]
