"""Named pipelines. Each name can stand in any pipeline string (``"O1,my-pass"``).

O3 runs the pattern fusions (fuse-gelu, fuse-layernorm, fuse-attention, fuse-mha) before O2,
merge-parallel-linears after it (on ONNX captures the Q/K/V biases are separate adds until
fuse-epilogue folds them in; a merge before it would strand them behind the split), and
lower-int8 (a no-op without quantize/dequantize: it turns an imported QDQ model's chains into
rtinfer's int8 ops) and fuse-elementwise last, on what the other fusions left. ``layout``
(NCHW -> NHWC) is not in O3: it pays on conv-heavy graphs with channels-last kernels only, so
it is opt-in: run it before fuse-elementwise, e.g. ``"O2,layout,fuse-elementwise,dce"``
(transposes do not sink through fused_elementwise nodes).
"""

from rtinfer.pass_manager import NamedPipeline

PIPELINES = [
    NamedPipeline("O0", "", "no optimization"),
    NamedPipeline("O1", "fold-constants,canonicalize,cse,dce",
                  "cheap cleanups: fold constants, canonicalize, merge duplicates, drop dead "
                  "nodes"),
    NamedPipeline("O2", "O1,fold-batchnorm,fuse-epilogue,dce",
                  "O1, then fold batch norms and fuse conv/linear/matmul epilogues"),
    NamedPipeline("O3", "O1,fuse-gelu,fuse-layernorm,fuse-attention,fuse-mha,dce,O2,"
                        "merge-parallel-linears,lower-int8,fuse-elementwise,dce",
                  "O1, then fuse GELU, LayerNorm/RMSNorm and attention spelled out into single "
                  "ops (before fuse-epilogue would split them) and attention with its head "
                  "split/merge into multi_head_attention, then O2, then merge the Q/K/V "
                  "projections, then lower the QDQ chains of an int8 model (an ONNX Runtime- "
                  "quantized one, say) to quantized ops, then fuse the remaining elementwise "
                  "chains"),
]
