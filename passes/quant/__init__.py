"""int8 quantization (docs/int8.md): observers and the calibration analysis, insert-qdq,
smooth-quant, bias-correction, and lower-int8 (QDQ chains into quantized fused ops)."""
