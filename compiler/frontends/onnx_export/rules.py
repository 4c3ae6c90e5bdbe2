"""The export rules, one per IR op (``RULES``: op -> rule). A rule gets the emitter, the site and
the ONNX tensors of the node's inputs, and returns the tensor(s) of the node's outputs; a node
it cannot express raises ``rtinfer.errors.Unsupported`` with the reason."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs
import sympy

from rtinfer.errors import Unsupported
from rtinfer.frontends.onnx_export.context import Emitter, Rule, Site, chain, simple
from rtinfer.ir.constants import ElidedTensor
from rtinfer.ir.graph import Value
from rtinfer.ir.ops import get_op
from rtinfer.ir.ops.common import expand_ints, expand_pads, norm_axis
from rtinfer.ir.ops.fused import FUSED_OPS, activation_op
from rtinfer.ir.ops.layouts import permute_type, to_channels_first, to_channels_last
from rtinfer.ir.types import Dim, DType, TensorType, dims_equal


def _gelu(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    if e.opset >= 20:
        return e.op("Gelu", x, {"approximate": s.attrs["approximate"]})
    dt, v = s.x.dtype, x[0]
    if s.attrs["approximate"] == "tanh":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = e.op("Mul", [e.op("Mul", [v, v]), v])
        inner = e.op("Add", [v, e.op("Mul", [cube, e.scalar(0.044715, dt)])])
        t = e.op("Tanh", [e.op("Mul", [inner, e.scalar(math.sqrt(2 / math.pi), dt)])])
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        t = e.op("Erf", [e.op("Mul", [v, e.scalar(1 / math.sqrt(2), dt)])])
    half_x = e.op("Mul", [v, e.scalar(0.5, dt)])
    return e.op("Mul", [half_x, e.op("Add", [t, e.scalar(1.0, dt)])])


def _silu(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # x * sigmoid(x)
    return e.op("Mul", [x[0], e.op("Sigmoid", x)])


def _softplus(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # x where beta x > threshold, else softplus(beta x) / beta
    dt, beta = s.x.dtype, s.attrs["beta"]
    bx = x[0] if beta == 1.0 else e.op("Mul", [x[0], e.scalar(beta, dt)])
    sp = e.op("Softplus", [bx])
    if beta != 1.0:
        sp = e.op("Div", [sp, e.scalar(beta, dt)])
    linear = e.op("Greater", [bx, e.scalar(s.attrs["threshold"], dt)])
    return e.op("Where", [linear, x[0], sp])


def _clip(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    lo, hi, dt = s.attrs["min"], s.attrs["max"], s.x.dtype
    return e.op("Clip", [x[0], None if lo == -math.inf else e.scalar(lo, dt),
                         None if hi == math.inf else e.scalar(hi, dt)])


def _cast(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    return e.cast(x[0], s.attrs["dtype"])


def _mod(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    if not s.x.dtype.is_float:
        return e.op("Mod", x, {"fmod": 0})  # integer Mod takes the divisor's sign
    # floats need fmod=1 (C fmod, the dividend's sign); move r to the divisor's sign:
    # r = fmod(a, b); r + b where r * b < 0
    r = e.op("Mod", x, {"fmod": 1})
    flip = e.op("Less", [e.op("Mul", [r, x[1]]), e.scalar(0, s.x.dtype)])
    return e.op("Where", [flip, e.op("Add", [r, x[1]]), r])


def _not(op_type: str) -> Rule:
    return lambda e, s, x: e.op("Not", [e.op(op_type, x)])


def _linear(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    if s.x.rank == 2:  # x @ w.T + b
        return e.op("Gemm", x, {"transB": 1})
    y = e.op("MatMul", [x[0], e.op("Transpose", [x[1]], {"perm": [1, 0]})])
    return e.op("Add", [y, x[2]]) if len(x) > 2 else y


def _conv(transpose: bool) -> Rule:
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        nd = s.x.rank - 2
        a = s.attrs
        attrs = {"kernel_shape": list(s.in_types[1].shape[2:]),
                 "strides": list(expand_ints(a["stride"], nd, "stride")),
                 "pads": list(expand_pads(a["pad"], nd)),
                 "dilations": list(expand_ints(a["dilation"], nd, "dilation")),
                 "group": a["groups"]}
        if transpose:
            attrs["output_padding"] = list(expand_ints(a["output_padding"], nd, "output_padding"))
        return e.op("ConvTranspose" if transpose else "Conv", x, attrs)
    return rule


def _pool(kind: str) -> Rule:
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        nd = s.x.rank - 2
        a = s.attrs
        kernel = expand_ints(a["kernel"], nd, "kernel")
        attrs = {"kernel_shape": list(kernel),
                 "strides": list(expand_ints(a["stride"] or kernel, nd, "stride")),
                 "pads": list(expand_pads(a["pad"], nd)), "ceil_mode": int(a["ceil_mode"])}
        if kind == "max":
            attrs["dilations"] = list(expand_ints(a["dilation"], nd, "dilation"))
            return e.op("MaxPool", x, attrs)
        attrs["count_include_pad"] = int(a["count_include_pad"])
        return e.op("AveragePool", x, attrs)
    return rule


def _adaptive_avg_pool(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    oh, ow = expand_ints(s.attrs["output_size"], 2, "output_size")
    if (oh, ow) == (1, 1):
        return e.op("GlobalAveragePool", x)
    h, w = s.x.shape[2:]
    if not isinstance(h, int) or not isinstance(w, int):
        raise Unsupported(s.node.op, f"adaptive pooling of symbolic spatial dims {s.x}")
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        return e.op("AveragePool", x, {"kernel_shape": k, "strides": k})

    def averaging(n: int, m: int) -> np.ndarray:
        # torch's windows: [floor(i n / m), ceil((i + 1) n / m)) for output i
        a = np.zeros((m, n), np.float64)
        for i in range(m):
            lo, hi = (i * n) // m, -(-(i + 1) * n // m)
            a[i, lo:hi] = 1.0 / (hi - lo)
        return a.astype(s.x.dtype.np)

    # y = A_h @ x @ A_w^T over the last two axes
    rows = e.op("MatMul", [e.const(averaging(h, oh)), x[0]])
    return e.op("MatMul", [rows, e.const(averaging(w, ow).T)])


def _interpolate(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    a, nd = s.attrs, s.x.rank - 2
    if a["mode"] == "nearest":  # torch: src = floor(dst / scale)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}
    else:
        attrs = {"mode": "linear", "coordinate_transformation_mode":
                 "align_corners" if a["align_corners"] else "pytorch_half_pixel"}
    attrs["axes"] = list(range(2, 2 + nd))
    if a["size"]:
        sizes = e.ints(expand_ints(a["size"], nd, "size"))
        return e.op("Resize", [x[0], None, None, sizes], attrs)
    scale = tuple(a["scale"]) * nd if len(a["scale"]) == 1 else tuple(a["scale"])
    return e.op("Resize", [x[0], None, e.const(np.asarray(scale, np.float32))], attrs)


def _param(e: Emitter, x: list[gs.Tensor], i: int, dims: Sequence[Dim], value: float,
           dt: DType) -> gs.Tensor:
    """Optional input ``i``, or a constant standing in for it (ONNX needs scale and bias)."""
    return x[i] if len(x) > i else e.filled(dims, value, dt)


def _batch_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    c, dt = s.x.shape[1], s.x.dtype
    return e.op("BatchNormalization",
                [x[0], _param(e, x, 3, [c], 1.0, dt), _param(e, x, 4, [c], 0.0, dt), x[1], x[2]],
                {"epsilon": s.attrs["eps"]})


def _layer_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    axis = norm_axis(s.attrs["axis"], s.x.rank)
    gamma = _param(e, x, 1, s.x.shape[axis:], 1.0, s.x.dtype)
    return e.op("LayerNormalization", [x[0], gamma] + x[2:3],
                {"axis": axis, "epsilon": s.attrs["eps"]})


def _rms_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    axis, dt = norm_axis(s.attrs["axis"], s.x.rank), s.x.dtype
    if e.opset >= 23:
        gamma = _param(e, x, 1, s.x.shape[axis:], 1.0, dt)
        return e.op("RMSNormalization", [x[0], gamma], {"axis": axis,
                                                        "epsilon": s.attrs["eps"]})
    # x / sqrt(mean(x^2 over axis..) + eps) * gamma
    ms = e.op("ReduceMean", [e.op("Mul", [x[0], x[0]]), e.ints(range(axis, s.x.rank))],
              {"keepdims": 1})
    rms = e.op("Sqrt", [e.op("Add", [ms, e.scalar(s.attrs["eps"], dt)])])
    y = e.op("Div", [x[0], rms])
    return e.op("Mul", [y, x[1]]) if len(x) > 1 else y


def _channel_param(e: Emitter, p: gs.Tensor, rank: int) -> gs.Tensor:
    """A per-channel [C] vector shaped [C, 1, ...] to broadcast against [N, C, *spatial]."""
    return p if rank <= 2 else e.op("Unsqueeze", [p, e.ints(range(1, rank - 1))])


def _group_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # [N, C, ...] -> [N, G, -1]; normalize over the last axis; back to x's shape; affine
    dt = s.x.dtype
    xr = e.op("Reshape", [x[0], e.ints([0, s.attrs["groups"], -1])])
    last = e.ints([2])
    d = e.op("Sub", [xr, e.op("ReduceMean", [xr, last], {"keepdims": 1})])
    var = e.op("ReduceMean", [e.op("Mul", [d, d]), last], {"keepdims": 1})
    y = e.op("Div", [d, e.op("Sqrt", [e.op("Add", [var, e.scalar(s.attrs["eps"], dt)])])])
    y = e.op("Reshape", [y, e.op("Shape", [x[0]])])
    if len(x) > 1:
        y = e.op("Mul", [y, _channel_param(e, x[1], s.x.rank)])
    if len(x) > 2:
        y = e.op("Add", [y, _channel_param(e, x[2], s.x.rank)])
    return y


def _instance_norm(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    c, dt = s.x.shape[1], s.x.dtype
    return e.op("InstanceNormalization",
                [x[0], _param(e, x, 1, [c], 1.0, dt), _param(e, x, 2, [c], 0.0, dt)],
                {"epsilon": s.attrs["eps"]})


def _quant_vectors(e: Emitter, qp, dt: DType) -> tuple[gs.Tensor, gs.Tensor]:
    return e.const(qp.scale, np.float32), e.const(qp.zero_point.astype(dt.np))


def _broadcast_param(a: np.ndarray, axis: int | None, rank: int) -> np.ndarray:
    if axis is None:
        return a
    shape = [1] * rank
    shape[axis] = -1
    return a.reshape(shape)


def _quantize(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    qp, dt = s.out.quant, s.out.dtype
    v = x[0] if s.x.dtype is DType.f32 else e.cast(x[0], DType.f32)
    if dt in (DType.i8, DType.u8):
        attrs = {} if qp.axis is None else {"axis": qp.axis}
        return e.op("QuantizeLinear", [v, *_quant_vectors(e, qp, dt)], attrs)
    # other widths (QuantizeLinear has no int32 output): saturate(rint(x / s) + zp) in f64
    scale = e.const(_broadcast_param(qp.scale, qp.axis, s.x.rank), np.float32)
    q = e.cast(e.op("Round", [e.op("Div", [v, scale])]), DType.f64)
    zp = e.const(_broadcast_param(qp.zero_point, qp.axis, s.x.rank), np.float64)
    info = np.iinfo(dt.np)
    q = e.op("Clip", [e.op("Add", [q, zp]), e.scalar(info.min, DType.f64),
                      e.scalar(info.max, DType.f64)])
    return e.cast(q, dt)


def _dequantize(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    qp, dt = s.x.quant, s.x.dtype
    if dt in (DType.i8, DType.u8):
        attrs = {} if qp.axis is None else {"axis": qp.axis}
        return e.op("DequantizeLinear", [x[0], *_quant_vectors(e, qp, dt)], attrs)
    # (q - zp) * scale, subtracting in int64 as the reference does
    zp = e.const(_broadcast_param(qp.zero_point, qp.axis, s.x.rank), np.int64)
    d = e.cast(e.op("Sub", [e.cast(x[0], DType.i64), zp]), DType.f32)
    return e.op("Mul", [d, e.const(_broadcast_param(qp.scale, qp.axis, s.x.rank), np.float32)])


def _reduce(op_type: str) -> Rule:
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        axes = s.attrs["axes"]  # [] (no axes input) reduces every axis
        return e.op(op_type, [x[0], e.ints(axes) if axes else None],
                    {"keepdims": int(s.attrs["keepdims"])})
    return rule


def _reshape_to(e: Emitter, x: gs.Tensor, x_type: TensorType,
                shape: Sequence[Dim]) -> gs.Tensor:
    """Reshape to the (resolved) output shape; symbolic dims equal to the input's dim at the
    same position are copied (0), one other symbolic dim becomes -1, the rest are computed."""
    dims = list(shape)
    if 0 in dims:  # a literal zero-size dim: spell every dim out
        return e.op("Reshape", [x, e.shape(dims)], {"allowzero": 1})
    target: list[Dim] = []
    for i, d in enumerate(dims):
        copy = not isinstance(d, int) and i < x_type.rank and dims_equal(d, x_type.shape[i])
        target.append(0 if copy else d)
    unknown = [i for i, d in enumerate(target) if not isinstance(d, int)]
    if len(unknown) == 1:
        target[unknown[0]] = -1
    return e.op("Reshape", [x, e.shape(target)])


def _reshape(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    return _reshape_to(e, x[0], s.x, s.out.shape)


def _squeeze(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    axes = s.attrs["axes"] or [i for i, d in enumerate(s.x.shape) if d == 1]
    if not axes:
        return e.op("Identity", x)
    return e.op("Squeeze", [x[0], e.ints([norm_axis(a, s.x.rank) for a in axes])])


def _unsqueeze(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    return e.op("Unsqueeze", [x[0], e.ints(s.attrs["axes"])])


def _transpose(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    perm = [p % s.x.rank for p in s.attrs["perm"]] or list(reversed(range(s.x.rank)))
    return e.op("Transpose", x, {"perm": perm})


def _expand(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # ONNX Expand broadcasts both ways: 1 keeps the input's dim
    shape, lead = s.out.shape, s.out.rank - s.x.rank
    target = [1 if j >= lead and dims_equal(d, s.x.shape[j - lead]) else d
              for j, d in enumerate(shape)]
    return e.op("Expand", [x[0], e.shape(target)])


def _split(e: Emitter, s: Site, x: list[gs.Tensor]) -> list[gs.Tensor]:
    axis = norm_axis(s.attrs["axis"], s.x.rank)
    sizes = e.shape([t.shape[axis] for t in s.out_types])
    return e.op("Split", [x[0], sizes], {"axis": axis}, n_out=len(s.out_types))


def _slice(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    a = s.attrs
    axes = a["axes"] or range(len(a["starts"]))
    steps = a["steps"] or [1] * len(a["starts"])
    lim = np.iinfo(np.int64)
    clamp = [int(np.clip(v, lim.min, lim.max)) for v in a["starts"]], \
            [int(np.clip(v, lim.min, lim.max)) for v in a["ends"]]
    return e.op("Slice", [x[0], e.ints(clamp[0]), e.ints(clamp[1]), e.ints(axes),
                          e.ints(steps)])


def _pad(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    mode = s.attrs["mode"]
    value = e.scalar(s.attrs["value"], s.x.dtype) if mode == "constant" else None
    return e.op("Pad", [x[0], e.ints(s.attrs["pads"]), value], {"mode": mode})


def _sdpa(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # softmax(q @ k^T * scale [+ mask | masked to -inf]) @ v
    q, k, v = x[:3]
    qt, kt, dt = s.in_types[0], s.in_types[1], s.x.dtype
    perm = list(range(kt.rank))
    perm[-2:] = perm[-1], perm[-2]
    scores = e.op("MatMul", [q, e.op("Transpose", [k], {"perm": perm})])
    if s.attrs["scale"]:
        scale = e.scalar(s.attrs["scale"], dt)
    elif isinstance(qt.shape[-1], int):
        scale = e.scalar(1.0 / math.sqrt(qt.shape[-1]), dt)
    else:
        scale = e.op("Reciprocal", [e.op("Sqrt", [e.cast(e.dim(qt.shape[-1]), dt)])])
    scores = e.op("Mul", [scores, scale])
    neg_inf = e.scalar(-np.inf, dt)
    if s.attrs["causal"]:
        n_q, n_k = qt.shape[-2], kt.shape[-2]
        if isinstance(n_q, int) and isinstance(n_k, int):
            keep = e.const(np.tril(np.ones((n_q, n_k), bool)))
        else:
            ones = e.filled([n_q, n_k], 1.0, DType.f32)
            keep = e.cast(e.op("Trilu", [ones], {"upper": 0}), DType.bool)
        scores = e.op("Where", [keep, scores, neg_inf])
    if len(x) > 3:
        if s.in_types[3].dtype is DType.bool:
            scores = e.op("Where", [x[3], scores, neg_inf])
        else:
            scores = e.op("Add", [scores, x[3]])
    return e.op("MatMul", [e.op("Softmax", [scores], {"axis": -1}), v])


def _mha(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # [..., S, H*D] -> Reshape [..., S, H, D] -> Transpose [..., H, S, D], the SDPA formula, and
    # back; Reshape's 0 copies a dim, so symbolic batch and sequence dims need no shape math
    h = s.attrs["num_heads"]
    heads, ins = [], []
    for t, tt in zip(x[:3], s.in_types[:3], strict=True):
        perm = list(range(tt.rank + 1))
        perm[-3:-1] = perm[-2], perm[-3]
        split = e.op("Reshape", [t, e.ints([0] * (tt.rank - 1) + [h, -1])])
        heads.append(e.op("Transpose", [split], {"perm": perm}))
        d = tt.shape[-1]
        d = d // h if isinstance(d, int) else sympy.expand(d / h)
        ins.append(TensorType(tt.dtype, tt.shape[:-2] + (h, tt.shape[-2], d)))
    core = Site(s.node, s.name, ins + s.in_types[3:], s.out_types,
                {"scale": s.attrs["scale"], "causal": s.attrs["causal"]})
    o = _sdpa(e, core, heads + x[3:])
    perm = list(range(s.out.rank + 1))
    perm[-3:-1] = perm[-2], perm[-3]
    merged = e.op("Transpose", [o], {"perm": perm})
    return e.op("Reshape", [merged, e.ints([0] * (s.out.rank - 1) + [-1])])


def _fused(base: str) -> Rule:
    """fused_<base>: the base op's rule, + bias, then the epilogue through the rules of add and
    the activation (act(y + r), act(y) + r or act(y))."""
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        base_def = get_op(base)
        inline = base_def.inputs[-1] == "bias?"  # conv and linear take the bias themselves
        n = 3 if inline else 2
        site = Site(s.node, s.name, s.in_types[:n], [s.out],
                    {k: s.attrs[k] for k in base_def.attrs})
        y = RULES[base](e, site, x[:n])
        if not inline and len(x) > 2:
            y = e.op("Add", [y, x[2]])
        if s.attrs["residual"] == "pre":
            y = e.op("Add", [y, x[3]])
        act = activation_op(s.attrs["activation"], s.attrs["alpha"], s.attrs["beta"])
        if act is not None:
            name, attrs = act
            y = RULES[name](e, Site(s.node, s.name, [s.out], [s.out],
                                    get_op(name).complete_attrs(attrs)), [y])
        if s.attrs["residual"] == "post":
            y = e.op("Add", [y, x[3]])
        return y
    return rule


def _channels_last(rule: Rule) -> Rule:
    """An op with ``layout="NHWC"``: Transpose to NCHW, the NCHW rule, Transpose back."""
    def wrapped(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        if s.attrs.get("layout", "NCHW") != "NHWC":
            return rule(e, s, x)
        cf, cl = to_channels_first(s.x.rank), to_channels_last(s.out.rank)
        site = Site(s.node, s.name, [permute_type(s.x, cf)] + s.in_types[1:],
                    [permute_type(s.out, to_channels_first(s.out.rank))] + s.out_types[1:],
                    {k: v for k, v in s.attrs.items() if k != "layout"})
        y = rule(e, site, [e.op("Transpose", [x[0]], {"perm": list(cf)})] + x[1:])
        return e.op("Transpose", [y], {"perm": list(cl)})
    return wrapped


def _fused_elementwise(e: Emitter, s: Site, x: list[gs.Tensor]) -> list[gs.Tensor]:
    """fused_elementwise: the body's nodes, inlined through their own rules."""
    body = s.attrs["body"]
    tensors: dict[Value, gs.Tensor] = dict(zip(body.inputs, x, strict=True))
    for n in body.nodes:
        if n.op == "const":
            data = n.attrs["value"]
            if isinstance(data, ElidedTensor):
                raise Unsupported(s.node.op, "a constant of the body was elided from the IR text")
            tensors[n.out] = e.const(data)
            continue
        rule = RULES.get(n.op)
        if rule is None:
            raise Unsupported(s.node.op, f"the body's op {n.op} has no ONNX export rule")
        site = Site(n, s.name, [v.type for v in n.inputs], [v.type for v in n.outputs],
                    n.attrs)
        res = rule(e, site, [tensors[v] for v in n.inputs])
        tensors.update(zip(n.outputs, res if isinstance(res, (list, tuple)) else [res],
                           strict=True))
    return [tensors[v] for v in body.outputs]


def _axis(a: dict) -> dict:
    return {"axis": a["axis"]}


def _arg(op_type: str) -> Rule:
    return simple(op_type, lambda a: {"axis": a["axis"], "keepdims": int(a["keepdims"])})


def _shift(direction: str) -> Rule:
    def rule(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
        if s.x.dtype not in (DType.u8, DType.u16, DType.u32, DType.u64):
            raise Unsupported(s.node.op, f"ONNX BitShift takes unsigned integers, got {s.x.dtype}")
        return e.op("BitShift", x, {"direction": direction})
    return rule


def _cumprod(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    # CumProd needs opset 26: out[.., i, ..] = prod_j where(j <= i, x[.., j, ..], 1), with i on
    # a new axis in front of the scanned one (needs its length static)
    rank, axis = s.x.rank, s.attrs["axis"] % s.x.rank
    n = s.x.shape[axis]
    if not isinstance(n, int):
        raise Unsupported(s.node.op, f"cumprod along the symbolic dim {n}")
    mask = np.tril(np.ones((n, n), bool)).reshape((n, n) + (1,) * (rank - axis - 1))
    xe = e.op("Unsqueeze", [x[0], e.ints([axis])])
    picked = e.op("Where", [e.const(mask), xe, e.scalar(1, s.x.dtype)])
    return e.op("ReduceProd", [picked, e.ints([axis + 1])], {"keepdims": 0})


def _resize(e: Emitter, s: Site, x: list[gs.Tensor]) -> gs.Tensor:
    a = dict(s.attrs)
    scales, sizes, roi = a.pop("scales"), a.pop("sizes"), a.pop("roi")
    attrs = {k: int(v) if isinstance(v, bool) else v for k, v in a.items()}
    roi_t = e.const(np.asarray(roi, np.float32)) if roi else None
    if sizes:
        if scales and any(not isinstance(d, int) or math.floor(d * f) != o
                          for d, f, o in zip(s.x.shape, scales, sizes, strict=True)):
            raise Unsupported(s.node.op, "resize with sizes and scales that disagree (ONNX "
                              "takes one)")
        if not scales:
            return e.op("Resize", [x[0], roi_t, None, e.ints(sizes)], attrs)
    return e.op("Resize", [x[0], roi_t, e.const(np.asarray(scales, np.float32))], attrs)


# IR op -> rule. Every op of the op table has an entry here or in NO_ONNX_FORM.
RULES: dict[str, Rule] = {
    # activations
    "relu": simple("Relu"),
    "leaky_relu": simple("LeakyRelu", lambda a: {"alpha": a["alpha"]}),
    "elu": simple("Elu", lambda a: {"alpha": a["alpha"]}),
    "selu": simple("Selu"),  # ONNX's default alpha and gamma are torch's constants
    "gelu": _gelu,  # Gelu (opset 20) or its erf / tanh formula
    "silu": _silu,
    "sigmoid": simple("Sigmoid"),
    "tanh": simple("Tanh"),
    "hardsigmoid": simple("HardSigmoid", lambda a: {"alpha": 1 / 6, "beta": 0.5}),
    "hardswish": simple("HardSwish"),
    "mish": simple("Mish"),
    "softplus": _softplus,
    "clip": _clip,
    # math
    "exp": simple("Exp"),
    "log": simple("Log"),
    "sqrt": simple("Sqrt"),
    "rsqrt": chain("Sqrt", "Reciprocal"),
    "reciprocal": simple("Reciprocal"),
    "sin": simple("Sin"),
    "cos": simple("Cos"),
    "erf": simple("Erf"),
    "floor": simple("Floor"),
    "ceil": simple("Ceil"),
    "round": simple("Round"),  # half to even in both
    "abs": simple("Abs"),
    "neg": simple("Neg"),
    "sign": simple("Sign"),
    "logical_not": simple("Not"),
    "tan": simple("Tan"),
    "asin": simple("Asin"),
    "acos": simple("Acos"),
    "atan": simple("Atan"),
    "sinh": simple("Sinh"),
    "cosh": simple("Cosh"),
    "asinh": simple("Asinh"),
    "acosh": simple("Acosh"),
    "atanh": simple("Atanh"),
    "bitwise_not": simple("BitwiseNot"),
    "bitwise_and": simple("BitwiseAnd"),
    "bitwise_or": simple("BitwiseOr"),
    "bitwise_xor": simple("BitwiseXor"),
    "shift_left": _shift("LEFT"),
    "shift_right": _shift("RIGHT"),
    "identity": simple("Identity"),
    "cast": _cast,
    # binary
    "add": simple("Add"),
    "sub": simple("Sub"),
    "mul": simple("Mul"),
    "div": simple("Div"),  # integer Div truncates toward zero, as the IR's
    "pow": simple("Pow"),
    "mod": _mod,
    "maximum": simple("Max"),
    "minimum": simple("Min"),
    "equal": simple("Equal"),
    "not_equal": _not("Equal"),
    "less": simple("Less"),
    "less_equal": simple("LessOrEqual"),
    "greater": simple("Greater"),
    "greater_equal": simple("GreaterOrEqual"),
    "logical_and": simple("And"),
    "logical_or": simple("Or"),
    "where": simple("Where"),
    # linear algebra
    "matmul": simple("MatMul"),
    "bmm": simple("MatMul"),
    "linear": _linear,  # Gemm for 2-d x, else MatMul + Add
    # convolution, pooling, resizing
    "conv1d": _conv(False),
    "conv2d": _channels_last(_conv(False)),
    "conv_transpose1d": _conv(True),
    "conv_transpose2d": _conv(True),
    "conv3d": _conv(False),
    "conv_transpose3d": _conv(True),
    "max_pool3d": _pool("max"),
    "avg_pool3d": _pool("avg"),
    "max_pool1d": _pool("max"),
    "max_pool2d": _channels_last(_pool("max")),
    "avg_pool1d": _pool("avg"),
    "avg_pool2d": _channels_last(_pool("avg")),
    "adaptive_avg_pool2d": _channels_last(_adaptive_avg_pool),
    "global_avg_pool2d": _channels_last(simple("GlobalAveragePool")),
    "interpolate": _interpolate,
    "resize": _resize,
    # normalization
    "batch_norm": _channels_last(_batch_norm),
    "layer_norm": _layer_norm,
    "rms_norm": _rms_norm,  # RMSNormalization (opset 23) or its formula
    "group_norm": _group_norm,
    "instance_norm": _instance_norm,
    "softmax": simple("Softmax", _axis),
    "log_softmax": simple("LogSoftmax", _axis),
    "hardmax": simple("Hardmax", _axis),
    # quantization
    "quantize": _quantize,
    "dequantize": _dequantize,
    # reductions
    "reduce_sum": _reduce("ReduceSum"),
    "reduce_mean": _reduce("ReduceMean"),
    "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"),
    "reduce_prod": _reduce("ReduceProd"),
    "argmax": _arg("ArgMax"),
    "argmin": _arg("ArgMin"),
    "cumprod": _cumprod,
    "topk": lambda e, s, x: e.op("TopK", [x[0], e.ints([s.attrs["k"]])], {
        "axis": s.attrs["axis"], "largest": int(s.attrs["largest"]),
        "sorted": int(s.attrs["sorted"])}, n_out=2),
    "cumsum": lambda e, s, x: e.op("CumSum", [x[0], e.const(np.int64(s.attrs["axis"]))]),
    # shape and data movement
    "reshape": _reshape,
    "flatten": _reshape,  # torch-style axis..end_axis: a Reshape to the inferred shape
    "squeeze": _squeeze,
    "unsqueeze": _unsqueeze,
    "transpose": _transpose,
    "expand": _expand,
    "concat": simple("Concat", _axis),
    "split": _split,
    "slice": _slice,
    "gather": simple("Gather", _axis),
    "gather_elements": simple("GatherElements", _axis),
    "gather_nd": simple("GatherND", lambda a: {"batch_dims": a["batch_dims"]}),
    "scatter_elements": simple("ScatterElements", lambda a: {"axis": a["axis"],
                                                             "reduction": a["reduction"]}),
    "scatter_nd": simple("ScatterND", lambda a: {"reduction": a["reduction"]}),
    "einsum": simple("Einsum", lambda a: {"equation": a["equation"]}),
    "embedding": simple("Gather", lambda a: {"axis": 0}),
    "pad": _pad,
    "tile": lambda e, s, x: e.op("Tile", [x[0], e.ints(s.attrs["repeats"])]),
    "shape": simple("Shape"),
    # attention (the Attention op needs opset 23; the formula runs everywhere)
    "scaled_dot_product_attention": _sdpa,
    "multi_head_attention": _mha,
    # fused heavy ops (fuse-epilogue), spelled out again
    **{fused: _fused(base) for base, fused in FUSED_OPS.items()},
    "fused_elementwise": _fused_elementwise,  # fuse-elementwise: the body, inlined
}
