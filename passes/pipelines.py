"""Named pipelines. Each name can stand in any pipeline string (``"O1,my-pass"``)."""

from rtinfer.pass_manager import register_pipeline

register_pipeline("O0", "", "no optimization")
register_pipeline("O1", "fold-constants,canonicalize,cse,dce",
                  "cheap cleanups: fold constants, canonicalize, merge duplicates, drop dead nodes")
register_pipeline("O2", "O1,fold-batchnorm,fuse-epilogue,dce",
                  "O1, then fold batch norms and fuse conv/linear/matmul epilogues")
register_pipeline("O3", "O1,fuse-gelu,fuse-layernorm,fuse-attention,dce,O2",
                  "O1, then fuse GELU, LayerNorm/RMSNorm and attention spelled out into single "
                  "ops (before fuse-epilogue would split them), then O2")
