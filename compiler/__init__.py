"""rtinfer: a graph compiler for real-time deep-learning inference."""

# importing passes installs the built-in passes and pipelines
from rtinfer import ir, passes, serving
from rtinfer.bisector import BisectResult, bisect
from rtinfer.compile import CompiledModel, compile, load
from rtinfer.errors import RtinferError
from rtinfer.frontends import capture, export_onnx
from rtinfer.pass_manager import (
    Option,
    PassContext,
    graph_pass,
    load_pass_plugin,
    optimize,
    register_pass,
    register_pipeline,
    run_pipeline,
)
from rtinfer.prune import PrunedModel, distill, prune
from rtinfer.quantize import quantize
from rtinfer.version import __version__

__all__ = [
    "BisectResult", "CompiledModel", "Option", "PassContext", "RtinferError", "__version__",
    "bisect", "capture", "compile", "export_onnx", "graph_pass", "ir", "load",
    "load_pass_plugin", "passes", "optimize", "PrunedModel", "distill", "prune", "quantize",
    "register_pass", "register_pipeline", "run_pipeline", "serving",
]
