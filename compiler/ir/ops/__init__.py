"""The op table. Importing this package declares every op (one entry each, in the modules
below); ``get_op(name)`` returns an op's ``OpDef``."""

from rtinfer.ir.ops import (  # noqa: F401  (declares the ops)
    aten,
    attention,
    bf16,
    core,
    elementwise,
    fused,
    linalg,
    nn,
    norm,
    quant,
    reduce,
    shape,
)
from rtinfer.ir.ops.registry import (
    ATTR_KINDS,
    BROADCAST,
    COMMUTATIVE,
    ELEMENTWISE,
    INJECTIVE,
    KEEP,
    OPAQUE,
    OPS,
    OUT_FUSABLE,
    REDUCE,
    REQUIRED,
    TRAITS,
    Attr,
    OpDef,
    WeightRole,
    elementwise_channels,
    get_op,
    op,
)

__all__ = [
    "ATTR_KINDS", "BROADCAST", "COMMUTATIVE", "ELEMENTWISE", "INJECTIVE", "KEEP", "OPAQUE", "OPS",
    "OUT_FUSABLE", "REDUCE", "REQUIRED", "TRAITS", "Attr", "OpDef", "WeightRole",
    "elementwise_channels", "get_op", "op",
]
