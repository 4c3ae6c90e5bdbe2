"""rtinfer's tests: a package, so that test folders import as tests.kernels, tests.passes, ... and
never shadow top-level packages of the same name (Hugging Face's kernels, which transformers
imports)."""
