"""rtinfer: a graph compiler for real-time deep-learning inference."""

from rtinfer import ir
from rtinfer.errors import RtinferError
from rtinfer.frontends import capture, export_onnx
from rtinfer.pass_manager import (
    Option,
    PassContext,
    graph_pass,
    optimize,
    register_pass,
    register_pipeline,
    run_pipeline,
)

__version__ = "0.1.0"

__all__ = [
    "Option", "PassContext", "RtinferError", "__version__", "capture", "export_onnx",
    "graph_pass", "ir", "optimize", "register_pass", "register_pipeline", "run_pipeline",
]
