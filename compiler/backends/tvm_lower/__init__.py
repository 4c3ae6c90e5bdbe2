"""The TVM backend's lowerings, one module per op family (as ``rtinfer.ir.ops``), over the
table and context (``context``) and the graph driver (``driver``). Importing this package fills
``context.LOWERINGS``; ``rtinfer.backends.tvm_backend`` builds and runs modules."""

from rtinfer.backends.tvm_lower import (  # noqa: F401  (fills LOWERINGS)
    elementwise,
    fused,
    nn,
    reduce,
    shape,
)
