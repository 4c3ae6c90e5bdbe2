"""``PipelineContext``: what every pass of one pipeline run shares (MLIR's analysis manager).

Passes that need data (calibration batches, a training set) read it from ``data`` by name, and
passes that need a fact about the whole graph (calibration statistics, sensitivity, the channel
dependency graph, use counts) ask for an *analysis*: computed once, kept while the graph does
not change, dropped after a pass that changed it unless that pass preserves it. The digest of
the data is part of the compile cache's key (``data_digest``): a model calibrated on other data
is another compiled model.

    pctx = PipelineContext(data={"calibration": batches})
    run_pipeline(graph, "O3,quantize-int8", pipeline_ctx=pctx)
    # in a pass: ctx.pipeline.input("calibration"), ctx.pipeline.analysis("use-counts", fn, graph)
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from rtinfer.errors import PipelineError

if TYPE_CHECKING:
    from rtinfer.ir.graph import Graph

T = TypeVar("T")
# builds a callable that runs ``graph``: input tensors in, its outputs (torch tensors or arrays)
# out; data-driven analyses (calibration) run graphs through it
GraphRunner = Callable[["Graph"], Callable[..., Sequence[Any]]]


class PipelineContext:
    """Named data inputs and cached analyses shared by the passes of one pipeline run."""

    def __init__(self, data: Mapping[str, Any] | None = None, runner: GraphRunner | None = None):
        self.data: dict[str, Any] = dict(data or {})
        # how analyses run a graph on the data: the layer that owns the backends gives one
        # (rtinfer.quantize: the torch backend); None: the reference interpreter. Not part of
        # the data digest: any correct runner computes the same statistics
        self.runner = runner
        # name -> (the graph it was computed on, result); a weak reference, not an id: a freed
        # graph's id may come back as another graph's
        self._analyses: dict[str, tuple[weakref.ref, Any]] = {}
        self.computed: list[str] = []  # analyses in the order they were computed (reports)

    def input(self, name: str) -> Any:
        """The data input ``name``; a ``PipelineError`` naming the inputs given if absent."""
        try:
            return self.data[name]
        except KeyError:
            given = ", ".join(sorted(self.data)) or "none"
            raise PipelineError(f"this pipeline needs the data input {name!r} (given: {given}); "
                                f"pass it as PipelineContext(data={{{name!r}: ...}})") from None

    def analysis(self, name: str, compute: Callable[[Graph], T], graph: Graph) -> T:
        """The analysis ``name`` of ``graph``: ``compute(graph)`` the first time, then the kept
        result until a pass changes the graph (or another graph is asked about)."""
        kept = self._analyses.get(name)
        if kept is not None and kept[0]() is graph:
            return kept[1]
        result = compute(graph)
        self._analyses[name] = (weakref.ref(graph), result)
        self.computed.append(name)
        return result

    def provide(self, name: str, graph: Graph, result: Any) -> None:
        """Give the analysis ``name`` of ``graph`` computed elsewhere (the statistics of a
        graph carried over to its clone's values), as if ``analysis`` had computed it."""
        self._analyses[name] = (weakref.ref(graph), result)

    def cached(self) -> list[str]:
        """The analyses kept now."""
        return sorted(self._analyses)

    def invalidate(self, preserved: Iterable[str] = ()) -> None:
        """Drop every analysis but ``preserved``: the runner calls this after a pass that
        changed the graph, with the pass's ``preserves``."""
        keep = set(preserved)
        self._analyses = {k: v for k, v in self._analyses.items() if k in keep}

    def data_digest(self) -> str:
        """A stable digest of every data input (names and contents), "" when there is none."""
        if not self.data:
            return ""
        h = hashlib.sha256()
        for name in sorted(self.data):
            h.update(name.encode() + b"\0")
            _feed(h, self.data[name], name)
        return h.hexdigest()[:32]


def _feed(h: Any, x: Any, where: str) -> None:
    """Hash ``x``'s content: arrays (and tensors) by dtype, shape and bytes; containers item by
    item. A one-shot iterator cannot be hashed without consuming it: the caller materializes
    it (a list of batches) first."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x)
        h.update(f"a{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(x, (list, tuple)):
        h.update(f"{type(x).__name__}{len(x)}".encode())
        for i, item in enumerate(x):
            _feed(h, item, f"{where}[{i}]")
    elif isinstance(x, Mapping):
        h.update(f"m{len(x)}".encode())
        for k in sorted(x, key=str):
            h.update(str(k).encode() + b"\0")
            _feed(h, x[k], f"{where}[{k!r}]")
    elif x is None or isinstance(x, (bool, int, float, str, bytes, np.generic)):
        h.update(f"{type(x).__name__}:{x!r}".encode())
    else:
        raise PipelineError(f"data input {where}: cannot digest a {type(x).__name__} for the "
                            "compile cache; give arrays, tensors, numbers or lists/tuples/dicts "
                            "of them (materialize an iterator with list(...))")


__all__ = ["GraphRunner", "PipelineContext"]
