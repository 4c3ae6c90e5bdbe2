"""``precision="bf16"``: conv2d, linear and matmul layers compute in bf16 where the CPU has bf16
instructions (AVX512_BF16 or AMX-BF16), and plainly fp32 where it does not (docs/bf16.md).

    graph, record = bf16_for_compile(graph)     # after the fp32 pipeline (O3)
    print("\\n".join(report_lines(record)))

bf16 on a CPU without bf16 instructions would be emulated (oneDNN converts in software) and run
slower than fp32 for less accuracy, so rtinfer never does that: it compiles fp32, warns, and
the report names the missing features.
"""

from __future__ import annotations

import warnings
from typing import Any

from rtinfer.ir.graph import Graph
from rtinfer.kernels import isa
from rtinfer.pass_manager import run_pipeline

# in the compile cache's key: a cached bf16 model made by an older rewrite is not reused
BF16_VERSION = 1
# /proc/cpuinfo's names of the instructions oneDNN's bf16 kernels use (either is enough)
BF16_FEATURES = ("avx512_bf16", "amx_bf16")


class Bf16Fallback(UserWarning):
    """``precision="bf16"`` compiled fp32: this CPU (or ``$RTINFER_CPU_ISA``) has no bf16."""


def bf16_support() -> tuple[bool, str]:
    """Whether bf16 kernels run natively here, and the sentence that says why (or why not)."""
    have = [f for f in BF16_FEATURES if f in isa.host_features()]
    if not have:
        return False, f"this CPU lacks {' and '.join(BF16_FEATURES)}"
    cap = isa.cap()
    if cap is not None:  # every level below the host's own hides bf16 (oneDNN is capped too)
        return False, (f"${isa.ENV}={cap} hides {', '.join(have)} (no rtinfer level includes "
                       f"bf16; unset it to use them)")
    return True, f"this CPU has {', '.join(have)}"


def cache_tag() -> str:
    """What a bf16 compile depends on beyond the IR: whether bf16 was available."""
    ok, _ = bf16_support()
    return f"bf16={BF16_VERSION}:{'native' if ok else 'fp32-fallback'}"


def bf16_for_compile(graph: Graph) -> tuple[Graph, dict[str, Any]]:
    """``to-bf16`` on the optimized fp32 ``graph`` (in place) where the CPU has bf16, else
    nothing; the record the report prints (``warn_fallback`` says it when bf16 was not used)."""
    from rtinfer.int8 import _layer_name
    from rtinfer.passes.quant.bf16 import bf16_layers

    ok, why = bf16_support()
    if not ok:
        return graph, {"available": False, "why": why, "layers": [], "f32_layers": 0}
    before = sum(graph.op_counts().get(op, 0) for op in _LAYER_OPS)
    run_pipeline(graph, "to-bf16")
    layers = [f"{_layer_name(n, i)} ({n.op})" for i, n in enumerate(bf16_layers(graph))]
    return graph, {"available": True, "why": why, "layers": layers,
                   "f32_layers": before - len(layers)}


def warn_fallback(record: dict[str, Any] | None) -> None:
    """The ``Bf16Fallback`` warning of a bf16 compile that runs fp32 (cached ones too)."""
    if record is not None and not record.get("available"):
        warnings.warn(f"precision='bf16': {record['why']}; compiled fp32 instead (rtinfer does "
                      f"not emulate bf16, which would be slower than fp32)", Bf16Fallback,
                      stacklevel=3)


def report_lines(record: dict[str, Any]) -> list[str]:
    """``CompiledModel.report()``'s lines of a bf16 compile."""
    if not record.get("available"):
        return [f"bf16: not used: {record['why']}; every layer runs fp32"]
    layers = record["layers"]
    lines = [f"bf16: {len(layers)} layers bf16 ({record['why']}); "
             f"{record['f32_layers']} conv/linear/matmul layers stay f32 (no constant f32 weight); "
             f"softmax, normalization and elementwise ops f32"]
    lines += [f"    {name}" for name in layers]
    return lines


_LAYER_OPS = ("conv2d", "fused_conv2d", "linear", "fused_linear", "matmul", "fused_matmul")

__all__ = ["BF16_FEATURES", "BF16_VERSION", "Bf16Fallback", "bf16_for_compile", "bf16_support",
           "cache_tag", "report_lines", "warn_fallback"]
