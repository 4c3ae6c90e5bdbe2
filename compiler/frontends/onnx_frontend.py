"""The ONNX frontend: ``capture_onnx(model_or_path)`` turns an ONNX model into an IR graph.

Loading (a path with external data, or a ``ModelProto`` that is deep-copied first), opset checks,
local-function inlining, best-effort shape inference and onnx-graphsurgeon cleanup happen here;
each ONNX node is then converted by the one rule table in ``onnx_ops.py``. Every IR node whose
inputs are all constants is folded on the spot through the op table's reference implementation,
so the ``Shape -> Gather -> Concat -> Reshape`` chains exporters emit become constants when the
shapes are static.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtinfer.errors import CaptureError, IRError, UnsupportedOpsError
from rtinfer.ir.graph import Graph, Provenance, Value
from rtinfer.ir.types import Dim, DType, TensorType, sym

MIN_OPSET = 13
_TWO_GB = 2**31


class Unsupported(CaptureError):
    """A node uses an attribute value, input or dtype this frontend cannot express."""


class NotConstant(Unsupported):
    """An input the IR needs as a constant (a shape, pads, axes) is computed at run time."""

    def __init__(self, input_name: str, what: str):
        self.input_name = input_name
        super().__init__(f"{what} must be a constant (input {input_name!r} is computed at run "
                         "time)")


def onnx_dtype(elem_type: int, where: str = "") -> DType:
    from onnx import TensorProto as T

    table = {T.FLOAT: DType.f32, T.DOUBLE: DType.f64, T.FLOAT16: DType.f16,
             T.BFLOAT16: DType.bf16, T.INT64: DType.i64, T.INT32: DType.i32,
             T.INT16: DType.i16, T.INT8: DType.i8, T.UINT8: DType.u8, T.UINT16: DType.u16,
             T.UINT32: DType.u32, T.UINT64: DType.u64, T.BOOL: DType.bool}
    if elem_type not in table:
        import onnx

        name = onnx.TensorProto.DataType.Name(elem_type)
        raise Unsupported(f"unsupported dtype {name}{' for ' + where if where else ''} (rtinfer "
                          f"supports {', '.join(d.value for d in DType)})")
    return table[elem_type]


def _sanitize(name: str) -> str:
    s = re.sub(r"\W", "_", name)
    return s if re.match(r"[A-Za-z_]", s) else "d_" + s


# -- loading ------------------------------------------------------------------------------------


def load_model(model_or_path: Any):
    """Load (or deep-copy) the model; every failure is one CaptureError naming the file."""
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return copy.deepcopy(model_or_path), "<ModelProto>"
    path = os.fspath(model_or_path)
    if not os.path.isfile(path):
        raise CaptureError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(path, load_external_data=False)
        from onnx.external_data_helper import load_external_data_for_model, uses_external_data

        if any(uses_external_data(t) for t in model.graph.initializer):
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except Exception as e:  # noqa: BLE001  (protobuf/io errors of every kind mean a bad file)
        raise CaptureError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'truncated or corrupted'}); "
                           "check that the file is complete and that its external data files "
                           "sit next to it") from None
    return model, path


def _opset(model, where: str) -> int:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:  # only other domains (ai.onnx.ml, training): their ops are reported
        return newest
    if version > newest:
        raise CaptureError(f"{where}: the model uses ONNX opset {version}, newer than the "
                           f"newest this onnx {onnx.__version__} knows ({newest}); upgrade onnx "
                           f"or export the model with opset {newest} or older")
    return version


def prepare(model, where: str):
    """Opset check, opset upgrade below 13, function inlining, shape inference, gs cleanup."""
    import onnx

    version = _opset(model, where)
    if version < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:  # noqa: BLE001
            raise CaptureError(f"{where}: opset {version} is older than {MIN_OPSET} and could "
                               f"not be converted ({type(e).__name__}: {e})") from None
        version = MIN_OPSET
    if model.functions:
        try:
            import onnx.inliner

            model = onnx.inliner.inline_local_functions(model)
        except Exception:  # noqa: BLE001, S110  (conversion then reports the function's op)
            pass
    if model.ByteSize() < _TWO_GB:
        try:
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001, S110  (the IR infers types itself; this is a hint)
            pass
    elif where != "<ModelProto>":
        try:
            import tempfile

            with tempfile.TemporaryDirectory() as d:
                out = os.path.join(d, "inferred.onnx")
                onnx.shape_inference.infer_shapes_path(where, out)
                model = onnx.load(out, load_external_data=False)
                from onnx.external_data_helper import load_external_data_for_model

                load_external_data_for_model(model, os.path.dirname(os.path.abspath(where)))
        except Exception:  # noqa: BLE001, S110
            pass
    return _cleanup(model), version


def _cleanup(model):
    """Dead-node removal and topological sort with onnx-graphsurgeon (kept only if it works)."""
    try:
        import onnx_graphsurgeon as gs

        if any(a.type in (5, 10) for n in model.graph.node for a in n.attribute):
            return model  # subgraph attributes: leave the graph as written
        graph = gs.import_onnx(model)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        out = gs.export_onnx(graph, do_type_check=False)
        out.ir_version = model.ir_version
        del out.opset_import[:]
        out.opset_import.extend(model.opset_import)
        return out
    except Exception:  # noqa: BLE001
        return model


# -- conversion ---------------------------------------------------------------------------------


@dataclass
class Converter:
    """State of one capture: the IR graph under construction and the ONNX name -> Value map."""

    graph: Graph
    opset: int
    values: dict[str, Value] = field(default_factory=dict)
    dims: dict[Value, tuple[Dim, ...]] = field(default_factory=dict)  # known shape vectors


class NodeContext:
    """What a rule sees: the node's attributes and helpers that build (and fold) IR nodes."""

    def __init__(self, conv: Converter, node, index: int):
        from onnx import helper

        self.conv = conv
        self.node = node
        self.graph = conv.graph
        self.opset = conv.opset
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.origin = Provenance(f"onnx:{node.name or f'{node.op_type}_{index}'}")

    def attr(self, name: str, default: Any = None) -> Any:
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    @property
    def n_outputs(self) -> int:
        return len([o for o in self.node.output if o])

    def wants(self, i: int) -> bool:
        return i < len(self.node.output) and bool(self.node.output[i])

    def op(self, name: str, *inputs: Value, **attrs: Any) -> Value:
        outs = self.ops(name, *inputs, **attrs)
        if len(outs) != 1:
            raise IRError(f"{name} has {len(outs)} results")
        return outs[0]

    def ops(self, name: str, *inputs: Value, **attrs: Any) -> list[Value]:
        """Add ``name(inputs) {attrs}``; folded to constants when every input is one."""
        if inputs and all(v.is_const for v in inputs):
            from rtinfer.ir.ops import get_op

            opdef = get_op(name)
            full = opdef.complete_attrs(attrs, where=name)
            types = opdef.infer_types([v.type for v in inputs], full)
            arrays = opdef.evaluate([v.const_data for v in inputs], full,
                                    [v.type for v in inputs])
            return [self.const(np.asarray(a).astype(t.dtype.np, copy=False))
                    for a, t in zip(arrays, types, strict=True)]
        return self.graph.create_node(name, list(inputs), attrs, provenance=self.origin).outputs

    def const(self, array: Any, dtype: DType | None = None) -> Value:
        a = np.asarray(array)
        if dtype is not None:
            a = a.astype(dtype.np)
        elif a.dtype == np.float64 and not isinstance(array, np.ndarray):
            a = a.astype(np.float32)
        DType.from_numpy(a.dtype)
        return self.graph.add_const(a, provenance=self.origin)

    def scalar(self, value: float, like: Value) -> Value:
        return self.const(np.asarray(value, dtype=like.type.dtype.np))

    def array(self, v: Value | None, what: str) -> np.ndarray:
        if v is None:
            raise Unsupported(f"{what} is missing")
        if not v.is_const:
            raise NotConstant(v.name or "?", what)
        return v.const_data

    def ints(self, v: Value | None, what: str) -> list[int]:
        return [int(x) for x in np.asarray(self.array(v, what)).reshape(-1)]

    def shape_vector(self, v: Value, what: str) -> list[Dim]:
        """A 1-d shape value as dims: a constant, or one built from ``Shape`` of symbolic dims."""
        if v.is_const:
            return self.ints(v, what)
        if v in self.conv.dims:
            return list(self.conv.dims[v])
        raise NotConstant(v.name or "?", what)

    def static_shape(self, v: Value, what: str = "input") -> tuple[int, ...]:
        if not v.type.is_static:
            raise Unsupported(f"{what} needs a static shape, got {v.type}")
        return tuple(int(d) for d in v.type.shape)


def _input_type(vi, dynamic_dims: Mapping | None) -> TensorType:
    t = vi.type
    if not t.HasField("tensor_type"):
        raise Unsupported(f"input {vi.name!r} is not a tensor ({t.WhichOneof('value')})")
    dtype = onnx_dtype(t.tensor_type.elem_type, f"input {vi.name!r}")
    marks = (dynamic_dims or {}).get(vi.name) if dynamic_dims else None
    shape: list[Dim] = []
    for i, d in enumerate(t.tensor_type.shape.dim):
        if isinstance(marks, Mapping) and i in marks:
            shape.append(sym(_sanitize(str(marks[i]))))
        elif d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            name = d.dim_param or f"{vi.name}_{i}"
            if dynamic_dims and isinstance(dynamic_dims.get(name), str):
                name = dynamic_dims[name]
            shape.append(sym(_sanitize(name)))
    return TensorType(dtype, tuple(shape))


def _initializer(tensor) -> np.ndarray:
    from onnx import numpy_helper

    onnx_dtype(tensor.data_type, f"initializer {tensor.name!r}")
    return numpy_helper.to_array(tensor)


def _unsupported(model) -> list[tuple[str, str, str]]:
    from rtinfer.frontends.onnx_ops import CONVERTERS

    missing = []
    for i, n in enumerate(model.graph.node):
        if n.domain not in ("", "ai.onnx") or n.op_type not in CONVERTERS:
            op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            missing.append((op, n.name or f"{n.op_type}_{i}", ""))
    return missing


def convert_graph(model, opset: int, where: str, dynamic_dims: Mapping | None = None,
                  constant_inputs: Mapping[str, np.ndarray] | None = None) -> Graph:
    from rtinfer.frontends.onnx_ops import CONVERTERS

    missing = _unsupported(model)
    if missing:
        raise UnsupportedOpsError("onnx", missing)
    og = model.graph
    g = Graph(_sanitize(og.name) if og.name else "main")
    conv = Converter(g, opset)
    init_names = {t.name for t in og.initializer}
    constant_inputs = dict(constant_inputs or {})
    for vi in og.input:
        if vi.name in init_names:
            continue
        if vi.name in constant_inputs:
            a = np.asarray(constant_inputs[vi.name])
            DType.from_numpy(a.dtype)
            conv.values[vi.name] = g.add_const(a, name=_sanitize(vi.name))
            continue
        conv.values[vi.name] = g.add_input(_input_type(vi, dynamic_dims), _sanitize(vi.name))
    for t in og.initializer:
        conv.values[t.name] = g.add_const(_initializer(t), name=_sanitize(t.name),
                                          provenance=Provenance(f"onnx:{t.name}"))
    for i, node in enumerate(og.node):
        cx = NodeContext(conv, node, i)
        ins = []
        for name in node.input:
            if not name:
                ins.append(None)
            elif name not in conv.values:
                raise CaptureError(f"{where}: node {node.name or node.op_type} reads {name!r}, "
                                   "which no earlier node produces")
            else:
                ins.append(conv.values[name])
        try:
            out = CONVERTERS[node.op_type](cx, ins)
        except IRError as e:
            raise Unsupported(f"{where}: {node.op_type} node {cx.origin.origin[5:]}: {e}") \
                from None
        except Unsupported as e:
            msg = f"{where}: {node.op_type} node {cx.origin.origin[5:]}: {e}"
            err = NotConstant(e.input_name, "") if isinstance(e, NotConstant) else Unsupported("")
            err.args = (msg,)
            raise err from None
        outs = out if isinstance(out, (list, tuple)) else [out]
        for name, v in zip(node.output, outs, strict=False):
            if name and v is not None:
                if v.name is None:
                    v.name = _sanitize(name)
                conv.values[name] = v
    outputs = []
    for o in og.output:
        if o.name not in conv.values:
            raise CaptureError(f"{where}: graph output {o.name!r} is never produced")
        v = conv.values[o.name]
        if v.producer is None or any(v is u for u in outputs):
            v = g.add_op("identity", v)  # a graph output that is an input (or repeated)
        outputs.append(v)
    g.set_outputs(outputs)
    return g


def capture_onnx(model_or_path: Any, dynamic_dims: Mapping | None = None, *,
                 constant_inputs: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Capture an ONNX model (a ``ModelProto`` or a path) into a new IR graph.

    ``dynamic_dims``: ``{"batch": "B"}`` renames a symbolic dim (``dim_param``), and
    ``{"input": {0: "B"}}`` makes dim 0 of that input symbolic. ``constant_inputs`` freezes
    graph inputs to given arrays (they become constants, e.g. a shape fed as an input).
    The caller's model is never modified.
    """
    model, where = load_model(model_or_path)
    model, opset = prepare(model, where)
    return convert_graph(model, opset, where, dynamic_dims, constant_inputs)
