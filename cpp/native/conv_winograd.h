// A 3x3, stride-1, padding-1 convolution over NHWC as NNPACK's Winograd F(6x6, 3x3)
// (cpu_conv_winograd.cpp): add_conv's candidate next to oneDNN's kernels where it is faster.
#pragma once

#include "plan.h"

#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace rtinfer {

struct WinoConv;

// $RTINFER_WINOGRAD: unset or auto (race), NNPACK's and rtinfer's own timed against oneDNN's
// kernel where they apply and the fastest kept; 0 (off), never; 1 or nnpack (always), NNPACK's
// wherever it applies; own, rtinfer's own wherever it applies (tests, comparisons).
enum class WinoMode { off, race, always, own };
WinoMode winograd_mode();

// What both candidates need: a 3x3 f32 weight over [N, C, H, W], relu or no activation, and
// $RTINFER_WINOGRAD not 0.
bool wino_applies(const std::vector<int64_t>& src_shape, const torch::Tensor& weight,
                  const std::string& activation);

// The prepared convolution (the weight transformed once), or nullptr where it does not apply:
// not 3x3 over [N, C, H, W] f32, an activation other than none and relu, NNPACK absent from this
// torch build or unsupported by this CPU, or $RTINFER_WINOGRAD=0. The caller checks stride 1,
// padding 1, dilation 1 and groups 1.
std::shared_ptr<WinoConv> make_wino_conv(const std::vector<int64_t>& src_shape,
                                         const torch::Tensor& weight,
                                         const std::optional<torch::Tensor>& bias,
                                         const std::string& activation,
                                         const std::string& residual_mode);

// y = act(conv(x) + r) ("pre"), act(conv(x)) + r ("post") or act(conv(x)); x, y and r NHWC
// (r may be null without a residual). Bands of the image over `threads` threads. False: x holds
// a NaN, an infinity or a value large enough to overflow a transform, and y is not written
// reliably: the caller runs the direct convolution instead (its NaN and inf pattern is eager's).
bool run_wino_conv(const WinoConv& conv, const float* x, float* y, const float* r, int threads);

// rtinfer's own F(6x6, 3x3) (dnnl_winograd.cpp): the transforms on 16-channel vectors in NHWC
// and the 64 tile products as one batched oneDNN matmul. nullptr where it does not apply (as
// make_wino_conv, and C and O multiples of 16). `threads`: the count the matmul is planned for.
struct OwnWino;
std::shared_ptr<OwnWino> make_own_wino(const std::vector<int64_t>& src_shape,
                                       const torch::Tensor& weight,
                                       const std::optional<torch::Tensor>& bias,
                                       const std::string& activation,
                                       const std::string& residual_mode, int threads);
// bytes of per-call scratch run_own_wino needs (oneDNN's scratchpad and the transformed tiles)
int64_t own_wino_scratch(const OwnWino& conv);
// As run_wino_conv; `scratch`: own_wino_scratch bytes, 64-byte aligned.
bool run_own_wino(const OwnWino& conv, const float* x, float* y, const float* r, char* scratch,
                  dnnl::stream& stream, int threads);

}  // namespace rtinfer
