"""Checks on an ONNX model before anything else reads it, each a ``ModelError`` (a kind of
``CaptureError``) naming the input, initializer, node or attribute at fault.

onnx's own shape inference trusts its input (a negative ``dim_value`` crashes it), and the
conversion rules read attributes by the types the ONNX schema declares. So before either runs:
the graph is not empty; input and initializer dims are non-negative; names are defined once;
every node has the inputs, outputs and attributes (names and types) its schema allows at the
model's opset. What a rule needs beyond the schema (lengths that agree with the input's rank, a
kernel that agrees with its weight) it checks itself.
"""

from __future__ import annotations

from typing import Any

from rtinfer.errors import ModelError

_AT_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 5: "GRAPH",
             6: "FLOATS", 7: "INTS", 8: "STRINGS", 9: "TENSORS", 10: "GRAPHS",
             11: "SPARSE_TENSOR", 12: "SPARSE_TENSORS", 13: "TYPE_PROTO", 14: "TYPE_PROTOS"}


def node_label(node: Any, index: int) -> str:
    """How errors name a node: ``Conv node conv1`` (``Conv node Conv_3`` when unnamed)."""
    return f"{node.op_type} node {node.name or f'{node.op_type}_{index}'}"


def attr_type_name(t: int) -> str:
    return _AT_NAMES.get(t, f"unknown type {t}")


def check_not_empty(model: Any, where: str) -> None:
    """An empty model (a 0-byte file parses as one) or a graph with no outputs computes
    nothing: refuse it rather than compile a model of no inputs and no outputs."""
    g = model.graph
    if not model.HasField("graph") or (not g.node and not g.output and not g.input):
        raise ModelError(f"{where}: the ONNX model is empty (no graph: no nodes, inputs or "
                         "outputs); check that the file is a complete export")
    if not g.output:
        raise ModelError(f"{where}: the ONNX graph {g.name or '(unnamed)'} declares no "
                         f"outputs ({len(g.node)} node(s), {len(g.input)} input(s)), so it "
                         "computes nothing")


def _check_dims(dims: Any, what: str, where: str) -> None:
    for i, d in enumerate(dims):
        value = d.dim_value if hasattr(d, "dim_value") else d
        if value < 0:
            raise ModelError(f"{where}: {what} has a negative size {value} in dim {i}")


def check_values(model: Any, where: str) -> None:
    """Graph inputs, outputs, value_info and initializers: tensors of non-negative dims; every
    name defined once (by an input, an initializer or one node output)."""
    g = model.graph
    for kind, infos in (("input", g.input), ("output", g.output), ("value_info", g.value_info)):
        for vi in infos:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                _check_dims(vi.type.tensor_type.shape.dim, f"{kind} {vi.name!r}", where)
    for t in g.initializer:
        _check_dims(t.dims, f"initializer {t.name!r}", where)
    defined: dict[str, str] = {}
    inits = {t.name for t in g.initializer}
    for vi in g.input:
        if vi.name in defined and vi.name not in inits:
            raise ModelError(f"{where}: graph input {vi.name!r} is declared twice")
        defined[vi.name] = "a graph input"
    for t in g.initializer:
        defined.setdefault(t.name, "an initializer")
    for i, node in enumerate(g.node):
        for name in node.output:
            if not name:
                continue
            if name in defined:
                raise ModelError(f"{where}: {node_label(node, i)} writes {name!r}, already "
                                 f"defined by {defined[name]} (an ONNX name is assigned once)")
            defined[name] = node_label(node, i)


def check_nodes(model: Any, opset: int, where: str) -> None:
    """Each node against its schema at ``opset``: input and output counts, attribute names,
    types and required attributes. Nodes of unknown ops are left to the unsupported-op report."""
    from onnx import defs

    for i, node in enumerate(model.graph.node):
        label = node_label(node, i)
        seen: set[str] = set()
        for a in node.attribute:
            if a.name in seen:
                raise ModelError(f"{where}: {label}: attribute {a.name!r} is given twice")
            seen.add(a.name)
            if a.ref_attr_name:
                raise ModelError(f"{where}: {label}: attribute {a.name!r} refers to a "
                                 f"function attribute ({a.ref_attr_name!r}) outside a function")
            if a.type not in _AT_NAMES or a.type == 0:
                raise ModelError(f"{where}: {label}: attribute {a.name!r} has "
                                 f"{attr_type_name(a.type)}")
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = defs.get_schema(node.op_type, opset, "")
        except defs.SchemaError:
            if defs.has(node.op_type):  # an op of a later opset: no runtime would run it here
                raise ModelError(f"{where}: {label}: {node.op_type} is not an op of opset "
                                 f"{opset}, which the model imports (a later opset defines "
                                 "it)") from None
            continue  # an op ONNX does not know: reported as unsupported, with the others
        specs = schema.attributes
        for a in node.attribute:
            spec = specs.get(a.name)
            if spec is None:
                known = ", ".join(sorted(specs)) or "none"
                raise ModelError(f"{where}: {label}: unknown attribute {a.name!r} (opset "
                                 f"{opset} {node.op_type} has: {known})")
            if int(spec.type) != a.type:
                raise ModelError(f"{where}: {label}: attribute {a.name!r} is "
                                 f"{attr_type_name(a.type)}, but {node.op_type} declares it "
                                 f"{attr_type_name(int(spec.type))}")
        for name, spec in specs.items():
            if spec.required and name not in seen:
                raise ModelError(f"{where}: {label}: required attribute {name!r} is missing")
        n_in, n_out = len(node.input), len(node.output)
        if not schema.min_input <= n_in <= schema.max_input:
            raise ModelError(f"{where}: {label} has {n_in} input(s); {node.op_type} takes "
                             f"{_count(schema.min_input, schema.max_input)}")
        single = defs.OpSchema.FormalParameterOption.Single
        for k, formal in enumerate(schema.inputs):
            if formal.option == single and k < n_in and not node.input[k]:
                raise ModelError(f"{where}: {label}: input {k} ({formal.name}) is required but "
                                 "given as ''")
        if not schema.min_output <= n_out <= schema.max_output:
            raise ModelError(f"{where}: {label} has {n_out} output(s); {node.op_type} has "
                             f"{_count(schema.min_output, schema.max_output)}")


def _count(lo: int, hi: int) -> str:
    if lo == hi:
        return str(lo)
    return f"at least {lo}" if hi >= 2**31 - 1 else f"{lo} to {hi}"


def validate(model: Any, opset: int, where: str) -> None:
    """Every check above, in the order a reader would look for the fault."""
    check_not_empty(model, where)
    check_values(model, where)
    check_nodes(model, opset, where)


__all__ = ["attr_type_name", "check_not_empty", "check_nodes", "check_values", "node_label",
           "validate"]
