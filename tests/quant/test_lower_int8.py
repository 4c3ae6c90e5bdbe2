"""lower-int8: QDQ chains fold into quantized ops, pooling and data movement run on the
integers, and the interpreter's answer does not change by a bit."""

import numpy as np
import pytest

import rtinfer
from rtinfer.ir.graph import Graph
from rtinfer.ir.interpreter import interpret
from rtinfer.ir.types import DType, QuantParams, TensorType
from rtinfer.ir.verifier import verify
from rtinfer.pass_manager import run_pipeline
from tests.ir.test_quant_ops import act_params, conv_case, per_channel_weight


@pytest.mark.parametrize("residual,activation,out_dtype,quant_residual", [
    ("pre", "relu", DType.u8, True),
    ("none", "none", DType.f32, False),
    ("post", "clip", DType.i8, False),
])
def test_conv_chain_lowers_exactly(residual, activation, out_dtype, quant_residual):
    qdq, _, inputs = conv_case(residual, activation, out_dtype, quant_residual)
    want = interpret(qdq, *inputs)
    g = qdq.clone()
    run_pipeline(g, "lower-int8", verify_each=True)
    ops = g.op_counts()
    assert ops.get("qconv2d") == 1 and "fused_conv2d" not in ops and "dequantize" not in ops
    got = interpret(g, *inputs)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert qdq.op_counts().get("fused_conv2d") == 1  # the input graph is untouched


def two_layer_net(pool_params_match: bool = True) -> tuple[Graph, np.ndarray]:
    """conv+relu -> Q/DQ -> maxpool -> Q/DQ -> flatten -> Q/DQ -> linear: the QDQ form
    insert-qdq writes, pass-through ops wrapped with their output's parameters."""
    rng = np.random.default_rng(3)
    w1, q1 = per_channel_weight(rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
    w2, q2 = per_channel_weight(rng.standard_normal((10, 8 * 4 * 4)).astype(np.float32))
    a_in = act_params(-1, 1, DType.u8)
    a_mid = act_params(0, 4, DType.u8)
    a_pool = a_mid if pool_params_match else act_params(0, 3, DType.u8)
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (1, 3, 8, 8)), "x")

    def qdq(v, p):
        return g.add_op("dequantize", g.add_op("quantize", v, **p))

    h = g.add_op("fused_conv2d", qdq(x, a_in), g.add_op("dequantize", g.add_const(w1, quant=q1)),
                 g.add_const(rng.standard_normal(8).astype(np.float32)), pad=[1],
                 activation="relu")
    p = g.add_op("max_pool2d", qdq(h, a_mid), kernel=[2, 2], stride=[2, 2])
    f = g.add_op("flatten", qdq(p, a_pool), axis=1)
    y = g.add_op("linear", qdq(f, a_pool), g.add_op("dequantize", g.add_const(w2, quant=q2)),
                 g.add_const(np.zeros(10, np.float32)))
    g.set_outputs([y])
    verify(g)
    return g, rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)


def test_consecutive_int8_layers_stay_int8():
    g, x = two_layer_net()
    want = interpret(g, x)
    lowered = g.clone()
    run_pipeline(lowered, "lower-int8", verify_each=True)
    ops = lowered.op_counts()
    # one quantize at the input, int8 from there to the last layer's f32 output
    assert ops == {"const": 4, "quantize": 1, "qconv2d": 1, "max_pool2d": 1, "flatten": 1,
                   "qlinear": 1}, ops
    pool = next(n for n in lowered.nodes if n.op == "max_pool2d")
    assert pool.out.type.dtype == DType.u8
    np.testing.assert_array_equal(interpret(lowered, x), want)
    # the torch backend runs the lowered graph and agrees
    cm = rtinfer.compile(lowered, backend="torch", pipeline="O0", cache=False)
    np.testing.assert_allclose(np.asarray(cm(x)), want, rtol=1e-5, atol=1e-5)


def test_a_requantization_is_kept():
    g, x = two_layer_net(pool_params_match=False)
    want = interpret(g, x)
    run_pipeline(g, "lower-int8", verify_each=True)
    ops = g.op_counts()
    assert ops["qconv2d"] == 1 and ops["qlinear"] == 1
    # the pool's output is requantized to other parameters: the chain keeps a DQ -> Q there
    assert ops.get("dequantize", 0) >= 1
    np.testing.assert_array_equal(interpret(g, x), want)


def test_declines_a_weight_with_zero_points_and_says_why():
    g = Graph()
    x = g.add_input(TensorType(DType.f32, (2, 4)), "x")
    w = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    wv = g.add_const(w, quant=QuantParams(np.float32(0.1), np.int64(3)))
    xq = g.add_op("quantize", x, **act_params(-1, 1, DType.u8))
    y = g.add_op("linear", g.add_op("dequantize", xq), g.add_op("dequantize", wv))
    g.set_outputs([y])
    result = run_pipeline(g, "lower-int8")
    assert "linear" in g.op_counts() and "qlinear" not in g.op_counts()
    reasons = [d.reason for p in result.passes for d in p.declines]
    assert reasons == ["the weight has zero points (oneDNN takes symmetric int8 weights)"]
