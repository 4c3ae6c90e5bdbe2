"""Fused ops: a heavy op (conv1d, conv2d, linear, matmul) with its elementwise epilogue in one node.

    fused_<op>(x, w, bias?, residual?) {<op's attrs>, activation, alpha, beta, residual}

      y = op(x, w) + bias                   bias: [C], on the op's channel axis (1 for conv, the
                                            last axis for linear and matmul)
      residual = "pre":   y = act(y + r)    ResNet: relu(conv(x) + shortcut)
      residual = "post":  y = act(y) + r    a residual added after the activation
      residual = "none":  y = act(y)

``fuse-epilogue`` makes these; backends read the attributes directly (oneDNN post-ops: a sum
then an eltwise, or the reverse; TVM: the epilogue of the op's compute). ``r`` has exactly the
output's type (no broadcasting). A residual needs the bias input (zeros when the op had none),
so an input's position alone says what it is.

Activations (``alpha``/``beta`` as in oneDNN's eltwise post-op; 0 when unused):

| activation | y | alpha | beta |
|---|---|---|---|
| none | y | | |
| relu | max(y, 0) | | |
| leaky_relu | y if y >= 0 else alpha * y | slope | |
| clip | min(max(y, alpha), beta) (relu6: clip 0, 6) | min | max |
| gelu | y * Phi(y), via erf | | |
| gelu_tanh | the tanh approximation of gelu | | |
| silu | y * sigmoid(y) | | |
| sigmoid | 1 / (1 + exp(-y)) | | |
| hardswish | y * relu6(y + 3) / 6 | | |
| tanh | tanh(y) | | |

The reference composes the table's own references (the base op, add, the activation), each
rounding to the input dtype as the unfused graph does, so a fused graph interprets bit-identically
to the unfused one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtinfer.errors import IRError
from rtinfer.ir.ops import elementwise, linalg, nn  # noqa: F401  (the ops fused here)
from rtinfer.ir.ops.common import need_float
from rtinfer.ir.ops.registry import BROADCAST, OUT_FUSABLE, Attr, PortAxis, get_op, op
from rtinfer.ir.types import TensorType, dims_equal


# activation -> (the op-table op, its attributes from (alpha, beta), the attributes used)
@dataclass(frozen=True)
class Activation:
    """What an ``activation`` attribute value stands for: the op-table op, which of its
    attributes the fused ``alpha``/``beta`` carry, and the attributes it fixes."""

    op: str | None
    params: dict[str, str] = field(default_factory=dict)  # "alpha"/"beta" -> the op's attr
    fixed: dict[str, Any] = field(default_factory=dict)


ACTIVATIONS: dict[str, Activation] = {
    "none": Activation(None),
    "relu": Activation("relu"),
    "leaky_relu": Activation("leaky_relu", {"alpha": "alpha"}),
    "clip": Activation("clip", {"alpha": "min", "beta": "max"}),
    "gelu": Activation("gelu", fixed={"approximate": "none"}),
    "gelu_tanh": Activation("gelu", fixed={"approximate": "tanh"}),
    "silu": Activation("silu"),
    "sigmoid": Activation("sigmoid"),
    "hardswish": Activation("hardswish"),
    "tanh": Activation("tanh"),
}
RESIDUAL_MODES = ("none", "pre", "post")

EPILOGUE_ATTRS = {
    "activation": Attr("str", "none", tuple(ACTIVATIONS)),
    "alpha": Attr("float", 0.0),
    "beta": Attr("float", 0.0),
    "residual": Attr("str", "none", RESIDUAL_MODES),
}


def activation_op(activation: str, alpha: float, beta: float) -> tuple[str, dict] | None:
    """The op-table op (and its attributes) an ``activation`` attribute stands for."""
    a = ACTIVATIONS[activation]
    if a.op is None:
        return None
    given = {"alpha": alpha, "beta": beta}
    return a.op, {**a.fixed, **{attr: given[p] for p, attr in a.params.items()}}


def fused_activation(op: str, attrs: dict) -> tuple[str, Any, Any] | None:
    """The inverse of ``activation_op``: the (activation, alpha, beta) a node of ``op`` with
    ``attrs`` becomes inside a fused op, or None if no activation stands for it."""
    for name, a in ACTIVATIONS.items():
        if a.op == op and all(attrs.get(k) == v for k, v in a.fixed.items()):
            vals = {p: attrs[attr] for p, attr in a.params.items()}
            return name, vals.get("alpha", 0.0), vals.get("beta", 0.0)
    return None


def activation_ops() -> frozenset[str]:
    """The ops an epilogue can absorb as its activation."""
    return frozenset(a.op for a in ACTIVATIONS.values() if a.op is not None)


def apply_epilogue(y: np.ndarray, residual: np.ndarray | None, attrs: dict) -> np.ndarray:
    """act(y + r), act(y) + r or act(y), with the table's references."""
    add = get_op("add")
    if attrs["residual"] == "pre":
        y = add.evaluate([y, residual], {})[0]
    act = activation_op(attrs["activation"], attrs["alpha"], attrs["beta"])
    if act is not None:
        name, act_attrs = act
        opdef = get_op(name)
        y = opdef.evaluate([y], opdef.complete_attrs(act_attrs))[0]
    if attrs["residual"] == "post":
        y = add.evaluate([y, residual], {})[0]
    return y


def _check_epilogue(ins: list[TensorType], out: TensorType, attrs: dict, n_base: int) -> None:
    """The epilogue's inputs: bias [C] at ``n_base``, residual (the output's type) after it."""
    need_float(out, "the output")
    activation = attrs["activation"]
    used = ACTIVATIONS[activation].params
    for k in ("alpha", "beta"):
        if k not in used and attrs[k] != 0.0:
            raise IRError(f"activation {activation} takes no {k} (it must be 0.0)")
    has_residual = attrs["residual"] != "none"
    if len(ins) != n_base + 1 + has_residual and not (len(ins) == n_base and not has_residual):
        want = "x, weight, bias, residual" if has_residual else "x, weight and optionally bias"
        raise IRError(f"residual={attrs['residual']} takes {want}; got {len(ins)} inputs "
                      f"(a residual needs the bias input: zeros when there is none)")
    if has_residual and ins[-1] != out:
        raise IRError(f"the residual must have the output's type {out}, got {ins[-1]}")


def _residual_channels(groups: list[frozenset[PortAxis]],
                       index: int) -> list[frozenset[PortAxis]]:
    """Add the residual's axes (input ``index``) to the groups of the output axes they match."""
    out_groups = []
    for g in groups:
        extra = {("in", index, ax) for port, i, ax in g if port == "out" and i == 0}
        out_groups.append(frozenset(g | extra))
    return out_groups


def _fused_heavy(base: str, bias_inline: bool) -> None:
    """``fused_<base>``; ``bias_inline``: the base op takes the bias itself (conv, linear)."""
    base_def = get_op(base)
    n_base = len(base_def.inputs) - (1 if bias_inline else 0)  # x and weight
    names = list(base_def.inputs[:n_base]) + ["bias?", "residual?"]
    base_attr_names = tuple(base_def.attrs)

    def split(attrs: dict) -> dict:
        return {k: attrs[k] for k in base_attr_names}

    def infer(ins: list[TensorType], attrs: dict) -> TensorType:
        bias = ins[n_base:n_base + 1]
        if bias_inline:
            out = base_def.infer_types(ins[:n_base] + bias, split(attrs))[0]
        else:
            out = base_def.infer_types(ins[:n_base], split(attrs))[0]
            if out.rank < 1:
                raise IRError(f"{base} output {out} has no channel axis for a bias")
            if bias and (bias[0].rank != 1 or bias[0].dtype != out.dtype
                         or not dims_equal(bias[0].shape[0], out.shape[-1])):
                raise IRError(f"bias must be {out.dtype}[{out.shape[-1]}], got {bias[0]}")
        _check_epilogue(ins, out, attrs, n_base)
        return out

    def ref(*args: Any, **attrs: Any) -> np.ndarray:
        arrays, bias, residual = list(args[:n_base]), args[n_base], args[n_base + 1]
        if bias_inline:
            y = base_def.evaluate(arrays + [bias], split(attrs))[0]
        else:
            y = base_def.evaluate(arrays, split(attrs))[0]
            if bias is not None:
                y = get_op("add").evaluate([y, bias], {})[0]
        return apply_epilogue(y, residual, attrs)

    def channels(ins: list[TensorType], attrs: dict) -> list[frozenset[PortAxis]] | None:
        base_ins = ins[:n_base + (1 if bias_inline else 0)]
        groups = base_def.channel_groups(base_ins, split(attrs))
        if groups is None:
            return None
        out = infer(ins, attrs)
        if not bias_inline and len(ins) > n_base:  # the bias follows the output's last axis
            last = ("out", 0, out.rank - 1)
            groups = [g | {("in", n_base, 0)} if last in g else g for g in groups]
        if attrs["residual"] != "none":
            groups = _residual_channels(groups, n_base + 1)
        return groups

    op(f"fused_{base}", names, infer, ref, attrs={**base_def.attrs, **EPILOGUE_ATTRS},
       traits=[OUT_FUSABLE], channels=channels, weight=base_def.weight, cost=base_def.cost,
       prune=base_def.prune,
       doc=f"{base} + bias, then the epilogue: act(y + residual), act(y) + residual or act(y) "
           f"(activation, alpha, beta, residual=none|pre|post); made by fuse-epilogue")


_fused_heavy("conv1d", bias_inline=True)
_fused_heavy("conv2d", bias_inline=True)
_fused_heavy("linear", bias_inline=True)
_fused_heavy("matmul", bias_inline=False)

FUSED_OPS = {"conv1d": "fused_conv1d", "conv2d": "fused_conv2d", "linear": "fused_linear",
             "matmul": "fused_matmul"}


# -- fused_elementwise: a subgraph of elementwise/broadcast ops as one node --------------------


def _fused_elementwise_infer(ins: list[TensorType], attrs: dict) -> list[TensorType]:
    body = attrs["body"]
    if len(ins) != len(body.inputs):
        raise IRError(f"the body takes {len(body.inputs)} inputs, the node has {len(ins)}")
    for i, (t, v) in enumerate(zip(ins, body.inputs, strict=True)):
        if t != v.type:
            raise IRError(f"input {i} is {t} but the body's parameter {i} is {v.type}")
    if not body.outputs:
        raise IRError("the body returns nothing")
    return [v.type for v in body.outputs]


def _fused_elementwise_ref(xs: list[np.ndarray], body: Any) -> list[np.ndarray]:
    from rtinfer.ir.interpreter import interpret_values

    values = interpret_values(body, xs)
    return [values[v] for v in body.outputs]


def _fused_elementwise_channels(ins: list[TensorType], attrs: dict
                                ) -> list[frozenset[PortAxis]] | None:
    """As an elementwise op when there is one output of the inputs' broadcast shape (every
    axis then flows straight through the body's elementwise/broadcast ops); otherwise the
    node blocks channel pruning."""
    from rtinfer.ir.ops.common import broadcast_shapes
    from rtinfer.ir.ops.registry import elementwise_channels

    outs = attrs["body"].outputs
    if len(outs) != 1 or not ins:
        return None
    shape = broadcast_shapes(*(t.shape for t in ins))
    if len(shape) != outs[0].type.rank or not all(map(dims_equal, shape, outs[0].type.shape)):
        return None
    return elementwise_channels(ins, attrs)


op("fused_elementwise", ["*xs"], _fused_elementwise_infer, _fused_elementwise_ref,
   attrs={"body": Attr("graph")}, traits=[BROADCAST], channels=_fused_elementwise_channels,
   doc="the elementwise/broadcast subgraph `body` (a func over the node's inputs, one result "
       "per output) as one node; made by fuse-elementwise, interpreted op by op")
