"""precision="bf16" (docs/bf16.md): the bf16 layer ops and their reference, the to-bf16 pass,
the native and torch kernels against the interpreter, compile() end to end, the report, the
cache key, and the plain fp32 fallback where bf16 is missing or hidden.

Tolerances. A bf16 layer's inputs are rounded to bf16 before anything else, and a product of two
bf16 values is exact in f32 (8 + 8 significand bits < 24), so a kernel and the reference differ
only in the order of their f32 additions: |got - ref| <= K * 2**-24 * sum_k |x_k w_k| (the
classic gamma_K bound; K = products per output), asserted here with a factor 2 of margin. The
torch backend's ATen bf16 kernels also round the layer's output to bf16 before the f32 bias
(2**-9 relative, 2**-8 asserted).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.backends.native_backend import NativeModule
from rtinfer.backends.torch_backend import build_module
from rtinfer.bf16 import Bf16Fallback, bf16_support
from rtinfer.ir.graph import Graph
from rtinfer.ir.interpreter import interpret
from rtinfer.ir.ops.bf16 import round_bf16
from rtinfer.ir.parser import parse
from rtinfer.ir.types import DType, TensorType
from rtinfer.kernels import isa
from rtinfer.pass_manager import run_pipeline
from tests.conftest import _cpu_levels

HAS_BF16, WHY = bf16_support()
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason=f"no native bf16 here: {WHY}")
RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# -- the op and its reference -------------------------------------------------------------------


def test_round_bf16_is_round_to_nearest_even_and_keeps_nan():
    one = np.float32(1.0)
    ulp = np.float32(2.0 ** -7)  # bf16's spacing at 1.0
    x = np.array([one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2.0 ** -20, np.nan, -0.0],
                 np.float32)
    got = round_bf16(x)
    # ties go to the even significand: 1 + ulp/2 -> 1, 1 + 3ulp/2 -> 1 + 2ulp
    assert got[0] == one and got[1] == one + 2 * ulp and got[2] == one + ulp
    assert np.isnan(got[3]) and got[4] == 0.0 and np.signbit(got[4])


def test_bf16_linear_reference_is_the_f32_op_of_rounded_inputs():
    g = Graph("g")
    x = g.add_input(TensorType(DType.f32, (3, 8)), "x")
    w = g.add_const(rand(4, 8).astype(ml_dtypes.bfloat16))
    b = g.add_const(rand(4))
    g.set_outputs(g.create_node("bf16_linear", [x, w, b], {"activation": "relu"}).outputs)
    xs = rand(3, 8)
    want = np.maximum(round_bf16(xs) @ w.const_data.astype(np.float32).T + b.const_data, 0)
    np.testing.assert_allclose(interpret(g, xs), want, rtol=1e-6, atol=1e-6)


def test_bf16_ops_name_the_input_of_the_wrong_dtype():
    g = Graph("g")
    x = g.add_input(TensorType(DType.f32, (3, 8)), "x")
    w = g.add_const(rand(4, 8))  # f32, not bf16
    with pytest.raises(rtinfer.errors.IRError, match="bf16_linear: weight must be bf16"):
        g.create_node("bf16_linear", [x, w], {})


# -- the pass ----------------------------------------------------------------------------------

BLOCK = textwrap.dedent("""
    func @main(%x: f32[2,8,16]) -> f32[2,8,16] {
      %wq = const f32[16,16] random(seed=0)
      %wo = const f32[16,16] random(seed=1)
      %bo = const f32[16] random(seed=2)
      %g = const f32[16] random(seed=3)
      %q = linear(%x, %wq)
      %kt = transpose(%q) {perm=[0, 2, 1]}
      %s = matmul(%q, %kt)
      %p = softmax(%s) {axis=-1}
      %a = matmul(%p, %q)
      %o = fused_linear(%a, %wo, %bo, %x) {activation="gelu", residual="post"}
      %y = layer_norm(%o, %g) {axis=-1}
      return %y
    }
""")


def test_to_bf16_makes_constant_weight_layers_bf16_and_keeps_the_rest_f32():
    g = parse(BLOCK)
    w_before = next(n for n in g.nodes if n.op == "const").out.const_data.copy()
    result = run_pipeline(g, "to-bf16", verify_each=True)
    ops = g.op_counts()
    assert ops.get("bf16_linear") == 2 and "linear" not in ops and "fused_linear" not in ops
    # activation x activation matmuls, softmax and LayerNorm stay f32
    assert ops["matmul"] == 2 and ops["softmax"] == 1 and ops["layer_norm"] == 1
    assert dict(result.passes[0].stats)["rewritten"] == 2
    first = next(n for n in g.nodes if n.op == "bf16_linear")
    w = first.inputs[1]
    assert w.type.dtype == DType.bf16
    np.testing.assert_array_equal(w.const_data.view(np.uint16),
                                  w_before.astype(ml_dtypes.bfloat16).view(np.uint16))
    # the residual epilogue and the bias move over unchanged
    last = [n for n in g.nodes if n.op == "bf16_linear"][-1]
    assert last.attrs["activation"] == "gelu" and last.attrs["residual"] == "post"
    assert len(last.inputs) == 4
    assert parse(str(g)).op_counts() == ops  # the text form round-trips the bf16 constants


def test_to_bf16_explains_the_layers_it_leaves_f32():
    result = run_pipeline(parse(BLOCK), "to-bf16", verify_each=True)
    reasons = [d.reason for d in result.declines]
    # (the driver matches again after each rewrite, so a reason may repeat)
    assert set(reasons) == {"matmul weight is not a constant (activation x activation stays f32)"}


# -- kernels against the interpreter ------------------------------------------------------------


def _bound(g: Graph, inputs: list[np.ndarray], k: int) -> np.ndarray:
    """K * 2**-24 * sum |x w|: the same graph on |x|, |w|, no bias, residual or activation."""
    n = g.nodes[-1]
    a = Graph("abs")
    x = a.add_input(TensorType(DType.f32, n.inputs[0].type.shape), "x")
    w = a.add_const(np.abs(n.inputs[1].const_data))
    attrs = {k_: v for k_, v in n.attrs.items() if k_ not in ("activation", "residual")}
    a.set_outputs(a.create_node(n.op, [x, w], attrs).outputs)
    return 2 * k * 2.0 ** -24 * interpret(a, np.abs(round_bf16(inputs[0])))


def conv_graph(residual: str, activation: str, groups: int = 1, stride: int = 1,
               channels: int = 16) -> Graph:
    g = Graph("conv")
    x = g.add_input(TensorType(DType.f32, (2, channels, 9, 9)), "x")
    w = g.add_const(rand(32, channels // groups, 3, 3).astype(ml_dtypes.bfloat16))
    b = g.add_const(rand(32))
    ins = [x, w, b]
    out = (2, 32, (9 + 2 - 3) // stride + 1, (9 + 2 - 3) // stride + 1)
    if residual != "none":
        ins.append(g.add_input(TensorType(DType.f32, out), "r"))
    node = g.create_node("bf16_conv2d", ins, {"pad": [1], "stride": [stride], "groups": groups,
                                              "activation": activation, "residual": residual})
    g.set_outputs(node.outputs)
    return g


def linear_graph(op: str, residual: str, activation: str) -> Graph:
    g = Graph(op)
    x = g.add_input(TensorType(DType.f32, (3, 7, 48)), "x")
    w = rand(40, 48) if op == "bf16_linear" else rand(48, 40)
    ins = [x, g.add_const(w.astype(ml_dtypes.bfloat16)), g.add_const(rand(40))]
    if residual != "none":
        ins.append(g.add_input(TensorType(DType.f32, (3, 7, 40)), "r"))
    g.set_outputs(g.create_node(op, ins, {"activation": activation,
                                          "residual": residual}).outputs)
    return g


def _inputs(g: Graph) -> list[np.ndarray]:
    xs = [rand(*v.type.shape) for v in g.inputs]
    xs[0][0, 0, 0, ...] = np.nan  # NaN through relu stays NaN, as torch's and the reference's
    return xs


CASES = [
    ("conv", lambda: conv_graph("none", "relu"), 16 * 9),
    ("conv-residual-pre-relu", lambda: conv_graph("pre", "relu"), 16 * 9),
    ("conv-depthwise-stride2-post", lambda: conv_graph("post", "silu", groups=16, stride=2), 9),
    # groups of 3 input channels: oneDNN 3.2's AVX512_BF16 brgconv pairs channels across groups,
    # so a NaN in one group reached the next one's outputs (dnnl_bf16.cpp skips that kernel)
    ("conv-grouped-odd", lambda: conv_graph("none", "none", groups=8, channels=24), 3 * 9),
    ("linear-gelu", lambda: linear_graph("bf16_linear", "none", "gelu"), 48),
    ("linear-residual-post-relu", lambda: linear_graph("bf16_linear", "post", "relu"), 48),
    ("matmul-residual-pre", lambda: linear_graph("bf16_matmul", "pre", "none"), 48),
]


def _check(got: np.ndarray, want: np.ndarray, bound: np.ndarray) -> None:
    assert np.array_equal(np.isnan(got), np.isnan(want)), "NaN positions differ"
    ok = ~np.isnan(want)
    err = np.abs(got[ok] - want[ok])
    worst = float((err - bound[ok] - 1e-6).max())
    assert worst <= 0, f"error over the f32-accumulation bound by {worst}"


@pytest.fixture(params=_cpu_levels())
def level(request, monkeypatch) -> str:
    from rtinfer.kernels import build

    try:
        ext = build.load(level=request.param)
    except build.NativeUnavailable as e:
        pytest.skip(f"native backend unavailable here: {e}")
    if not ext.onednn_has_bf16():
        pytest.skip(f"oneDNN runs without AVX512_BF16 / AMX-BF16 at {request.param} here")
    monkeypatch.setenv("RTINFER_CPU_ISA", request.param)
    return request.param


@pytest.mark.parametrize("make,k", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_native_bf16_kernels_match_the_interpreter(level, make, k):
    g = make()
    xs = _inputs(g)
    m = NativeModule(g, strict=True)  # strict: a node without a native kernel is an error
    assert not m.stats.fallbacks
    assert any("bf16" in name for name in m.stats.kernels), m.stats.kernels
    got = m(*(torch.from_numpy(x) for x in xs))
    got = (got[0] if isinstance(got, (list, tuple)) else got).numpy()
    _check(got, interpret(g, *xs), _bound(g, xs, k))


@pytest.mark.parametrize("make,k", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_torch_backend_bf16_matches_the_interpreter(make, k):
    g = make()
    xs = _inputs(g)
    want = interpret(g, *xs)
    with torch.no_grad():
        got = build_module(g)(*(torch.from_numpy(x) for x in xs))
    got = (got[0] if isinstance(got, (list, tuple)) else got).numpy()
    # plus ATen's bf16 rounding of the layer's output (before the f32 bias and epilogue)
    raw = Graph("raw")
    n = g.nodes[-1]
    x = raw.add_input(n.inputs[0].type, "x")
    raw.set_outputs(raw.create_node(n.op, [x, raw.add_const(n.inputs[1].const_data)],
                                    {k_: v for k_, v in n.attrs.items()
                                     if k_ not in ("activation", "residual")}).outputs)
    slack = 2.0 ** -8 * np.abs(interpret(raw, xs[0]))
    if n.attrs["activation"] != "none" or n.attrs["residual"] != "none":
        slack = slack * 1.1 + 1e-5  # the activations' slopes are at most about 1.1
    _check(got, want, _bound(g, xs, k) + np.nan_to_num(slack))


# -- compile(precision="bf16") ------------------------------------------------------------------


class Cnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1, groups=4), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


class Block(torch.nn.Module):
    """A transformer encoder block: attention (softmax f32), LayerNorm, a GELU MLP."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.up, self.down = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1) @ v
        x = self.ln1(x + self.out(a.transpose(1, 2).reshape(b, s, d)))
        return self.ln2(x + self.down(torch.nn.functional.gelu(self.up(x))))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _model(name: str):
    torch.manual_seed(0)
    if name == "cnn":
        m = Cnn().eval()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            m.body[1].running_mean.uniform_(-0.5, 0.5)
            m.body[1].running_var.uniform_(0.5, 2.0)
        return m, torch.randn(2, 3, 16, 16), 3
    return Block().eval(), torch.randn(2, 12, 32), 4


@needs_bf16
@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("name", ["cnn", "block"])
def test_compile_bf16_end_to_end(name, backend):
    model, x, n_layers = _model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Bf16Fallback)
        cm = rtinfer.compile(model, example_inputs=x, precision="bf16", backend=backend,
                             cache=False)
    if cm.info.backend != backend:
        pytest.skip(f"the {backend} backend is unavailable here (compiled {cm.info.backend})")
    ops = cm.ir.op_counts()
    assert sum(v for k, v in ops.items() if k.startswith("bf16_")) == n_layers
    assert not any(k in ops for k in ("conv2d", "fused_conv2d", "linear", "fused_linear"))
    if name == "block":
        assert ops.get("softmax", 0) + ops.get("scaled_dot_product_attention", 0) + ops.get(
            "multi_head_attention", 0) >= 1
        assert ops.get("layer_norm") == 2
    with torch.no_grad():
        want, got = model(x), cm(x)
    assert got.dtype == torch.float32
    assert _cosine(got, want) > 0.9999
    assert float((got - want).abs().max()) < 0.05 * float(want.abs().max())
    if backend == "native":
        kernels = cm.module.stats.kernels
        assert any("bf16" in k for k in kernels), kernels
        assert not cm.info.fallbacks
    report = cm.report()
    assert f"bf16: {n_layers} layers bf16 (this CPU has" in report
    assert "softmax, normalization and elementwise ops f32" in report


@needs_bf16
def test_bf16_cache_key_differs_from_fp32_and_a_hit_reports_the_layers(tmp_path):
    model, x, n_layers = _model("cnn")
    fp32 = rtinfer.compile(model, example_inputs=x, backend="torch", cache=tmp_path)
    bf16 = rtinfer.compile(model, example_inputs=x, backend="torch", cache=tmp_path,
                           precision="bf16")
    assert fp32.info.cache_key != bf16.info.cache_key and bf16.info.cache == "miss"
    again = rtinfer.compile(model, example_inputs=x, backend="torch", cache=tmp_path,
                            precision="bf16")
    assert again.info.cache == "hit"
    assert f"bf16: {n_layers} layers bf16" in again.report()
    assert sum(v for k, v in again.ir.op_counts().items() if k.startswith("bf16_")) == n_layers


def test_without_bf16_features_the_support_check_names_them(monkeypatch):
    monkeypatch.setattr(isa, "host_features", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.delenv(isa.ENV, raising=False)
    assert bf16_support() == (False, "this CPU lacks avx512_bf16 and amx_bf16")


FALLBACK_CHILD = """
import warnings, numpy as np, torch, rtinfer
from rtinfer.bf16 import Bf16Fallback
from rtinfer.ir import interpret, parse
g = parse('''
func @main(%x: f32[2,3,8,8]) -> f32[2,4] {
  %w = const f32[8,3,3,3] random(seed=0)
  %b = const f32[8] random(seed=1)
  %c = fused_conv2d(%x, %w, %b) {pad=[1], activation="relu"}
  %f = flatten(%c) {axis=1}
  %wl = const f32[4,512] random(seed=2)
  %y = linear(%f, %wl)
  return %y
}''')
x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cm = rtinfer.compile(g, precision="bf16", backend="torch", cache=False)
msgs = [str(w.message) for w in caught if issubclass(w.category, Bf16Fallback)]
assert len(msgs) == 1, [str(w.message) for w in caught]
print("WARNING:", msgs[0])
assert not any(k.startswith("bf16_") for k in cm.ir.op_counts()), cm.ir.op_counts()
np.testing.assert_allclose(cm(torch.from_numpy(x)).numpy(), interpret(g, x), rtol=1e-4,
                           atol=1e-4)  # plain fp32
print("REPORT:", [l.strip() for l in cm.report().splitlines() if l.strip().startswith("bf16:")])
"""


@pytest.mark.skipif("avx2" not in isa.supported(), reason="this CPU does not run the avx2 level")
def test_capped_to_avx2_bf16_compiles_fp32_and_says_so():
    """In a child process: ``$RTINFER_CPU_ISA`` caps oneDNN once per process, as a user's."""
    env = {**os.environ, "RTINFER_CPU_ISA": "avx2"}
    proc = subprocess.run([sys.executable, "-c", FALLBACK_CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    have = [f for f in ("avx512_bf16", "amx_bf16") if f in isa.host_features()]
    reason = (f"$RTINFER_CPU_ISA=avx2 hides {', '.join(have)}" if have
              else "this CPU lacks avx512_bf16 and amx_bf16")
    assert f"WARNING: precision='bf16': {reason}" in out
    assert "compiled fp32 instead" in out
    assert f"REPORT: ['bf16: not used: {reason}" in out
    assert "every layer runs fp32']" in out
