"""Fusion passes: BatchNorm folding, epilogue, pattern (GELU, LayerNorm, attention), elementwise
and parallel-layer fusion, and the layout pass."""
