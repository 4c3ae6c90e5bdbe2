"""The native backend: rtinfer's optimized IR lowered to a static plan that rtinfer's C++
executor runs (``cpp/native``; built on first use by ``rtinfer.kernels.build``).

    plan = lower(graph, shapes)    # slots + steps, arena offsets by liveness
    outs = plan.run(inputs, torch.get_num_threads())

Lowering walks the graph once. Every value gets a *view*: a slot (a buffer: an input, an output,
a constant, or a place in the call's arena) plus element strides and an offset, so transpose,
slice, split, expand, squeeze and reshape of a contiguous tensor cost nothing: a consumer that
reads strides (attention, copies) takes the view, any other consumer gets it materialized by one
strided copy. Convolutions read either layout and write NHWC, and activations stay NHWC from
conv to conv through pooling and elementwise ops; a consumer that needs NCHW gets one reorder
(a [N, C, 1, 1] tensor is the same bytes in both). Heavy ops (conv, linear, matmul) run in
oneDNN with their fused epilogues as post-ops and weights prepacked at compile time; the rest
are rtinfer's own kernels, fused elementwise bodies are C++ generated per model
(``rtinfer.kernels.codegen``), and a node no native kernel covers runs the torch backend's code
for that node (a "python" step; listed in the report as a fallback).

After lowering, intermediates get arena offsets: each buffer lives from the step writing it to
the last step reading it (a view extends its base), and buffers are placed largest first at the
lowest offset that overlaps no buffer alive at the same time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rtinfer.backends.registry import registrar
from rtinfer.errors import BackendError
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops.common import expand_ints, expand_pads
from rtinfer.ir.types import DType

INPUT, OUTPUT, CONST, ARENA, ALIAS = range(5)
ALIGN = 64


class NotLowerable(Exception):
    """The native kernels do not cover this node (as given); it falls back to torch."""


@dataclass
class Buf:
    """A Python-side slot (the C++ plan's slots are created in the same order)."""

    kind: int
    nbytes: int = 0
    base: int = -1  # INPUT/OUTPUT: the input/output index; ALIAS: the aliased buffer
    offset: int = 0  # ALIAS: byte offset in base; ARENA: set by the memory planner
    tensor: torch.Tensor | None = None  # CONST
    first: int = 1 << 60  # step index of the first write/read (liveness)
    last: int = -1


@dataclass
class View:
    """A value's data: ``buf``'s elements at ``offset + sum(i * stride)`` (strides in elements);
    ``nhwc``: a logical [N, C, H, W] stored as [N, H, W, C] (contiguous in that order)."""

    buf: int
    shape: tuple[int, ...]
    dtype: DType
    strides: tuple[int, ...]
    offset: int = 0
    nhwc: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def contiguous(self) -> bool:
        return not self.nhwc and self.offset == 0 and self.strides == contiguous_strides(
            self.shape)


@dataclass
class StepRec:
    name: str
    kernel: str
    make: Callable[[Any, Any], None]  # (extension module, plan) -> adds the step
    reads: list[int]
    writes: list[int]


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


def nhwc_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Strides of logical [N, C, H, W] stored as [N, H, W, C]."""
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c)


TORCH_DTYPE = {DType.f32: torch.float32, DType.f64: torch.float64, DType.f16: torch.float16,
               DType.bf16: torch.bfloat16, DType.i64: torch.int64, DType.i32: torch.int32,
               DType.i16: torch.int16, DType.i8: torch.int8, DType.u8: torch.uint8,
               DType.bool: torch.bool}


Lowering = Callable[["Lowerer", Node], None]
LOWERINGS: dict[str, Lowering] = {}
lowers = registrar(LOWERINGS, "native lowering")


class Lowerer:
    """Builds the plan description of one graph at concrete input shapes."""

    def __init__(self, graph: Graph, shapes: Sequence[tuple[int, ...]], strict: bool = False,
                 threads: int = 1, ext: Any = None):
        from rtinfer.ir.interpreter import bind_dims

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

    # -- shapes -------------------------------------------------------------------------------

    def shape(self, v: Value) -> tuple[int, ...]:
        from rtinfer.ir.interpreter import _eval_dim

        out = []
        for d in v.type.shape:
            n = _eval_dim(d, self.env)
            if n is None:
                raise NotLowerable(f"the size {d} of {v.type} is not known from the inputs")
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
        shape, si, so = _squeeze_dims(src.shape, src.strides, dst.strides)
        elem = src.dtype.np.itemsize
        args = (src.buf, dst.buf, elem, list(shape), list(si), src.offset, list(so), dst.offset)
        self.step(what, lambda ext, plan, name: ext.add_copy(plan, name, *args),
                  [src.buf], [dst.buf])

    def alias(self, v: Value, src: View, shape: tuple[int, ...]) -> View:
        """``v`` shares ``src``'s bytes (a reshape of contiguous data)."""
        view = View(src.buf, shape, src.dtype, contiguous_strides(shape), src.offset)
        self.views[id(v)] = view
        return view

    # -- steps --------------------------------------------------------------------------------

    def step(self, kernel: str, make: Callable[[Any, Any, str], None], reads: Sequence[int],
             writes: Sequence[int]) -> None:
        node = self.node
        where = (node.name or node.op) if node is not None else "output"
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
                    raise NotLowerable(f"no native kernel for {node.op}")
                fn(self, node)
            except NotLowerable as e:
                n_steps, n_bufs, plain, nhwc, kernels, sources = saved
                del self.steps[n_steps:]
                del self.bufs[n_bufs:]
                self._plain_cache, self._nhwc_cache, self.kernels = plain, nhwc, kernels
                self.ew_sources.clear()
                self.ew_sources.update(sources)
                for v in node.outputs:
                    self.views.pop(id(v), None)
                    self._outputs_done.discard(id(v))
                self.fallback(node, str(e))
        self.node = None
        self.finish_outputs()

    def fallback(self, node: Node, why: str) -> None:
        from rtinfer.ir.printer import format_node

        if self.strict:
            raise BackendError(f"native backend: cannot lower {node.op} ({why})\n  at: "
                               f"{format_node(node)}\n(strict=False runs it in the torch "
                               f"backend)")
        self.fallbacks[node.op] = self.fallbacks.get(node.op, 0) + 1
        fn = _torch_node_fn(node, [self.view(v).shape for v in node.inputs])
        ins = [self.plain(v) for v in node.inputs]
        outs = [self.new_value(v) for v in node.outputs]
        in_args = ([x.buf for x in ins], [TORCH_DTYPE_OF(x.dtype) for x in ins],
                   [list(x.shape) for x in ins])
        out_args = ([o.buf for o in outs], [TORCH_DTYPE_OF(o.dtype) for o in outs],
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

    # -- memory planning ----------------------------------------------------------------------

    def plan_memory(self) -> int:
        """Arena offsets for the ARENA buffers; returns the arena's size in bytes."""
        for k, s in enumerate(self.steps):
            for b in s.reads + s.writes:
                while self.bufs[b].kind == ALIAS:  # an alias keeps its base alive
                    b = self.bufs[b].base
                buf = self.bufs[b]
                buf.first, buf.last = min(buf.first, k), max(buf.last, k)
        arena = [b for b in self.bufs if b.kind == ARENA and b.last >= 0]
        placed: list[Buf] = []
        size = 0
        for b in sorted(arena, key=lambda b: -b.nbytes):
            need = _round(b.nbytes)
            busy = sorted((p.offset, p.offset + _round(p.nbytes)) for p in placed
                          if not (p.last < b.first or b.last < p.first))
            off = 0
            for lo, hi in busy:
                if off + need <= lo:
                    break
                off = max(off, hi)
            b.offset = off
            size = max(size, off + need)
            placed.append(b)
        return size

    def build(self, ext: Any):
        if self.ew_sources:  # every generated function of the plan in one shared object
            from rtinfer.kernels import codegen

            self.ew_functions = codegen.compile_functions(self.ew_sources)
        plan = ext.Plan()
        arena = self.plan_memory()
        for b in self.bufs:
            if b.kind == CONST:
                plan.add_const(b.tensor)
            else:
                plan.add_slot(b.kind, b.offset, b.base)
        plan.set_arena_bytes(arena)
        for v in self.graph.outputs:
            plan.add_output(TORCH_DTYPE_OF(v.type.dtype), list(self.view(v).shape))
        for s in self.steps:
            try:
                s.make(ext, plan)
            except (ValueError, RuntimeError, TypeError) as e:
                raise BackendError(f"native backend: building step {s.name!r} failed: {e}") \
                    from None
        return plan


def TORCH_DTYPE_OF(dt: DType) -> torch.dtype:  # noqa: N802 (reads like the table it wraps)
    t = TORCH_DTYPE.get(dt)
    if t is None:
        raise NotLowerable(f"dtype {dt} has no torch equivalent")
    return t


def _round(n: int) -> int:
    return (max(n, 1) + ALIGN - 1) // ALIGN * ALIGN


def _squeeze_dims(shape, a, b):
    """Drop size-1 axes, order the rest by the destination's strides (the writes then run
    sequentially: NCHW -> NHWC of a 3-channel image 36 us instead of 83 us) and merge axes
    that are contiguous in both stride sets (fewer loop levels for the copy kernel)."""
    dims = sorted(((n, s, t) for n, s, t in zip(shape, a, b, strict=True) if n != 1),
                  key=lambda d: -d[2])
    if not dims:
        return (1,), (1,), (1,)
    merged = [list(dims[0])]
    for n, s, t in dims[1:]:
        pn, ps, pt = merged[-1]
        if ps == s * n and pt == t * n:
            merged[-1] = [pn * n, s, t]
        else:
            merged.append([n, s, t])
    return (tuple(m[0] for m in merged), tuple(m[1] for m in merged),
            tuple(m[2] for m in merged))


def _torch_node_fn(node: Node, shapes: list[tuple[int, ...]]) -> Callable:
    """The torch backend's code for one node, as a callable over plain tensors."""
    from rtinfer.backends.torch_backend import build_module
    from rtinfer.ir.types import TensorType

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


# -- lowerings ----------------------------------------------------------------------------------
# Each reads self.view(input) / self.plain(input), creates its outputs with new_value (or alias),
# and adds steps; raising NotLowerable (before adding anything that matters) falls back.


def _need_f32(*views: View) -> None:
    for v in views:
        if v.dtype is not DType.f32:
            raise NotLowerable(f"native kernels take f32 here, got {v.dtype}")


def _dw_partner(cx: Lowerer, node: Node) -> Node | None:
    """The depthwise 3x3 convolution (stride 1 or 2, padding 1) that alone reads this 1x1
    convolution's output, when both have constant weights and no residual."""
    def plain_conv(n: Node) -> bool:
        return (n.op in ("conv2d", "fused_conv2d") and n.attrs.get("layout", "NCHW") == "NCHW"
                and n.attrs.get("residual", "none") == "none"
                and all(v.is_const for v in n.inputs[1:3]))

    if cx.ext is None or not plain_conv(node) or cx.graph.is_output(node.out):
        return None
    stride, pad, dil = _conv_window(node.attrs, 2)
    w = node.inputs[1].type.shape
    if (stride, pad, dil, node.attrs["groups"]) != ([1, 1], [0] * 4, [1, 1], 1) \
            or tuple(w[2:]) != (1, 1) or len(node.out.uses) != 1:
        return None
    dw, slot = node.out.uses[0]
    if slot != 0 or not plain_conv(dw):
        return None
    stride, pad, dil = _conv_window(dw.attrs, 2)
    o = w[0]
    if (tuple(dw.inputs[1].type.shape) != (o, 1, 3, 3) or dw.attrs["groups"] != o
            or stride not in ([1, 1], [2, 2]) or pad != [1] * 4 or dil != [1, 1]):
        return None
    return dw


def _conv_dw(cx: Lowerer, node: Node) -> bool:
    """A 1x1 convolution and the depthwise convolution after it as one oneDNN step, where
    oneDNN fuses the pair for real (MobileNetV2's first expansion: the 4.8 MB expanded
    activation is never written whole). False: lower the two apart."""
    dw = _dw_partner(cx, node)
    if dw is None:
        return False
    src = cx.as_nhwc(node.inputs[0])
    _need_f32(src)
    w, dw_w = cx.const_tensor(node.inputs[1]), cx.const_tensor(dw.inputs[1])
    b = cx.const_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    dw_b = cx.const_tensor(dw.inputs[2]) if len(dw.inputs) > 2 else None
    a, da = node.attrs, dw.attrs
    stride = int(_conv_window(da, 2)[0][0])
    epilogues = (a.get("activation", "none"), float(a.get("alpha", 0.0)),
                 float(a.get("beta", 0.0)), dw_w, dw_b, stride,
                 da.get("activation", "none"), float(da.get("alpha", 0.0)),
                 float(da.get("beta", 0.0)), cx.threads)
    try:
        impl = cx.ext.add_conv_dw(None, "probe", -1, -1, list(src.shape), w, b, *epilogues)
    except (RuntimeError, ValueError):
        return False
    if impl.startswith("ref"):
        return False
    y = cx.new_value(dw.out, nhwc=True)
    args = (src.buf, y.buf, list(src.shape), w, b, *epilogues)
    cx.step("oneDNN conv+dw", lambda ext, plan, name: ext.add_conv_dw(plan, name, *args),
            [src.buf], [y.buf])
    cx.fused_away.add(id(dw))
    return True


@lowers("conv2d", "fused_conv2d")
def _conv2d(cx: Lowerer, node: Node) -> None:
    if _conv_dw(cx, node):
        return
    a = node.attrs
    x = cx.view(node.inputs[0])
    w = cx.const_tensor(node.inputs[1])
    if w is None:
        raise NotLowerable("the weight is not a constant")
    _need_f32(x)
    bias = cx.const_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and bias is None:
        raise NotLowerable("the bias is not a constant")
    mode = a.get("residual", "none")
    act, alpha, beta = a.get("activation", "none"), a.get("alpha", 0.0), a.get("beta", 0.0)
    stride, pad, dil = _conv_window(a, 2)
    if a.get("layout", "NCHW") == "NHWC":
        # the IR itself is channels-last: x is a plain [N, H, W, C] buffer
        xp = cx.plain(node.inputs[0])
        n, h, wd, c = xp.shape
        src_shape, src_nhwc, src = [n, c, h, wd], True, xp
        y = cx.new_value(node.out)
        residual = cx.plain(node.inputs[3]) if mode != "none" else None
        dst_nhwc = True
        yn, yh, yw, yc = y.shape
        dst_shape = [yn, yc, yh, yw]
    else:
        # oneDNN's fast convolutions read NHWC (an NCHW source takes its reference kernel:
        # 5 s for ResNet-18's stem), so the image is reordered once
        src = cx.as_nhwc(node.inputs[0])
        src_shape, src_nhwc = list(src.shape), True
        y = cx.new_value(node.out, nhwc=True)
        residual = None
        if mode != "none":
            residual = cx.as_nhwc(node.inputs[3]) if y.nhwc else cx.plain(node.inputs[3])
        dst_nhwc = y.nhwc
        dst_shape = list(y.shape)
    res_buf = residual.buf if residual is not None else -1
    args = (src.buf, y.buf, res_buf, src_shape, w, bias, stride, pad[:2], pad[2:], dil,
            int(a["groups"]), act, float(alpha), float(beta), mode, src_nhwc, dst_nhwc,
            cx.threads, dst_shape)
    cx.step("oneDNN conv", lambda ext, plan, name: ext.add_conv(plan, name, *args),
            [src.buf] + ([res_buf] if residual is not None else []), [y.buf])


def _matmul_step(cx: Lowerer, node: Node, a: View, b: View | None, weight, b_shape,
                 bias, residual_in: Value | None, attrs: dict) -> None:
    y = cx.new_value(node.out)
    residual = cx.plain(residual_in) if residual_in is not None else None
    res_buf = residual.buf if residual is not None else -1
    mode = attrs.get("residual", "none")
    args = (a.buf, b.buf if b is not None else -1, y.buf, res_buf, list(a.shape), list(b_shape),
            weight, bias, attrs.get("activation", "none"), float(attrs.get("alpha", 0.0)),
            float(attrs.get("beta", 0.0)), mode, cx.threads)
    reads = [a.buf] + ([b.buf] if b is not None else []) + ([res_buf] if residual else [])
    cx.step("oneDNN matmul", lambda ext, plan, name: ext.add_matmul(plan, name, *args), reads,
            [y.buf])


@lowers("conv1d", "fused_conv1d")
def _conv1d(cx: Lowerer, node: Node) -> None:
    a = node.attrs
    x = cx.plain(node.inputs[0])
    _need_f32(x)
    w = cx.const_tensor(node.inputs[1])
    bias = cx.const_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    if w is None or (len(node.inputs) > 2 and bias is None):
        raise NotLowerable("the weight or bias is not a constant")
    mode = a.get("residual", "none")
    y = cx.new_value(node.out)
    residual = cx.plain(node.inputs[3]) if mode != "none" else None
    res_buf = residual.buf if residual is not None else -1
    stride, pad, dil = _conv_window(a, 1)
    args = (x.buf, y.buf, res_buf, list(x.shape), w, bias, stride, pad[:1], pad[1:],
            dil, int(a["groups"]), a.get("activation", "none"),
            float(a.get("alpha", 0.0)), float(a.get("beta", 0.0)), mode, False, False,
            cx.threads, list(y.shape))
    cx.step("oneDNN conv", lambda ext, plan, name: ext.add_conv(plan, name, *args),
            [x.buf] + ([res_buf] if residual is not None else []), [y.buf])


@lowers("linear", "fused_linear")
def _linear(cx: Lowerer, node: Node) -> None:
    x = cx.plain(node.inputs[0])
    _need_f32(x)
    w = cx.const_tensor(node.inputs[1])
    if w is None:
        raise NotLowerable("the weight is not a constant")
    bias = None
    if len(node.inputs) > 2:
        bias = cx.const_tensor(node.inputs[2])
        if bias is None:
            raise NotLowerable("the bias is not a constant")
    if len(x.shape) < 2:
        x = View(x.buf, (1,) + x.shape, x.dtype, contiguous_strides((1,) + x.shape), x.offset)
        if len(node.out.type.shape) < 2:
            raise NotLowerable("a 1-d linear")
    wt = w.t()  # [K, N]
    residual = node.inputs[3] if len(node.inputs) > 3 else None
    _matmul_step(cx, node, x, None, wt, tuple(wt.shape), bias, residual, node.attrs)


@lowers("matmul", "fused_matmul")
def _matmul(cx: Lowerer, node: Node) -> None:
    a = cx.plain(node.inputs[0])
    _need_f32(a)
    if len(a.shape) < 2 or len(node.inputs[1].type.shape) < 2:
        raise NotLowerable("a 1-d matmul operand")
    w = cx.const_tensor(node.inputs[1])
    b = None if w is not None else cx.plain(node.inputs[1])
    b_shape = tuple(w.shape) if w is not None else b.shape
    bias = None
    if len(node.inputs) > 2:
        bias = cx.const_tensor(node.inputs[2])
        if bias is None:
            raise NotLowerable("the bias is not a constant")
    residual = node.inputs[3] if len(node.inputs) > 3 else None
    _matmul_step(cx, node, a, b, w, b_shape, bias, residual, node.attrs)


@lowers("layer_norm", "rms_norm")
def _layer_norm(cx: Lowerer, node: Node) -> None:
    x = cx.plain(node.inputs[0])
    _need_f32(x)
    axis = node.attrs["axis"] % len(x.shape)
    cols = math.prod(x.shape[axis:])
    rows = x.numel // max(cols, 1)
    gamma = cx.const_tensor(node.inputs[1]) if len(node.inputs) > 1 else None
    beta = cx.const_tensor(node.inputs[2]) if len(node.inputs) > 2 else None
    if (len(node.inputs) > 1 and gamma is None) or (len(node.inputs) > 2 and beta is None):
        raise NotLowerable("gamma/beta are not constants")
    y = cx.new_value(node.out)
    rms = node.op == "rms_norm"
    args = (x.buf, y.buf, rows, cols, None if gamma is None else gamma.reshape(-1),
            None if beta is None else beta.reshape(-1), float(node.attrs["eps"]), rms)
    cx.step("rms_norm" if rms else "layer_norm",
            lambda ext, plan, name: ext.add_layer_norm(plan, name, *args), [x.buf], [y.buf])


@lowers("softmax", "log_softmax")
def _softmax(cx: Lowerer, node: Node) -> None:
    x = cx.plain(node.inputs[0])
    _need_f32(x)
    if node.attrs["axis"] % len(x.shape) != len(x.shape) - 1:
        raise NotLowerable("softmax over an axis other than the last")
    cols = x.shape[-1]
    y = cx.new_value(node.out)
    args = (x.buf, y.buf, x.numel // max(cols, 1), cols, node.op == "log_softmax")
    cx.step(node.op, lambda ext, plan, name: ext.add_softmax(plan, name, *args), [x.buf],
            [y.buf])


def _mask_args(cx: Lowerer, mask_v: Value | None, rank4: tuple[int, int, int, int]):
    """(buffer, kind, [b, h, q, k] strides) of an attention mask broadcast to ``rank4``."""
    if mask_v is None:
        return -1, 0, [0, 0, 0, 0], []
    m = cx.view(mask_v)
    if m.dtype is DType.bool:
        kind = 1
    elif m.dtype is DType.f32:
        kind = 2
    else:
        raise NotLowerable(f"a {m.dtype} attention mask")
    if m.nhwc or len(m.shape) > 4:
        m = cx.plain(mask_v)
    pad = 4 - len(m.shape)
    shape = (1,) * pad + m.shape
    strides = (0,) * pad + m.strides
    out = []
    for n, s, full in zip(shape, strides, rank4, strict=True):
        if n == full:
            out.append(s if n != 1 else 0)
        elif n == 1:
            out.append(0)
        else:
            raise NotLowerable(f"mask shape {m.shape} does not broadcast to {rank4}")
    if m.offset:
        raise NotLowerable("an offset mask view")
    return m.buf, kind, out, [m.buf]


def _attention_view(v: View, heads: int, packed: bool) -> tuple[View, list[int]]:
    """(view, [b, h, s] strides) with the last axis contiguous; ``packed``: [B, S, H*D]."""
    if v.strides[-1] != 1 or v.nhwc:
        raise NotLowerable("attention operand with a strided last axis")
    if packed:
        if len(v.shape) != 3:
            raise NotLowerable("multi_head_attention operands of rank != 3")
        b, s, hd = v.strides
        d = v.shape[2] // heads
        return v, [b, d, s]
    if len(v.shape) == 4:
        return v, list(v.strides[:3])
    if len(v.shape) == 3:
        return v, [v.strides[0], 0, v.strides[1]]
    raise NotLowerable("attention operands of rank < 3 or > 4")


@lowers("multi_head_attention", "scaled_dot_product_attention")
def _attention(cx: Lowerer, node: Node) -> None:
    packed = node.op == "multi_head_attention"
    views = []
    for v in node.inputs[:3]:
        view = cx.view(v)
        if view.strides[-1] != 1 or view.nhwc or view.offset < 0:
            view = cx.plain(v)
        views.append(view)
    _need_f32(*views)
    q, k, v = views
    if packed:
        h = int(node.attrs["num_heads"])
        if len(q.shape) != 3 or len(k.shape) != 3 or len(v.shape) != 3 or not (
                q.shape[0] == k.shape[0] == v.shape[0]):
            raise NotLowerable("multi_head_attention over rank != 3 or broadcast batches")
        b, sq, e = q.shape[0], q.shape[1], q.shape[2] // h
        skv, ev = k.shape[1], v.shape[2] // h
    else:
        if not (len(q.shape) == len(k.shape) == len(v.shape)) or q.shape[:-2] != k.shape[:-2] \
                or k.shape[:-2] != v.shape[:-2]:
            raise NotLowerable("attention with broadcast batch dims")
        if len(q.shape) == 4:
            b, h = q.shape[0], q.shape[1]
        elif len(q.shape) == 3:
            b, h = q.shape[0], 1
        else:
            raise NotLowerable("attention over rank < 3 or > 4")
        sq, e, skv, ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    if e != ev:
        raise NotLowerable("attention with different q/k and v head sizes")
    _, qs = _attention_view(q, h, packed)
    _, ks = _attention_view(k, h, packed)
    _, vs = _attention_view(v, h, packed)
    mask_v = node.inputs[3] if len(node.inputs) > 3 else None
    mbuf, mkind, mstr, mreads = _mask_args(cx, mask_v, (b, h, sq, skv))
    y = cx.new_value(node.out)
    if packed:
        ys = [sq * h * e, e, h * e]
    elif len(y.shape) == 4:
        ys = list(y.strides[:3])
    else:
        ys = [y.strides[0], 0, y.strides[1]]
    scale = float(node.attrs["scale"]) or 1.0 / math.sqrt(e)
    # views carry element offsets (a split of the merged QKV projection): fold them into the
    # slot with an alias buffer so the kernel sees a base pointer
    bufs = [_offset_buf(cx, t) for t in (q, k, v)]
    args = (bufs[0], bufs[1], bufs[2], mbuf, y.buf, b, h, sq, skv, e, qs, ks, vs, ys, mkind,
            mstr, scale, bool(node.attrs["causal"]))
    cx.step("attention", lambda ext, plan, name: ext.add_attention(plan, name, *args),
            bufs + mreads, [y.buf])


def _offset_buf(cx: Lowerer, v: View) -> int:
    """A buffer whose base pointer is ``v``'s first element (an alias when ``v`` starts at an
    offset, e.g. the K part of a merged QKV projection)."""
    if v.offset == 0:
        return v.buf
    b = cx.new_buf(ALIAS, 0, v.buf)
    cx.bufs[b].offset = v.offset * v.dtype.np.itemsize
    return b


def _conv_window(a: dict, nd: int) -> tuple[list[int], list[int], list[int]]:
    """A conv's (stride, pads in ONNX layout, dilation), each expanded to ``nd`` axes."""
    return (list(expand_ints(a["stride"], nd, "stride")), list(expand_pads(a["pad"], nd)),
            list(expand_ints(a["dilation"], nd, "dilation")))


def _pool_window(node: Node, nd: int = 2):
    a = node.attrs
    kernel = list(expand_ints(a["kernel"], nd, "kernel"))
    stride = list(expand_ints(a["stride"] or kernel, nd, "stride"))
    pad = list(expand_pads(a["pad"], nd))
    dil = list(expand_ints(a.get("dilation", (1,)), nd, "dilation"))
    return kernel, stride, pad, dil


def _pool_input(cx: Lowerer, node: Node) -> View:
    """A pool's input as it lies: NHWC (from a conv) or plain NCHW."""
    if node.attrs.get("layout", "NCHW") != "NCHW":
        raise NotLowerable("an NHWC-attributed pool")
    x = cx.view(node.inputs[0])
    x = x if x.nhwc else cx.plain(node.inputs[0])
    _need_f32(x)
    return x


@lowers("max_pool2d", "avg_pool2d")
def _pool2d(cx: Lowerer, node: Node) -> None:
    x = _pool_input(cx, node)
    kernel, stride, pad, dil = _pool_window(node)
    y = cx.new_value(node.out, nhwc=x.nhwc)  # a 1x1 result is the same bytes either way
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    kind = "max" if node.op == "max_pool2d" else "avg"
    args = (x.buf, y.buf, n, c, h, w, oh, ow, kernel, stride, pad[:2], dil, kind,
            bool(node.attrs.get("count_include_pad", True)), x.nhwc, pad[2:])
    cx.step(f"{kind}_pool2d", lambda ext, plan, name: ext.add_pool2d(plan, name, *args),
            [x.buf], [y.buf])


@lowers("global_avg_pool2d")
def _global_avg_pool(cx: Lowerer, node: Node) -> None:
    x = _pool_input(cx, node)
    n, c, h, w = x.shape
    y = cx.new_value(node.out)
    outer, extent, inner = (n, h * w, c) if x.nhwc else (n * c, h * w, 1)
    args = (x.buf, y.buf, outer, extent, inner, "mean")
    cx.step("reduce mean", lambda ext, plan, name: ext.add_reduce(plan, name, *args),
            [x.buf], [y.buf])


@lowers("reduce_sum", "reduce_mean", "reduce_max", "reduce_min")
def _reduce(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    rank = len(x.shape)
    axes = sorted({a % rank for a in node.attrs["axes"]} if node.attrs["axes"]
                  else set(range(rank)))
    kind = node.op.removeprefix("reduce_")
    if x.dtype is not DType.f32:
        raise NotLowerable(f"a {x.dtype} reduction")
    if x.nhwc and axes == [2, 3]:
        n, c, h, w = x.shape
        outer, extent, inner = n, h * w, c
    else:
        if axes != list(range(axes[0], axes[-1] + 1)):
            raise NotLowerable("a reduction over non-adjacent axes")
        x = cx.plain(node.inputs[0])
        outer = math.prod(x.shape[:axes[0]])
        extent = math.prod(x.shape[axes[0]:axes[-1] + 1])
        inner = math.prod(x.shape[axes[-1] + 1:])
    y = cx.new_value(node.out)
    args = (x.buf, y.buf, outer, extent, inner, kind)
    cx.step(f"reduce {kind}", lambda ext, plan, name: ext.add_reduce(plan, name, *args),
            [x.buf], [y.buf])


@lowers("embedding")
def _embedding(cx: Lowerer, node: Node) -> None:
    w = cx.plain(node.inputs[0])
    idx = cx.plain(node.inputs[1])
    if idx.dtype not in (DType.i64, DType.i32):
        raise NotLowerable(f"{idx.dtype} indices")
    _need_f32(w)
    vocab, dim = w.shape
    y = cx.new_value(node.out)
    args = (w.buf, idx.buf, y.buf, idx.numel, dim, vocab, TORCH_DTYPE_OF(idx.dtype),
            w.dtype.np.itemsize)
    cx.step("embedding", lambda ext, plan, name: ext.add_embedding(plan, name, *args),
            [w.buf, idx.buf], [y.buf])


@lowers("gather")
def _gather(cx: Lowerer, node: Node) -> None:
    # gather along axis 0 is a row gather: rows of prod(x.shape[1:]) elements, any dtype
    x = cx.plain(node.inputs[0])
    idx = cx.plain(node.inputs[1])
    if node.attrs["axis"] % len(x.shape) != 0:
        raise NotLowerable("gather along an axis other than 0")
    if idx.dtype not in (DType.i64, DType.i32):
        raise NotLowerable(f"{idx.dtype} indices")
    vocab, dim = x.shape[0], math.prod(x.shape[1:])
    y = cx.new_value(node.out)
    args = (x.buf, idx.buf, y.buf, idx.numel, dim, vocab, TORCH_DTYPE_OF(idx.dtype),
            x.dtype.np.itemsize)
    cx.step("gather rows", lambda ext, plan, name: ext.add_embedding(plan, name, *args),
            [x.buf, idx.buf], [y.buf])


# -- views: no data moves until a consumer needs it contiguous ---------------------------------


@lowers("reshape", "flatten", "squeeze", "unsqueeze")
def _reshape(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    shape = cx.shape(node.out)
    if x.contiguous or (x.offset and x.strides == contiguous_strides(x.shape) and not x.nhwc):
        view = View(x.buf, shape, x.dtype, contiguous_strides(shape), x.offset)
        cx.views[id(node.out)] = view
        return
    if node.op in ("squeeze", "unsqueeze"):  # drop/insert size-1 axes of any view
        keep = [(n, s) for n, s in zip(x.shape, x.strides, strict=True) if n != 1]
        strides, it = [], iter(keep)
        for n in shape:
            strides.append(0 if n == 1 else next(it)[1])
        cx.views[id(node.out)] = View(x.buf, shape, x.dtype, tuple(strides), x.offset)
        return
    p = cx.plain(node.inputs[0])
    cx.views[id(node.out)] = View(p.buf, shape, p.dtype, contiguous_strides(shape), p.offset)


@lowers("transpose")
def _transpose(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    if x.nhwc:
        x = cx.plain(node.inputs[0])
    perm = [p % len(x.shape) for p in node.attrs["perm"]]
    cx.views[id(node.out)] = View(x.buf, tuple(x.shape[p] for p in perm), x.dtype,
                                  tuple(x.strides[p] for p in perm), x.offset)


@lowers("slice")
def _slice(cx: Lowerer, node: Node) -> None:
    from rtinfer.ir.ops.shape import _slice_params, _slice_range

    x = cx.view(node.inputs[0])
    if x.nhwc:
        x = cx.plain(node.inputs[0])
    shape, strides, offset = list(x.shape), list(x.strides), x.offset
    for axis, start, end, step in _slice_params(len(x.shape), node.attrs):
        s, _, n = (int(t) for t in _slice_range(x.shape[axis], start, end, step))
        offset += s * strides[axis]
        shape[axis] = n
        strides[axis] *= step
    cx.views[id(node.out)] = View(x.buf, tuple(shape), x.dtype, tuple(strides), offset)


@lowers("split")
def _split(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    if x.nhwc:
        x = cx.plain(node.inputs[0])
    axis = node.attrs["axis"] % len(x.shape)
    start = 0
    for v in node.outputs:
        shape = cx.shape(v)
        cx.views[id(v)] = View(x.buf, shape, x.dtype, x.strides,
                               x.offset + start * x.strides[axis])
        start += shape[axis]


@lowers("expand")
def _expand(cx: Lowerer, node: Node) -> None:
    x = cx.view(node.inputs[0])
    if x.nhwc:
        x = cx.plain(node.inputs[0])
    shape = cx.shape(node.out)
    pad = len(shape) - len(x.shape)
    strides = [0] * pad + [0 if n == 1 and m != 1 else s for n, m, s in zip(
        x.shape, shape[pad:], x.strides, strict=True)]
    cx.views[id(node.out)] = View(x.buf, shape, x.dtype, tuple(strides), x.offset)


@lowers("concat")
def _concat(cx: Lowerer, node: Node) -> None:
    y = cx.new_value(node.out)
    axis = node.attrs["axis"] % len(y.shape)
    start = 0
    for v in node.inputs:
        x = cx.view(v)
        dst = View(y.buf, x.shape, y.dtype, y.strides, start * y.strides[axis])
        cx.copy(x, dst)
        start += x.shape[axis]


@lowers("identity")
def _identity(cx: Lowerer, node: Node) -> None:
    cx.views[id(node.out)] = cx.view(node.inputs[0])


# -- elementwise: generated C++ ---------------------------------------------------------------


def _elementwise(cx: Lowerer, node: Node) -> None:
    from rtinfer.kernels import codegen

    ins = [cx.view(v) for v in node.inputs]
    out_shapes = [cx.shape(v) for v in node.outputs]
    out_shape = out_shapes[0]
    full = [v for v in ins if v.shape == out_shape]
    # NHWC when every full-size input is NHWC and the rest are scalars; else plain
    nhwc = len(out_shape) == 4 and bool(full) and all(v.nhwc for v in full) and all(
        v.numel == 1 for v in ins if v.shape != out_shape) and all(
        s == out_shape for s in out_shapes)
    if nhwc:  # the body sees the physical [N, H, W, C] order
        ins_p = [v if v.nhwc else cx.plain(v) for v in ins]
        phys = [_nhwc_shape(v.shape) if v.nhwc else v.shape for v in ins_p]
    else:
        ins_p = [cx.plain(v) for v in ins]
        phys = [v.shape for v in ins_p]
    gens = []
    for i, shape in enumerate(out_shapes):  # one function per result
        try:
            gens.append(codegen.generate(node, phys, _nhwc_shape(shape) if nhwc else shape,
                                         output=i))
        except (codegen.Unsupported, ValueError) as e:
            raise NotLowerable(str(e)) from None
    bufs = [_offset_buf(cx, v) for v in ins_p]
    for (fname, source), v, shape in zip(gens, node.outputs, out_shapes, strict=True):
        y = cx.new_value(v, nhwc=nhwc)
        cx.ew_sources[fname] = source
        n = math.prod(shape)

        def make(ext, plan, name, fname=fname, y=y, n=n):
            ext.add_elementwise(plan, name, cx.ew_functions[fname], bufs, y.buf, n)

        cx.step("elementwise", make, bufs, [y.buf])


def _nhwc_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, h, w, c)


def _register_elementwise() -> None:
    from rtinfer.ir.ops import OPS
    from rtinfer.ir.ops.registry import BROADCAST, ELEMENTWISE

    for opdef in OPS:
        if (ELEMENTWISE in opdef.traits or BROADCAST in opdef.traits) \
                and opdef.name not in LOWERINGS:
            LOWERINGS[opdef.name] = _elementwise
    LOWERINGS.setdefault("fused_elementwise", _elementwise)
    LOWERINGS.setdefault("cast", _elementwise)


# -- the module compile() returns ---------------------------------------------------------------


@dataclass
class NativeStats:
    fallbacks: dict[str, int] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)
    arena_bytes: int = 0
    steps: int = 0


class NativeModule:
    """Runs ``graph`` through the C++ executor; one plan per distinct input shape set and thread
    count (a graph with symbolic dims gets one per shape it is called with; oneDNN primitives
    are made for the thread count they run with, so a changed ``torch.set_num_threads`` gets
    a new plan)."""

    def __init__(self, graph: Graph, strict: bool = False):
        from rtinfer.kernels import build

        self.ext = build.load()
        self.graph = graph
        self.strict = strict
        self._plans: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.stats = NativeStats()
        self.rtinfer_mkldnn = True
        self.rtinfer_fallback_ops: list[str] = []
        if all(v.type.is_static for v in graph.inputs):
            shapes = tuple(tuple(int(d) for d in v.type.shape) for v in graph.inputs)
            self._plan((shapes, torch.get_num_threads()))

    def _plan(self, key: tuple) -> Any:
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        with self._lock:
            plan = self._plans.get(key)
            if plan is None:
                shapes, threads = key
                lw = Lowerer(self.graph, shapes, self.strict, threads, self.ext)
                lw.lower()
                plan = lw.build(self.ext)
                self.stats = NativeStats(dict(lw.fallbacks), dict(lw.kernels), plan.arena_bytes,
                                         plan.num_steps)
                self.rtinfer_fallback_ops = sorted(lw.fallbacks)
                self._plans[key] = plan
        return plan

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        threads = torch.get_num_threads()
        key = (tuple(t.shape for t in tensors), threads)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(((tuple(tuple(s) for s in key[0])), threads))
            self._plans[key] = plan
        if not all(t.is_contiguous() for t in tensors):
            tensors = tuple(t.contiguous() for t in tensors)
        return plan.run(tensors, threads)

    def profile(self, *tensors: torch.Tensor, iters: int = 10) -> list[tuple[str, float]]:
        """Seconds per step (mean over ``iters`` runs)."""
        threads = torch.get_num_threads()
        plan = self._plan((tuple(tuple(t.shape) for t in tensors), threads))
        secs = plan.profile([t.contiguous() for t in tensors], threads, iters)
        return list(zip(plan.step_names, secs, strict=True))


def build_native_module(graph: Graph, strict: bool = False) -> NativeModule:
    """The native module for ``graph`` (``NativeUnavailable`` when it cannot be built here)."""
    _register_elementwise()
    return NativeModule(graph, strict)


__all__ = ["LOWERINGS", "Lowerer", "NativeModule", "NotLowerable", "build_native_module"]
