"""Loading a model file into the IR: ``.ir`` text (``-``: standard input) or an ``.onnx`` model.

The command line (``rtinfer opt``, ``bisect``, ``optimize``) reads its models through
``load_graph``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rtinfer.errors import CaptureError
from rtinfer.ir.graph import Graph


def load_graph(path: str) -> Graph:
    """Read a graph from a ``.ir`` text file (``-``: standard input) or an ``.onnx`` model
    (through the ONNX frontend); a missing or unreadable file is a ``CaptureError``."""
    from rtinfer.ir.parser import parse

    if path == "-":
        return parse(sys.stdin.read(), source="<stdin>")
    p = Path(path)
    if not p.exists():
        raise CaptureError(f"no such file: {path}")
    if p.is_dir():
        raise CaptureError(f"{path} is a directory, not an IR file")
    if p.suffix == ".onnx":
        from rtinfer.frontends.onnx_frontend import capture_onnx

        return capture_onnx(str(p))
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CaptureError(f"cannot read {path}: {e}") from None
    return parse(text, source=path)


__all__ = ["load_graph"]
