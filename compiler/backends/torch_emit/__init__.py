"""The torch backend's emitters, one module per op family (as ``rtinfer.ir.ops``). Importing
this package fills ``context.EMITTERS``; ``rtinfer.backends.torch_backend`` builds modules."""

from rtinfer.backends.torch_emit import (  # noqa: F401  (fills EMITTERS)
    aten,
    attention,
    bf16,
    elementwise,
    fused,
    nn,
    quant,
    reduce,
    shape,
)
