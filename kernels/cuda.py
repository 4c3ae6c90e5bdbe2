"""rtinfer's own CUDA kernels (``cpp/cuda``): LayerNorm/RMSNorm, softmax, fused attention for short
sequences and bias + activation epilogues, built on first use through
``torch.utils.cpp_extension`` into ``cuda-<fingerprint>/`` under the native build root
(``$RTINFER_NATIVE_CACHE``, else ``~/.cache/rtinfer/native``; ``rtinfer.paths``), and thin
wrappers over CUDA tensors.

Convolutions and matmuls on the GPU are torch's (cuDNN, cuBLAS); these are the kernels around
them. Each wrapper computes in fp32 and returns the input's dtype (float32, float16, bfloat16).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

from rtinfer.errors import BackendError
from rtinfer.kernels.build import CPP_DIR, build_dir, build_extension

CUDA_DIR = CPP_DIR / "cuda"
SOURCES = ("elementwise.cu", "layernorm.cu", "softmax.cu", "attention.cu", "bindings.cpp")
HEADERS = ("rtinfer_cuda.h", "common.cuh")
CUDA_FLAGS = ["-O3", "-std=c++17"]
CFLAGS = ["-O3", "-std=c++17"]
# bias_act / binary activations; "gelu" is the erf form, as torch's default
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")
MAX_HEAD_DIM = 128

_lock = threading.Lock()
_module: ModuleType | None = None


class CudaUnavailable(BackendError):
    """rtinfer's CUDA kernels cannot be built or run here (no GPU, no nvcc, a build error)."""


@cache
def nvcc() -> str | None:
    """The nvcc that builds the kernels: $CUDA_HOME/bin, else PATH, else /usr/local/cuda."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def available() -> bool:
    """A CUDA device torch can use, and an nvcc to build the kernels with."""
    return torch.cuda.is_available() and nvcc() is not None


def _require() -> str:
    if not torch.cuda.is_available():
        why = ("this torch is a CPU build" if torch.version.cuda is None
               else "torch sees no CUDA device")
        raise CudaUnavailable(f"rtinfer's CUDA kernels need a CUDA GPU: {why}")
    path = nvcc()
    if path is None:
        raise CudaUnavailable(
            "rtinfer's CUDA kernels are built on first use and need nvcc, which was not found "
            "(set CUDA_HOME, put nvcc on PATH, or install the CUDA toolkit matching torch "
            f"{torch.version.cuda})")
    return path


def _build_dir(nvcc_path: str) -> Path:
    """Keyed by what the objects depend on besides the sources (ninja tracks those): flags,
    torch, nvcc and the GPU's architecture."""
    version = subprocess.run([nvcc_path, "--version"], capture_output=True, text=True).stdout
    major, minor = torch.cuda.get_device_capability()
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or f"sm_{major}{minor}"
    key = hashlib.sha256("|".join(
        [*CUDA_FLAGS, *CFLAGS, torch.__version__, version, arch]).encode()).hexdigest()[:16]
    return build_dir(f"cuda-{key}")  # beside the CPU extension, outside the compile cache


def load(verbose: bool = False) -> ModuleType:
    """The compiled kernels, built on first use (a minute or two) and cached."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            nvcc_path = _require()
            _module = build_extension(
                "rtinfer_cuda", "CUDA kernels", _build_dir(nvcc_path), CudaUnavailable, verbose,
                sources=[str(CUDA_DIR / s) for s in SOURCES], extra_cflags=CFLAGS,
                extra_cuda_cflags=CUDA_FLAGS, extra_include_paths=[str(CUDA_DIR)])
        return _module


def _check_cuda(name: str, *tensors: torch.Tensor | None) -> None:
    for t in tensors:
        if t is not None and not t.is_cuda:
            raise ValueError(f"rtinfer.kernels.cuda.{name} takes CUDA tensors, got one on "
                             f"{t.device}")


def layer_norm(x: torch.Tensor, gamma: torch.Tensor | None = None,
               beta: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """F.layer_norm(x, x.shape[-1:], gamma, beta, eps)."""
    _check_cuda("layer_norm", x, gamma, beta)
    return load().layer_norm(x, gamma, beta, float(eps))


def rms_norm(x: torch.Tensor, gamma: torch.Tensor | None = None,
             eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(mean(x^2, -1) + eps) * gamma."""
    _check_cuda("rms_norm", x, gamma)
    return load().rms_norm(x, gamma, float(eps))


def softmax(x: torch.Tensor, log: bool = False) -> torch.Tensor:
    """Softmax (or log-softmax) over the last axis; an all -inf row gives NaN, as torch."""
    _check_cuda("softmax", x)
    return load().softmax(x, bool(log))


def bias_act(x: torch.Tensor, bias: torch.Tensor | None = None,
             activation: str = "none") -> torch.Tensor:
    """activation(x + bias) with bias [x.shape[-1]]: the epilogue of a matmul or conv."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    _check_cuda("bias_act", x, bias)
    return load().bias_act(x, bias, activation)


def binary(a: torch.Tensor, b: torch.Tensor, op: str = "add",
           activation: str = "none") -> torch.Tensor:
    """activation(a + b) or activation(a * b), b's shape a suffix of a's (b repeats)."""
    if op not in ("add", "mul"):
        raise ValueError(f"unknown binary op {op!r}; expected 'add' or 'mul'")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    _check_cuda("binary", a, b)
    return load().binary(a, b, op, activation)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None, scale: float | None = None,
              causal: bool = False, layout: str = "bhsd",
              heads: int | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, as F.scaled_dot_product_attention.

    layout "bhsd": q [B, H, Sq, D], k and v [B, Hkv, Sk, D] (Hkv divides H: grouped-query).
    layout "bshd": q [B, Sq, H, D], k and v [B, Sk, Hkv, D]; or 3-d [B, S, H*D] with `heads`
    (k and v then have the same number of heads as q). Views with other strides (slices of a
    fused qkv projection) are read in place as long as head_dim is contiguous. The result has
    the layout of q.

    mask broadcasts to [B, H, Sq, Sk] as in torch: bool (True attends) or additive float
    (float32, float16 or bfloat16). causal: key j attends to query i iff j <= i (top-left aligned);
    with a mask too, both apply. A query row with every key masked gives zeros, as torch.
    """
    _check_cuda("attention", q, k, v, mask)
    if layout not in ("bhsd", "bshd"):
        raise ValueError(f"attention layout must be 'bhsd' or 'bshd', not {layout!r}")
    flat = q.dim() == 3
    if flat:
        if heads is None or layout != "bshd":
            raise ValueError("3-d attention inputs [B, S, H*D] need layout='bshd' and heads=H")
        q, k, v = (t.unflatten(-1, (heads, t.shape[-1] // heads)) for t in (q, k, v))
    if not q.dim() == k.dim() == v.dim() == 4:
        raise ValueError(f"attention takes 4-d q, k, v, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if layout == "bshd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    if D > MAX_HEAD_DIM:
        raise ValueError(f"attention head_dim {D} exceeds {MAX_HEAD_DIM}")
    if mask is not None:
        mask = mask.expand(B, H, Sq, Sk)
    # out in the layout of q: [B, S, H, D] memory for "bshd"
    if layout == "bshd":
        out = torch.empty(B, Sq, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    else:
        out = torch.empty(B, H, Sq, D, dtype=q.dtype, device=q.device)
    load().attention(q, k, v, mask, float(D ** -0.5 if scale is None else scale), bool(causal),
                     out)
    if layout == "bshd":
        out = out.transpose(1, 2)
        return out.flatten(-2) if flat else out
    return out


__all__ = ["ACTIVATIONS", "CudaUnavailable", "attention", "available", "bias_act", "binary",
           "layer_norm", "load", "nvcc", "rms_norm", "softmax"]
