"""User-facing errors. The CLI prints these as one message, without a traceback."""

from __future__ import annotations


class RtinferError(Exception):
    """Base class of every error rtinfer raises on bad input."""


class IRError(RtinferError):
    """A malformed type, attribute or graph construction."""


class ParseError(RtinferError):
    """Malformed IR text. Carries the line and column (1-based) of the problem."""

    def __init__(self, message: str, line: int, col: int, source: str = "<ir>", text: str = ""):
        self.message, self.line, self.col, self.source = message, line, col, source
        where = f"{source}:{line}:{col}: error: {message}"
        if text:
            lines = text.splitlines()
            if 0 < line <= len(lines):
                where += f"\n  {lines[line - 1]}\n  {' ' * (col - 1)}^"
        super().__init__(where)


class VerifyError(RtinferError):
    """The graph breaks an IR invariant. ``node`` is the offending node's text, if any."""

    def __init__(self, message: str, node: str | None = None):
        self.node = node
        super().__init__(f"{message}\n  at: {node}" if node else message)


class PipelineError(RtinferError):
    """An unknown pass or option, or a malformed pipeline string."""


class PassError(RtinferError):
    """A pass failed or left the graph broken."""


class NumericsError(RtinferError):
    """A pass changed the graph's outputs beyond tolerance (check-numerics)."""

    def __init__(self, message: str, pass_name: str):
        self.pass_name = pass_name
        super().__init__(message)


class InterpretError(RtinferError):
    """The reference interpreter was given bad inputs or could not evaluate a node."""


class CaptureError(RtinferError):
    """A model could not be captured into the IR (bad file, export failure, ...)."""


class ModelError(CaptureError):
    """The model breaks its own format's rules (an ONNX attribute of the wrong type, a kernel
    that disagrees with its weight, a name defined twice): no runtime would accept it."""


class UnsupportedOpsError(CaptureError):
    """The model uses ops rtinfer cannot capture. ``ops`` lists every one found, as
    ``(op, node, location)``: the source op (``aten.foo.default``, ONNX ``Foo``), the node's
    name, and where it came from (module path or ONNX node name)."""

    def __init__(self, frontend: str, ops: list[tuple[str, str, str]], hint: str = ""):
        self.ops = ops
        kinds = sorted({op for op, _, _ in ops})
        lines = [f"{frontend}: {len(kinds)} unsupported op(s) in this model: {', '.join(kinds)}"]
        for op, node, where in ops[:20]:
            lines.append(f"  {op} at node {node}" + (f" ({where})" if where else ""))
        if len(ops) > 20:
            lines.append(f"  ... and {len(ops) - 20} more")
        lines.append(hint or "To support an op, add one entry to the frontend's conversion "
                     "table (and, if the IR lacks the op, one entry in compiler/ir/ops/).")
        super().__init__("\n".join(lines))


class ExportError(RtinferError):
    """A graph could not be exported (to ONNX). ``ops`` lists every blocking node as
    ``(op, node, reason)``."""

    def __init__(self, message: str, ops: list[tuple[str, str, str]] | None = None):
        self.ops = list(ops or [])
        super().__init__(message)

    @classmethod
    def blocking(cls, ops: list[tuple[str, str, str]]) -> ExportError:
        kinds = sorted({op for op, _, _ in ops})
        lines = [f"ONNX export: {len(kinds)} op(s) have no standard ONNX form here: "
                 f"{', '.join(kinds)}"]
        lines += [f"  {op} at node {node}: {why}" for op, node, why in ops[:20]]
        if len(ops) > 20:
            lines.append(f"  ... and {len(ops) - 20} more")
        lines.append("Pass allow_custom=True to export them as ai.rtinfer custom-domain nodes "
                     "(docs/onnx-export.md), or add a rule to RULES in the module of its "
                     "family in compiler/frontends/onnx_export/.")
        return cls("\n".join(lines), ops)


class BackendError(RtinferError):
    """A graph could not be compiled by a backend, or the compiled model was misused."""


class IndexOutOfRangeError(BackendError, IndexError):
    """An index given at run time lies outside the axis it indexes (embedding, gather,
    index_select, torch.gather), where eager torch raises ``IndexError``; it is one too, so code
    that catches eager's error catches this. The message names the node and the index."""


class ArtifactError(RtinferError):
    """A saved compiled model is missing, corrupted or from an incompatible version."""


class Unsupported(RtinferError):
    """rtinfer cannot handle this node as given: the one error for that meaning, whether a
    frontend, the ONNX exporter, a backend's lowering or the code generator raises it.

    ``op`` is the op (an IR op, or the source op such as ONNX ``Resize`` or
    ``aten.foo.default``), ``reason`` says why, ``node`` names the node where known. Where the
    caller recovers (a lowering falls back to another backend, the exporter collects every
    blocking node into one ``ExportError``, a frontend into one ``UnsupportedOpsError``) it
    catches this; elsewhere the message reaches the user as it is.
    """

    def __init__(self, op: str, reason: str = "", node: str | None = None):
        self.op, self.reason, self.node = op, reason, node
        at = f" at node {node}" if node else ""
        super().__init__(f"{op}{at}: {reason}" if reason else f"unsupported op {op}{at}")


class CLIError(RtinferError):
    """A bad command-line argument or an unreadable file."""


class OptimizeError(RtinferError):
    """A bad model argument or input specification for ``rtinfer optimize``."""


class CacheDirError(RtinferError):
    """A folder rtinfer keeps files in (a cache, the native build) cannot be created or
    written; the message names it and the environment variable that moves it."""


class PruneError(PassError):
    """Structured pruning or distillation got options or data it cannot use (a ratio out of
    range, an unknown importance, a batch that does not fit the model); the message names it."""


class QuantizeError(PassError):
    """Quantization got options or data it cannot use (no calibration batches, a batch of the
    wrong arity or shape, an unknown observer); the message names the input and batch."""
