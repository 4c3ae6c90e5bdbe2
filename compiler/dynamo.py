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
Symbolic sizes (``dynamic=True``, or Dynamo's automatic dynamic shapes once a size changed)
arrive as SymInt inputs; each is read from the tensor input whose dim it is, and that dim is
compiled symbolic, so one compiled graph serves every size. A graph rtinfer cannot compile (an
unsupported op, a size that is no input's dim) runs eagerly, with a warning;
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
    sizes: dict[int, tuple[int, int]] = {}
    if not all(isinstance(x, torch.Tensor) for x in example_inputs):
        # symbolic sizes (dynamic=True, or Dynamo's automatic dynamic shapes after a size
        # changed) arrive as SymInt inputs beside the tensors whose dims they are
        found = _size_sources(gm)
        if found is None:
            _warn(gm, "a symbolic size is not a dim of any tensor input (rtinfer compiles "
                      "sizes it can read from the inputs)")
            return gm.forward
        sizes = found
    return _CompiledGraph(gm, options, sizes)


def _size_sources(gm: torch.fx.GraphModule) -> dict[int, tuple[int, int]] | None:
    """For each SymInt placeholder, a (tensor placeholder, axis) whose size it is: the compiled
    graph reads it from that tensor, so only tensors remain inputs, with that axis symbolic."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    dims: dict[str, tuple[int, int]] = {}
    for j, n in enumerate(placeholders):
        value = n.meta.get("example_value")
        if isinstance(value, torch.Tensor) and not _is_state(n):
            for axis, d in enumerate(value.shape):
                if isinstance(d, torch.SymInt):
                    dims.setdefault(str(d.node.expr), (j, axis))
    out = {}
    for i, n in enumerate(placeholders):
        value = n.meta.get("example_value")
        if isinstance(value, torch.Tensor):
            continue
        if not isinstance(value, torch.SymInt) or str(value.node.expr) not in dims:
            return None
        out[i] = dims[str(value.node.expr)]
    return out


class _CompiledGraph:
    """One Dynamo graph, compiled with its parameters and buffers frozen in."""

    def __init__(self, gm: torch.fx.GraphModule, options: dict[str, Any],
                 sizes: dict[int, tuple[int, int]] | None = None):
        self.gm = gm
        self.options = options
        self.sizes = sizes or {}  # SymInt placeholder -> (tensor placeholder, axis)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.frozen = [i for i, n in enumerate(placeholders) if _is_state(n)]
        # a module's float attribute (BatchNorm's eps, momentum) that Dynamo made a 0-d tensor
        # input (dynamic=True does not specialize floats) and reads back with .item()
        self.scalars = [i for i, n in enumerate(placeholders) if _is_scalar_attribute(n)]
        self.scalar_values: dict[int, float | int | bool] = {}
        taken = {*self.frozen, *self.sizes, *self.scalars}
        self.user = [i for i in range(len(placeholders)) if i not in taken]
        self.eager = False  # rtinfer could not compile the graph: run it as Dynamo gave it
        self.compiled: Callable[..., Any] | None = None
        self.versions: list[tuple[int, int]] = []
        self.state_ids: dict[int, int] = {}
        # compiled on the first call, outside Dynamo's tracing context (whose guards would leak
        # into rtinfer's own torch.export of the graph)

    def _compile(self, inputs: Sequence[torch.Tensor]) -> None:
        state = {i: inputs[i] for i in self.frozen}
        position = {j: k for k, j in enumerate(self.user)}
        sizes = {i: (position[j], axis) for i, (j, axis) in self.sizes.items()}
        self.scalar_values = {i: inputs[i].item() for i in self.scalars}
        module = _Frozen(self.gm, state, len(inputs), sizes, self.scalar_values)
        options = dict(self.options)
        if sizes:
            # the dims the sizes come from are symbolic in the compiled graph (torch.export's
            # spec for forward(*user): one entry per user tensor)
            axes: dict[int, dict[int, Any]] = {}
            for k, axis in sizes.values():
                axes.setdefault(k, {})[axis] = torch.export.Dim.DYNAMIC
            options.setdefault("dynamic_dims", {"user": tuple(
                axes.get(k) for k in range(len(self.user)))})
        try:
            cm = compile_model(module, example_inputs=tuple(inputs[i] for i in self.user),
                               **options)
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
               for i, v in self.versions) or any(
                args[i].item() != v for i, v in self.scalar_values.items()):
            self._compile(args)  # the weights changed since compiling: fold the new ones
            if self.eager:
                return self.gm.forward(*args)
        return self.compiled(*(args[i] for i in self.user))


class _Frozen(torch.nn.Module):
    """The Dynamo graph with its parameter/buffer inputs as buffers: torch.export lifts them
    as constants, and only the user inputs remain inputs."""

    def __init__(self, gm: torch.fx.GraphModule, state: dict[int, torch.Tensor], n: int,
                 sizes: dict[int, tuple[int, int]] | None = None,
                 scalars: dict[int, float | int | bool] | None = None):
        super().__init__()
        self.gm = gm
        self.n = n
        self.slots = sorted(state)
        self.sizes = sizes or {}  # SymInt slot -> (user tensor position, axis)
        # the graph only calls .item() on these: it gets the number, a constant to export
        self.scalars = {i: _Number(v) for i, v in (scalars or {}).items()}
        for i, t in state.items():
            self.register_buffer(f"state_{i}", t.detach())

    def forward(self, *user: torch.Tensor) -> Any:
        it = iter(user)
        frozen = set(self.slots)
        args = []
        for i in range(self.n):
            if i in frozen:
                args.append(getattr(self, f"state_{i}"))
            elif i in self.sizes:
                k, axis = self.sizes[i]
                args.append(user[k].shape[axis])
            elif i in self.scalars:
                args.append(self.scalars[i])
            else:
                args.append(next(it))
        return self.gm(*args)


def _call_module(module: torch.nn.Module) -> Callable[..., tuple]:
    def run(*args: torch.Tensor) -> tuple:
        with torch.no_grad():
            return tuple(module(*args))
    return run


class _Number:
    """A number where the graph had a 0-d tensor it only reads with ``.item()``."""

    def __init__(self, value: float | int | bool):
        self.value = value

    def item(self) -> float | int | bool:
        return self.value


def _source(node: torch.fx.Node) -> str:
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = getattr(source, "name", "")
    return name() if callable(name) else str(name)


def _is_state(node: torch.fx.Node) -> bool:
    """Whether a Dynamo placeholder is a module's parameter or buffer."""
    name = _source(node)
    return "._parameters[" in name or "._buffers[" in name


def _is_scalar_attribute(node: torch.fx.Node) -> bool:
    """Whether a placeholder is a module attribute's number, as a 0-d tensor read only with
    ``.item()``."""
    value = node.meta.get("example_value")
    return (_source(node).startswith("L['self']") and not _is_state(node)
            and isinstance(value, torch.Tensor) and value.dim() == 0 and bool(node.users)
            and all(u.op == "call_method" and u.target == "item" for u in node.users))


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
