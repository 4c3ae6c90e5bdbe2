// rtinfer's own small-batch linear (GEMV) step: cpu_gemv.cpp.
#pragma once

#include "plan.h"

#include <cstdint>
#include <optional>
#include <string>

namespace rtinfer {

// y[rows, N] = epilogue(x[rows, K] @ weight[K, N] + bias) for a constant weight (any strides,
// float32; packed once here into column blocks) and few rows; x, y and the residual are
// contiguous slots. The epilogue is the oneDNN matmul step's (dnnl_ops.cpp): residual "pre":
// act(y + r), "post": act(y) + r, "none": act(y); activation none, relu, leaky_relu, clip, gelu
// or gelu_tanh. Returns what runs ("gemv:avx512" ...); bad shapes or arguments throw
// std::invalid_argument naming `name`.
std::string add_gemv(Plan& p, const std::string& name, int x, int y, int residual, int64_t rows,
                     int64_t K, int64_t N, const torch::Tensor& weight,
                     std::optional<torch::Tensor> bias, const std::string& activation,
                     double alpha, double beta, const std::string& residual_mode);

}  // namespace rtinfer
