"""The lowering driver: one graph at concrete input shapes becomes a plan description.

Every value gets a *view* (``plan.View``); each node's lowering (``LOWERINGS``, filled by this
package's family modules) reads its inputs with ``view`` / ``plain`` / ``as_nhwc``, creates its
outputs with ``new_value`` and adds steps. A lowering that cannot handle a node raises
``rtinfer.errors.Unsupported`` (before adding anything that matters: what it added is undone)
and the node falls back to the torch backend's code for it, a "python" step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from rtinfer.backends.native.memory import plan_memory
from rtinfer.backends.native.plan import (
    ALIAS,
    ARENA,
    CONST,
    INPUT,
    OUTPUT,
    Buf,
    StepRec,
    View,
    contiguous_strides,
    nhwc_strides,
    squeeze_dims,
    torch_dtype,
)
from rtinfer.backends.registry import registrar
from rtinfer.backends.torch_backend import build_module
from rtinfer.errors import BackendError, Unsupported
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.interpreter import bind_dims, eval_dim
from rtinfer.ir.ops.aten import fallback_name
from rtinfer.ir.printer import format_node
from rtinfer.ir.types import DType, TensorType
from rtinfer.kernels import codegen

LowerFn = Callable[["Lowerer", Node], None]
LOWERINGS: dict[str, LowerFn] = {}
lowers = registrar(LOWERINGS, "native lowering")

# op -> why it has no native lowering (a node of it runs the torch backend's code)
_NO_KERNEL = "no native kernel yet"
UNSUPPORTED: dict[str, str] = {
    "aten_call": "an ATen op the op table lacks: torch runs it as captured",
    **dict.fromkeys(("conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
                    "the oneDNN steps cover 1-d and 2-d forward convolutions only"),
    **dict.fromkeys(("max_pool1d", "max_pool3d", "avg_pool1d", "avg_pool3d"),
                    "the pooling kernel is 2-d only"),
    "adaptive_avg_pool2d": f"{_NO_KERNEL} (global_avg_pool2d covers a 1x1 output)",
    "batch_norm": f"{_NO_KERNEL}: fold-batchnorm folds an inference batch norm into its conv",
    **dict.fromkeys(("group_norm", "instance_norm"), f"{_NO_KERNEL} for channel normalization"),
    **dict.fromkeys(("argmax", "argmin", "reduce_prod", "cumsum", "cumprod", "topk", "hardmax"),
                    "the reduction kernel does sum, mean, max and min only"),
    **dict.fromkeys(("gather_elements", "gather_nd", "scatter_elements", "scatter_nd"),
                    "the gather kernel gathers whole rows (axis 0) only"),
    **dict.fromkeys(("interpolate", "resize"), f"{_NO_KERNEL} for resampling"),
    **dict.fromkeys(("bmm", "einsum", "pad", "tile"), _NO_KERNEL),
    "shape": f"{_NO_KERNEL}: fold-constants turns the shape of a static tensor into a constant",
}


class Lowerer:
    """Builds the plan description of one graph at concrete input shapes."""

    def __init__(self, graph: Graph, shapes: Sequence[tuple[int, ...]], strict: bool = False,
                 threads: int = 1, ext: Any = None):
        self.graph = graph
        self.strict = strict
        self.threads = threads  # oneDNN fixes a primitive's thread count when it is created
        self.ext = ext  # the extension, for lowerings that ask oneDNN what it would pick
        self.fused_away: set[int] = set()  # nodes a lowering of an earlier node computed
        self.env = bind_dims([v.type for v in graph.inputs], [tuple(s) for s in shapes])
        self.bufs: list[Buf] = []
        self.steps: list[StepRec] = []
        self.views: dict[int, View] = {}
        self.fallbacks: dict[str, int] = {}
        self.kernels: dict[str, int] = {}
        self.ew_sources: dict[str, str] = {}  # generated elementwise functions
        self.ew_functions: dict[str, int] = {}  # their addresses, compiled once in build()
        self._plain_cache: dict[int, View] = {}
        self._nhwc_cache: dict[int, View] = {}
        self._out_index: dict[int, int] = {}
        for i, v in enumerate(graph.outputs):
            self._out_index.setdefault(id(v), i)
        self._outputs_done: set[int] = set()
        self.node: Node | None = None

    def unsupported(self, reason: str) -> Unsupported:
        """The error a lowering raises to decline the current node (it then falls back)."""
        node = self.node
        if node is None:
            return Unsupported("graph output", reason)
        return Unsupported(node.op, reason, node.name)

    def need_f32(self, *views: View) -> None:
        for v in views:
            if v.dtype is not DType.f32:
                raise self.unsupported(f"native kernels take f32 here, got {v.dtype}")

    def torch_dtype(self, dt: DType) -> torch.dtype:
        return torch_dtype(dt, self.node.op if self.node is not None else "graph output")

    # -- shapes -------------------------------------------------------------------------------

    def shape(self, v: Value) -> tuple[int, ...]:
        out = []
        for d in v.type.shape:
            n = eval_dim(d, self.env)
            if n is None:
                raise self.unsupported(f"the size {d} of {v.type} is not known from the inputs")
            out.append(int(n))
        return tuple(out)

    # -- buffers and views --------------------------------------------------------------------

    def new_buf(self, kind: int, nbytes: int = 0, base: int = -1, tensor=None) -> int:
        self.bufs.append(Buf(kind, nbytes, base, 0, tensor))
        return len(self.bufs) - 1

    def new_value(self, v: Value, nhwc: bool = False) -> View:
        """A fresh contiguous buffer for ``v`` (the graph's output buffer when ``v`` is a graph
        output and stored plain); registers and returns its view."""
        shape = self.shape(v)
        nbytes = max(math.prod(shape), 1) * v.type.dtype.np.itemsize
        if nhwc and len(shape) == 4 and shape[2] == shape[3] == 1:
            nhwc = False  # [N, C, 1, 1]: the same bytes either way
        idx = self._out_index.get(id(v))
        if idx is not None and not nhwc and id(v) not in self._outputs_done:
            buf = self.new_buf(OUTPUT, nbytes, idx)
            self._outputs_done.add(id(v))
        else:
            buf = self.new_buf(ARENA, nbytes)
        view = View(buf, shape, v.type.dtype,
                    nhwc_strides(shape) if nhwc else contiguous_strides(shape), 0, nhwc)
        self.views[id(v)] = view
        return view

    def scratch_view(self, shape: tuple[int, ...], dtype: DType, nhwc: bool = False) -> View:
        nbytes = max(math.prod(shape), 1) * dtype.np.itemsize
        buf = self.new_buf(ARENA, nbytes)
        return View(buf, shape, dtype, nhwc_strides(shape) if nhwc else contiguous_strides(
            shape), 0, nhwc)

    def view(self, v: Value) -> View:
        got = self.views.get(id(v))
        if got is None:
            raise BackendError(f"native backend: {v} is used before it is defined")
        return got

    def const_tensor(self, v: Value) -> torch.Tensor | None:
        data = v.const_data
        if data is None:
            return None
        if data.dtype.name == "bfloat16":  # ml_dtypes' bf16, which torch.from_numpy lacks
            return torch.from_numpy(np.asarray(data, np.float32)).to(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(data).copy())

    def plain(self, v: Value | View) -> View:
        """``v`` as a contiguous row-major buffer (one strided copy if it is not)."""
        view = self.view(v) if isinstance(v, Value) else v
        if view.contiguous:
            return view
        if isinstance(v, Value) and id(v) in self._plain_cache:
            return self._plain_cache[id(v)]
        out = self.scratch_view(view.shape, view.dtype)
        self.copy(view, out, "reorder" if view.nhwc else "copy")
        if isinstance(v, Value):
            self._plain_cache[id(v)] = out
        return out

    def as_nhwc(self, v: Value) -> View:
        view = self.view(v)
        if view.nhwc or (len(view.shape) == 4 and view.shape[2] == view.shape[3] == 1
                         and view.contiguous):
            return view
        if id(v) in self._nhwc_cache:
            return self._nhwc_cache[id(v)]
        out = self.scratch_view(view.shape, view.dtype, nhwc=True)
        self.copy(view, out, "reorder")
        self._nhwc_cache[id(v)] = out
        return out

    def copy(self, src: View, dst: View, what: str = "copy") -> None:
        """dst[...] = src[...] (same logical shape, any strides)."""
        shape, si, so = squeeze_dims(src.shape, src.strides, dst.strides)
        elem = src.dtype.np.itemsize
        args = (src.buf, dst.buf, elem, list(shape), list(si), src.offset, list(so), dst.offset)
        self.step(what, lambda ext, plan, name: ext.add_copy(plan, name, *args),
                  [src.buf], [dst.buf])

    def base_pointer(self, v: View) -> int:
        """A buffer whose base pointer is ``v``'s first element (an alias when ``v`` starts at
        an offset, e.g. the K part of a merged QKV projection)."""
        if v.offset == 0:
            return v.buf
        b = self.new_buf(ALIAS, 0, v.buf)
        self.bufs[b].offset = v.offset * v.dtype.np.itemsize
        return b

    # -- steps --------------------------------------------------------------------------------

    def step(self, kernel: str, make: Callable[[Any, Any, str], None], reads: Sequence[int],
             writes: Sequence[int]) -> None:
        node = self.node
        where = node_label(node) if node is not None else "output"
        name = f"{where}: {kernel}"
        self.kernels[kernel] = self.kernels.get(kernel, 0) + 1
        self.steps.append(StepRec(name, kernel, lambda ext, plan: make(ext, plan, name),
                                  list(reads), list(writes)))

    # -- lowering -----------------------------------------------------------------------------

    def lower(self) -> None:
        for i, v in enumerate(self.graph.inputs):
            shape = self.shape(v)
            nbytes = max(math.prod(shape), 1) * v.type.dtype.np.itemsize
            buf = self.new_buf(INPUT, nbytes, i)
            self.views[id(v)] = View(buf, shape, v.type.dtype, contiguous_strides(shape))
        for node in self.graph.nodes:
            self.node = node
            if id(node) in self.fused_away:
                continue
            if node.op == "const":
                t = self.const_tensor(node.out)
                buf = self.new_buf(CONST, t.numel() * t.element_size(), tensor=t)
                shape = tuple(t.shape)
                self.views[id(node.out)] = View(buf, shape, node.out.type.dtype,
                                                contiguous_strides(shape))
                continue
            fn = LOWERINGS.get(node.op)
            # a lowering that gives up half way leaves nothing behind: its steps, buffers and
            # the copies it cached (they would name removed buffers) go
            saved = (len(self.steps), len(self.bufs), dict(self._plain_cache),
                     dict(self._nhwc_cache), dict(self.kernels), dict(self.ew_sources))
            try:
                if fn is None:
                    raise self.unsupported(UNSUPPORTED.get(node.op, "no native kernel"))
                fn(self, node)
            except Unsupported as e:
                n_steps, n_bufs, plain, nhwc, kernels, sources = saved
                del self.steps[n_steps:]
                del self.bufs[n_bufs:]
                self._plain_cache, self._nhwc_cache, self.kernels = plain, nhwc, kernels
                self.ew_sources.clear()
                self.ew_sources.update(sources)
                for v in node.outputs:
                    self.views.pop(id(v), None)
                    self._outputs_done.discard(id(v))
                self.fallback(node, e)
        self.node = None
        self.finish_outputs()

    def fallback(self, node: Node, error: Unsupported) -> None:
        """Run ``node`` as the torch backend's code for it (strict: a ``BackendError``)."""
        if self.strict:
            # the reason alone when it is about this node; a body op's names that op
            why = error.reason if error.op == node.op else str(error)
            raise BackendError(f"native backend: cannot lower {fallback_name(node)} ({why})\n  at: "
                               f"{format_node(node)}\n(strict=False runs it in the torch "
                               f"backend)")
        label = fallback_name(node)
        self.fallbacks[label] = self.fallbacks.get(label, 0) + 1
        fn = torch_node_fn(node, [self.view(v).shape for v in node.inputs])
        ins = [self.plain(v) for v in node.inputs]
        outs = [self.new_value(v) for v in node.outputs]
        in_args = ([x.buf for x in ins], [self.torch_dtype(x.dtype) for x in ins],
                   [list(x.shape) for x in ins])
        out_args = ([o.buf for o in outs], [self.torch_dtype(o.dtype) for o in outs],
                    [list(o.shape) for o in outs])
        self.step("torch fallback", lambda ext, plan, name: ext.add_python_step(
            plan, name, fn, *in_args, *out_args), in_args[0], out_args[0])

    def finish_outputs(self) -> None:
        """Every graph output in its output buffer, plain (a copy or reorder where the value
        lives elsewhere: an input, a constant, a view, NHWC, or a repeated output)."""
        seen: set[int] = set()
        for i, v in enumerate(self.graph.outputs):
            view = self.view(v)
            if self.bufs[view.buf].kind == OUTPUT and self.bufs[view.buf].base == i \
                    and view.contiguous and id(v) not in seen:
                seen.add(id(v))
                continue
            seen.add(id(v))
            nbytes = max(view.numel, 1) * view.dtype.np.itemsize
            out = View(self.new_buf(OUTPUT, nbytes, i), view.shape, view.dtype,
                       contiguous_strides(view.shape))
            self.copy(view, out, "reorder" if view.nhwc else "copy")

    # -- the C++ plan -------------------------------------------------------------------------

    def build(self, ext: Any):
        if self.ew_sources:  # every generated function of the plan in one shared object
            self.ew_functions = codegen.compile_functions(self.ew_sources, ext.level())
        plan = ext.Plan()
        arena = plan_memory(self.bufs, self.steps)
        for b in self.bufs:
            if b.kind == CONST:
                plan.add_const(b.tensor)
            else:
                plan.add_slot(b.kind, b.offset, b.base)
        plan.set_arena_bytes(arena)
        for v in self.graph.outputs:
            plan.add_output(self.torch_dtype(v.type.dtype), list(self.view(v).shape))
        for s in self.steps:
            try:
                s.make(ext, plan)
            except (ValueError, RuntimeError, TypeError) as e:
                raise BackendError(f"native backend: building step {s.name!r} failed: {e}") \
                    from None
        return plan


def node_label(node: Node) -> str:
    """How errors and profiles name a node: its name, else its op and first result
    (``embedding %tok``), so two nodes of one op are told apart."""
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs else None
    return f"{node.op} %{out}" if out else node.op


def torch_node_fn(node: Node, shapes: list[tuple[int, ...]]) -> Callable:
    """The torch backend's code for one node, as a callable over plain tensors."""
    g = Graph(f"fallback_{node.op}")
    ins = [g.add_input(TensorType(v.type.dtype, tuple(s)), v.name)
           for v, s in zip(node.inputs, shapes, strict=True)]
    try:
        new = g.create_node(node.op, ins, dict(node.attrs))
    except Exception:  # inference at the concrete shapes failed: keep the declared types
        new = g.create_node(node.op, ins, dict(node.attrs),
                            out_types=[v.type for v in node.outputs])
    g.set_outputs(new.outputs)
    module = build_module(g, mkldnn=False)

    def run(*tensors: torch.Tensor):
        with torch.no_grad():
            return tuple(module(*tensors))

    return run


__all__ = ["LOWERINGS", "UNSUPPORTED", "LowerFn", "Lowerer", "lowers", "node_label",
           "torch_node_fn"]
