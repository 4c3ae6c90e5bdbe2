// rtinfer's own CPU kernels: each add_* appends one Step to a Plan (see plan.h). fp32 unless a
// signature says otherwise; shapes are static and baked into the step's closure. Every step is
// safe to run from several calls at once: per-call temporaries live in thread_local buffers.
#pragma once

#include "plan.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rtinfer {

// y = (x - mean) / sqrt(var + eps) * gamma + beta per row of [rows, cols] (two-pass);
// rms: y = x / sqrt(mean(x^2) + eps) * gamma (+ beta).
void add_layer_norm(Plan& p, const std::string& name, int x, int y, int64_t rows, int64_t cols,
                    std::optional<torch::Tensor> gamma, std::optional<torch::Tensor> beta,
                    double eps, bool rms);

// softmax (log: log_softmax) over the last axis of [rows, cols]; a row of -inf gives NaN, as
// torch.softmax.
void add_softmax(Plan& p, const std::string& name, int x, int y, int64_t rows, int64_t cols,
                 bool log);

// y = softmax(q k^T * scale + mask) v per (b, h); strides in elements ([b, h, s], d contiguous;
// mask: [b, h, q, k], 0 broadcasts). mask_kind 0 none, 1 bool (true attends), 2 float additive.
// causal: key j attends to query i when j <= i (top-left, as torch). A row with no key left
// (all masked) gives zeros, as torch's SDPA does.
void add_attention(Plan& p, const std::string& name, int q, int k, int v, int mask, int y,
                   int64_t B, int64_t H, int64_t Sq, int64_t Skv, int64_t D,
                   std::vector<int64_t> q_strides, std::vector<int64_t> k_strides,
                   std::vector<int64_t> v_strides, std::vector<int64_t> y_strides, int mask_kind,
                   std::vector<int64_t> mask_strides, double scale, bool causal);

// max/avg pooling of [N, C, H, W] (nhwc: [N, H, W, C]) into OH x OW; pad_end defaults to
// pad_begin. Windows are clipped to the padded input; avg divides as torch's avg_pool2d.
void add_pool2d(Plan& p, const std::string& name, int x, int y, int64_t N, int64_t C, int64_t H,
                int64_t W, int64_t OH, int64_t OW, std::vector<int64_t> kernel,
                std::vector<int64_t> stride, std::vector<int64_t> pad_begin,
                std::vector<int64_t> dilation, const std::string& kind, bool count_include_pad,
                bool nhwc, std::optional<std::vector<int64_t>> pad_end);

// reduce the middle axis of [outer, extent, inner]: sum, mean, max, min (NaN propagates).
void add_reduce(Plan& p, const std::string& name, int x, int y, int64_t outer, int64_t extent,
                int64_t inner, const std::string& kind);

// y[i, :] = weight[indices[i], :]; indices in [-vocab, vocab) with allow_negative (negative
// counts from the end, as numpy take and ONNX Gather), else in [0, vocab) (torch's embedding
// and index_select); any other throws std::out_of_range (IndexError in Python).
void add_embedding(Plan& p, const std::string& name, int weight, int indices, int y,
                   int64_t num_indices, int64_t dim, int64_t vocab,
                   torch::ScalarType index_dtype, int64_t elem_size, bool allow_negative);

// y[out_offset + sum(i_d * out_strides[d])] = x[in_offset + sum(i_d * in_strides[d])] over
// sizes (rank <= 8, strides and offsets in elements of elem_size bytes: 1, 2, 4 or 8).
void add_copy(Plan& p, const std::string& name, int x, int y, int64_t elem_size,
              std::vector<int64_t> sizes, std::vector<int64_t> in_strides, int64_t in_offset,
              std::vector<int64_t> out_strides, int64_t out_offset);

// A direct convolution for few input channels (an image's first layer): src [N, C, H, W]
// read as it is, dst [N, OH, OW, O] (NHWC, as the oneDNN convolutions after it read), weight
// [O, C, KH, KW] packed here, groups 1; the bias and activation (none, relu, clip: alpha..beta,
// leaky_relu: slope alpha, hardswish) fused. dst_shape is [N, O, OH, OW] (checked).
void add_conv_stem(Plan& p, const std::string& name, int x, int y, std::vector<int64_t> src_shape,
                   torch::Tensor weight, std::optional<torch::Tensor> bias,
                   std::vector<int64_t> stride, std::vector<int64_t> pad_begin,
                   std::vector<int64_t> pad_end, std::vector<int64_t> dilation,
                   const std::string& activation, double alpha, double beta,
                   std::vector<int64_t> dst_shape);

// add_conv_stem followed by a max pool over its output as one step: the stem rows a band of
// pool rows reads go to a per-thread buffer and are pooled from there, so the stem output is
// never written whole. pool_*: the pool's window over the stem output (pool_pad_end includes
// ceil_mode's extra row/column); taps on the padding are skipped. dst [N, POH, POW, O] (NHWC);
// dst_shape is [N, O, POH, POW] (checked).
void add_conv_stem_pool(Plan& p, const std::string& name, int x, int y,
                        std::vector<int64_t> src_shape, torch::Tensor weight,
                        std::optional<torch::Tensor> bias, std::vector<int64_t> stride,
                        std::vector<int64_t> pad_begin, std::vector<int64_t> pad_end,
                        std::vector<int64_t> dilation, const std::string& activation,
                        double alpha, double beta, std::vector<int64_t> pool_kernel,
                        std::vector<int64_t> pool_stride, std::vector<int64_t> pool_pad_begin,
                        std::vector<int64_t> pool_pad_end, std::vector<int64_t> pool_dilation,
                        std::vector<int64_t> dst_shape);

// fn(ins, out, begin, end) over [0, n) in parallel chunks (a kernels/codegen.py function).
using ElementwiseFn = void (*)(const char* const* ins, char* out, int64_t begin, int64_t end);
void add_elementwise(Plan& p, const std::string& name, uintptr_t fn, std::vector<int> inputs,
                     int y, int64_t n);

}  // namespace rtinfer
