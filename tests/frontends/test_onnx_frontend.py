"""The ONNX frontend on small hand-made models: conversion, folding, symbols, errors."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import sympy
from onnx import TensorProto, helper, numpy_helper

import rtinfer
from rtinfer.errors import CaptureError, UnsupportedOpsError
from rtinfer.frontends.onnx_frontend import capture_onnx
from rtinfer.ir import interpret, verify
from tests.frontends.onnx_build import init, model, vi

RNG = np.random.default_rng(0)


def run_ort(m, *arrays):
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a for i, a in zip(sess.get_inputs(), arrays, strict=True)}
    return sess.run(None, feeds)


def check(m, *arrays, atol=1e-5):
    g = rtinfer.capture(m)
    verify(g)
    got = interpret(g, *arrays)
    got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(got, run_ort(m, *arrays), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)
    return g


def conv_bn_relu():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    scale, bias = RNG.random(4).astype(np.float32) + 0.5, RNG.standard_normal(4).astype(np.float32)
    mean, var = RNG.standard_normal(4).astype(np.float32), RNG.random(4).astype(np.float32) + 0.5
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1],
                         name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    inits = [init("w", w), init("b", b), init("s", scale), init("bb", bias), init("m", mean),
             init("v", var)]
    return model(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])], inits)


def test_conv_bn_relu():
    g = check(conv_bn_relu(), RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
    assert [n.op for n in g.nodes if n.op != "const"] == ["conv2d", "batch_norm", "relu"]
    conv = next(n for n in g.nodes if n.op == "conv2d")
    assert str(conv.provenance) == "onnx:conv"
    assert g.inputs[0].name == "x"


@pytest.mark.parametrize("ta,tb,alpha,beta,c_shape", [
    (0, 1, 1.0, 1.0, [5]),        # a linear layer
    (0, 0, 1.0, 1.0, [5]),
    (1, 0, 0.5, 2.0, [3, 5]),
    (1, 1, 2.0, 0.5, [1, 5]),
    (0, 1, 1.0, 1.0, None),
])
def test_gemm(ta, tb, alpha, beta, c_shape):
    a = RNG.standard_normal((4, 3) if ta else (3, 4)).astype(np.float32)
    b = RNG.standard_normal((5, 4) if tb else (4, 5)).astype(np.float32)
    inputs = ["a", "b"] + (["c"] if c_shape else [])
    inits = [init("b", b)] + ([init("c", RNG.standard_normal(c_shape).astype(np.float32))]
                              if c_shape else [])
    node = helper.make_node("Gemm", inputs, ["y"], transA=ta, transB=tb, alpha=alpha, beta=beta)
    g = check(model([node], [vi("a", list(a.shape))], [vi("y", [3, 5])], inits), a)
    if (ta, tb, alpha, beta) == (0, 1, 1.0, 1.0):
        assert "linear" in g.op_counts()


def test_dynamic_batch_is_symbolic():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Shape", ["h"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["h", "shape"], ["y"])]
    inits = [init("w", RNG.standard_normal((4, 6)).astype(np.float32)),
             init("zero", np.int64(0)), init("zero1", np.array([0], np.int64)),
             init("minus1", np.array([-1], np.int64))]
    m = model(nodes, [vi("x", ["batch size", 3, 4])], [vi("y", ["batch size", 18])], inits)
    g = rtinfer.capture(m)
    verify(g)
    (b,) = g.inputs[0].type.symbols()
    assert b.name == "batch_size"
    assert g.outputs[0].type.shape[0] == b
    x = RNG.standard_normal((5, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(interpret(g, x), run_ort(m, x)[0], rtol=1e-5, atol=1e-5)
    renamed = capture_onnx(m, dynamic_dims={"batch size": "B"})
    assert renamed.inputs[0].type.shape[0] == sympy.Symbol("B", integer=True, positive=True)


def test_dynamic_dims_marks_a_static_dim():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2, 3])], [vi("y", [2, 3])])
    g = capture_onnx(m, dynamic_dims={"x": {0: "N"}})
    assert str(g.inputs[0].type) == "f32[N,3]"


def test_external_data(tmp_path):
    m = conv_bn_relu()
    path = tmp_path / "model.onnx"
    onnx.save_model(copy.deepcopy(m), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    g = rtinfer.capture(str(path))
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(interpret(g, x), run_ort(m, x)[0], rtol=1e-5, atol=1e-5)


def test_constant_nodes_and_shape_subgraphs_fold():
    # y = reshape(x + c, shape(x) computed as Shape -> Slice -> Concat), all static: one reshape
    c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
        np.full((2, 6), 3.0, np.float32)))
    nodes = [c, helper.make_node("Add", ["x", "c"], ["a"]),
             helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Slice", ["s", "st", "en"], ["s0"]),
             helper.make_node("Concat", ["s0", "three", "two"], ["shape"], axis=0),
             helper.make_node("Reshape", ["a", "shape"], ["y"])]
    inits = [init("st", np.array([0], np.int64)), init("en", np.array([1], np.int64)),
             init("three", np.array([3], np.int64)), init("two", np.array([2], np.int64))]
    m = model(nodes, [vi("x", [2, 6])], [vi("y", [2, 3, 2])], inits)
    g = check(m, RNG.standard_normal((2, 6)).astype(np.float32))
    assert {n.op for n in g.nodes} == {"const", "add", "reshape"}
    assert next(n for n in g.nodes if n.op == "reshape").attrs["shape"] == (2, 3, 2)


def test_reshape_zero_copies_the_input_dim():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    m = model(nodes, [vi("x", [2, 3, 4])], [vi("y", [2, 12])],
              [init("shape", np.array([0, -1], np.int64))])
    check(m, RNG.standard_normal((2, 3, 4)).astype(np.float32))


def test_unsupported_ops_are_all_listed():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Frobnicate", ["a"], ["b"], name="f1"),
             helper.make_node("Unique", ["b"], ["c"], name="u1"),
             helper.make_node("Frobnicate", ["c"], ["y"], name="f2")]
    m = model(nodes, [vi("x", [3])], [vi("y", [3])])
    with pytest.raises(UnsupportedOpsError) as e:
        rtinfer.capture(m)
    assert [(op, node) for op, node, _ in e.value.ops] == [
        ("Frobnicate", "f1"), ("Unique", "u1"), ("Frobnicate", "f2")]
    assert "Frobnicate, Unique" in str(e.value)


def test_wrong_path():
    with pytest.raises(CaptureError, match="nope.onnx: no such ONNX file"):
        rtinfer.capture("/nonexistent/nope.onnx")


def test_corrupted_file(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(conv_bn_relu().SerializeToString()[:100])
    with pytest.raises(CaptureError) as e:
        rtinfer.capture(path)
    assert "bad.onnx" in str(e.value) and "\n" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_too_new_opset():
    newest = onnx.defs.onnx_opset_version()
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [3])], [vi("y", [3])],
              opset=newest + 1)
    with pytest.raises(CaptureError, match=f"opset {newest + 1}, newer than"):
        rtinfer.capture(m)


def test_input_proto_is_not_modified():
    m = conv_bn_relu()
    before = copy.deepcopy(m)
    rtinfer.capture(m)
    assert m == before


def test_old_opset_is_upgraded():
    nodes = [helper.make_node("Unsqueeze", ["x"], ["y"], axes=[0])]
    m = model(nodes, [vi("x", [3])], [vi("y", [1, 3])], opset=11)
    g = rtinfer.capture(m)
    assert interpret(g, np.ones(3, np.float32)).shape == (1, 3)


def test_unsupported_dtype_is_a_capture_error():
    m = model([helper.make_node("Identity", ["x"], ["y"])],
              [vi("x", [3], TensorProto.FLOAT8E4M3FN)], [vi("y", [3], TensorProto.FLOAT8E4M3FN)])
    with pytest.raises(CaptureError, match="unsupported dtype FLOAT8E4M3FN"):
        rtinfer.capture(m)


# -- shape-like graph inputs specialized on example values ---------------------------------------


def reshape_by_input(shape_dtype=TensorProto.INT64):
    """relu(reshape(x, shape)) with ``shape`` a graph input, as exporters sometimes leave it."""
    return model([helper.make_node("Reshape", ["x", "shape"], ["y"]),
                  helper.make_node("Relu", ["y"], ["z"])],
                 [vi("x", [2, 6]), vi("shape", [2], shape_dtype)], [vi("z", None)])


X26 = RNG.standard_normal((2, 6)).astype(np.float32)


def test_shape_input_is_specialized_on_its_example_value():
    from rtinfer.frontends.onnx_frontend import specialized_inputs

    shape = np.array([3, 4], np.int64)
    g = capture_onnx(reshape_by_input(), example_inputs={"x": X26, "shape": shape})
    verify(g)
    assert [v.name for v in g.inputs] == ["x", "shape"]  # still the model's signature
    assert {k: v.tolist() for k, v in specialized_inputs(g).items()} == {"shape": [3, 4]}
    np.testing.assert_array_equal(interpret(g, X26, shape), np.maximum(X26.reshape(3, 4), 0))
    # positional examples bind in input order, as a call does
    assert specialized_inputs(capture_onnx(reshape_by_input(), example_inputs=(X26, shape)))


def test_shape_input_without_examples_says_how_to_specialize():
    with pytest.raises(CaptureError, match=r"'shape'.*example_inputs"):
        capture_onnx(reshape_by_input())


def test_specialization_refuses_a_bad_example():
    with pytest.raises(CaptureError, match=r"example input 'shape' is int32\[2\].*i64\[2\]"):
        capture_onnx(reshape_by_input(), example_inputs=(X26, np.array([3, 4], np.int32)))
    with pytest.raises(CaptureError, match=r"'shape'.*example_inputs lacks"):
        capture_onnx(reshape_by_input(), example_inputs={"x": X26})
    with pytest.raises(CaptureError, match=r"names 'nope'"):
        capture_onnx(reshape_by_input(), example_inputs={"nope": X26})


def test_a_data_tensor_is_not_specialized():
    # the target shape comes from a 2-d tensor: not shape-like, so no model is built for it
    m = model([helper.make_node("Reshape", ["s", "flat"], ["s1"]),
               helper.make_node("Reshape", ["x", "s1"], ["y"])],
              [vi("x", [2, 6]), vi("s", [2, 1], TensorProto.INT64)], [vi("y", None)],
              [init("flat", np.array([2], np.int64))])
    with pytest.raises(CaptureError, match=r"'s'.*not shape-like"):
        capture_onnx(m, example_inputs=(X26, np.array([[3], [4]], np.int64)))


def test_compiled_model_checks_the_specialized_value(tmp_path):
    from rtinfer.errors import BackendError

    m = reshape_by_input()
    cm = rtinfer.compile(m, example_inputs=(X26, np.array([3, 4])), backend="torch",
                         cache=False)
    np.testing.assert_allclose(cm(X26, np.array([3, 4])), np.maximum(X26.reshape(3, 4), 0))
    with pytest.raises(BackendError, match=r"'shape' = \[4, 3\].*compiled for \[3, 4\]"):
        cm(X26, np.array([4, 3]))
    cm.save(tmp_path / "a")  # the check travels with the artifact
    loaded = rtinfer.load(tmp_path / "a")
    np.testing.assert_allclose(loaded(X26, np.array([3, 4])), np.maximum(X26.reshape(3, 4), 0))
    with pytest.raises(BackendError, match=r"compiled for \[3, 4\]"):
        loaded(X26, np.array([4, 3]))


def test_compile_cache_keeps_specializations_apart(tmp_path):
    m = reshape_by_input()
    a = rtinfer.compile(m, example_inputs=(X26, np.array([3, 4])), backend="torch",
                        cache=tmp_path)
    b = rtinfer.compile(m, example_inputs=(X26, np.array([6, 2])), backend="torch",
                        cache=tmp_path)
    again = rtinfer.compile(m, example_inputs=(X26, np.array([3, 4])), backend="torch",
                            cache=tmp_path)
    assert again.info.cache == "hit"
    np.testing.assert_allclose(b(X26, np.array([6, 2])), np.maximum(X26.reshape(6, 2), 0))
    np.testing.assert_allclose(again(X26, np.array([3, 4])), a(X26, np.array([3, 4])))
    assert again(X26, np.array([3, 4])).shape == (3, 4)
