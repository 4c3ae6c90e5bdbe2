"""rtinfer's built-in passes, one file each, by family (``cleanup/``, ``fusion/``; int8 and
pruning come as ``quant/`` and ``pruning/``), and the named pipelines.

Every pass module exports its record (``@graph_pass`` builds a ``Pass``, registering nothing);
this file lists them all and installs them, with the pipelines, into the pass manager's
registry once, when the package is imported (the package face ``rtinfer`` imports it). The pass
manager never imports the passes.
"""

from rtinfer.pass_manager import install
from rtinfer.passes import pipelines
from rtinfer.passes.cleanup import canonicalize, cse, dce, fold_constants
from rtinfer.passes.fusion import (
    fold_batchnorm,
    fuse_attention,
    fuse_elementwise,
    fuse_epilogue,
    fuse_gelu,
    fuse_layernorm,
    fuse_mha,
    layout,
    merge_parallel_linears,
)
from rtinfer.passes.pruning import prune_channels, prune_depth
from rtinfer.passes.quant import (
    bf16,
    bias_correction,
    calibrate,
    insert_qdq,
    lower_int8,
    smooth_quant,
)

BUILTIN_PASSES = [
    # cleanup
    fold_constants.fold_constants, canonicalize.canonicalize, cse.cse, dce.dce,
    # fusion
    fold_batchnorm.fold_batchnorm, fuse_epilogue.fuse_epilogue, fuse_gelu.fuse_gelu,
    fuse_layernorm.fuse_layernorm, fuse_attention.fuse_attention, fuse_mha.fuse_mha,
    merge_parallel_linears.merge_parallel_linears, fuse_elementwise.fuse_elementwise,
    layout.layout,
    # pruning
    prune_channels.prune_channels, prune_depth.prune_depth,
    # int8
    calibrate.calibrate, smooth_quant.smooth_quant, insert_qdq.insert_qdq,
    bias_correction.bias_correction, lower_int8.lower_int8,
    # bf16
    bf16.to_bf16_pass,
]

install(BUILTIN_PASSES, pipelines.PIPELINES)

__all__ = ["BUILTIN_PASSES", "canonicalize", "cse", "dce", "fold_batchnorm", "fold_constants",
           "fuse_attention", "fuse_elementwise", "fuse_epilogue", "fuse_gelu", "fuse_layernorm",
           "fuse_mha", "bf16", "bias_correction", "calibrate", "insert_qdq", "layout",
           "lower_int8", "merge_parallel_linears", "pipelines", "prune_channels",
           "prune_depth", "smooth_quant"]
