"""rtinfer as a ``torch.compile`` backend: ``torch.compile(model, backend="rtinfer")``.

The backend is registered through the ``torch_dynamo_backends`` entry point (pyproject.toml), so
the one line works without importing rtinfer first. TorchDynamo hands it each graph it captured
(graph breaks split a model into several graphs, with eager Python between them, as for any
backend) and the graph's example inputs; rtinfer captures the graph with its torch frontend,
runs its pipeline, generates a module with the torch backend and returns it.

Inference semantics, as Inductor's ``freezing``: the model's parameters and buffers (which
Dynamo passes as graph inputs) are folded into the compiled graph as constants, so BatchNorm
folding and epilogue fusion apply. The compiled graph checks their version counters on every
call and recompiles when one was modified in place (an optimizer step, ``load_state_dict``).
A graph rtinfer cannot compile (an unsupported op, symbolic sizes) runs eagerly, with a warning;
so does a call with inputs that require grad while grad is enabled (rtinfer compiles for
inference; outputs do not require grad).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rtinfer.compile import compile as compile_model
from rtinfer.errors import RtinferError


def rtinfer_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                    **options: Any) -> Callable[..., Any]:
    """A TorchDynamo backend. ``options`` go to ``rtinfer.compile`` (``pipeline``,
    ``cache``...); pass them with ``torch.compile(m, backend="rtinfer", options={...})``."""
    options.pop("mode", None)
    options = dict(options.pop("options", None) or {})  # torch.compile(options=...)
    if not all(isinstance(x, torch.Tensor) for x in example_inputs):
        # symbolic sizes (Dynamo's automatic dynamic shapes) arrive as SymInt inputs
        _warn(gm, "the graph has symbolic sizes (rtinfer compiles static shapes here)")
        return gm.forward
    return _CompiledGraph(gm, options)


class _CompiledGraph:
    """One Dynamo graph, compiled with its parameters and buffers frozen in."""

    def __init__(self, gm: torch.fx.GraphModule, options: dict[str, Any]):
        self.gm = gm
        self.options = options
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.frozen = [i for i, n in enumerate(placeholders) if _is_state(n)]
        self.user = [i for i in range(len(placeholders)) if i not in set(self.frozen)]
        self.eager = False  # rtinfer could not compile the graph: run it as Dynamo gave it
        self.compiled: Callable[..., Any] | None = None
        self.versions: list[tuple[int, int]] = []
        self.state_ids: dict[int, int] = {}
        # compiled on the first call, outside Dynamo's tracing context (whose guards would leak
        # into rtinfer's own torch.export of the graph)

    def _compile(self, inputs: Sequence[torch.Tensor]) -> None:
        state = {i: inputs[i] for i in self.frozen}
        module = _Frozen(self.gm, state, len(inputs))
        try:
            cm = compile_model(module, example_inputs=tuple(inputs[i] for i in self.user),
                               **self.options)
        except (RtinferError, NotImplementedError, RuntimeError) as e:
            _warn(self.gm, str(e).splitlines()[0])
            self.eager, self.compiled = True, self.gm.forward
            return
        self.eager = False
        self.compiled = _call_module(cm.module)
        self.state_ids = {i: id(t) for i, t in state.items()}
        self.versions = [(i, t._version) for i, t in state.items()]

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            self._compile(args)
        if self.eager:
            return self.gm.forward(*args)
        if torch.is_grad_enabled() and any(
                isinstance(args[i], torch.Tensor) and args[i].requires_grad for i in self.user):
            return self.gm.forward(*args)
        if any(id(args[i]) != self.state_ids[i] or args[i]._version != v
               for i, v in self.versions):
            self._compile(args)  # the weights changed since compiling: fold the new ones
            if self.eager:
                return self.gm.forward(*args)
        return self.compiled(*(args[i] for i in self.user))


class _Frozen(torch.nn.Module):
    """The Dynamo graph with its parameter/buffer inputs as buffers: torch.export lifts them
    as constants, and only the user inputs remain inputs."""

    def __init__(self, gm: torch.fx.GraphModule, state: dict[int, torch.Tensor], n: int):
        super().__init__()
        self.gm = gm
        self.n = n
        self.slots = sorted(state)
        for i, t in state.items():
            self.register_buffer(f"state_{i}", t.detach())

    def forward(self, *user: torch.Tensor) -> Any:
        it = iter(user)
        frozen = set(self.slots)
        args = [getattr(self, f"state_{i}") if i in frozen else next(it) for i in range(self.n)]
        return self.gm(*args)


def _call_module(module: torch.nn.Module) -> Callable[..., tuple]:
    def run(*args: torch.Tensor) -> tuple:
        with torch.no_grad():
            return tuple(module(*args))
    return run


def _is_state(node: torch.fx.Node) -> bool:
    """Whether a Dynamo placeholder is a module's parameter or buffer."""
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = getattr(source, "name", "")
    name = name() if callable(name) else str(name)
    return "._parameters[" in name or "._buffers[" in name


def _warn(gm: torch.fx.GraphModule, why: str) -> None:
    warnings.warn(f"rtinfer torch.compile backend: running a graph of "
                  f"{sum(1 for n in gm.graph.nodes if n.op == 'call_function')} ops eagerly: "
                  f"{why}", stacklevel=2)


def register() -> None:
    """Register the backend with TorchDynamo by name (the entry point already does this when
    rtinfer is installed; this is for a source tree without installed metadata)."""
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if "rtinfer" not in _COMPILER_FNS:
        register_backend(rtinfer_backend, name="rtinfer")


__all__ = ["register", "rtinfer_backend"]
