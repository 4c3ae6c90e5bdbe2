"""The ONNX frontend: ``capture_onnx(model_or_path)`` turns an ONNX model into an IR graph.

``capture`` loads and prepares the model and walks its nodes. Each node is converted by its rule
in ``CONVERTERS`` (ONNX op_type -> rule), declared in the module of its family, as the op table
is split: ``elementwise``, ``linalg``, ``nn`` (convolution, pooling, resizing), ``norm``,
``reduce``, ``shape``, ``creation``, ``quant``, ``attention``, ``loss``. ``context`` is what a
rule sees (``NodeContext``) and the error for an input the IR needs as a constant
(``NotConstant``).
"""

from rtinfer.frontends.onnx_frontend.capture import (
    MIN_OPSET,
    SPECIALIZE_MAX_ELEMENTS,
    capture_onnx,
    convert_graph,
    load_model,
    prepare,
    specialized_inputs,
)
from rtinfer.frontends.onnx_frontend.context import CONVERTERS, NodeContext, NotConstant, rule

__all__ = ["CONVERTERS", "MIN_OPSET", "SPECIALIZE_MAX_ELEMENTS", "NodeContext", "NotConstant",
           "capture_onnx", "convert_graph", "load_model", "prepare", "rule",
           "specialized_inputs"]
