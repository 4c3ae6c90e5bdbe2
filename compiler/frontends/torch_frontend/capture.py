"""Capture: ``torch.export`` a copy of the module, check every node against the converter table,
convert the FX graph, and keep the pytree specs to rebuild the eager output structure."""

from __future__ import annotations

import copy
import inspect
import operator
import warnings
from typing import Any

import numpy as np
import sympy
import torch
import torch.utils._pytree as pytree

from rtinfer.errors import CaptureError, IRError, UnsupportedOpsError
from rtinfer.frontends.torch_frontend.aten_call import convert_aten_call, opaque_reason
from rtinfer.frontends.torch_frontend.context import CONVERTERS, KEEP_OPS, Ctx, ir_dtype
from rtinfer.ir.graph import Graph, Provenance, Value
from rtinfer.ir.ops.common import to_numpy
from rtinfer.ir.types import TensorType, sym

# -- capture ----------------------------------------------------------------------------------


_SKIP = {
    "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg", "aten.sym_constrain_range.default",
    "aten._assert_tensor_metadata.default",
}
_SYM_FUNCS = {operator.mul, operator.add, operator.sub, operator.floordiv, operator.mod,
              operator.truediv, operator.neg, operator.eq, operator.ge, operator.gt,
              operator.le, operator.lt, operator.ne}


def _is_symbolic_node(n: torch.fx.Node) -> bool:
    return isinstance(n.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool, int,
                                          float, bool))


def _module_path(n: torch.fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L['self']", "")


def _bind(target: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by schema name (defaults left to the converter)."""
    schema = target._schema
    out: dict[str, Any] = {}
    pos = [a for a in schema.arguments if not a.kwarg_only]
    for a, v in zip(pos, args, strict=False):
        out[a.name] = v
    out.update(kwargs)
    for k in ("layout", "device", "pin_memory", "memory_format", "non_blocking", "generator",
              "out"):
        out.pop(k, None)
    return out


def example_args(model: torch.nn.Module, example_inputs: Any) -> tuple[tuple, dict]:
    if example_inputs is None:
        raise CaptureError("capturing a torch module needs example_inputs (a tensor, a tuple of "
                           "arguments, a dict of keyword arguments, or (args, kwargs))")
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if (isinstance(example_inputs, tuple) and len(example_inputs) == 2
            and isinstance(example_inputs[0], (tuple, list))
            and isinstance(example_inputs[1], dict)):
        return tuple(example_inputs[0]), dict(example_inputs[1])
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _dynamic_shapes(model: torch.nn.Module, args: tuple, kwargs: dict,
                    dynamic_dims: Any) -> Any:
    """torch.export ``dynamic_shapes`` from ``{input: {axis: "B"}}`` (or a torch spec as is)."""
    if dynamic_dims is None:
        return None
    is_user = all(isinstance(v, dict) and all(isinstance(a, int) and isinstance(s, str)
                                              for a, s in v.items())
                  for v in dynamic_dims.values()) if isinstance(dynamic_dims, dict) else False
    if not is_user:
        return dynamic_dims
    try:
        sig = inspect.signature(model.forward)
        bound = sig.bind_partial(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise CaptureError(f"cannot match example inputs to forward(): {e}") from None
    unknown = set(dynamic_dims) - set(bound.arguments)
    if unknown:
        raise CaptureError(f"dynamic_dims names unknown input(s) {sorted(unknown)}; the "
                           f"inputs are {list(bound.arguments)}")
    # Dim.DYNAMIC rather than named Dims: torch then keeps guards it cannot prove (S >= 1 and
    # the like) as runtime checks instead of refusing the export; a dim it specialized anyway
    # is reported by _symbol_map.
    spec: dict[str, Any] = {}
    for name in bound.arguments:
        if name not in dynamic_dims:
            spec[name] = None
            continue
        spec[name] = {ax: torch.export.Dim.DYNAMIC for ax in dynamic_dims[name]}
    # keep **kwargs-style parameters nested as torch expects
    for pname, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD and pname in spec:
            spec[pname] = {k: spec.get(k) for k in bound.arguments[pname]}
    return spec


# torch's own deprecation notices, raised inside torch.export by torch's code (not the user's):
# they would print on every capture and ask the user to change nothing they wrote.
_TORCH_INTERNAL_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",)


def _export(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes: Any):
    with warnings.catch_warnings():
        for message in _TORCH_INTERNAL_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        return _export_quiet(model, args, kwargs, dynamic_shapes)


def _export_quiet(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes: Any):
    try:
        ep = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes,
                                 strict=False)
    except Exception as e:  # torch raises many kinds; all mean "could not trace"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = " ".join(lines[:2])[:400] if lines else type(e).__name__
        hint = ("Hint: torch.export needs a model whose control flow does not depend on tensor "
                "values (use torch.cond or torch.where), and whose dynamic dims are really "
                "free (a dim the code specializes must not be marked dynamic).")
        err = CaptureError(f"torch.export could not capture {type(model).__name__}: "
                           f"{type(e).__name__}: {first}\n{hint}")
        err.torch_error = e
        raise err from None
    table = torch.export.default_decompositions()
    for o in KEEP_OPS:
        table.pop(o, None)
    try:
        return ep.run_decompositions(table)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        err = CaptureError(f"decomposing the exported {type(model).__name__} to core ATen "
                           f"failed: {type(e).__name__}: {first}")
        err.torch_error = e
        raise err from None


def _tensor_of(ep: Any, spec: Any) -> torch.Tensor:
    t = spec.target
    if t in ep.state_dict:
        return ep.state_dict[t]
    return ep.constants[t]


def capture_torch(model: torch.nn.Module, example_inputs: Any = None,
                  dynamic_dims: Any = None) -> Graph:
    """Capture ``model`` (an ``nn.Module`` or ``fx.GraphModule``) into an IR graph."""
    args, kwargs = example_args(model, example_inputs)
    _check_layouts(pytree.tree_flatten((args, kwargs))[0], "example input")
    dyn = _dynamic_shapes(model, args, kwargs, dynamic_dims)
    # export a copy in eval mode: the user's module (training flag, parameters) is untouched
    try:
        work = copy.deepcopy(model)
    except Exception as e:  # a tensor torch cannot copy (sparse storage) or a foreign object
        for path, sub in model.named_modules():
            tensors = [(k, v) for k, v in vars(sub).items() if not k.startswith("_")]
            tensors += [(k, v) for k, v in sub.named_parameters(recurse=False)]
            tensors += [(k, v) for k, v in sub.named_buffers(recurse=False)]
            for k, v in tensors:
                where = f"{path}.{k}" if path else k
                _check_layouts(pytree.tree_flatten(v)[0], f"attribute {where} of the model")
        raise CaptureError(f"cannot copy {type(model).__name__} for capture: "
                           f"{type(e).__name__}: {e}") from None
    work.eval()
    with torch.no_grad():
        ep = _export(work, args, kwargs, dyn)
    return _convert(ep, type(model).__name__, dynamic_dims)


def _check_layouts(leaves: list, what: str) -> None:
    """Refuse sparse (and other non-strided) tensors by name: the IR holds dense tensors only,
    and torch.export cannot trace through them."""
    for i, x in enumerate(leaves):
        if isinstance(x, torch.Tensor) and x.layout is not torch.strided:
            raise CaptureError(f"{what} #{i} is a {x.layout} tensor of shape {list(x.shape)}: "
                               "only dense (strided) tensors are supported; pass "
                               "x.to_dense() instead")


def _symbol_map(user_inputs: list, dynamic_dims: Any) -> dict[sympy.Symbol, Any]:
    """torch's shape symbols (s0, s1...) -> the user's names, read off the input placeholders."""
    out: dict[sympy.Symbol, Any] = {}
    names = dynamic_dims if isinstance(dynamic_dims, dict) else {}
    for n in user_inputs:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        want = names.get(n.name) or {}
        for ax, d in enumerate(val.shape):
            uname = want.get(ax) if isinstance(want, dict) else None
            if isinstance(d, torch.SymInt) and isinstance(d.node.expr, sympy.Symbol):
                s = d.node.expr
                if s in out:
                    if isinstance(uname, str) and out[s] != sym(uname):
                        raise CaptureError(
                            f"torch.export found dims {out[s]} and {uname} equal; give them "
                            "one name in dynamic_dims")
                    continue
                out[s] = sym(uname if isinstance(uname, str) else str(s))
            elif isinstance(uname, str):
                raise CaptureError(
                    f"dynamic dim {uname} (axis {ax} of input {n.name}) was specialized by "
                    f"torch.export to {d}: the model's code requires that size (or relates it "
                    "to another dim in a way torch could not keep symbolic)")
    return out


def _unwrap_effects(graph: torch.fx.Graph) -> None:
    """Replace each ``with_effects(token, op, *args)`` by ``op(*args)``.

    torch.export threads a token through effectful ops (``_linalg_check_errors`` after
    ``linalg_inv_ex``, ``_assert_async``) to keep their order; a compiled graph has no side
    effects to order, so the token goes. An op that returns nothing is a check that raises on
    invalid input (a singular matrix) and does nothing on valid input: it is dropped, as the
    frontend drops ``_assert_async``. An op with results becomes a plain node, converted (or
    kept as an ``aten_call``) like any other."""
    out_node = next(n for n in graph.nodes if n.op == "output")
    for n in list(graph.nodes):
        if n.op != "call_function" or getattr(n.target, "__name__", None) != "with_effects":
            continue
        inner, args = n.args[1], n.args[2:]
        vals = n.meta.get("val") or (None,)
        new = None
        if isinstance(inner, torch._ops.OpOverload) and inner._schema.returns:
            with graph.inserting_before(n):
                new = graph.call_function(inner, tuple(args), dict(n.kwargs))
            new.meta = dict(n.meta)
            new.meta["val"] = vals[1] if len(vals) == 2 else tuple(vals[1:])
        for u in list(n.users):
            i = u.args[1] if u.target is operator.getitem else None
            if i == 0 or i is None:  # the token (only ever returned as a TOKEN output)
                out_node.args = (tuple(None if a is u else a for a in out_node.args[0]),)
                if u is not out_node and not u.users:
                    graph.erase_node(u)
                continue
            if new is None:
                raise CaptureError(f"with_effects node {n.name}: {inner} returns nothing but "
                                   f"its output {i} is read")
            if len(vals) == 2:
                u.replace_all_uses_with(new)
                graph.erase_node(u)
            else:
                u.args = (new, i - 1)
        if not n.users:
            graph.erase_node(n)


def _convert(ep: Any, model_name: str, dynamic_dims: Any) -> Graph:
    gm = ep.graph_module
    _unwrap_effects(gm.graph)
    fx_nodes = list(gm.graph.nodes)
    # first pass: every op the model needs, so one error names them all
    missing = []
    for n in fx_nodes:
        if n.op != "call_function" or n.target is operator.getitem or n.target in _SYM_FUNCS:
            continue
        name = str(n.target)
        if name in CONVERTERS or name in _SKIP or _is_symbolic_node(n):
            continue
        why = opaque_reason(n)  # no converter: kept whole as an aten_call where it can be
        if why is not None:
            path = _module_path(n)  # the location also says why it cannot be an aten_call
            missing.append((name, n.name, f"{path}; {why}" if path else why))
    if missing:
        raise UnsupportedOpsError(
            "torch", missing,
            hint="To support an op, add one entry to CONVERTERS (@converts in the module of "
                 "its family under compiler/frontends/torch_frontend/; and, if the IR lacks the "
                 "op, one entry in compiler/ir/ops/ with a case in tests/ir/test_ops.py).")

    g = Graph(model_name)
    sig = ep.graph_signature
    kinds = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
    user_nodes = [n for n in fx_nodes if n.op == "placeholder"
                  and kinds[n.name].kind.name == "USER_INPUT"]
    cx = Ctx(g, _symbol_map(user_nodes, dynamic_dims))
    env: dict[torch.fx.Node, Any] = {}
    input_names: list[str] = []
    flat_kinds: list[str] = []  # per flat user input: "tensor" or "literal"
    for n in fx_nodes:
        if n.op != "placeholder":
            continue
        spec = kinds[n.name]
        kind = spec.kind.name
        cx.node = n
        cx.provenance = Provenance(f"torch:{spec.target or n.name}" if kind != "USER_INPUT"
                                   else f"torch:input {n.name}")
        if kind == "TOKEN":  # the effect token (see _unwrap_effects): nothing to compute
            env[n] = None
        elif kind == "USER_INPUT":
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor):
                t = TensorType(ir_dtype(val.dtype), tuple(cx.dim(d) for d in val.shape))
                env[n] = g.add_input(t, n.name)
                input_names.append(n.name)
                flat_kinds.append("tensor")
            else:
                env[n] = cx.dim(val) if isinstance(val, torch.SymInt) else val
                flat_kinds.append("literal")
        elif kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            t = _tensor_of(ep, spec)
            arr = to_numpy(t.detach().cpu())
            v = g.add_const(arr, provenance=cx.provenance)
            v.name = (spec.target or n.name).replace(".", "_")
            env[n] = v
        else:
            raise CaptureError(f"exported input {n.name} of kind {kind} is not supported")

    for n in fx_nodes:
        if n.op != "call_function":
            continue
        cx.node = n
        name = str(n.target)
        path = _module_path(n)
        cx.provenance = Provenance(f"torch:{path} ({name})" if path else f"torch:({name})")
        if n.target is operator.getitem:
            src, i = env[n.args[0]], n.args[1]
            if src is None or src[i] is None:
                raise UnsupportedOpsError("torch", [(f"{n.args[0].target} output {i}", n.name,
                                                     path)])
            env[n] = src[i]
            continue
        if name in _SKIP:
            continue
        if n.target in _SYM_FUNCS or (_is_symbolic_node(n) and name.startswith("aten.sym_")):
            env[n] = cx.dim(n.meta["val"]) if isinstance(n.meta["val"], torch.SymInt) \
                else n.meta["val"]
            continue
        if _is_symbolic_node(n):
            env[n] = n.meta["val"]
            continue
        args = tuple(_resolve(env, x) for x in n.args)
        kwargs = {k: _resolve(env, x) for k, x in n.kwargs.items()}
        if name not in CONVERTERS:
            out = convert_aten_call(cx, args, kwargs)
        else:
            out = _convert_node(cx, n, args, kwargs)
        if isinstance(out, Value):
            out.name = out.name or n.name
        elif isinstance(out, list):
            for i, v in enumerate(out):
                if isinstance(v, Value) and v.name is None:
                    v.name = f"{n.name}_{i}"
        env[n] = out

    out_node = next(n for n in fx_nodes if n.op == "output")
    # Only the user's outputs: torch.export also returns the new values of the buffers and
    # inputs an op mutates (batch_norm's running stats in training mode) and effect tokens,
    # which the eager call does not return (out_spec holds the user outputs only).
    flat_out = [o for o, spec in zip(out_node.args[0], sig.output_specs, strict=True)
                if spec.kind.name == "USER_OUTPUT"]
    outputs: list[Value] = []
    template: list[Any] = []  # per flat output: an output index, or a literal
    for o in flat_out:
        v = env.get(o) if isinstance(o, torch.fx.Node) else o
        if isinstance(v, Value):
            template.append(("out", len(outputs)))
            outputs.append(v)
        else:
            template.append(("literal", v))
    g.set_outputs(outputs)
    for node in reversed(list(g.nodes)):  # parameters and buffers the graph never reads
        if node.op == "const" and not g.has_uses(node.out):
            g.remove_node(node)
    g.meta["torch"] = {"in_spec": ep.call_spec.in_spec, "out_spec": ep.call_spec.out_spec,
                       "input_names": input_names, "input_kinds": flat_kinds,
                       "outputs": template}
    return g


def _convert_node(cx: Ctx, n: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    """``n`` through its converter; a case the converter or the IR op declines (a 3-d conv,
    a divisor override, an input dtype the IR op lacks) is kept whole as an ``aten_call``
    where the op qualifies, rather than refusing the model."""
    name = str(n.target)
    first = len(cx.graph.nodes)
    try:
        out = CONVERTERS[name](cx, **_bind(n.target, args, kwargs))
        # a converter leaves None for an extra output the IR op lacks (layer_norm's mean and
        # rstd, max_pool's indices); when the model reads one, the whole node runs as ATen
        read = {u.args[1] for u in n.users if u.target is operator.getitem}
        if not isinstance(out, list) or all(out[i] is not None for i in read) \
                or opaque_reason(n) is not None:
            return out
    except UnsupportedOpsError:
        raise
    except (CaptureError, IRError, TypeError) as e:
        if opaque_reason(n) is not None:
            if isinstance(e, TypeError):
                raise CaptureError(f"converting {name} at {n.name} ({_module_path(n)}): "
                                   f"{e}") from None
            raise
    for node in reversed(list(cx.graph.nodes)[first:]):  # what the converter left half done
        if not any(cx.graph.has_uses(v) for v in node.outputs):
            cx.graph.remove_node(node)
    return convert_aten_call(cx, args, kwargs)


def _resolve(env: dict, x: Any) -> Any:
    if isinstance(x, torch.fx.Node):
        return env[x]
    if isinstance(x, (list, tuple)):
        return type(x)(_resolve(env, y) for y in x)
    return x


def unflatten_outputs(graph: Graph, arrays: Any, as_torch: bool = False) -> Any:
    """Rebuild the eager output structure (tuple, dict, ``ModelOutput``) from flat outputs."""
    meta = graph.meta.get("torch")
    if meta is None:
        raise CaptureError("this graph was not captured from torch (no graph.meta['torch'])")
    if not isinstance(arrays, (list, tuple)):
        arrays = [arrays]
    arrays = [torch.from_numpy(np.array(a)) if as_torch else a for a in arrays]
    spec, outputs = meta["out_spec"], meta["outputs"]
    if spec.is_leaf() and len(outputs) == 1 and outputs[0][0] == "out":
        return arrays[outputs[0][1]]  # a model returning one tensor: no tree to rebuild
    flat = [arrays[i] if kind == "out" else i for kind, i in meta["outputs"]]
    return pytree.tree_unflatten(flat, meta["out_spec"])


def flatten_inputs(graph: Graph, *args: Any, **kwargs: Any) -> list[Any]:
    """The graph's input arrays from eager-style ``(*args, **kwargs)`` (non-tensors dropped)."""
    meta = graph.meta["torch"]
    kw_spec = meta["in_spec"].child(1)
    kwargs = {k: kwargs[k] for k in kw_spec.context if k in kwargs}
    flat = pytree.tree_leaves((tuple(args), kwargs))
    return [x for x, k in zip(flat, meta["input_kinds"], strict=False) if k == "tensor"]
