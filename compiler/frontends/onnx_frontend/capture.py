"""The ONNX frontend's driver: load a model, prepare it, and convert its nodes one by one.

Loading (a path with external data, or a ``ModelProto`` that is deep-copied first), opset checks,
local-function inlining, best-effort shape inference and onnx-graphsurgeon cleanup happen here;
each ONNX node is then converted by its rule in ``CONVERTERS`` (the family modules of this
package). Every IR node whose inputs are all constants is folded on the spot through the op
table's reference implementation, so the ``Shape -> Gather -> Concat -> Reshape`` chains
exporters emit become constants when the shapes are static.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from rtinfer.errors import CaptureError, IRError, ModelError, Unsupported, UnsupportedOpsError
from rtinfer.frontends.onnx_dtypes import dtype_problem, from_onnx
from rtinfer.frontends.onnx_frontend import (  # noqa: F401  (each declares its family's rules)
    attention,
    creation,
    elementwise,
    linalg,
    loss,
    nn,
    norm,
    quant,
    reduce,
    shape,
)
from rtinfer.frontends.onnx_frontend.context import (
    CONVERTERS,
    Converter,
    NodeContext,
    NotConstant,
)
from rtinfer.frontends.onnx_frontend.validate import (
    check_nodes,
    check_values,
    node_label,
    validate,
)
from rtinfer.ir.graph import Graph, Provenance, Value
from rtinfer.ir.types import Dim, DType, TensorType, sym

MIN_OPSET = 13
_TWO_GB = 2**31
# A graph input the IR needs as a constant (a shape, axes, pads, k, scales) is specialized on
# its example value only when it looks like one: a scalar or a vector of at most this many
# entries. A larger input (a data tensor feeding a data-dependent shape) stays an error, since
# a model compiled for one data value would be of no use.
SPECIALIZE_MAX_ELEMENTS = 64


def _sanitize(name: str) -> str:
    s = re.sub(r"\W", "_", name)
    return s if re.match(r"[A-Za-z_]", s) else "d_" + s


def _dtype(elem_type: int, what: str, where: str) -> DType:
    """The dtype of a graph input or initializer (``what``, in the model ``where``); a
    ``CaptureError`` for one rtinfer lacks."""
    dt = from_onnx(elem_type)
    if dt is None:
        raise CaptureError(f"{where}: {dtype_problem(elem_type, what)}")
    return dt


# -- loading ------------------------------------------------------------------------------------


def load_model(model_or_path: Any):
    """Load (or deep-copy) the model; every failure is one CaptureError naming the file."""
    import onnx

    from rtinfer.frontends.external_data import check_external_data

    if isinstance(model_or_path, onnx.ModelProto):
        # onnx reads a ModelProto's external data relative to the working directory
        check_external_data(model_or_path, os.getcwd(), "<ModelProto>")
        return copy.deepcopy(model_or_path), "<ModelProto>"
    path = os.fspath(model_or_path)
    if not os.path.isfile(path):
        raise CaptureError(f"{path}: no such ONNX file")
    if os.path.getsize(path) == 0:  # protobuf reads 0 bytes as an empty model, without error
        raise ModelError(f"{path}: the file is empty (0 bytes), not an ONNX model")
    try:
        model = onnx.load(path, load_external_data=False)
        from onnx.external_data_helper import load_external_data_for_model

        # every reference checked (inside the model's folder, regular files) before a read
        if check_external_data(model, os.path.dirname(os.path.abspath(path)), path):
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except CaptureError:
        raise
    except Exception as e:  # protobuf and io errors of every kind mean a bad file
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
    validate(model, version, where)  # before onnx's converter and inference read the model
    if version < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:  # the converter raises many kinds; each means "cannot"
            raise CaptureError(f"{where}: opset {version} is older than {MIN_OPSET} and could "
                               f"not be converted ({type(e).__name__}: {e})") from None
        version = MIN_OPSET
    if model.functions:
        try:
            import onnx.inliner

            model = onnx.inliner.inline_local_functions(model)
        except Exception:  # conversion then reports the function's op
            pass
        else:  # the functions' bodies are graph nodes now: they get the same checks
            check_values(model, where)
            check_nodes(model, version, where)
    if model.ByteSize() < _TWO_GB:
        try:
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # the IR infers types itself; this is a hint
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
        except Exception:  # as above: shape inference is only a hint
            pass
    return _cleanup(model), version


def _cleanup(model):
    """Dead-node removal and topological sort with onnx-graphsurgeon (kept only if it works)."""
    try:
        import onnx_graphsurgeon as gs
        from onnx_graphsurgeon.logger import G_LOGGER
    except ImportError:
        return model
    if any(a.type in (5, 10) for n in model.graph.node for a in n.attribute):
        return model  # subgraph attributes: leave the graph as written
    # graphsurgeon prints its warnings and failures to stdout; the cleanup is optional, so
    # they are not the user's concern (what matters is reported by the conversion)
    severity = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.CRITICAL + 1
    try:
        graph = gs.import_onnx(model)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        out = gs.export_onnx(graph, do_type_check=False)
        out.ir_version = model.ir_version
        del out.opset_import[:]
        out.opset_import.extend(model.opset_import)
        return out
    except Exception:  # graphsurgeon cannot read every model; the cleanup is optional
        return model
    finally:
        G_LOGGER.severity = severity


# -- conversion ---------------------------------------------------------------------------------


def _input_type(vi, dynamic_dims: Mapping | None, where: str) -> TensorType:
    t = vi.type
    if not t.HasField("tensor_type"):
        raise CaptureError(f"{where}: input {vi.name!r} is not a tensor "
                           f"({t.WhichOneof('value')})")
    dtype = _dtype(t.tensor_type.elem_type, f"input {vi.name!r}", where)
    marks = (dynamic_dims or {}).get(vi.name) if dynamic_dims else None
    dims: list[Dim] = []
    for i, d in enumerate(t.tensor_type.shape.dim):
        if isinstance(marks, Mapping) and i in marks:
            dims.append(sym(_sanitize(str(marks[i]))))
        elif d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            name = d.dim_param or f"{vi.name}_{i}"
            if dynamic_dims and isinstance(dynamic_dims.get(name), str):
                name = dynamic_dims[name]
            dims.append(sym(_sanitize(name)))
    return TensorType(dtype, tuple(dims))


def _initializer(tensor, where: str) -> np.ndarray:
    from onnx import numpy_helper

    what = f"initializer {tensor.name!r}"
    dtype = _dtype(tensor.data_type, what, where)
    try:
        a = numpy_helper.to_array(tensor)
    except Exception as e:  # numpy and onnx raise several kinds on bad data
        raise ModelError(f"{where}: {what} of type {dtype}{list(tensor.dims)}: its data does "
                         f"not fit its dims ({type(e).__name__}: {e})") from None
    if tuple(a.shape) != tuple(tensor.dims):
        raise ModelError(f"{where}: {what} has dims {list(tensor.dims)} but holds data of "
                         f"shape {list(a.shape)}")
    return a


def _unsupported(model) -> list[tuple[str, str, str]]:
    missing = []
    for i, n in enumerate(model.graph.node):
        if n.domain not in ("", "ai.onnx") or n.op_type not in CONVERTERS:
            op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            missing.append((op, n.name or f"{n.op_type}_{i}", ""))
    return missing


def _specialized_input(g: Graph, vi, value: np.ndarray, dynamic_dims: Mapping | None,
                       where: str) -> Value:
    """Add graph input ``vi`` (kept in the signature, of the example's shape) and return the
    constant its uses read instead; the example must fit the declared type."""
    declared = _input_type(vi, dynamic_dims, where)
    a = np.asarray(value)
    got = f"{a.dtype}{list(a.shape)}"
    try:
        dtype = DType.from_numpy(a.dtype)
    except IRError:
        dtype = None
    fits = dtype == declared.dtype and a.ndim == declared.rank and all(
        not isinstance(d, int) or d == n for d, n in zip(declared.shape, a.shape, strict=True))
    if not fits:
        raise CaptureError(f"{where}: example input {vi.name!r} is {got}, but the model "
                           f"declares {declared}")
    g.add_input(TensorType(declared.dtype, tuple(int(n) for n in a.shape)), _sanitize(vi.name))
    return g.add_const(a.copy(), provenance=Provenance(f"onnx:{vi.name} (specialized)"))


def convert_graph(model, opset: int, where: str, dynamic_dims: Mapping | None = None,
                  constant_inputs: Mapping[str, np.ndarray] | None = None,
                  specialize: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Convert a prepared model; a node no rule can express is a ``CaptureError`` naming it,
    caused by the rule's ``Unsupported`` (a ``NotConstant`` names the input to freeze).
    ``specialize``: graph inputs that stay inputs but whose uses read these values (recorded
    in ``graph.meta["onnx_specialized"]``, for the compiled model's call-time check)."""
    missing = _unsupported(model)
    if missing:
        raise UnsupportedOpsError("onnx", missing)
    og = model.graph
    g = Graph(_sanitize(og.name) if og.name else "main")
    conv = Converter(g, opset)
    init_names = {t.name for t in og.initializer}
    constant_inputs = dict(constant_inputs or {})
    specialize = dict(specialize or {})
    specialized: dict[str, tuple[int, np.ndarray]] = {}
    for vi in og.input:
        if vi.name in init_names:
            continue
        if vi.name in specialize:
            conv.values[vi.name] = _specialized_input(g, vi, specialize[vi.name], dynamic_dims,
                                                      where)
            specialized[vi.name] = (len(g.inputs) - 1, conv.values[vi.name].const_data)
            continue
        if vi.name in constant_inputs:
            a = np.asarray(constant_inputs[vi.name])
            DType.from_numpy(a.dtype)
            conv.values[vi.name] = g.add_const(a, name=_sanitize(vi.name))
            continue
        conv.values[vi.name] = g.add_input(_input_type(vi, dynamic_dims, where), _sanitize(vi.name))
    for t in og.initializer:
        conv.values[t.name] = g.add_const(_initializer(t, where), name=_sanitize(t.name),
                                          provenance=Provenance(f"onnx:{t.name}"))
    for i, node in enumerate(og.node):
        try:
            cx = NodeContext(conv, node, i)
        except Exception as e:  # an attribute onnx's helper cannot read
            raise ModelError(f"{where}: {node_label(node, i)}: unreadable attribute "
                             f"({type(e).__name__}: {e})") from None
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
        except Unsupported as e:
            raise CaptureError(f"{where}: {node.op_type} node {cx.name}: {e.reason}") from e
        except IRError as e:  # the IR refused the node a rule built (a type, an attribute)
            raise CaptureError(f"{where}: {node.op_type} node {cx.name}: {e}") from e
        except ModelError as e:  # the rule found the node breaks ONNX's rules
            raise ModelError(f"{where}: {e}") from e
        except CaptureError:
            raise
        except Exception as e:
            # A safety net, not the checks: validate.py and the rules refuse what they can
            # name precisely; anything a rule still trips over is reported at its node.
            raise CaptureError(f"{where}: {node.op_type} node {cx.name} could not be "
                               f"converted ({type(e).__name__}: {e}); the node's inputs are "
                               f"{[v.type if v is not None else None for v in ins]} and its "
                               f"attributes {sorted(cx.attrs)}") from e
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
    if specialized:
        g.meta["onnx_specialized"] = specialized
    return g


def specialized_inputs(graph: Graph) -> dict[str, np.ndarray]:
    """The graph inputs ``capture_onnx`` specialized on their example values (ONNX input name
    -> the value compiled for); a call must pass exactly these values."""
    return {name: a for name, (_, a) in graph.meta.get("onnx_specialized", {}).items()}


def _example_values(model, example_inputs: Any, where: str) -> dict[str, np.ndarray]:
    """``example_inputs`` by ONNX input name: a mapping (ONNX or IR names), a sequence in the
    order of the graph's inputs, or one array for the first input."""
    init_names = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in init_names]

    def array(x: Any, name: str) -> np.ndarray:
        if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
            x = x.detach().cpu().numpy()
        try:
            return np.asarray(x)
        except Exception as e:  # whatever numpy cannot read is the user's example
            raise CaptureError(f"{where}: example input {name!r} is not an array "
                               f"({type(x).__name__}: {e})") from None

    if isinstance(example_inputs, Mapping):
        by_ir = {_sanitize(n): n for n in names}
        out = {}
        for k, x in example_inputs.items():
            name = k if k in names else by_ir.get(str(k))
            if name is None:
                raise CaptureError(f"{where}: example_inputs names {k!r}, which is not an "
                                   f"input of the model (its inputs: {', '.join(names)})")
            out[name] = array(x, name)
        return out
    if isinstance(example_inputs, (list, tuple)):
        if len(example_inputs) > len(names):
            raise CaptureError(f"{where}: {len(example_inputs)} example inputs, but the model "
                               f"takes {len(names)} ({', '.join(names)})")
        return {n: array(x, n) for n, x in zip(names, example_inputs, strict=False)}
    return {names[0]: array(example_inputs, names[0])} if names else {}


def _feeding_inputs(value: Value | None, model) -> list[str]:
    """The ONNX names of the graph inputs ``value`` is computed from (in graph order)."""
    if value is None:
        return []
    found: set[str] = set()
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen or v.is_const:
            continue
        seen.add(id(v))
        if v.producer is None:
            found.add(v.name or "")
        else:
            stack.extend(v.producer.inputs)
    return [vi.name for vi in model.graph.input if _sanitize(vi.name) in found]


def capture_onnx(model_or_path: Any, dynamic_dims: Mapping | None = None, *,
                 constant_inputs: Mapping[str, np.ndarray] | None = None,
                 example_inputs: Any = None) -> Graph:
    """Capture an ONNX model (a ``ModelProto`` or a path) into a new IR graph.

    ``dynamic_dims``: ``{"batch": "B"}`` renames a symbolic dim (``dim_param``), and
    ``{"input": {0: "B"}}`` makes dim 0 of that input symbolic. ``constant_inputs`` freezes
    graph inputs to given arrays (they become constants, e.g. a shape fed as an input).
    ``example_inputs`` (a mapping by input name, a sequence in input order, or one array): a
    graph input the IR needs as a constant (a shape, axes, pads, k, scales; a scalar or a vector
    of at most ``SPECIALIZE_MAX_ELEMENTS``) is specialized on its example value: it stays an
    input, the graph is built for that value, and ``specialized_inputs(graph)`` lists it (the
    compiled model refuses a call that passes another value).
    The caller's model is never modified.
    """
    model, where = load_model(model_or_path)
    model, opset = prepare(model, where)
    specialize: dict[str, np.ndarray] = {}
    examples: dict[str, np.ndarray] | None = None
    while True:  # each round specializes at least one more input: bounded by their number
        try:
            return convert_graph(model, opset, where, dynamic_dims, constant_inputs, specialize)
        except CaptureError as e:
            nc = e.__cause__
            if not isinstance(nc, NotConstant):
                raise
            names = [n for n in _feeding_inputs(nc.value, model)
                     if n not in specialize and n not in (constant_inputs or {})]
            if not names:
                raise
            if example_inputs is None:
                raise CaptureError(
                    f"{e}; it is computed from graph input(s) {', '.join(map(repr, names))}: "
                    "pass example_inputs (rtinfer.compile(model, example_inputs=...)) to "
                    "specialize the model on their values") from nc
            if examples is None:
                examples = _example_values(model, example_inputs, where)
            for n in names:
                if n not in examples:
                    raise CaptureError(f"{e}; specializing on graph input {n!r} needs its "
                                       "value, which example_inputs lacks") from nc
                a = examples[n]
                if a.ndim > 1 or a.size > SPECIALIZE_MAX_ELEMENTS:
                    raise CaptureError(
                        f"{e}; graph input {n!r} ({a.dtype}{list(a.shape)}) is not shape-like "
                        f"(a scalar or a vector of at most {SPECIALIZE_MAX_ELEMENTS} entries), "
                        "so rtinfer does not specialize on its value") from nc
                specialize[n] = a


__all__ = ["MIN_OPSET", "SPECIALIZE_MAX_ELEMENTS", "capture_onnx", "convert_graph", "load_model",
           "prepare", "specialized_inputs"]
