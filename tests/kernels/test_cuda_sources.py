"""rtinfer's CUDA kernels (cpp/cuda) without a GPU, and against torch on one.

- nvcc compiles every .cu for sm_80 (and sm_90, slow), without torch headers; rtinfer_cuda.h is
  plain C++ (the CPU side includes it); bindings.cpp parses against torch's headers (slow).
- The kernels run on the CPU through cpp/cuda/testing/emulate.h (a fiber per CUDA thread, real
  barriers and warp shuffles, grids capped at 3 blocks so every grid-stride loop loops) and match
  float64 references: partial tiles and vector tails, strided and broadcast operands, masks,
  causal, grouped-query heads, fully masked rows. Every input sits between NaNs and every output
  between sentinels, so a read or write out of bounds fails the test.
- @pytest.mark.gpu: the built extension (rtinfer.kernels.cuda) against torch on the device.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rtinfer.kernels import cuda

CUDA_DIR = cuda.CUDA_DIR
KERNEL_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
# what torch.utils.cpp_extension passes nvcc: no implicit half/bfloat16 conversions or operators
TORCH_NVCC_DEFINES = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                      "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
NVCC = cuda.nvcc()
GXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA toolkit here)")
needs_gxx = pytest.mark.skipif(GXX is None, reason="no C++ compiler (g++) on PATH")
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                                  reason="torch sees no CUDA device")


def run(cmd: list[str | Path]) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True)


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"{' '.join(proc.args)}\n{proc.stdout}\n{proc.stderr}"


@cache
def nvcc_archs() -> list[str]:
    listed = run([NVCC, "--list-gpu-arch"]).stdout.split()
    return [a for a in ("80", "90") if f"compute_{a}" in listed]


@cache
def cuda_include() -> Path | None:
    """The toolkit's include/ (cuda_fp16.h), as nvcc itself reports it."""
    if NVCC is None:
        return None
    for line in run([NVCC, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull]).stderr \
            .splitlines():
        if line.startswith("#$ TOP="):
            inc = Path(line.split("=", 1)[1].strip()) / "include"
            if (inc / "cuda_fp16.h").is_file():
                return inc.resolve()
    return None


# ---------------------------------------------------------------------------------------------
# Compiles


def test_build_lists_every_source():
    assert {s for s in cuda.SOURCES if s.endswith(".cu")} == {p.name for p in KERNEL_SOURCES}
    assert all((CUDA_DIR / s).is_file() for s in (*cuda.SOURCES, *cuda.HEADERS))


@needs_nvcc
@pytest.mark.parametrize("arch", ["80", pytest.param("90", marks=pytest.mark.slow)],
                         ids=["sm_80", "sm_90"])
def test_nvcc_compiles_every_kernel(tmp_path, arch):
    """Every .cu to an object for one architecture, in parallel: about 12 s of CPU for sm_80
    (sm_90 doubles it, so it runs with the slow tests)."""
    if arch not in nvcc_archs():
        pytest.skip(f"this nvcc cannot target sm_{arch}")
    gencode = [f"-gencode=arch=compute_{arch},code=sm_{arch}"]

    def compile_one(src: Path) -> subprocess.CompletedProcess:
        return run([NVCC, "-std=c++17", "-c", *gencode, *TORCH_NVCC_DEFINES,
                    "-Werror", "all-warnings", "-Wno-deprecated-gpu-targets",
                    "-Xcompiler", "-Wall,-Wextra", "-Xptxas", "-warn-spills",
                    src, "-o", tmp_path / f"{src.stem}.o"])

    with ThreadPoolExecutor(max(1, min(len(KERNEL_SOURCES), os.cpu_count() or 1))) as pool:
        for proc in pool.map(compile_one, KERNEL_SOURCES):
            check(proc)


@needs_gxx
def test_header_is_plain_cpp(tmp_path):
    use = tmp_path / "use.cpp"
    use.write_text('#include "rtinfer_cuda.h"\n'
                   "int main() { rtinfer::cuda::AttentionArgs a; return a.causal; }\n")
    check(run([GXX, "-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fsyntax-only",
               "-I", CUDA_DIR, use]))


@needs_gxx
@needs_nvcc
@pytest.mark.parametrize("first", ["rtinfer", "cuda"])
def test_header_agrees_with_the_cuda_runtime(tmp_path, first):
    """Its cudaStream_t is the runtime's, whichever header comes first."""
    if cuda_include() is None:
        pytest.skip("the CUDA toolkit's include directory was not found")
    ours, theirs = '#include "rtinfer_cuda.h"\n', "#include <cuda_runtime_api.h>\n"
    use = tmp_path / "use.cpp"
    use.write_text((ours + theirs if first == "rtinfer" else theirs + ours)
                   + "cudaStream_t s = nullptr;\n")
    check(run([GXX, "-std=c++17", "-Wall", "-Werror", "-fsyntax-only", "-I", CUDA_DIR,
               "-isystem", cuda_include(), use]))


@pytest.mark.slow
@needs_gxx
@needs_nvcc
def test_bindings_parse_against_torch_headers():
    """bindings.cpp as cpp_extension would compile it (about 25 s)."""
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    if cuda_include() is None:
        pytest.skip("the CUDA toolkit's include directory was not found")
    includes = [x for p in [*include_paths(), sysconfig.get_paths()["include"], cuda_include()]
                for x in ("-isystem", p)]
    check(run([GXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *includes,
               "-I", CUDA_DIR, "-DTORCH_EXTENSION_NAME=rtinfer_cuda",
               "-DTORCH_API_INCLUDE_EXTENSION_H",
               # a CPU wheel ships c10/cuda's headers without their generated config
               "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", CUDA_DIR / "bindings.cpp"]))


# ---------------------------------------------------------------------------------------------
# The kernels on the CPU emulator

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ACT_CODE = {a: i for i, a in enumerate(cuda.ACTIVATIONS)}
TORCH_ACT = {
    "none": lambda x: x,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}
# against float64 references: fp32 arithmetic, then one rounding to fp16 / bf16
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}
PAD = 16  # guard elements each side; keeps every dtype's 16-byte alignment
SENTINEL = -1024.0  # exact in every dtype
INVALID = 1  # cudaErrorInvalidValue

P, L, I32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
LP = ctypes.POINTER(ctypes.c_int64)
SIGNATURES = {
    "rtinfer_emu_elementwise": [I32, I32, I32, P, P, P, L, L],
    "rtinfer_emu_bias_act": [I32, I32, P, P, P, L, L],
    "rtinfer_emu_layer_norm": [I32, P, P, P, P, L, L, F32],
    "rtinfer_emu_rms_norm": [I32, P, P, P, L, L, F32],
    "rtinfer_emu_softmax": [I32, P, P, L, L, I32],
    "rtinfer_emu_attention": [I32, P, P, P, P, LP, LP, I32, I32, P, LP, F32, I32],
    "rtinfer_emu_divergent_shuffle": [P],
}


@pytest.fixture(scope="module")
def emu(tmp_path_factory) -> ctypes.CDLL:
    """cpp/cuda built with g++ for the CPU emulator (about 10 s)."""
    if GXX is None or cuda_include() is None:
        pytest.skip("the emulator needs g++ and the CUDA toolkit's headers (cuda_fp16.h)")
    out = tmp_path_factory.mktemp("cuda-emu")
    flags = ["-std=c++17", "-O1", "-fPIC", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
             "-DRTINFER_CUDA_EMULATE", "-DRTINFER_CUDA_MAX_BLOCKS=3", "-I", CUDA_DIR,
             "-isystem", cuda_include()]
    units = [*KERNEL_SOURCES, CUDA_DIR / "testing" / "emulate.cpp"]

    def compile_one(src: Path) -> subprocess.CompletedProcess:
        lang = ["-x", "c++"] if src.suffix == ".cu" else []
        return run([GXX, *flags, "-c", *lang, src, "-o", out / f"{src.stem}.o"])

    with ThreadPoolExecutor(max(1, min(len(units), os.cpu_count() or 1))) as pool:
        for proc in pool.map(compile_one, units):
            check(proc)
    lib = out / "librtinfer_cuda_emu.so"
    check(run([GXX, "-shared", *[out / f"{s.stem}.o" for s in units], "-o", lib]))
    dll = ctypes.CDLL(str(lib))
    for name, argtypes in SIGNATURES.items():
        getattr(dll, name).argtypes = argtypes
        getattr(dll, name).restype = I32
    return dll


def test_emulator_fails_a_shuffle_that_half_the_warp_skips(emu, capfd):
    out = torch.zeros(32)
    assert emu.rtinfer_emu_divergent_shuffle(ptr(out)) == 719  # cudaErrorLaunchFailure
    assert "deadlock" in capfd.readouterr().err


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def fenced(t: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """A contiguous copy of t between NaNs (False for bool): reading past an end shows."""
    fill = False if t.dtype == torch.bool else float("nan")
    buf = torch.full((t.numel() + 2 * PAD + shift,), fill, dtype=t.dtype)
    inner = buf[PAD + shift:PAD + shift + t.numel()].view(t.shape)
    inner.copy_(t)
    return inner


class Fenced:
    """An output buffer between sentinels; .check() fails if a kernel wrote outside .t."""

    def __init__(self, shape, dtype, shift: int = 0):
        self.n, self.lo = math.prod(shape), PAD + shift
        self.buf = torch.full((self.n + 2 * PAD + shift,), SENTINEL, dtype=dtype)
        self.t = self.buf[self.lo:self.lo + self.n].view(shape)

    def check(self) -> torch.Tensor:
        outside = torch.cat([self.buf[:self.lo], self.buf[self.lo + self.n:]])
        assert (outside == SENTINEL).all(), "the kernel wrote outside its output"
        return self.t.clone()


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), equal_nan=True, **TOL[dtype])


def rand(*shape, dtype=torch.float32, scale=1.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# --- elementwise

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", cuda.ACTIVATIONS)
@pytest.mark.parametrize("cols, shift", [(40, 0), (37, 0), (40, 1)],
                         ids=["vector", "odd-cols", "misaligned"])
def test_emulated_bias_act(emu, dtype, act, cols, shift):
    rows = 13
    x, bias = rand(rows, cols, dtype=dtype, scale=3), rand(cols, dtype=dtype, seed=1)
    out = Fenced((rows, cols), dtype, shift)
    assert emu.rtinfer_emu_bias_act(DTYPE_CODE[dtype], ACT_CODE[act], ptr(out.t),
                                    ptr(fenced(x, shift)), ptr(fenced(bias, shift)), rows,
                                    cols) == 0
    close(out.check(), TORCH_ACT[act](x.double() + bias.double()), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 3, 8, 111, 2053])  # tails after whole 16-byte packs
def test_emulated_activation_without_bias(emu, dtype, n):
    x = rand(n, dtype=dtype, scale=3)
    out = Fenced((n,), dtype)
    assert emu.rtinfer_emu_bias_act(DTYPE_CODE[dtype], ACT_CODE["gelu_tanh"], ptr(out.t),
                                    ptr(fenced(x)), None, 1, n) == 0
    close(out.check(), F.gelu(x.double(), approximate="tanh"), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("b_shape", [(9, 24), (24,), (1,)], ids=["same", "row", "scalar"])
def test_emulated_binary(emu, dtype, op, b_shape):
    a, b = rand(9, 24, dtype=dtype), rand(*b_shape, dtype=dtype, seed=1)
    out = Fenced((9, 24), dtype)
    assert emu.rtinfer_emu_elementwise(DTYPE_CODE[dtype], ["add", "mul"].index(op),
                                       ACT_CODE["relu"], ptr(out.t), ptr(fenced(a)),
                                       ptr(fenced(b)), a.numel(), b.numel()) == 0
    ref = a.double() + b.double() if op == "add" else a.double() * b.double()
    close(out.check(), F.relu(ref), dtype)


def test_emulated_elementwise_in_place_and_empty(emu):
    x = fenced(rand(5, 8))
    expected = torch.sigmoid(x.double())
    assert emu.rtinfer_emu_elementwise(0, 0, ACT_CODE["sigmoid"], ptr(x), ptr(x), None, 40,
                                       0) == 0
    close(x, expected, torch.float32)
    assert emu.rtinfer_emu_elementwise(0, 0, 0, None, None, None, 0, 0) == 0
    assert emu.rtinfer_emu_elementwise(0, 0, 0, ptr(x), ptr(x), ptr(x), 40, 0) == INVALID


# --- norms

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cols", [1, 7, 64, 1000, 1025, 3000])  # warp per row, then block
@pytest.mark.parametrize("affine", [True, False])
def test_emulated_layer_norm(emu, dtype, cols, affine):
    rows = 13
    x = rand(rows, cols, dtype=dtype, scale=2) + 5  # an offset mean: the two-pass variance
    gamma, beta = (rand(cols, dtype=dtype, seed=s) if affine else None for s in (1, 2))
    out = Fenced((rows, cols), dtype)
    assert emu.rtinfer_emu_layer_norm(DTYPE_CODE[dtype], ptr(out.t), ptr(fenced(x)),
                                      ptr(gamma if gamma is None else fenced(gamma)),
                                      ptr(beta if beta is None else fenced(beta)), rows, cols,
                                      1e-5) == 0
    ref = F.layer_norm(x.double(), (cols,), None if gamma is None else gamma.double(),
                       None if beta is None else beta.double(), 1e-5)
    close(out.check(), ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cols", [5, 384, 2049])
@pytest.mark.parametrize("affine", [True, False])
def test_emulated_rms_norm(emu, dtype, cols, affine):
    rows = 13
    x = rand(rows, cols, dtype=dtype, scale=2)
    gamma = rand(cols, dtype=dtype, seed=1) if affine else None
    out = Fenced((rows, cols), dtype)
    assert emu.rtinfer_emu_rms_norm(DTYPE_CODE[dtype], ptr(out.t), ptr(fenced(x)),
                                    ptr(gamma if gamma is None else fenced(gamma)), rows, cols,
                                    1e-6) == 0
    xd = x.double()
    ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6)
    close(out.check(), ref if gamma is None else ref * gamma.double(), dtype)


# --- softmax

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cols", [1, 31, 33, 1024, 1025, 4099])
@pytest.mark.parametrize("log", [False, True])
def test_emulated_softmax(emu, dtype, cols, log):
    rows = 13
    x = rand(rows, cols, dtype=dtype, scale=4)
    out = Fenced((rows, cols), dtype)
    assert emu.rtinfer_emu_softmax(DTYPE_CODE[dtype], ptr(out.t), ptr(fenced(x)), rows, cols,
                                   log) == 0
    ref = x.double().log_softmax(-1) if log else x.double().softmax(-1)
    close(out.check(), ref, dtype)


@pytest.mark.parametrize("cols", [6, 1500])
@pytest.mark.parametrize("log", [False, True])
def test_emulated_softmax_infinities_and_nan_as_torch(emu, cols, log):
    """-inf entries drop out; an all -inf row, a NaN or a +inf makes the row NaN, as torch."""
    x = rand(5, cols)
    inf = float("inf")
    x[0, ::2] = -inf
    x[1] = -inf
    x[2, cols // 2] = float("nan")
    x[3, cols - 1] = inf
    x[4, 0] = -inf
    out = Fenced(x.shape, torch.float32)
    assert emu.rtinfer_emu_softmax(0, ptr(out.t), ptr(fenced(x)), 5, cols, log) == 0
    close(out.check(), x.log_softmax(-1) if log else x.softmax(-1), torch.float32)


# --- attention

def reference_attention(q, k, v, mask=None, scale=None, causal=False):
    """In float64, [B, H, S, D]; a row with every key masked gives zeros (torch's SDPA since
    2.5, its _safe_softmax)."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask.double()
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), -math.inf)
    p = torch.where(torch.isneginf(s).all(-1, keepdim=True), 0.0, s.softmax(-1))
    return p @ v


def operand(x: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, H, S, D] laid out as a kernel input: "bhsd" contiguous, or "bshd" with 3 NaN
    columns after each head's D (strides as in a slice of a wider projection). Returns the
    [B, H, S, D] view the kernel reads, and its buffer."""
    B, H, S, D = x.shape
    if layout == "bhsd":
        t = fenced(x)
        return t, t
    buf = fenced(torch.full((B, S, H, D + 3), math.nan, dtype=x.dtype))
    view = buf[..., :D].transpose(1, 2)
    view.copy_(x)
    return view, buf


def emu_attention(emu, q, k, v, layout="bhsd", mask=None, scale=None, causal=False):
    """Runs the kernel on [B, H, S, D] inputs laid out per `layout`, the output in the same
    layout inside sentinels; mask: broadcastable to [B, H, Sq, Sk]."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    (qv, _), (kv, _), (vv, _) = (operand(t, layout) for t in (q, k, v))
    if layout == "bhsd":
        out = Fenced((B, H, Sq, D), q.dtype)
        ov = out.t
    else:
        out = Fenced((B, Sq, H, D + 3), q.dtype)
        ov = out.t[..., :D].transpose(1, 2)
    sizes = (ctypes.c_int64 * 6)(B, H, Hkv, Sq, Sk, D)
    strides = (ctypes.c_int64 * 12)(*(s for t in (qv, kv, vv, ov) for s in t.stride()[:3]))
    kind, mask_dtype, mask_ptr, mask_strides = 0, 0, None, None
    if mask is not None:
        m = fenced(mask).expand(B, H, Sq, Sk)
        kind = 1 if mask.dtype == torch.bool else 2
        mask_dtype = 0 if mask.dtype == torch.bool else DTYPE_CODE[mask.dtype]
        mask_ptr, mask_strides = ptr(m), (ctypes.c_int64 * 4)(*m.stride())
    status = emu.rtinfer_emu_attention(DTYPE_CODE[q.dtype], ptr(qv), ptr(kv), ptr(vv), ptr(ov),
                                       sizes, strides, kind, mask_dtype, mask_ptr, mask_strides,
                                       D ** -0.5 if scale is None else scale, causal)
    assert status == 0
    result = out.check()
    if layout == "bshd":
        assert (result[..., D:] == SENTINEL).all(), "the kernel wrote between heads"
        result = result[..., :D].transpose(1, 2)
    return result


def make_mask(kind: str | None, B, H, Sq, Sk, dtype=torch.float32, seed=3):
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(B, 1, Sq, Sk, generator=g) > 0.3
    keep[..., 0] = True  # no fully masked row here (tested on their own)
    if kind == "bool":
        return keep
    return torch.where(keep, torch.randn(B, 1, Sq, Sk, generator=g), -math.inf).to(dtype)


@pytest.mark.parametrize("S, D", [(1, 32), (7, 64), (129, 80), (33, 128), (40, 17)])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_emulated_attention(emu, S, D, layout, mask_kind, causal):
    B, H = 1, 2
    q, k, v = (rand(B, H, S, D, seed=s) for s in range(3))
    mask = make_mask(mask_kind, B, H, S, S)
    got = emu_attention(emu, q, k, v, layout, mask, causal=causal)
    close(got, reference_attention(q, k, v, mask, causal=causal), torch.float32)


@pytest.mark.parametrize("Sq, Sk", [(5, 40), (40, 3), (17, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_emulated_cross_attention(emu, Sq, Sk, causal):
    q = rand(1, 2, Sq, 64)
    k, v = rand(1, 2, Sk, 64, seed=1), rand(1, 2, Sk, 64, seed=2)
    got = emu_attention(emu, q, k, v, "bshd", causal=causal)
    close(got, reference_attention(q, k, v, causal=causal), torch.float32)


@pytest.mark.parametrize("mask_shape", [(7, 9), (2, 1, 1, 9), (1, 4, 7, 9), (2, 4, 7, 1)],
                         ids=["seq-seq", "padding", "per-head", "per-query"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_emulated_attention_mask_broadcast(emu, mask_shape, kind):
    q, k, v = rand(2, 4, 7, 32), rand(2, 4, 9, 32, seed=1), rand(2, 4, 9, 32, seed=2)
    g = torch.Generator().manual_seed(5)
    keep = torch.rand(mask_shape, generator=g) > 0.4
    keep[..., -1] = True
    mask = keep if kind == "bool" else torch.where(keep, torch.randn(mask_shape, generator=g),
                                                   -math.inf)
    got = emu_attention(emu, q, k, v, "bhsd", mask)
    close(got, reference_attention(q, k, v, mask.expand(2, 4, 7, 9)), torch.float32)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_emulated_grouped_query_attention(emu, kv_heads):
    q = rand(2, 4, 20, 64)
    k, v = rand(2, kv_heads, 20, 64, seed=1), rand(2, kv_heads, 20, 64, seed=2)
    got = emu_attention(emu, q, k, v, "bshd", causal=True)
    close(got, reference_attention(q, k, v, causal=True), torch.float32)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_emulated_attention_fully_masked_rows_give_zeros_as_torch(emu, kind):
    q, k, v = rand(1, 2, 35, 32), rand(1, 2, 35, 32, seed=1), rand(1, 2, 35, 32, seed=2)
    keep = torch.rand(1, 2, 35, 35, generator=torch.Generator().manual_seed(0)) > 0.5
    keep[..., 3, :] = False   # a whole row, in the first query tile
    keep[..., 33, :] = False  # and in the last, partial one
    keep[..., 10, :] = True
    keep[..., 20, :32] = False  # the first key tile masked, the second not: -inf, then a max
    mask = keep if kind == "bool" else torch.where(keep, 0.0, -math.inf)
    got = emu_attention(emu, q, k, v, "bhsd", mask)
    assert (got[..., [3, 33], :] == 0).all()
    close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), torch.float32)
    close(got, reference_attention(q, k, v, mask), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask_dtype", [torch.float32, "same", torch.bool])
def test_emulated_attention_half(emu, dtype, mask_dtype):
    q, k, v = (rand(2, 2, 45, 80, dtype=dtype, seed=s) for s in range(3))
    mask = make_mask("bool" if mask_dtype == torch.bool else "float", 2, 2, 45, 45,
                     dtype=dtype if mask_dtype == "same" else torch.float32)
    got = emu_attention(emu, q, k, v, "bshd", mask, scale=0.2, causal=True)
    close(got, reference_attention(q, k, v, mask, scale=0.2, causal=True), dtype)


def test_emulated_attention_rejects_bad_shapes(emu):
    x = fenced(torch.zeros(4 * 8 * 129))

    def call(heads, kv_heads, head_dim):
        sizes = (ctypes.c_int64 * 6)(1, heads, kv_heads, 8, 8, head_dim)
        strides = (ctypes.c_int64 * 12)(*[0] * 12)
        return emu.rtinfer_emu_attention(0, ptr(x), ptr(x), ptr(x), ptr(x), sizes, strides, 0,
                                         0, None, None, 1.0, 0)

    assert call(4, 4, 129) == INVALID
    assert call(4, 3, 64) == INVALID
    assert call(4, 0, 64) == INVALID
    assert call(0, 1, 64) == 0  # nothing to do


# ---------------------------------------------------------------------------------------------
# On the GPU: the built extension against torch

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
           torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
GPU_ATTN_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4),
                torch.float16: dict(atol=3e-3, rtol=3e-3),
                torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.fixture(scope="module")
def ext():
    if not cuda.available():
        pytest.skip("no CUDA device or no nvcc")
    return cuda.load()  # a build error fails here rather than skipping


def grand(*shape, dtype=torch.float32, scale=1.0, seed=0) -> torch.Tensor:
    return rand(*shape, dtype=dtype, scale=scale, seed=seed).cuda()


def gpu_close(actual, expected, tol) -> None:
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), equal_nan=True,
                               **tol)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cols", [1, 7, 768, 1025, 4096])
@pytest.mark.parametrize("affine", [True, False])
def test_gpu_layer_norm(ext, dtype, cols, affine):
    x = grand(3, 5, cols, dtype=dtype, scale=2) + 1
    gamma = grand(cols, dtype=dtype, seed=1) if affine else None
    beta = grand(cols, dtype=dtype, seed=2) if affine else None
    ref = F.layer_norm(x.float(), (cols,), None if gamma is None else gamma.float(),
                       None if beta is None else beta.float(), 1e-5)
    gpu_close(cuda.layer_norm(x, gamma, beta, 1e-5), ref, GPU_TOL[dtype])


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cols", [7, 768, 4099])
def test_gpu_rms_norm(ext, dtype, cols):
    x, gamma = grand(4, cols, dtype=dtype, scale=2), grand(cols, dtype=dtype, seed=1)
    xf = x.float()
    ref = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * gamma.float()
    gpu_close(cuda.rms_norm(x, gamma, 1e-6), ref, GPU_TOL[dtype])


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cols", [1, 33, 1024, 1025, 50000])
@pytest.mark.parametrize("log", [False, True])
def test_gpu_softmax(ext, dtype, cols, log):
    x = grand(6, cols, dtype=dtype, scale=4)
    x[1] = -math.inf  # NaN row, as torch
    ref = x.float().log_softmax(-1) if log else x.float().softmax(-1)
    gpu_close(cuda.softmax(x, log), ref, GPU_TOL[dtype])


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("act", cuda.ACTIVATIONS)
@pytest.mark.parametrize("cols", [64, 37])
def test_gpu_bias_act(ext, dtype, act, cols):
    x, bias = grand(7, 3, cols, dtype=dtype, scale=3), grand(cols, dtype=dtype, seed=1)
    gpu_close(cuda.bias_act(x, bias, act), TORCH_ACT[act](x.float() + bias.float()),
              GPU_TOL[dtype])
    gpu_close(cuda.bias_act(x, None, act), TORCH_ACT[act](x.float()), GPU_TOL[dtype])


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("op", ["add", "mul"])
def test_gpu_binary(ext, dtype, op):
    a, b = grand(6, 5, 40, dtype=dtype), grand(5, 40, dtype=dtype, seed=1)
    ref = a.float() + b.float() if op == "add" else a.float() * b.float()
    gpu_close(cuda.binary(a, b, op, "silu"), F.silu(ref), GPU_TOL[dtype])


def sdpa_reference(q, k, v, mask, causal):
    """torch's SDPA in fp32 on [B, H, S, D]; mask and causal together folded into one mask
    (SDPA takes only one of them)."""
    q, k, v = q.float(), k.float(), v.float()
    if mask is not None and causal:
        tri = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        mask = mask & tri if mask.dtype == torch.bool else mask.masked_fill(~tri, -math.inf)
        causal = False
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.float()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("S", [1, 7, 129])
@pytest.mark.parametrize("D", [32, 64, 80, 128])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_attention(ext, dtype, S, D, mask_kind, causal):
    B, H = 2, 3
    q, k, v = (grand(B, H, S, D, dtype=dtype, seed=s) for s in range(3))
    mask = make_mask(mask_kind, B, H, S, S, dtype=dtype)
    mask = None if mask is None else mask.cuda()
    ref = sdpa_reference(q, k, v, mask, causal)
    gpu_close(cuda.attention(q, k, v, mask, causal=causal), ref, GPU_ATTN_TOL[dtype])
    # the same data as [B, S, H, D], and as [B, S, H*D] slices of one fused qkv projection
    qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
    got = cuda.attention(qs, ks, vs, mask, causal=causal, layout="bshd")
    assert got.shape == (B, S, H, D)
    gpu_close(got.transpose(1, 2), ref, GPU_ATTN_TOL[dtype])
    qkv = torch.cat([t.reshape(B, S, H * D) for t in (qs, ks, vs)], -1)
    q3, k3, v3 = qkv.split(H * D, -1)
    got = cuda.attention(q3, k3, v3, mask, causal=causal, layout="bshd", heads=H)
    assert got.shape == (B, S, H * D)
    gpu_close(got.unflatten(-1, (H, D)).transpose(1, 2), ref, GPU_ATTN_TOL[dtype])


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_gpu_attention_fully_masked_rows(ext, kind):
    q, k, v = (grand(1, 2, 20, 64, seed=s) for s in range(3))
    keep = torch.rand(1, 2, 20, 20, device="cuda") > 0.5
    keep[..., 4, :] = False
    keep[..., 5, :] = True
    mask = keep if kind == "bool" else torch.where(keep, 0.0, -math.inf)
    got = cuda.attention(q, k, v, mask)
    assert (got[..., 4, :] == 0).all()
    # torch's CPU SDPA: its math path zeroes such rows (_safe_softmax); whether every fused
    # CUDA backend does too is torch's business
    ref = sdpa_reference(q.cpu(), k.cpu(), v.cpu(), mask.cpu(), False)
    gpu_close(got, ref, GPU_ATTN_TOL[torch.float32])


@pytest.mark.gpu
@requires_gpu
def test_gpu_grouped_query_and_cross_attention(ext):
    q, k, v = grand(2, 8, 12, 64), grand(2, 2, 50, 64, seed=1), grand(2, 2, 50, 64, seed=2)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1),
                                         scale=0.3)
    gpu_close(cuda.attention(q, k, v, scale=0.3), ref, GPU_ATTN_TOL[torch.float32])


@pytest.mark.gpu
@requires_gpu
def test_gpu_errors_are_clear(ext):
    x = grand(4, 8)
    with pytest.raises(ValueError, match="CUDA tensors"):
        cuda.softmax(x.cpu())
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        cuda.softmax(x.double())
    with pytest.raises(RuntimeError, match=r"weight must have shape \[8\]"):
        cuda.layer_norm(x, grand(7))
    with pytest.raises(ValueError, match="head_dim 129"):
        q = grand(1, 1, 4, 129)
        cuda.attention(q, q, q)
    with pytest.raises(RuntimeError, match="not a multiple"):
        cuda.attention(grand(1, 3, 4, 32), grand(1, 2, 4, 32), grand(1, 2, 4, 32))

