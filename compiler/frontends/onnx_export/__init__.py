"""ONNX export: ``export_onnx(graph, path)`` writes an IR graph as an ONNX model.

The graph is rebuilt with onnx-graphsurgeon: graph inputs and outputs keep their names (the
values' name hints, sanitized and made unique) and types (symbolic dims as ``dim_param``
strings such as ``B*S``), constants become initializers, and each node is converted by one rule
of ``RULES`` (IR op -> a function that emits one or more ONNX nodes). A rule that cannot express
a node raises ``rtinfer.errors.Unsupported`` with the reason. Nodes without a rule are exported
as nodes of the custom domain ``ai.rtinfer`` when ``allow_custom=True`` (see
docs/onnx-export.md) and block the export otherwise, with an ``ExportError`` that names every
blocking node.

The exported model passes ``onnx.checker.check_model(model, full_check=True)``, and ONNX Runtime
reproduces the reference interpreter's outputs. The graph itself is never modified. The
emitter and the site a rule sees are in ``context``; the rules in the modules of their families
(``elementwise``, ``linalg``, ``nn``, ``norm``, ``quant``, ``reduce``, ``shape``, ``attention``,
``fused``), assembled into ``RULES`` in ``rules``; the driver in ``driver``.
"""

from rtinfer.errors import Unsupported
from rtinfer.frontends.onnx_export.context import (
    CUSTOM_DOMAIN,
    DEFAULT_OPSET,
    MIN_OPSET,
    NO_ONNX_FORM,
    Emitter,
    Rule,
    Site,
    chain,
    simple,
)
from rtinfer.frontends.onnx_export.driver import export_onnx
from rtinfer.frontends.onnx_export.rules import RULES

__all__ = ["CUSTOM_DOMAIN", "DEFAULT_OPSET", "MIN_OPSET", "NO_ONNX_FORM", "RULES", "Emitter",
           "Rule", "Site", "Unsupported", "chain", "export_onnx", "simple"]
