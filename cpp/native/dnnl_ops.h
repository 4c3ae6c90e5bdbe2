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

// -- int8 (dnnl_int8.cpp; docs/int8.md) --------------------------------------------------------

// y = quantize(x) (f32 -> u8/i8/i32: saturate(round_half_even(x / scale) + zero_point)) or, with
// `dequantize`, y = (x - zero_point) * scale; over [outer, channels, inner] with one scale and
// zero point per channel (channels = 1: per tensor).
void add_quantize(Plan& plan, const std::string& name, int x, int y, int64_t outer,
                  int64_t channels, int64_t inner, std::vector<double> scale,
                  std::vector<int64_t> zero_point, const std::string& dtype, bool dequantize);

// quantize of an NCHW f32 image [n, channels, hw] into NHWC u8/i8 codes [n, hw, channels], one
// scale and zero point per tensor or per channel, the codes exactly add_quantize's.
void add_quantize_nhwc(Plan& plan, const std::string& name, int x, int y, int64_t n,
                       int64_t channels, int64_t hw, std::vector<double> scale,
                       std::vector<int64_t> zero_point, const std::string& dtype);

// Max pooling of u8/i8 codes; dst_shape (logical NCHW) sets the end padding (ceil mode).
std::string add_pool_int8(Plan& plan, const std::string& name, int x, int y,
                          const std::string& dtype, std::vector<int64_t> src_shape,
                          std::vector<int64_t> dst_shape, std::vector<int64_t> kernel,
                          std::vector<int64_t> stride, std::vector<int64_t> pad_begin,
                          std::vector<int64_t> dilation, bool nhwc, int threads);

// qconv2d: NHWC u8/i8 src with a per-tensor scale and zero point, i8 weight [O, C/g, kh, kw] with
// one scale or one per output channel (symmetric), f32 bias; the fused epilogue; the output u8/i8
// (out scale and zero point) or f32. A u8/i8 residual (res_dt) is a sum post-op, an f32 one a
// binary add.
std::string add_qconv(Plan& plan, const std::string& name, int src, int dst, int residual,
                      std::vector<int64_t> src_shape, const std::string& src_dt, double src_scale,
                      int64_t src_zp, torch::Tensor weight, std::vector<double> w_scales,
                      std::optional<torch::Tensor> bias, std::vector<int64_t> stride,
                      std::vector<int64_t> pad_begin, std::vector<int64_t> pad_end,
                      std::vector<int64_t> dilation, int64_t groups,
                      const std::string& activation, double alpha, double beta,
                      const std::string& residual_mode, const std::string& res_dt,
                      double res_scale, int64_t res_zp, const std::string& dst_dt,
                      double dst_scale, int64_t dst_zp, int threads,
                      std::vector<int64_t> dst_shape);

// qlinear / qmatmul with a constant weight: [rows, K] u8/i8 @ i8 [K, N] (one scale or one per
// column), as qconv2d otherwise.
std::string add_qmatmul(Plan& plan, const std::string& name, int a, int dst, int residual,
                        int64_t rows, const std::string& src_dt, double src_scale,
                        int64_t src_zp, torch::Tensor weight, std::vector<double> w_scales,
                        std::optional<torch::Tensor> bias, const std::string& activation,
                        double alpha, double beta, const std::string& residual_mode,
                        const std::string& res_dt, double res_scale, int64_t res_zp,
                        const std::string& dst_dt, double dst_scale, int64_t dst_zp,
                        int threads);

// True on this thread while a finite-input plan is built: relu and clip fuse into oneDNN
// (dnnl_common.h; rtinfer.backends.native.finite).
bool& fast_clamps();

// Whether the ISA oneDNN runs has VNNI (u8 x s8 products summed in int32, no int16 saturation).
bool onednn_has_vnni();

// -- bf16 (dnnl_bf16.cpp; docs/bf16.md) --------------------------------------------------------

// Whether the ISA oneDNN runs has AVX512_BF16 (or AMX-BF16 above it).
bool onednn_has_bf16();

// bf16_conv2d: src f32 NHWC is rounded into the bf16 slot src16 (same NHWC layout), then a bf16
// convolution with the weight (f32 holding bf16 values) prepacked bf16, f32 bias, f32 dst and
// the fp32 epilogue.
std::string add_bf16_conv(Plan& plan, const std::string& name, int src, int src16, int dst,
                          int residual, std::vector<int64_t> src_shape, torch::Tensor weight,
                          std::optional<torch::Tensor> bias, std::vector<int64_t> stride,
                          std::vector<int64_t> pad_begin, std::vector<int64_t> pad_end,
                          std::vector<int64_t> dilation, int64_t groups,
                          const std::string& activation, double alpha, double beta,
                          const std::string& residual_mode, bool dst_nhwc, int threads,
                          std::vector<int64_t> dst_shape);

// bf16_linear / bf16_matmul with a constant [K, N] weight: [rows, K] f32 rounded into a16, then
// as bf16_conv2d.
std::string add_bf16_matmul(Plan& plan, const std::string& name, int a, int a16, int dst,
                            int residual, int64_t rows, torch::Tensor weight,
                            std::optional<torch::Tensor> bias, const std::string& activation,
                            double alpha, double beta, const std::string& residual_mode,
                            int threads);

}  // namespace rtinfer
