"""The ONNX importer on mutated models: every failure is an rtinfer error that names where (the
model, and the node, input, initializer or attribute), never a raw Python exception or a crash
of onnx's own code, and no case hangs.

Two small real models (a conv net and an attention-like block, built with ``onnx.helper``) are
mutated by kind: attributes (type, value, presence), op types, input names, dims, dtypes. The
default run takes a few seconds; ``-m slow`` runs far more seeds.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
from onnx import AttributeProto, TensorProto, helper

from rtinfer.errors import CaptureError, UnsupportedOpsError
from rtinfer.frontends.onnx_frontend import CONVERTERS, capture_onnx
from tests.frontends.onnx_build import init, model, vi
from tests.fuzzing import run_case

RNG = np.random.default_rng(0)


def conv_net():
    f32 = np.float32
    return model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1],
                          kernel_shape=[3, 3], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2],
                          name="pool"),
         helper.make_node("Flatten", ["p"], ["f"], axis=1, name="flatten"),
         helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc"),
         helper.make_node("Softmax", ["y"], ["s"], axis=-1, name="softmax")],
        [vi("x", ["N", 3, 8, 8])], [vi("s", ["N", 10])],
        [init("w", RNG.standard_normal((4, 3, 3, 3)).astype(f32)), init("b", np.zeros(4, f32)),
         init("fw", RNG.standard_normal((10, 64)).astype(f32)), init("fb", np.zeros(10, f32))])


def attention_block():
    f32 = np.float32
    return model(
        [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
         helper.make_node("Reshape", ["q", "shape"], ["q4"], name="split_heads"),
         helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3], name="qt"),
         helper.make_node("Transpose", ["q4"], ["kt"], perm=[0, 2, 3, 1], name="kt"),
         helper.make_node("MatMul", ["qt", "kt"], ["scores"], name="scores"),
         helper.make_node("Softmax", ["scores"], ["attn"], axis=-1, name="softmax"),
         helper.make_node("ReduceMean", ["attn"], ["m"], axes=[-1], keepdims=1, name="mean"),
         helper.make_node("LayerNormalization", ["x", "g", "beta"], ["ln"], axis=-1,
                          epsilon=1e-5, name="ln"),
         helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0, name="embed"),
         helper.make_node("Concat", ["ln", "e"], ["cat"], axis=1, name="cat"),
         helper.make_node("Slice", ["cat", "starts", "ends", "axes"], ["sl"], name="slice"),
         helper.make_node("Cast", ["sl"], ["out"], to=TensorProto.FLOAT16, name="cast")],
        [vi("x", [2, 4, 8]), vi("ids", [2, 3], TensorProto.INT64)],
        [vi("out", None), vi("m", None)],
        [init("wq", RNG.standard_normal((8, 8)).astype(f32)),
         init("shape", np.array([2, 4, 2, 4])), init("g", np.ones(8, f32)),
         init("beta", np.zeros(8, f32)), init("emb", RNG.standard_normal((5, 8)).astype(f32)),
         init("starts", np.array([1])), init("ends", np.array([5])),
         init("axes", np.array([1]))])


BASES = [conv_net(), attention_block()]
OP_TYPES = sorted(CONVERTERS) + ["NoSuchOp", "Loop", "If", "Scan"]
DTYPES = sorted(TensorProto.DataType.values()) + [99, -1]
ATTR_TYPES = sorted(AttributeProto.AttributeType.values())
ATTR_VALUES = [0, -1, 7, 10**12, -(10**12), 2.5, "SAME", "VALID", b"\xff", [0], [-1, -1],
               [1, 2, 3, 4, 5, 6, 7], [0.5], ["a"], [10**12, 1]]


def mutate_attribute(rng: random.Random, m) -> None:
    node = rng.choice(m.graph.node)
    if not node.attribute or rng.random() < 0.15:  # an attribute the node may not know
        name = rng.choice(["axis", "perm", "kernel_shape", "to", "group", "pads", "bogus"])
        node.attribute.append(helper.make_attribute(name, rng.choice(ATTR_VALUES)))
        return
    a = rng.choice(node.attribute)
    k = rng.randrange(6)
    if k == 0:
        node.attribute.remove(a)
    elif k == 1:  # the same name, another value (and perhaps another type)
        name = a.name
        node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(name, rng.choice(ATTR_VALUES)))
    elif k == 2:  # the type field alone changes: the value no longer matches it
        a.type = rng.choice(ATTR_TYPES)
    elif k == 3 and a.ints:
        a.ints[rng.randrange(len(a.ints))] = rng.choice([0, -1, -5, 10**9, 2**62])
    elif k == 4:
        a.i = rng.choice([0, -1, 10**15, 99])
    else:
        node.attribute.append(copy.deepcopy(a))


def mutate_op_type(rng: random.Random, m) -> None:
    rng.choice(m.graph.node).op_type = rng.choice(OP_TYPES)


def mutate_input_names(rng: random.Random, m) -> None:
    g = m.graph
    node = rng.choice(g.node)
    k = rng.randrange(5)
    if k == 0 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(
            ["dangling", "", "x", "w", "shape", node.output[0]])
    elif k == 1 and node.input:
        del node.input[-1]
    elif k == 2:
        node.input.append(rng.choice(["x", "w", "", "zz"]))
    elif k == 3:
        g.output[rng.randrange(len(g.output))].name = rng.choice(["nothere", "x", "c", "q"])
    else:
        node.output[0] = rng.choice(["x", "dup", g.node[0].output[0], ""])


def mutate_dims(rng: random.Random, m) -> None:
    g = m.graph
    if rng.random() < 0.5:
        t = rng.choice(list(g.input)).type.tensor_type
        if not t.shape.dim or rng.random() < 0.2:
            t.shape.dim.add().dim_value = rng.choice([1, 2])
            return
        d = rng.choice(t.shape.dim)
        v = rng.choice([0, -1, -100, 10**12, 2**62, None, "S"])
        if v is None:
            t.shape.dim.remove(d)
        elif isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    else:
        t = rng.choice(g.initializer)
        if t.dims and rng.random() < 0.7:
            t.dims[rng.randrange(len(t.dims))] = rng.choice([0, -1, 3, 10**10])
        else:
            t.dims.append(rng.choice([1, 2]))


def mutate_dtypes(rng: random.Random, m) -> None:
    g = m.graph
    k = rng.randrange(3)
    if k == 0:
        rng.choice(list(g.input)).type.tensor_type.elem_type = rng.choice(DTYPES)
    elif k == 1:
        rng.choice(g.initializer).data_type = rng.choice(DTYPES)
    else:  # the dtype a node attribute names (Cast's to)
        for node in g.node:
            for a in node.attribute:
                if a.name == "to":
                    a.i = rng.choice(DTYPES)
        if not any(a.name == "to" for n in g.node for a in n.attribute):
            rng.choice(g.initializer).ClearField("raw_data")


MUTATIONS = {"attributes": mutate_attribute, "op_types": mutate_op_type,
             "input_names": mutate_input_names, "dims": mutate_dims, "dtypes": mutate_dtypes}


def _fuzz(kind: str, seeds: range) -> dict[str, int]:
    outcome = {"captured": 0, "refused": 0}
    for seed in seeds:
        rng = random.Random(f"{kind}-{seed}")
        m = copy.deepcopy(BASES[seed % len(BASES)])
        for _ in range(rng.randint(1, 3)):
            # mostly this kind; sometimes another on top, as real damage rarely comes alone
            fn = MUTATIONS[kind] if rng.random() < 0.8 else rng.choice(list(MUTATIONS.values()))
            fn(rng, m)
        before = m.SerializeToString()
        case = f"ONNX fuzz {kind} seed {seed}"
        err = run_case(case, lambda m=m: capture_onnx(m), seconds=10.0)
        assert m.SerializeToString() == before, f"{case}: the caller's model was modified"
        if err is None:
            outcome["captured"] += 1
            continue
        outcome["refused"] += 1
        assert isinstance(err, CaptureError), f"{case}: {type(err).__name__}: {err}"
        msg = str(err)
        if not isinstance(err, UnsupportedOpsError):  # that one lists each op at its node
            assert msg.startswith("<ModelProto>: "), f"{case}: does not name the model: {msg}"
        # the safety net in convert_graph catches what no check foresaw; none should reach it
        assert "could not be converted" not in msg, f"{case}: only the safety net caught: {msg}"
    return outcome


def test_bases_capture():
    for m in BASES:
        capture_onnx(m)


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_mutated_models_raise_only_rtinfer_errors(kind):
    outcome = _fuzz(kind, range(300))
    assert outcome["refused"] > 60, outcome  # the mutations do reach the error paths


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_mutated_models_raise_only_rtinfer_errors_long(kind):
    _fuzz(kind, range(300, 6000))
