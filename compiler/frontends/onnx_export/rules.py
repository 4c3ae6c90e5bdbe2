"""The export rules, one per IR op (``RULES``: op -> rule), assembled from the modules of their
families, as the op table is split: ``elementwise``, ``linalg``, ``nn`` (convolution, pooling,
resizing), ``norm``, ``quant``, ``reduce``, ``shape``, ``attention``, ``fused``. A rule gets the
emitter, the site and the ONNX tensors of the node's inputs, and returns the tensor(s) of the
node's outputs; a node it cannot express raises ``rtinfer.errors.Unsupported`` with the reason."""

from __future__ import annotations

from rtinfer.frontends.onnx_export import (
    attention,
    bf16,
    elementwise,
    fused,
    linalg,
    nn,
    norm,
    quant,
    reduce,
    shape,
)
from rtinfer.frontends.onnx_export.context import Rule

# IR op -> rule. Every op of the op table has an entry here or in NO_ONNX_FORM.
RULES: dict[str, Rule] = {
    **elementwise.RULES,
    **linalg.RULES,
    **nn.RULES,
    **norm.RULES,
    **quant.RULES,
    **reduce.RULES,
    **shape.RULES,
    **attention.RULES,
}
RULES.update(fused.fused_rules(RULES))  # they emit through the table's other rules
RULES.update(quant.quantized_rules(RULES))  # qconv2d, qlinear, qmatmul: through the fused rules
RULES.update(bf16.bf16_rules(RULES))  # bf16_conv2d, bf16_linear, bf16_matmul: likewise
