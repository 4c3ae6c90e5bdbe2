"""rtinfer: a graph compiler for real-time deep-learning inference."""

from rtinfer import ir
from rtinfer.errors import RtinferError

__version__ = "0.1.0"

__all__ = ["RtinferError", "__version__", "ir"]
