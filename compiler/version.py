"""rtinfer's version, in a leaf module: the package face, artifacts, cache keys and the ONNX
exporter read it without importing the package face."""

__version__ = "0.1.0"
