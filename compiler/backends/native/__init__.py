"""The native backend's lowering, one module per op family (as ``rtinfer.ir.ops``), over the
driver (``lowerer``), the plan description (``plan``) and the memory planner (``memory``).
Importing this package fills ``lowerer.LOWERINGS``; ``rtinfer.backends.native_backend`` builds
modules."""

from rtinfer.backends.native import (  # noqa: F401  (fills LOWERINGS)
    attention,
    bf16,
    conv,
    elementwise,
    linalg,
    norm,
    pool,
    quant,
    quant_dynamic,
    shape,
)
from rtinfer.backends.native.quant import weight_max
from rtinfer.backends.native.timing import time_layer

# last: the generated code takes the elementwise ops no family above lowers
elementwise.register_leftovers()

__all__ = ["time_layer", "weight_max"]
