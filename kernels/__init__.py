"""Python side of rtinfer's native C++/CUDA kernels (registry, build/load, bindings)."""
