"""The export driver: every node through its rule (half-precision nodes computed in f32 where
ONNX lacks the kernel), nodes without a standard form into the ``ai.rtinfer`` domain on request,
and ``export_onnx``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from rtinfer.errors import ExportError, Unsupported
from rtinfer.frontends.onnx_export.context import (
    CUSTOM_DOMAIN,
    CUSTOM_DOMAIN_VERSION,
    DEFAULT_OPSET,
    EXTERNAL_DATA_THRESHOLD,
    HALF_DTYPES,
    MIN_OPSET,
    NO_ONNX_FORM,
    Emitter,
    Names,
    Site,
    gs_dtype,
    gs_shape,
)
from rtinfer.frontends.onnx_export.rules import RULES
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.ops import INJECTIVE
from rtinfer.ir.types import DType, TensorType, dim_str

# -- custom domain ------------------------------------------------------------------------------


def _custom_attrs(e: Emitter, attrs: dict[str, Any], opts: dict) -> dict[str, Any]:
    """IR attributes as ONNX attributes of an ``ai.rtinfer`` node (docs/onnx-export.md)."""
    from rtinfer.ir.types import QuantParams

    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, DType):
            out[k] = v.value
        elif isinstance(v, QuantParams):
            out[f"{k}_scale"] = [float(f) for f in np.atleast_1d(v.scale)]
            out[f"{k}_zero_point"] = [int(z) for z in np.atleast_1d(v.zero_point)]
            if v.axis is not None:
                out[f"{k}_axis"] = v.axis
        elif isinstance(v, Graph):
            out[k] = _build(v, opts, Emitter(e.opset, Names()))[0]
        elif isinstance(v, np.ndarray):
            out[k] = gs.Constant(e.names.unique(f"{e.prefix}/{k}"), np.array(v))
        elif isinstance(v, ElidedTensor):
            raise Unsupported("custom node", f"attribute {k} holds elided constant data")
        elif isinstance(v, tuple) and any(not isinstance(d, (int, float, str)) for d in v):
            out[k] = [dim_str(d) for d in v]  # a shape with symbolic dims
        elif isinstance(v, tuple):
            out[k] = list(v)
        else:
            out[k] = v
    return out


def _custom(e: Emitter, node: Node, x: list[gs.Tensor], opts: dict) -> list[gs.Tensor]:
    outs = e.op(node.op, x, _custom_attrs(e, node.attrs, opts), n_out=len(node.outputs),
                domain=CUSTOM_DOMAIN)
    return outs if len(node.outputs) > 1 else [outs]


# -- the driver ---------------------------------------------------------------------------------


def _upcast(node: Node, opts: dict) -> bool:
    """With full_precision, a half-precision node computes in f32 (as the reference does)."""
    if not opts["full_precision"] or node.op in ("cast", "identity", "shape"):
        return False
    if node.opdef.has(INJECTIVE):
        return False
    return any(v.type.dtype in HALF_DTYPES for v in [*node.inputs, *node.outputs])


def _f32(t: TensorType) -> TensorType:
    return TensorType(DType.f32, t.shape, t.quant) if t.dtype in HALF_DTYPES else t


def _build(graph: Graph, opts: dict, e: Emitter) -> tuple[gs.Graph, list]:
    """The graphsurgeon graph of ``graph``, and the nodes that block a standard export as
    ``(op, node name, reason)``."""
    names = e.names
    tensors: dict[Value, gs.Tensor] = {}
    inputs = []
    for i, v in enumerate(graph.inputs):
        var = gs.Variable(names.unique(v.name or f"input_{i}"), gs_dtype(v.type.dtype),
                          gs_shape(v.type))
        tensors[v] = var
        inputs.append(var)
        e.add_symbol_source(var, v.type)

    blocked: list[tuple[str, str, str]] = []
    claimed: set[int] = {id(t) for t in inputs}
    for k, node in enumerate(graph.nodes):
        base = node.name or node.provenance.origin.split(":")[-1] or f"{node.op}_{k}"
        if node.op == "const":
            data = node.attrs["value"]
            if isinstance(data, ElidedTensor):
                blocked.append((node.op, base, "its data was elided from the IR text"))
                data = np.zeros(data.shape, data.dtype.np)
            tensors[node.out] = e.const(data, name=node.out.name or f"const_{k}")
            claimed.add(id(tensors[node.out]))
            continue
        e.prefix = e.node_names.unique(base)
        x = [tensors[v] for v in node.inputs]
        first = len(e.nodes)
        rule, reason = RULES.get(node.op), NO_ONNX_FORM.get(node.op, "no ONNX export rule")
        outs = None
        if rule is not None:
            up = _upcast(node, opts)
            site = Site(node, e.prefix, [v.type for v in node.inputs],
                        [v.type for v in node.outputs], node.attrs)
            try:
                if up:
                    x = [e.cast(t, DType.f32) if v.type.dtype in HALF_DTYPES else t
                         for t, v in zip(x, node.inputs, strict=True)]
                    site.in_types = [_f32(t) for t in site.in_types]
                    site.out_types = [_f32(t) for t in site.out_types]
                res = rule(e, site, x)
                outs = list(res) if isinstance(res, (list, tuple)) else [res]
                if up:
                    outs = [e.cast(t, v.type.dtype) if v.type.dtype in HALF_DTYPES else t
                            for t, v in zip(outs, node.outputs, strict=True)]
            except Unsupported as u:
                del e.nodes[first:]
                reason = u.reason
        if outs is None:
            blocked.append((node.op, base, reason))
            if not opts["allow_custom"]:  # keep going, to name every blocking node
                tensors.update((v, gs.Variable(names.unique(f"{base}_blocked")))
                               for v in node.outputs)
                continue
            outs = _custom(e, node, x, opts)
        made = {id(t) for n in e.nodes[first:] for t in n.outputs}
        for i, (v, t) in enumerate(zip(node.outputs, outs, strict=True)):
            if id(t) in made and id(t) not in claimed:
                hint = v.name or (base if len(node.outputs) == 1 else f"{base}_{i}")
                t.name = names.unique(hint)
                t.dtype, t.shape = gs_dtype(v.type.dtype), gs_shape(v.type)
                claimed.add(id(t))
            tensors[v] = t
    if blocked and not opts["allow_custom"]:
        return None, blocked

    outputs, seen = [], set()
    for i, v in enumerate(graph.outputs):
        t = tensors[v]
        if not isinstance(t, gs.Variable) or t in inputs or id(t) in seen:
            # an output that is a graph input, a constant or another output gets its own tensor
            e.prefix = "output"
            t = e.op("Identity", [t])
            t.name = names.unique(v.name or f"output_{i}")
            t.dtype, t.shape = gs_dtype(v.type.dtype), gs_shape(v.type)
        seen.add(id(t))
        outputs.append(t)

    domains = [onnx.helper.make_opsetid("", e.opset)]
    if any(n.domain == CUSTOM_DOMAIN for n in e.nodes):
        domains.append(onnx.helper.make_opsetid(CUSTOM_DOMAIN, CUSTOM_DOMAIN_VERSION))
    g = gs.Graph(nodes=e.nodes, inputs=inputs, outputs=outputs, name=graph.name,
                 opset=e.opset, import_domains=domains)
    g.cleanup(remove_unused_graph_inputs=False)
    return g, blocked


def export_onnx(graph: Graph, path: str | os.PathLike | None = None, *,
                opset: int | None = None, allow_custom: bool = False,
                full_precision: bool = False, external_data: bool | None = None,
                check: bool = False) -> onnx.ModelProto:
    """Export ``graph`` as an ONNX model; write it to ``path`` if given, and return it.

    ``opset``: the default ONNX opset (``DEFAULT_OPSET``) or any from ``MIN_OPSET`` up; newer
    opsets use newer ops (Gelu from 20, RMSNormalization from 23). ``allow_custom``: export ops
    without a standard ONNX form as ``ai.rtinfer`` nodes instead of raising ``ExportError``.
    ``full_precision``: compute float16/bfloat16 nodes in float32, casting around them, as the
    reference interpreter does. ``external_data``: write initializers to ``<path>.data`` next to
    the model (None: only when they pass ~2 GB). ``check``: run ``onnx.checker`` on the result.
    """
    opset = DEFAULT_OPSET if opset is None else int(opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset {opset} is not supported: rtinfer exports opsets "
                          f"{MIN_OPSET} to {newest}")
    opts = {"allow_custom": allow_custom, "full_precision": full_precision}
    g, blocked = _build(graph, opts, Emitter(opset, Names()))
    if g is None:
        raise ExportError.blocking(blocked)
    model = gs.export_onnx(g)
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import),
                                                             ignore_unknown=True)
    model.producer_name = "rtinfer"
    from rtinfer.version import __version__

    model.producer_version = __version__
    size = sum(t.ByteSize() for t in model.graph.initializer)
    external = external_data if external_data is not None else size > EXTERNAL_DATA_THRESHOLD
    if external and path is None:
        raise ExportError(f"the model's initializers take {size / 2**30:.2f} GiB, over "
                          f"protobuf's 2 GiB limit: pass a path to write them as external data")
    if path is not None:
        path = Path(path)
        if external:
            onnx.save_model(model, path, save_as_external_data=True,
                            all_tensors_to_one_file=True, location=path.name + ".data",
                            size_threshold=1024)
        else:
            onnx.save_model(model, path)
    if check:
        if external:
            onnx.checker.check_model(str(path), full_check=True)
        else:
            onnx.checker.check_model(model, full_check=True)
    return model
