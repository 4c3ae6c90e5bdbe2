// oneDNN steps (dnnl_ops.cpp): each add_* appends one Step to a Plan and returns the oneDNN
// implementation it got. Epilogues: y = op(x, w) + bias, then the residual and the activation as
// residual_mode says ("pre": act(y + r), "post": act(y) + r, "none": act(y)).
#pragma once

#include "plan.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rtinfer {

// conv2d on [N, C, H, W] / conv1d on [N, C, L] (src_nhwc / dst_nhwc: channels-last bytes);
// dst_shape, when not empty, must be the logical shape the window gives (the dst slot's size).
std::string add_conv(Plan& plan, const std::string& name, int src, int dst, int residual,
                     std::vector<int64_t> src_shape, torch::Tensor weight,
                     std::optional<torch::Tensor> bias, std::vector<int64_t> stride,
                     std::vector<int64_t> pad_begin, std::vector<int64_t> pad_end,
                     std::vector<int64_t> dilation, int64_t groups, const std::string& activation,
                     double alpha, double beta, const std::string& residual_mode, bool src_nhwc,
                     bool dst_nhwc, int threads, std::vector<int64_t> dst_shape);

// A 1x1 conv and the depthwise 3x3 conv (stride 1 or 2, padding 1) that alone reads it, as one
// primitive (NHWC); plan == nullptr: only report the implementation oneDNN would pick.
std::string add_conv_dw(Plan* plan, const std::string& name, int src, int dst,
                        std::vector<int64_t> src_shape, torch::Tensor weight,
                        std::optional<torch::Tensor> bias, const std::string& activation,
                        double alpha, double beta, torch::Tensor dw_weight,
                        std::optional<torch::Tensor> dw_bias, int64_t dw_stride,
                        const std::string& dw_activation, double dw_alpha, double dw_beta,
                        int threads);

// [..., M, K] @ [..., K, N] with numpy batch broadcasting; b = -1 with a constant weight.
std::string add_matmul(Plan& plan, const std::string& name, int a, int b, int dst, int residual,
                       std::vector<int64_t> a_shape, std::vector<int64_t> b_shape,
                       std::optional<torch::Tensor> weight, std::optional<torch::Tensor> bias,
                       const std::string& activation, double alpha, double beta,
                       const std::string& residual_mode, int threads);

}  // namespace rtinfer
