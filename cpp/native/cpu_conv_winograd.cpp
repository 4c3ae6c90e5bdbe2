// A 3x3, stride-1, padding-1 convolution over NHWC activations as NNPACK's Winograd F(6x6, 3x3)
// (nnp_convolution_inference, algorithm wt8x8), the NNPACK that torch links into libtorch_cpu.
//
// Why: oneDNN 3.2 has no Winograd kernel, and its direct AVX2 kernel already runs near the FMA
// peak; F(6x6, 3x3) does 5x fewer multiplies. Measured on 2 Zen 5 cores (warm, ResNet-18's
// layers): at AVX2 0.37 against oneDNN's 0.87 ms at 64 channels 56x56, 0.31 against 0.85 at
// 128 x 28x28, 0.50 against 0.86 at 256 x 14x14; at AVX-512 0.39 against 0.46 and 0.33 against
// 0.44, but 0.52 against 0.42 at 14x14. At 7x7 it is 5x slower (few tiles, a big transformed
// weight). So add_conv times the two on each layer when the plan is built and keeps the faster.
//
// How: the image is cut into horizontal bands of whole 6-row output tiles, one per thread; each
// thread moves its band (with a halo row above and below) to NCHW in its own buffer, runs NNPACK
// single-threaded on it with the weight transform computed once at plan build, and moves the
// result back to NHWC with the residual and activation applied while the band is in cache.
//
// Numerics: Winograd is not the direct sum. Its error is about 2-3e-6 of a layer's largest
// output against float64 (direct: 2-3e-7); NNPACK also flushes denormals while it runs.
// cpp/README.md says so, and RTINFER_WINOGRAD=0 turns the candidate off (1: used wherever it
// applies, for tests).
#include "conv_winograd.h"

#include "cpu_common.h"

#include <atomic>

// NNPACK runs AVX2 code: not at the generic level, which promises none
#if defined(__x86_64__) && defined(__AVX2__) && __has_include(<nnpack.h>) && \
    __has_include(<dlfcn.h>)
#include <dlfcn.h>
#include <nnpack.h>
#define RTINFER_HAS_NNPACK 1
#endif

namespace rtinfer {

WinoMode winograd_mode() {
  const char* v = std::getenv("RTINFER_WINOGRAD");
  const std::string s = v == nullptr ? "" : v;
  if (s.empty() || s == "auto") return WinoMode::race;
  if (s == "0") return WinoMode::off;
  if (s == "1" || s == "nnpack") return WinoMode::always;
  if (s == "own") return WinoMode::own;
  throw std::invalid_argument("$RTINFER_WINOGRAD must be auto (the default: where faster), 0 "
                              "(never), 1 or nnpack (NNPACK's wherever it applies) or own "
                              "(rtinfer's own wherever it applies), got '" + s + "'");
}

bool wino_applies(const std::vector<int64_t>& src_shape, const torch::Tensor& weight,
                  const std::string& activation) {
  return winograd_mode() != WinoMode::off && src_shape.size() == 4 && weight.dim() == 4 &&
         weight.size(2) == 3 && weight.size(3) == 3 && weight.size(1) == src_shape[1] &&
         weight.scalar_type() == torch::kFloat32 &&
         (activation == "none" || activation == "relu");
}

#ifdef RTINFER_HAS_NNPACK

struct WinoConv {
  int64_t N = 0, C = 0, O = 0, H = 0, W = 0;
  std::vector<float> bias;                       // O values (zeros without a bias)
  std::shared_ptr<float> kernel_transform;       // NNPACK's transformed weight, 64-byte aligned
  int act = 0;                                   // 0: none, 1: relu
  int residual = 0;                              // 0: none, 1: pre (act(y + r)), 2: post
  float limit = 0.0f;  // the largest |x| for which no transform step can overflow
};

namespace {

constexpr int64_t kTile = 6;  // output rows (and columns) per F(6x6, 3x3) tile
// The most a value can grow through F(6x6, 3x3)'s input transform (2-d: the square of B^T's
// largest row sum, 15) times the output transform (A^T's, 67.1): 1.01e6, rounded up.
constexpr double kWinoGain = 2e6;
// wino_band's answer when its input holds a NaN, an infinity or a value past P.limit
constexpr int kOutOfRange = -1;


// NNPACK's entry points, looked up in the libtorch_cpu this process loaded (a torch built
// without NNPACK still ships nnpack.h: a link-time reference would then make the whole extension
// fail to load); null where absent or where nnp_initialize refuses this CPU.
using ConvInference = nnp_status (*)(nnp_convolution_algorithm, nnp_convolution_transform_strategy,
                                     size_t, size_t, nnp_size, nnp_padding, nnp_size, nnp_size,
                                     const float*, const float*, const float*, float*, void*,
                                     size_t*, nnp_activation, const void*, pthreadpool_t,
                                     nnp_profile*);
ConvInference nnpack_conv() {
  static const ConvInference conv = []() -> ConvInference {
    void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    if (lib == nullptr) return nullptr;
    auto init = reinterpret_cast<nnp_status (*)()>(dlsym(lib, "nnp_initialize"));
    auto f = reinterpret_cast<ConvInference>(dlsym(lib, "nnp_convolution_inference"));
    if (init == nullptr || f == nullptr || init() != nnp_status_success) return nullptr;
    return f;
  }();
  return conv;
}

std::string status_text(nnp_status s) {
  switch (s) {
    case nnp_status_unsupported_hardware: return "NNPACK does not support this CPU";
    case nnp_status_out_of_memory: return "NNPACK ran out of memory";
    case nnp_status_insufficient_buffer: return "NNPACK's workspace was too small";
    case nnp_status_misaligned_buffer: return "NNPACK's workspace was misaligned";
    default: return "NNPACK status " + std::to_string((int)s);
  }
}

// Output rows [r0, r1) of image n: NHWC src -> NCHW band -> NNPACK -> NHWC dst (+ residual, act).
// Returns NNPACK's status (it runs on an OpenMP thread: no exceptions), or kOutOfRange without
// running it where the band's input is not finite and within P.limit.
int wino_band(const WinoConv& P, const float* x, float* y, const float* r, int64_t r0,
               int64_t r1) {
  const int64_t i0 = std::max<int64_t>(0, r0 - 1), i1 = std::min(P.H, r1 + 1);
  const int64_t ih = i1 - i0, rows = r1 - r0, W = P.W, C = P.C, O = P.O;
  // a NaN or infinity spreads over whole 8x8 tiles (and inf * 0 makes NaN) in Winograd's
  // transforms, where the direct sum reaches only the 3x3 window: such inputs go to the caller's
  // direct kernel
  if (!within(x + i0 * W * C, ih * W * C, P.limit)) return kOutOfRange;
  float* xin = tls_floats(0, (size_t)(C * ih * W));
  float* yout = tls_floats(1, (size_t)(O * rows * W));
  // NHWC rows [i0, i1) ([ih * W][C]) -> [C][ih * W]
  transpose_block(x + i0 * W * C, C, xin, ih * W, ih * W, C);
  const nnp_size in_size = {(size_t)W, (size_t)ih};
  const nnp_padding pad = {(size_t)(r0 == 0), 1, (size_t)(r1 == P.H), 1};  // top right bottom left
  size_t ws = 0;
  nnp_status s = nnpack_conv()(
      nnp_convolution_algorithm_wt8x8, nnp_convolution_transform_strategy_reuse, C, O, in_size,
      pad, {3, 3}, {1, 1}, xin, P.kernel_transform.get(), P.bias.data(), yout, nullptr, &ws,
      nnp_activation_identity, nullptr, nullptr, nullptr);
  if (s != nnp_status_success) return (int)s;
  void* work = tls_floats(2, ws / sizeof(float) + 16);
  s = nnpack_conv()(
      nnp_convolution_algorithm_wt8x8, nnp_convolution_transform_strategy_reuse, C, O, in_size,
      pad, {3, 3}, {1, 1}, xin, P.kernel_transform.get(), P.bias.data(), yout, work, &ws,
      nnp_activation_identity, nullptr, nullptr, nullptr);
  if (s != nnp_status_success) return (int)s;
  // [O][rows * W] -> NHWC rows [r0, r1)
  float* yb = y + r0 * W * O;
  transpose_block(yout, rows * W, yb, O, O, rows * W);
  const int64_t n = rows * W * O;
  const float* rb = r != nullptr ? r + r0 * W * O : nullptr;
  // relu as torch's: NaN stays NaN (NaN < 0 is false)
  if (P.residual == 1) {
    for (int64_t i = 0; i < n; ++i) {
      float v = yb[i] + rb[i];
      yb[i] = P.act && v < 0.0f ? 0.0f : v;
    }
  } else if (P.residual == 2) {
    for (int64_t i = 0; i < n; ++i) yb[i] = (P.act && yb[i] < 0.0f ? 0.0f : yb[i]) + rb[i];
  } else if (P.act) {
    for (int64_t i = 0; i < n; ++i) yb[i] = yb[i] < 0.0f ? 0.0f : yb[i];
  }
  return (int)nnp_status_success;
}

}  // namespace

std::shared_ptr<WinoConv> make_wino_conv(const std::vector<int64_t>& src_shape,
                                         const torch::Tensor& weight,
                                         const std::optional<torch::Tensor>& bias,
                                         const std::string& activation,
                                         const std::string& residual_mode) {
  if (!wino_applies(src_shape, weight, activation) || nnpack_conv() == nullptr) return nullptr;
  auto P = std::make_shared<WinoConv>();
  P->N = src_shape[0], P->C = src_shape[1], P->H = src_shape[2], P->W = src_shape[3];
  P->O = weight.size(0);
  // NNPACK's tiles need room: an image smaller than one tile is direct convolution's
  if (P->H < 3 || P->W < 3) return nullptr;
  P->act = activation == "relu";
  P->residual = residual_mode == "pre" ? 1 : residual_mode == "post" ? 2 : 0;
  P->bias = float_vector(bias, P->O, "the bias");
  if (P->bias.empty()) P->bias.assign((size_t)P->O, 0.0f);
  auto w = weight.contiguous();
  if (!torch::isfinite(w).all().item<bool>() ||
      !std::all_of(P->bias.begin(), P->bias.end(), [](float v) { return std::isfinite(v); }))
    return nullptr;  // the direct sum's NaN and inf patterns differ: not worth a second path
  size_t bytes = 0;
  const nnp_size in_size = {(size_t)P->W, (size_t)P->H};
  nnp_status s = nnpack_conv()(
      nnp_convolution_algorithm_wt8x8, nnp_convolution_transform_strategy_precompute, P->C, P->O,
      in_size, {1, 1, 1, 1}, {3, 3}, {1, 1}, nullptr, w.data_ptr<float>(), nullptr, nullptr,
      nullptr, &bytes, nnp_activation_identity, nullptr, nullptr, nullptr);
  if (s != nnp_status_success) return nullptr;
  void* mem = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (mem == nullptr) throw std::bad_alloc();
  P->kernel_transform = std::shared_ptr<float>(static_cast<float*>(mem), [](float* p) {
    std::free(p);
  });
  s = nnpack_conv()(
      nnp_convolution_algorithm_wt8x8, nnp_convolution_transform_strategy_precompute, P->C, P->O,
      in_size, {1, 1, 1, 1}, {3, 3}, {1, 1}, nullptr, w.data_ptr<float>(), nullptr, nullptr, mem,
      &bytes, nnp_activation_identity, nullptr, nullptr, nullptr);
  if (s != nnp_status_success) return nullptr;
  // inputs up to `limit` keep every transformed, multiplied and summed value below 1e37
  float kmax = 0.0f;
  const float* kt = P->kernel_transform.get();
  for (size_t i = 0; i < bytes / sizeof(float); ++i) kmax = std::max(kmax, std::fabs(kt[i]));
  P->limit = (float)std::min<double>(std::numeric_limits<float>::max(),
                                     1e37 / (kWinoGain * (double)P->C * std::max(kmax, 1e-30f)));
  return P;
}

bool run_wino_conv(const WinoConv& P, const float* x, float* y, const float* r, int threads) {
  const int64_t tiles = (P.H + kTile - 1) / kTile;  // tile rows per image
  const int64_t img_in = P.H * P.W * P.C, img_out = P.H * P.W * P.O;
  for (int64_t n = 0; n < P.N; ++n) {
    const float* xn = x + n * img_in;
    float* yn = y + n * img_out;
    const float* rn = r != nullptr ? r + n * img_out : nullptr;
    std::atomic<int> failed{(int)nnp_status_success};
    parallel_for(std::max(threads, 1), tiles, [&](int64_t b, int64_t e) {
      int s = wino_band(P, xn, yn, rn, b * kTile, std::min(P.H, e * kTile));
      if (s != (int)nnp_status_success) failed = s;
    });
    if (failed == kOutOfRange) return false;
    if (failed != (int)nnp_status_success)
      throw std::runtime_error(status_text((nnp_status)failed.load()));
  }
  return true;
}

#else  // no NNPACK in this torch build or not x86-64: the candidate never applies

struct WinoConv {};
std::shared_ptr<WinoConv> make_wino_conv(const std::vector<int64_t>&, const torch::Tensor&,
                                         const std::optional<torch::Tensor>&, const std::string&,
                                         const std::string&) {
  return nullptr;
}
bool run_wino_conv(const WinoConv&, const float*, float*, const float*, int) { return false; }

#endif

}  // namespace rtinfer
