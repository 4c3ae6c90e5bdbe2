"""The TVM backend: the op table's cases against the reference interpreter (several ops per
built module: TVM builds are slow), fused nodes as one Primitive function each, models end to
end through ``rtinfer.compile(backend="tvm")``, the torch fallback, strict mode, targets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

import rtinfer  # noqa: E402
from rtinfer.backends.tvm_backend import (  # noqa: E402
    LOWERINGS,
    UNSUPPORTED,
    build_tvm_module,
    coverage,
    lower_graph,
    resolve_target,
)
from rtinfer.errors import BackendError  # noqa: E402
from rtinfer.ir import Graph, TensorType, interpret, parse  # noqa: E402
from rtinfer.ir.ops import get_op  # noqa: E402


def _load_torch_backend_tests():
    """test_torch_backend.py's cases (test_ops.py's plus extras), loaded by path."""
    path = Path(__file__).resolve().parent / "test_torch_backend.py"
    spec = importlib.util.spec_from_file_location("rtinfer_test_torch_backend_cases", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


TB = _load_torch_backend_tests()


def _case_graph(case) -> Graph:
    attrs = get_op(case.op).complete_attrs(case.attrs)
    types = case.types or [TensorType.of(a) for a in case.inputs]
    return TB.single_op_graph(case.op, types, attrs)


def _declined(case) -> str | None:
    """Why the TVM backend does not lower this case (None: it does); lowering is cheap, the
    build is what costs."""
    reasons = lower_graph(_case_graph(case)).fallbacks
    return next(iter(reasons.values()), None)


LOWERED, DECLINED = [], {}
for _c in TB.ALL_CASES:
    _why = _declined(_c)
    if _why is None:
        LOWERED.append(_c)
    else:
        DECLINED[TB._case_id(_c)] = _why
CHUNK = 40
CHUNKS = [LOWERED[i:i + CHUNK] for i in range(0, len(LOWERED), CHUNK)]


def _combined(cases) -> tuple[Graph, list[np.ndarray]]:
    """One graph holding every case's op on inputs of its own (one TVM build for all)."""
    g = Graph("cases")
    arrays = []
    for k, case in enumerate(cases):
        attrs = get_op(case.op).complete_attrs(case.attrs)
        types = case.types or [TensorType.of(a) for a in case.inputs]
        ins = [g.add_input(t, f"c{k}_x{i}") for i, t in enumerate(types)]
        node = g.create_node(case.op, ins, attrs)
        g.outputs.extend(node.outputs)
        arrays += list(case.inputs)
    return g, arrays


def _compare(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, \
        (got.dtype, got.shape, want.dtype, want.shape)
    if got.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   rtol=max(tol, 1e-5), atol=max(tol, 1e-5))


@pytest.mark.parametrize("chunk", range(len(CHUNKS)), ids=lambda i: f"cases{i}")
def test_lowered_ops_match_interpreter(chunk):
    cases = CHUNKS[chunk]
    g, arrays = _combined(cases)
    module = build_tvm_module(g, strict=True)
    got = [o.numpy() for o in module(*[torch.from_numpy(np.array(a)) for a in arrays])]
    failures, pos = [], 0
    for case in cases:
        want = interpret(_case_graph(case), *case.inputs)
        want = list(want) if isinstance(want, tuple) else [want]
        for w in want:
            try:
                _compare(got[pos], w, case.tol)
            except AssertionError as e:
                failures.append(f"{TB._case_id(case)}: {str(e).strip().splitlines()[0]}")
            pos += 1
    assert not failures, "\n".join(failures)


def test_coverage_and_declines_are_recorded():
    n_lowered, n_ops, missing = coverage()
    assert sorted(UNSUPPORTED) == missing  # every op without a lowering says why
    assert n_lowered == n_ops - len(missing) and n_lowered >= 115
    # the cases that fall back: an op without a lowering, attributes a lowering declines, or
    # run-time indices (TVM cannot report one outside its axis)
    declined_ops = {c.op for c in TB.ALL_CASES if TB._case_id(c) in DECLINED}
    indexing = {"gather", "gather_elements", "embedding"}
    assert declined_ops - set(missing) <= {"pad", "einsum"} | indexing, DECLINED
    assert all("run-time indices" in why for case_id, why in DECLINED.items()
               if case_id.split("-")[0] in indexing), DECLINED


def test_declined_case_runs_in_torch_backend():
    case = next(c for c in TB.ALL_CASES if TB._case_id(c) == "pad-reflect")
    g = _case_graph(case)
    module = build_tvm_module(g)
    assert module.rtinfer_fallback_ops == ["pad"]
    assert "reflect" in module.fallback_reasons["pad"]
    _compare(module(torch.from_numpy(case.inputs[0]))[0].numpy(),
             interpret(g, *case.inputs), 1e-6)


# -- fusion: a fused rtinfer node is one Primitive function, one kernel -----------------------

FUSED_IR = """
func @block(%x: f32[4,16]) -> f32[4,8] {
  %w = const f32[8,16] random(seed=0)
  %b = const f32[8] random(seed=1)
  %r = const f32[4,8] random(seed=2)
  %y = fused_linear(%x, %w, %b, %r) {activation="gelu", residual="pre"}
  %z = sigmoid(%y)
  return %z
}
"""


def test_fused_node_is_one_primitive_function():
    from tvm import relax

    g = parse(FUSED_IR)
    lowered = lower_graph(g, strict=True)
    prims = {gv.name_hint: f for gv, f in lowered.mod.functions.items()
             if isinstance(f, relax.Function) and f.attrs and "Primitive" in f.attrs}
    assert list(prims) == ["fused_linear_0"]
    module = build_tvm_module(g, strict=True)
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    _compare(module(torch.from_numpy(x))[0].numpy(), interpret(g, x), 1e-5)


# -- rtinfer.compile(backend="tvm") -----------------------------------------------------------


def test_mlp_end_to_end():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    x = torch.randn(8, 32)
    cm = rtinfer.compile(mlp, backend="tvm", example_inputs=(x,), cache=False)
    assert cm.info.backend == "tvm" and cm.info.fallbacks == []
    assert cm.fused_ops.get("fused_linear", 0) >= 2
    with torch.no_grad():
        torch.testing.assert_close(cm(x), mlp(x), rtol=1e-4, atol=1e-4)
        x2 = torch.randn(8, 32)
        torch.testing.assert_close(cm(x2), mlp(x2), rtol=1e-4, atol=1e-4)
    assert "backend: tvm" in cm.report()


def test_small_cnn_end_to_end():
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        bn = cnn[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 16, 16)
    cm = rtinfer.compile(cnn, backend="tvm", example_inputs=(x,), cache=False)
    assert cm.info.fallbacks == [] and cm.fused_ops.get("fused_conv2d", 0) == 2
    with torch.no_grad():
        torch.testing.assert_close(cm(x), cnn(x), rtol=1e-4, atol=1e-4)


SYMBOLIC_IR = """
func @f(%x: f32[B,16]) -> f32[B,8] {
  %w = const f32[8,16] random(seed=0)
  %b = const f32[8] random(seed=1)
  %y = fused_linear(%x, %w, %b) {activation="relu"}
  %z = reshape(%y) {shape=[B, 2, 4]}
  %s = softmax(%z) {axis=-1}
  %o = reshape(%s) {shape=[B, 8]}
  return %o
}
"""


def test_symbolic_batch_one_build_and_llvm_target_string():
    g = parse(SYMBOLIC_IR)
    cm = rtinfer.compile(g, backend="tvm", target="llvm -opt-level=3", pipeline="dce",
                         strict=True, cache=False)
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)
        _compare(cm(x), interpret(g, x), 1e-5)


# -- fallback, strict, targets ----------------------------------------------------------------

FALLBACK_IR = """
func @f(%x: f32[3,5]) -> f32[3,5] {
  %a = relu(%x)
  %h = hardmax(%a) {axis=1}
  %y = add(%h, %x)
  return %y
}
"""


def test_unlowered_op_falls_back_to_torch_and_is_listed():
    g = parse(FALLBACK_IR)
    cm = rtinfer.compile(g, backend="tvm", pipeline="dce", cache=False)
    assert cm.info.fallbacks == ["hardmax"]
    assert "hardmax" in cm.report()
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    _compare(cm(x), interpret(g, x), 1e-6)


def test_strict_names_the_unlowered_node():
    with pytest.raises(BackendError, match=r"cannot lower hardmax(.|\n)*at: .*hardmax"):
        rtinfer.compile(parse(FALLBACK_IR), backend="tvm", pipeline="dce", strict=True,
                        cache=False)


def test_bad_targets():
    g = parse(FALLBACK_IR)
    with pytest.raises(BackendError, match="unknown TVM target 'no-such-target'"):
        rtinfer.compile(g, backend="tvm", target="no-such-target", pipeline="dce", cache=False)
    with pytest.raises(BackendError, match="runs on the CPU"):
        resolve_target("cuda")
    assert resolve_target("cpu").kind.name == "llvm"
    assert str(resolve_target("llvm -mcpu=x86-64").attrs["mcpu"]) == "x86-64"


def test_every_lowering_is_an_op():
    from rtinfer.ir.ops import OPS

    assert set(LOWERINGS) <= set(OPS.names())


def test_out_of_range_indices_are_an_index_error_as_in_eager():
    """TVM's take wraps an index past its axis: run-time indices go to the torch fallback,
    which checks them; constant ones are checked when lowering."""
    from rtinfer.errors import IndexOutOfRangeError

    emb = torch.nn.Embedding(10, 4).eval()
    ids = torch.tensor([[1, 9, 0]])
    cm = rtinfer.compile(emb, backend="tvm", example_inputs=(ids,), cache=False)
    assert cm.info.fallbacks == ["embedding"]
    torch.testing.assert_close(cm(ids), emb(ids).detach())
    for bad in ([[1, -1, 0]], [[10, 0, 0]]):
        with pytest.raises(IndexError):
            emb(torch.tensor(bad))
        with pytest.raises(IndexOutOfRangeError, match="out of range"):
            cm(torch.tensor(bad))
    g = parse("""
    func @f(%x: f32[4,3]) -> f32[2,3] {
      %i = const i64[2] dense<[-1, 7]>
      %y = gather(%x, %i) {axis=0}
      return %y
    }
    """)
    with pytest.raises(IndexOutOfRangeError, match="7"):
        rtinfer.compile(g, backend="tvm", pipeline="dce", cache=False)
