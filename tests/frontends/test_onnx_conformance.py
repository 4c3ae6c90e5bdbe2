"""The ONNX backend node tests through the ONNX frontend and the reference interpreter.

The full set runs in about 15 s on one core, so it stays in the fast suite. STRICT_FLOOR is the
count of cases that pass with every graph input left a runtime input (shape-like inputs
specialized on the case's data, as ``rtinfer.compile`` specializes on example inputs); FLOOR
counts those plus the cases that pass only once such an input is frozen to a constant. Both were
set a few below the counts when last raised; a change that drops below either is a regression
(raise them when more cases pass, and regenerate docs/onnx-conformance.md). The issue's goal:
at least 75% strictly (1413 of 1884).
"""

from __future__ import annotations

from tests.frontends.onnx_conformance import load_cases, run_all

STRICT_FLOOR = 1419  # 1424 strict passes when last raised (75.6%)
FLOOR = 1419  # 1424 passes in all (none needs a frozen input any more)


def test_conformance_does_not_regress():
    results = run_all(load_cases())
    passed = sum(r.passed for r in results)
    strict = sum(r.passed and not r.frozen for r in results)
    assert len(results) >= 1800
    assert strict >= STRICT_FLOOR, (
        f"{strict} ONNX node tests pass without frozen inputs, below the floor of "
        f"{STRICT_FLOOR}; failing or now needing frozen inputs: "
        + ", ".join(r.name for r in results if not r.passed or r.frozen)[:2000])
    assert passed >= FLOOR, (
        f"{passed} ONNX node tests pass, below the floor of {FLOOR}; newly failing: "
        + ", ".join(r.name for r in results if not r.passed)[:2000])


def test_known_cases_pass():
    names = {"test_relu", "test_conv_with_strides_padding", "test_gemm_all_attributes",
             "test_reshape_negative_dim", "test_maxpool_2d_pads", "test_softmax_axis_0",
             "test_layer_normalization_2d_axis0", "test_attention_4d",
             # shape-like operands given as graph inputs, specialized on the case's data
             "test_expand_dim_changed", "test_top_k", "test_resize_upsample_scales_linear",
             "test_reduce_sum_keepdims_example", "test_tile", "test_compress_default_axis",
             # ops spelled out in existing IR ops
             "test_rotary_embedding_interleaved", "test_center_crop_pad_crop_and_pad",
             "test_causal_conv_with_state_silu_with_past_state", "test_hannwindow_symmetric",
             "test_swiglu_alpha",
             "test_lrn", "test_reversesequence_batch", "test_maxunpool_export_with_output_shape"}
    cases = [c for c in load_cases() if c.name in names]
    results = run_all(cases)
    assert len(results) == len(names)
    failed = [(r.name, r.reason, r.detail) for r in results if not r.passed or r.frozen]
    assert not failed
