"""kernels/codegen.py: generated C++ for elementwise ops and fused bodies, against the IR's
reference interpreter (every case is compiled into one shared object, called through ctypes in
uneven chunks so row boundaries inside [begin, end) are exercised)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rtinfer.errors import Unsupported
from rtinfer.ir import Graph, interpret, parse
from rtinfer.kernels import codegen

SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 0.49, -0.51, 0.62, -0.63, 1e-3, -1e-3, 1e-30,
                    3.0, -3.0, 20.0, -20.0, 30.0, 88.0, -88.0, 100.0, -100.0, np.inf, -np.inf,
                    np.nan, 1e-40], np.float32)


def floats(shape, seed, scale=3.0, special=True):
    a = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    if special and a.size >= SPECIAL.size:
        a.reshape(-1)[:SPECIAL.size] = SPECIAL
    return a


def ints(shape, seed, lo=-50, hi=50, dtype=np.int64):
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(dtype)


def bools(shape, seed):
    return np.random.default_rng(seed).random(shape) < 0.5


def func(params: str, ret: str, body: str) -> str:
    return f"func @main({params}) -> {ret} {{\n{textwrap.dedent(body).strip()}\n}}\n"


def unary(op: str, attrs: str = "", dtype: str = "f32") -> str:
    return func(f"%x: {dtype}[4,37]", f"{dtype}[4,37]",
                f"%y = {op}(%x) {attrs}\nreturn %y")


def binary(op: str, a: str, b: str, out: str) -> str:
    return func(f"%a: {a}, %b: {b}", out, f"%y = {op}(%a, %b)\nreturn %y")


def fused(types: list[str], ret: str, body: str, n_results: int = 1) -> str:
    """A graph of one fused_elementwise node over inputs of `types` (%0, %1, ... in `body`)."""
    params = ", ".join(f"%x{i}: {t}" for i, t in enumerate(types))
    inner = ", ".join(f"%{i}: {t}" for i, t in enumerate(types))
    args = ", ".join(f"%x{i}" for i in range(len(types)))
    outs = ", ".join(f"%r{i}" for i in range(n_results))
    return func(params, ret, f"{outs} = fused_elementwise({args}) {{body=func @fused({inner}) -> "
                             f"{ret} {{\n{textwrap.dedent(body).strip()}\n}}}}\nreturn {outs}")


F = lambda s: lambda seed: floats(s, seed)  # noqa: E731
POS = lambda s: lambda seed: np.abs(floats(s, seed)) + np.float32(0.01)  # noqa: E731
I = lambda s, **kw: lambda seed: ints(s, seed, **kw)  # noqa: E731
B = lambda s: lambda seed: bools(s, seed)  # noqa: E731

UNARY_F32 = {
    "relu": "", "leaky_relu": "{alpha=0.2}", "elu": "{alpha=1.5}", "selu": "", "gelu": "",
    "gelu_tanh": '{approximate="tanh"}', "silu": "", "sigmoid": "", "tanh": "",
    "hardsigmoid": "", "hardswish": "", "mish": "", "softplus": "",
    "softplus_beta": "{beta=2.0, threshold=5.0}", "clip": "{min=-1.5, max=2.0}",
    "clip_half": "{min=0.0, max=inf}", "exp": "", "log": "", "sqrt": "", "rsqrt": "",
    "reciprocal": "", "sin": "", "cos": "", "erf": "", "floor": "", "ceil": "", "round": "",
    "tan": "", "asin": "", "acos": "", "atan": "", "sinh": "", "cosh": "", "asinh": "",
    "acosh": "", "atanh": "", "abs": "", "neg": "", "sign": "", "identity": "",
}

# id -> (IR text, input makers, result index)
CASES: dict[str, tuple[str, list, int]] = {}
for key, attrs in UNARY_F32.items():
    op = key.split("_")[0] if key in ("gelu_tanh", "softplus_beta", "clip_half") else key
    CASES[f"unary-{key}"] = (unary(op, attrs), [F((4, 37))], 0)
for op in ("abs", "neg", "sign", "bitwise_not"):
    CASES[f"unary-{op}-i64"] = (unary(op, dtype="i64"), [I((4, 37))], 0)
CASES["unary-abs-i8"] = (unary("abs", dtype="i8"), [I((4, 37), lo=-128, hi=128, dtype=np.int8)], 0)
CASES["unary-logical_not"] = (unary("logical_not", dtype="bool"), [B((4, 37))], 0)
CASES["fused-f64"] = (
    fused(["f64[5,40]"], "f64[5,40]", """
        %1 = exp(%0)
        %2 = tanh(%1)
        %3 = gelu(%0)
        %4 = add(%2, %3)
        %5 = sigmoid(%4)
        %6 = log(%5)
        %7 = erf(%6)
        return %7"""),
    [lambda seed: floats((5, 40), seed).astype(np.float64)], 0)

for op in ("add", "sub", "mul", "div", "pow", "mod", "maximum", "minimum"):
    maker = POS((7, 1, 13)) if op == "pow" else F((7, 1, 13))
    CASES[f"binary-{op}-f32"] = (binary(op, "f32[7,1,13]", "f32[5,13]", "f32[7,5,13]"),
                                 [maker, F((5, 13))], 0)
CASES["binary-pow-neg-base"] = (binary("pow", "f32[4,37]", "f32[37]", "f32[4,37]"),
                                [F((4, 37)), lambda seed: np.arange(-18, 19).astype(np.float32)],
                                0)
for op in ("add", "sub", "mul", "div", "mod", "maximum", "minimum", "bitwise_and", "bitwise_or",
           "bitwise_xor"):
    for dt in ("i64", "i32"):
        npdt = np.int64 if dt == "i64" else np.int32
        CASES[f"binary-{op}-{dt}"] = (binary(op, f"{dt}[6,20]", f"{dt}[20]", f"{dt}[6,20]"),
                                      [I((6, 20), dtype=npdt), I((20,), lo=-4, hi=5, dtype=npdt)],
                                      0)
for op in ("div", "mod"):  # x / 0 and x % 0 are 0, MIN / -1 wraps (as numpy)
    CASES[f"binary-{op}-extremes"] = (
        binary(op, "i64[5]", "i64[5]", "i64[5]"),
        [lambda seed: np.array([np.iinfo(np.int64).min, 7, -7, 5, -9], np.int64),
         lambda seed: np.array([-1, 0, 2, -3, 4], np.int64)], 0)
CASES["binary-add-i8-wraps"] = (binary("add", "i8[16]", "i8[16]", "i8[16]"),
                                [I((16,), lo=60, hi=128, dtype=np.int8)] * 2, 0)
for op in ("shift_left", "shift_right"):
    CASES[f"binary-{op}"] = (binary(op, "i32[5,12]", "i32[12]", "i32[5,12]"),
                             [I((5, 12), lo=-1000, hi=1000, dtype=np.int32),
                              lambda seed: np.arange(-2, 46, 4).astype(np.int32)], 0)
for op in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal"):
    CASES[f"compare-{op}"] = (binary(op, "f32[4,37]", "f32[4,1]", "bool[4,37]"),
                              [F((4, 37)), lambda seed: np.array([[0.0], [1.0], [np.nan],
                                                                  [-3.0]], np.float32)], 0)
    CASES[f"compare-{op}-i64"] = (binary(op, "i64[6,20]", "i64[20]", "bool[6,20]"),
                                  [I((6, 20), lo=-3, hi=3), I((20,), lo=-3, hi=3)], 0)
for op in ("logical_and", "logical_or", "equal", "add", "mul", "maximum", "minimum"):
    CASES[f"logic-{op}"] = (binary(op, "bool[3,30]", "bool[30]", "bool[3,30]"),
                            [B((3, 30)), B((30,))], 0)

CASTS = [("f32", "i64", F((4, 37))), ("f32", "i32", F((4, 37))), ("f32", "bool", F((4, 37))),
         ("i64", "f32", I((4, 37), lo=-10**9, hi=10**9)), ("bool", "f32", B((4, 37))),
         ("i64", "i32", I((4, 37), lo=-10**12, hi=10**12)),
         ("i32", "i64", I((4, 37), dtype=np.int32)),
         ("i32", "bool", I((4, 37), lo=-2, hi=3, dtype=np.int32)), ("bool", "i64", B((4, 37))),
         ("f32", "f64", F((4, 37))),
         ("f64", "f32", lambda seed: floats((4, 37), seed).astype(np.float64) * 1e3),
         ("f32", "u8", lambda seed: np.minimum(np.abs(floats((4, 37), seed)) * 40, 255)),
         ("i64", "u8", I((4, 37), lo=-300, hi=300))]
for src, dst, maker in CASTS:
    def _finite(seed, maker=maker, src=src, dst=dst):
        a = maker(seed)
        if a.dtype.kind == "f" and dst not in ("bool", "f64", "f32"):
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)  # numpy leaves these undefined
            a[np.abs(a) > 1e9] = 0.0
        return a
    CASES[f"cast-{src}-{dst}"] = (unary("cast", f"{{dtype={dst}}}", src).replace(
        f"-> {src}[4,37]", f"-> {dst}[4,37]"), [_finite], 0)

CASES["fused-broadcast-where"] = (
    fused(["f32[2,3,4,5]", "f32[3,1,1]", "f32[5]", "bool[4,1]"], "f32[2,3,4,5]", """
        %4 = mul(%0, %1)
        %5 = add(%4, %2)
        %6 = tanh(%5)
        %7 = where(%3, %6, %0)
        return %7"""),
    [F((2, 3, 4, 5)), F((3, 1, 1)), F((5,)), B((4, 1))], 0)
CASES["fused-leading-broadcast"] = (
    fused(["f32[1,6,1]", "f32[3,6,8]"], "f32[3,6,8]", """
        %2 = sub(%0, %1)
        %3 = mul(%2, %2)
        %4 = exp(%3)
        return %4"""),
    [F((1, 6, 1)), lambda seed: floats((3, 6, 8), seed) * 0.3], 0)
CASES["fused-consts-inlined-and-baked"] = (
    """
    func @main(%x: f32[5,16]) -> f32[5,16] {
      %two = const f32[] dense<2.0>
      %r = fused_elementwise(%x, %two) {body=func @fused(%0: f32[5,16], %1: f32[]) -> f32[5,16] {
          %k = const f32[16] dense<[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0,
                                    12.0, 13.0, 14.0, 15.0]>
          %h = const f32[] dense<0.5>
          %3 = pow(%0, %1)
          %4 = mul(%3, %h)
          %5 = add(%4, %k)
          return %5
        }}
      return %r
    }""",
    [F((5, 16))], 0)
CASES["fused-gelu-spelled-out"] = (
    fused(["f32[64,96]"], "f32[64,96]", """
        %c = const f32[] dense<0.7071067811865476>
        %h = const f32[] dense<0.5>
        %o = const f32[] dense<1.0>
        %1 = mul(%0, %c)
        %2 = erf(%1)
        %3 = add(%2, %o)
        %4 = mul(%0, %h)
        %5 = mul(%4, %3)
        return %5"""),
    [F((64, 96))], 0)
CASES["fused-casts-and-compares"] = (
    fused(["f32[3,10]", "i64[10]"], "i64[3,10]", """
        %2 = cast(%1) {dtype=f32}
        %3 = greater(%0, %2)
        %4 = cast(%0) {dtype=i64}
        %5 = where(%3, %4, %1)
        %6 = cast(%3) {dtype=i64}
        %7 = add(%5, %6)
        return %7"""),
    [lambda seed: floats((3, 10), seed, special=False), I((10,), lo=-3, hi=3)], 0)
CASES["fused-second-result"] = (  # a kept intermediate of its own (smaller) shape
    fused(["f32[4,1]", "f32[4,6]"], "(f32[4,6], f32[4,1])", """
        %2 = exp(%0)
        %3 = mul(%2, %1)
        return %3, %2""", n_results=2),
    [F((4, 1)), F((4, 6))], 1)
CASES["fused-scalar-input"] = (
    fused(["f32[]", "f32[3,7]"], "f32[3,7]", """
        %2 = maximum(%1, %0)
        return %2"""),
    [lambda seed: np.array(0.25, np.float32), F((3, 7))], 0)
CASES["fused-bool-result"] = (
    fused(["f32[2,50]", "f32[50]"], "bool[2,50]", """
        %2 = less(%0, %1)
        return %2"""),
    [F((2, 50)), F((50,))], 0)


def _node_of(graph: Graph):
    return next(n for n in reversed(graph.nodes) if n.op != "const")


@pytest.fixture(scope="module")
def compiled():
    """Every case generated and compiled into one library: id -> (graph, Generated, address)."""
    built, sources = {}, {}
    for cid, (text, _, out) in CASES.items():
        g = parse(textwrap.dedent(text).strip() + "\n")
        gen = codegen.generate(_node_of(g), output=out)
        built[cid] = (g, gen)
        sources[gen.name] = gen.source
    addresses = codegen.compile_functions(sources)
    return {cid: (g, gen, addresses[gen.name]) for cid, (g, gen) in built.items()}


FN = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_int64,
                      ctypes.c_int64)


def call(address: int, arrays: list[np.ndarray], shape, dtype,
         splits=(0, 5, 41, 100)) -> np.ndarray:
    """Run a generated function over the elements of a `shape` result in the chunks `splits`
    makes."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    ins = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])
    out = np.full(shape, 7, dtype=dtype)
    bounds = sorted({b for b in splits if b < out.size} | {out.size})
    fn = FN(address)
    for b, e in zip(bounds, bounds[1:], strict=False):
        fn(ins, out.ctypes.data, b, e)
    return out


@pytest.mark.parametrize("cid", list(CASES))
def test_generated_code_matches_the_reference(compiled, cid):
    g, gen, address = compiled[cid]
    _, makers, out = CASES[cid]
    arrays = [m(seed) for seed, m in enumerate(makers)]
    want = interpret(g, *arrays)
    want = want[out] if isinstance(want, tuple) else want
    got = call(address, arrays, want.shape, want.dtype)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


def _body(gen: codegen.Generated) -> str:
    return gen.source[len(codegen.PRELUDE):]


def test_same_shape_inputs_are_one_flat_loop(compiled):
    body = _body(compiled["fused-gelu-spelled-out"][1])
    assert "inner" not in body and "#pragma omp simd" in body and "a0 = p0[i]" in body


def test_broadcast_inputs_read_rows_without_per_element_index_math(compiled):
    body = _body(compiled["fused-broadcast-where"][1])
    loop = body[body.index("for (int64_t j"):body.index("i = o * inner")]
    assert "/" not in loop and "%" not in loop
    assert "q1[0]" in loop and "q0[j]" in loop  # %b is constant along the row, %x is not


def test_constant_scalars_are_inlined_and_pow_two_is_a_product(compiled):
    body = _body(compiled["fused-consts-inlined-and-baked"][1])
    assert "ins[1]" not in body and "std::pow" not in body and "static const float" in body


def test_physical_shapes_address_an_nhwc_layout():
    # an NCHW body over values stored NHWC: x [1,4,3,5] as [1,3,5,4], bias [1,4,1,1] as [4]
    g = parse(fused(["f32[1,4,3,5]", "f32[1,4,1,1]"], "f32[1,4,3,5]", """
        %2 = add(%0, %1)
        %3 = relu(%2)
        return %3"""))
    gen = codegen.generate(_node_of(g), [(1, 3, 5, 4), (4,)], (1, 3, 5, 4))
    address = codegen.compile_functions({gen.name: gen.source})[gen.name]
    x, b = floats((1, 4, 3, 5), 0), floats((1, 4, 1, 1), 1)
    want = interpret(g, x, b)
    got = call(address, [x.transpose(0, 2, 3, 1), b], (1, 3, 5, 4), np.float32)
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="input 1"):
        codegen.generate(_node_of(g), [(1, 3, 5, 4), (2, 2)], (1, 3, 5, 4))


def test_unknown_op_raises_unsupported_naming_it():
    g = parse(func("%x: f32[2,3]", "f32[2,3]", "%y = softmax(%x) {axis=-1}\nreturn %y"))
    with pytest.raises(Unsupported, match="softmax") as e:
        codegen.generate(_node_of(g))
    assert e.value.op == "softmax"


def test_unsupported_dtype_and_symbolic_shapes():
    g = parse(unary("exp", dtype="f16"))
    with pytest.raises(Unsupported, match="f16"):
        codegen.generate(_node_of(g))
    g = parse(func("%x: f32[B,3]", "f32[B,3]", "%y = exp(%x)\nreturn %y"))
    with pytest.raises(Unsupported, match="symbolic"):
        codegen.generate(_node_of(g))


def test_a_body_graph_generates_like_its_node(compiled):
    g, gen, _ = compiled["fused-leading-broadcast"]
    body = _node_of(g).attrs["body"]
    assert codegen.generate(body).name == gen.name


def test_compile_is_cached_by_content(compiled, tmp_path, monkeypatch):
    monkeypatch.setenv("RTINFER_CACHE_DIR", str(tmp_path))
    _, gen, _ = compiled["unary-exp"]
    src = gen.source.replace(gen.name, "rtinfer_ew_cache_probe")
    first = codegen.compile_functions({"rtinfer_ew_cache_probe": src})
    libs = list((tmp_path / "codegen").glob("*.so"))
    assert len(libs) == 1 and list((tmp_path / "codegen").glob("*.cpp"))
    assert codegen.compile_functions({"rtinfer_ew_cache_probe": src}) == first
    assert list((tmp_path / "codegen").glob("*.so")) == libs


def test_a_compile_error_raises_with_the_log_and_keeps_the_source(tmp_path, monkeypatch):
    from rtinfer.kernels.build import NativeUnavailable

    monkeypatch.setenv("RTINFER_CACHE_DIR", str(tmp_path))
    with pytest.raises(NativeUnavailable, match="not_declared") as e:
        codegen.compile_functions({"broken": 'extern "C" void broken() { not_declared(); }'})
    kept = str(e.value).split("source kept in ")[1].split(")")[0]
    assert "not_declared" in open(kept).read()


def test_concurrent_processes_compile_the_same_library(tmp_path):
    script = textwrap.dedent("""
        from rtinfer.kernels import codegen
        src = 'extern "C" void probe_fn(const char* const* i, char* o, long b, long e) {}'
        print(codegen.compile_functions({"probe_fn": src})["probe_fn"] > 0)
    """)
    env = {"RTINFER_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o.strip() for o, _ in outs] == ["True", "True"], outs
    assert len(list((tmp_path / "codegen").glob("*.so"))) == 1
    assert not list((tmp_path / "codegen").glob("*.*.*"))  # no temporary left behind
