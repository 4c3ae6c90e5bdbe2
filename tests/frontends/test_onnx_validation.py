"""Malformed ONNX models are refused with a ``ModelError`` (a ``CaptureError``) that names the
file, node, input, initializer or attribute at fault: empty models, kernels that disagree with
their weights, attributes of the wrong type, names defined twice, dims onnx's own shape
inference would crash on. Each was accepted, or escaped as a raw Python error, before."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import rtinfer
from rtinfer.errors import CaptureError, ModelError
from rtinfer.frontends.onnx_frontend import capture_onnx
from rtinfer.ir import interpret
from tests.frontends.onnx_build import init, model, vi

RNG = np.random.default_rng(0)


def ort_refuses(m, **feeds: np.ndarray) -> bool:
    """Whether ONNX Runtime refuses the model, when loading it or when running it on feeds."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
    except Exception:  # ORT's errors have no common base class worth naming
        return True
    return False


# -- empty models -------------------------------------------------------------------------------


def test_zero_byte_file_is_refused(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    for entry in (rtinfer.capture, rtinfer.compile):
        with pytest.raises(ModelError, match=r"empty\.onnx: the file is empty \(0 bytes\)"):
            entry(str(p))


def test_empty_model_proto_is_refused():
    with pytest.raises(ModelError, match="the ONNX model is empty"):
        rtinfer.capture(onnx.ModelProto())


def test_graph_without_outputs_is_refused():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [])
    with pytest.raises(ModelError, match="declares no outputs"):
        capture_onnx(m)


# -- attributes that disagree with the weights ---------------------------------------------


def _conv(kernel_shape, w_shape, op="Conv", **attrs):
    w = RNG.standard_normal(w_shape).astype(np.float32)
    node = helper.make_node(op, ["x", "w"], ["y"], kernel_shape=kernel_shape, name="conv1",
                            **attrs)
    return model([node], [vi("x", [1, 3, 8, 8])], [vi("y", None)], [init("w", w)])


def test_conv_kernel_shape_must_match_the_weight():
    m = _conv([5, 5], (4, 3, 3, 3))
    assert ort_refuses(m, x=np.zeros((1, 3, 8, 8), np.float32))  # ONNX Runtime refuses it too
    with pytest.raises(ModelError) as info:
        capture_onnx(m)
    msg = str(info.value)
    assert "Conv node conv1" in msg and "kernel_shape [5, 5]" in msg and "[3, 3]" in msg


def test_conv_kernel_shape_that_matches_still_computes():
    m = _conv([3, 3], (4, 3, 3, 3), pads=[1, 1, 1, 1])
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    want = ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(interpret(capture_onnx(m), x), want, rtol=1e-5, atol=1e-5)


def test_conv_transpose_kernel_shape_must_match_the_weight():
    m = _conv([2, 2], (3, 4, 3, 3), op="ConvTranspose")
    with pytest.raises(ModelError, match=r"ConvTranspose node conv1: kernel_shape \[2, 2\]"):
        capture_onnx(m)


def test_conv_attribute_lengths_must_match_the_rank():
    m = _conv([3, 3], (4, 3, 3, 3), strides=[1, 1, 1])
    with pytest.raises(ModelError, match="Conv node conv1: strides has 3 entries, expected 2"):
        capture_onnx(m)


def test_conv_zero_stride_is_refused():
    m = _conv([3, 3], (4, 3, 3, 3), strides=[0, 1], auto_pad="SAME_UPPER")
    with pytest.raises(ModelError, match=r"Conv node conv1: strides \[0, 1\] must be positive"):
        capture_onnx(m)


@pytest.mark.parametrize("ta, tb, b_shape", [(0, 1, (6, 5)), (1, 0, (4, 6)), (0, 0, (6, 5))])
def test_gemm_trans_flags_must_match_the_shapes(ta, tb, b_shape):
    # a is [5, 4]: the flags pick a's inner dim (4, or 5 with transA) and b's (the other one)
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transA=ta, transB=tb, name="fc")
    m = model([node], [vi("a", [5, 4])], [vi("y", None)],
              [init("b", RNG.standard_normal(b_shape).astype(np.float32))])
    assert ort_refuses(m, a=np.zeros((5, 4), np.float32))
    with pytest.raises(ModelError, match=f"Gemm node fc: .*transA={ta}.*transB={tb}.*inner dim"):
        capture_onnx(m)


# -- attributes, names and dims that broke the importer ---------------------------------------


def test_attribute_of_the_wrong_type_names_node_and_attribute():
    node = helper.make_node("Softmax", ["x"], ["y"], name="sm")
    node.attribute.append(helper.make_attribute("axis", 1.5))
    m = model([node], [vi("x", [2, 3])], [vi("y", None)])
    with pytest.raises(ModelError, match="Softmax node sm: attribute 'axis' is FLOAT, but "
                                         "Softmax declares it INT"):
        capture_onnx(m)


def test_unknown_attribute_is_refused():
    node = helper.make_node("Relu", ["x"], ["y"], name="r", alpha=0.1)
    m = model([node], [vi("x", [2])], [vi("y", None)])
    with pytest.raises(ModelError, match="Relu node r: unknown attribute 'alpha'"):
        capture_onnx(m)


def test_missing_required_attribute():
    m = model([helper.make_node("Cast", ["x"], ["y"], name="c")], [vi("x", [2])],
              [vi("y", None)])
    with pytest.raises(ModelError, match="Cast node c: required attribute 'to' is missing"):
        capture_onnx(m)


def test_required_input_given_as_empty_name():
    node = helper.make_node("Conv", ["x", ""], ["y"], name="conv1")
    m = model([node], [vi("x", [1, 3, 8, 8])], [vi("y", None)])
    with pytest.raises(ModelError, match=r"Conv node conv1: input 1 \(W\) is required"):
        capture_onnx(m)


def test_op_of_a_later_opset_is_refused():
    node = helper.make_node("BitwiseAnd", ["x", "x"], ["y"], name="band")  # opset 18
    m = model([node], [vi("x", [2], TensorProto.INT32)], [vi("y", None)], opset=17)
    with pytest.raises(ModelError, match="BitwiseAnd node band: BitwiseAnd is not an op of "
                                         "opset 17"):
        capture_onnx(m)


def test_name_defined_twice():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a"),
             helper.make_node("Neg", ["x"], ["y"], name="b")]
    m = model(nodes, [vi("x", [2])], [vi("y", None)])
    with pytest.raises(ModelError, match="Neg node b writes 'y', already defined by Relu node a"):
        capture_onnx(m)


def test_negative_input_dim_is_refused_before_shape_inference():
    # onnx's shape inference (data propagation) crashed the process on this model
    nodes = [helper.make_node("GatherND", ["emb", "ids"], ["e"], name="g")]
    m = model(nodes, [vi("ids", [2, -1], TensorProto.INT64)], [vi("e", None)],
              [init("emb", np.zeros((5, 8), np.float32))])
    with pytest.raises(ModelError, match="input 'ids' has a negative size -1 in dim 1"):
        capture_onnx(m)


def test_initializer_whose_data_does_not_fit_its_dims():
    t = init("w", np.zeros((2, 3), np.float32))
    t.dims[1] = 4
    m = model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [2, 4])], [vi("y", None)],
              [t])
    with pytest.raises(ModelError, match="initializer 'w' of type f32\\[2, 4\\]: its data"):
        capture_onnx(m)


@pytest.mark.parametrize("elem_type", [99, -1])
def test_unknown_element_type_is_named(elem_type):
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2], elem_type)],
              [vi("y", None)])
    with pytest.raises(CaptureError, match=f"unknown element type {elem_type}.*input 'x'"):
        capture_onnx(m)


def test_resize_without_scales_or_sizes():
    node = helper.make_node("Resize", ["x"], ["y"], name="up")
    m = model([node], [vi("x", [1, 1, 2, 2])], [vi("y", None)])
    with pytest.raises(ModelError, match="Resize node up: needs a non-empty scales or sizes"):
        capture_onnx(m)
