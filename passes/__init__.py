"""rtinfer's passes, one file each. Every built-in pass module is imported here, and nowhere
else registers passes: importing this package is what makes them known. The registry imports it
on its first lookup."""

from rtinfer.passes import (
    canonicalize,
    cse,
    dce,
    fold_batchnorm,
    fold_constants,
    fuse_attention,
    fuse_elementwise,
    fuse_epilogue,
    fuse_gelu,
    fuse_layernorm,
    fuse_mha,
    layout,
    merge_parallel_linears,
    pipelines,
)

__all__ = ["canonicalize", "cse", "dce", "fold_batchnorm", "fold_constants",
           "fuse_attention", "fuse_elementwise", "fuse_epilogue", "fuse_gelu", "fuse_layernorm",
           "fuse_mha", "layout", "merge_parallel_linears", "pipelines"]
