"""The int8 IR: constants that carry QuantParams, and qconv2d / qlinear / qmatmul, whose
reference is the QDQ graph they stand for (docs/int8.md)."""

import numpy as np
import pytest

from rtinfer.errors import IRError
from rtinfer.ir.equality import structural_diff
from rtinfer.ir.graph import Graph
from rtinfer.ir.interpreter import interpret
from rtinfer.ir.parser import parse
from rtinfer.ir.printer import print_graph
from rtinfer.ir.types import DType, QuantParams, TensorType
from rtinfer.ir.verifier import verify


def per_channel_weight(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, QuantParams]:
    red = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    scale = (np.abs(w).max(axis=red) / 127).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, QuantParams(scale, np.zeros_like(scale, np.int64), axis % w.ndim)


def act_params(lo: float, hi: float, dtype: DType) -> dict:
    info = np.iinfo(dtype.np)
    scale = (hi - lo) / (info.max - info.min)
    zp = int(np.clip(round(info.min - lo / scale), info.min, info.max))
    return {"scale": [scale], "zero_point": [zp], "dtype": dtype}


def conv_case(residual: str, activation: str, out_dtype: DType, quant_residual: bool):
    """The QDQ graph of one conv and the same conv as qconv2d, on the same inputs."""
    rng = np.random.default_rng(0)
    w, wq = per_channel_weight(rng.standard_normal((8, 4, 3, 3)).astype(np.float32))
    b = rng.standard_normal(8).astype(np.float32)
    xp = act_params(-2.0, 3.0, DType.u8)
    rp = act_params(-4.0, 4.0, DType.i8)
    op_ = act_params(-1.0, 6.0, out_dtype) if out_dtype != DType.f32 else None
    conv_attrs = {"stride": [1, 1], "pad": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1,
                  "activation": activation, "residual": residual}

    def build(quantized: bool) -> Graph:
        g = Graph()
        x = g.add_input(TensorType(DType.f32, (1, 4, 6, 6)), "x")
        r = g.add_input(TensorType(DType.f32, (1, 8, 6, 6)), "r")
        xq = g.add_op("quantize", x, **xp)
        wv = g.add_const(w, quant=wq)
        bv = g.add_const(b)
        ins = [xq, wv, bv]
        if residual != "none":
            ins.append(g.add_op("quantize", r, **rp) if quant_residual else r)
        if quantized:
            out_attrs = {} if op_ is None else {
                "out_dtype": out_dtype, "out_scale": op_["scale"][0],
                "out_zero_point": op_["zero_point"][0]}
            y = g.add_op("qconv2d", *ins, **conv_attrs, **out_attrs)
        else:
            real = [g.add_op("dequantize", ins[0]), g.add_op("dequantize", wv), bv]
            if residual != "none":
                real.append(g.add_op("dequantize", ins[3]) if quant_residual else r)
            y = g.add_op("fused_conv2d", *real, **conv_attrs)
            if op_ is not None:
                y = g.add_op("quantize", y, **op_)
        g.set_outputs([y])
        verify(g)
        return g

    x = rng.uniform(-2.5, 3.5, (1, 4, 6, 6)).astype(np.float32)
    r = rng.uniform(-4, 4, (1, 8, 6, 6)).astype(np.float32)
    return build(False), build(True), (x, r)


@pytest.mark.parametrize("residual,activation,out_dtype,quant_residual", [
    ("none", "none", DType.f32, False),
    ("none", "relu", DType.u8, False),
    ("pre", "relu", DType.u8, True),
    ("pre", "relu", DType.i8, False),
    ("post", "clip", DType.u8, True),
])
def test_qconv2d_interprets_as_its_qdq_graph_bit_for_bit(residual, activation, out_dtype,
                                                         quant_residual):
    qdq, q, inputs = conv_case(residual, activation, out_dtype, quant_residual)
    want, got = interpret(qdq, *inputs), interpret(q, *inputs)
    assert got.dtype == want.dtype == out_dtype.np
    np.testing.assert_array_equal(got, want)
    if out_dtype != DType.f32:
        assert q.outputs[0].type.quant is not None
        assert len(np.unique(got)) > 8  # a real spread of codes, not all saturated


def test_qlinear_and_qmatmul_reference():
    rng = np.random.default_rng(1)
    wf = rng.standard_normal((16, 32)).astype(np.float32)
    w, wq = per_channel_weight(wf)
    bw, bq = per_channel_weight(wf.T.copy(), axis=-1)  # the same weight as matmul's b [K, N]
    x = rng.standard_normal((3, 32)).astype(np.float32)
    xp = act_params(-3, 3, DType.u8)
    g = Graph()
    xv = g.add_input(TensorType(DType.f32, (3, 32)), "x")
    xq = g.add_op("quantize", xv, **xp)
    y = g.add_op("qlinear", xq, g.add_const(w, quant=wq), g.add_const(np.zeros(16, np.float32)))
    z = g.add_op("qmatmul", xq, g.add_const(bw, quant=bq))
    g.set_outputs([y, z])
    verify(g)
    gy, gz = interpret(g, x)
    zp, s = xp["zero_point"][0], np.float32(xp["scale"][0])
    deq_x = ((np.rint(x / s) + zp).clip(0, 255) - zp).astype(np.float32) * s
    deq_w = wq.scale[:, None] * w.astype(np.float32)
    np.testing.assert_allclose(gy, deq_x @ deq_w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gz, gy, rtol=1e-5, atol=1e-5)
    # against the fp32 layer: int8's error is small, and not zero
    err = np.abs(gy - x @ wf.T).max()
    assert 0 < err < 0.2 * np.abs(x @ wf.T).max()


def test_quantized_constant_prints_and_parses_back():
    _, q, _ = conv_case("pre", "relu", DType.u8, True)
    text = print_graph(q, full_constants=True)
    assert "const i8[8,4,3,3] q(axis=0" in text
    back = parse(text)
    assert structural_diff(q, back) is None
    assert back.constants()[0].out.type.quant == q.constants()[0].out.type.quant


@pytest.mark.parametrize("mutate,message", [
    (lambda w, qp: (w.astype(np.int16), qp), "must be i8"),
    (lambda w, qp: (w, QuantParams(qp.scale, np.ones_like(qp.zero_point), 0)),
     "symmetrically"),
    (lambda w, qp: (w, None), "must be i8 with quantization parameters"),
])
def test_qconv2d_rejects_bad_weights(mutate, message):
    rng = np.random.default_rng(0)
    w, wq = per_channel_weight(rng.standard_normal((8, 4, 1, 1)).astype(np.float32))
    w, wq = mutate(w, wq)
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (1, 4, 2, 2)), "x")
    xq = g.add_op("quantize", x, **act_params(0, 1, DType.u8))
    with pytest.raises(IRError, match=message):
        g.add_op("qconv2d", xq, g.add_const(w, quant=wq))


def test_qconv2d_rejects_a_float_input_and_a_bad_zero_point():
    rng = np.random.default_rng(0)
    w, wq = per_channel_weight(rng.standard_normal((8, 4, 1, 1)).astype(np.float32))
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (1, 4, 2, 2)), "x")
    with pytest.raises(IRError, match="x must be u8 or i8 quantized per tensor"):
        g.add_op("qconv2d", x, g.add_const(w, quant=wq))
    xq = g.add_op("quantize", x, **act_params(0, 1, DType.u8))
    with pytest.raises(IRError, match="out_zero_point 300 does not fit"):
        g.add_op("qconv2d", xq, g.add_const(w, quant=wq), out_dtype=DType.u8,
                 out_scale=0.1, out_zero_point=300)


def test_quant_on_a_float_constant_is_an_error():
    g = Graph()
    with pytest.raises(IRError, match="quantization parameters on a f32 constant"):
        g.add_const(np.ones(2, np.float32), quant=QuantParams(np.float32(1), np.int64(0)))
