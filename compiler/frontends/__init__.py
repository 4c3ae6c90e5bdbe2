"""Frontends: capture a model into rtinfer's IR.

``capture(model, example_inputs=None, dynamic_dims=None)`` accepts a ``torch.nn.Module`` (through
``torch.export``), a ``torch.fx.GraphModule``, an ``onnx.ModelProto`` or a path to an ``.onnx``
file. ``export_onnx(graph, path)`` writes a graph back out as ONNX. ``load_graph(path)`` reads a
model file: ``.ir`` text or an ``.onnx`` model.
"""

from __future__ import annotations

import os
from typing import Any

from rtinfer.errors import CaptureError
from rtinfer.frontends.files import load_graph
from rtinfer.ir.graph import Graph


def capture(model: Any, example_inputs: Any = None, dynamic_dims: Any = None) -> Graph:
    """Capture ``model`` into a new IR graph; the model itself is never modified."""
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        from rtinfer.frontends.onnx_frontend import capture_onnx

        # shape-like inputs (shapes, axes, pads) are specialized on their example values
        return capture_onnx(model, dynamic_dims=dynamic_dims, example_inputs=example_inputs)
    import torch

    if isinstance(model, torch.nn.Module):
        from rtinfer.frontends.torch_frontend import capture_torch

        return capture_torch(model, example_inputs, dynamic_dims=dynamic_dims)
    raise CaptureError(
        f"cannot capture a {type(model).__module__}.{type(model).__name__}: rtinfer captures a "
        "torch.nn.Module, a torch.fx.GraphModule, an onnx.ModelProto or a path to an .onnx file")


def export_onnx(graph: Graph, path: str | os.PathLike | None = None, **options: Any):
    """Write ``graph`` as an ONNX model to ``path`` (and return the ``onnx.ModelProto``)."""
    from rtinfer.frontends import onnx_export

    return onnx_export.export_onnx(graph, path, **options)


__all__ = ["capture", "export_onnx", "load_graph"]
