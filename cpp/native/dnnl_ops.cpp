// oneDNN steps: convolution and matmul with their fused epilogue (compiler/ir/ops/fused.py)
//
//     y = op(x, w) + bias;   residual "pre": y = act(y + r);   "post": y = act(y) + r;   else act(y)
//
// as one oneDNN primitive: the bias is the primitive's own, the residual a binary_add post-op whose
// src1 is the residual slot (it has exactly the output's shape and layout) and the activation an
// eltwise post-op, ordered as the mode says. relu, clip and leaky_relu with slope 0 are the
// exception: oneDNN's JIT kernels compute them with max/min instructions, which turn NaN into
// the bound, where torch (and every unfused path) keeps NaN; they run right after the primitive
// as rtinfer's own loop in place on dst (a Tail, with a "post" residual added there too).
// Everything is decided when the plan is built: the primitive is created once, constant
// weights are reordered once into the layout its implementation asked for (format_tag::any),
// and its scratchpad is the call's ctx.scratch. A call only points the step's memory objects at
// the call's slots and executes (through the C API: no maps, no allocation).
#include "dnnl_ops.h"

#include "dnnl_common.h"
#include "conv_winograd.h"

#include <dnnl.hpp>
#include <oneapi/dnnl/dnnl_debug.h>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <tuple>
#include <optional>
#include <stdexcept>

namespace rtinfer {

dnnl::engine& cpu_engine();

bool& fast_clamps() {
  static thread_local bool on = false;
  return on;
}

namespace {

// -- a constant-weight matmul through ATen's GEMM (MKL on x86) --------------------------------
//
// oneDNN 3.2's f32 matmul has a brgemm kernel only from AVX-512 up; on AVX2 it runs its
// reference-blocked gemm:jit, which is about 1.3x slower at transformer shapes than the MKL GEMM
// torch carries. So a 2-d matmul with a constant weight gets both candidates when the plan is
// built: oneDNN's fused primitive, and ATen's addmm (the bias in it) followed by the same epilogue
// as one oneDNN binary/eltwise primitive in place. Each is timed on scratch data at that shape
// and thread count and the faster is kept; the verdict is remembered per shape and epilogue for
// the process. The epilogue primitive uses the same oneDNN eltwise algorithms, so both candidates
// round alike apart from the GEMM's summation order.

// A third candidate is torch's own oneDNN (3.12 in torch 2.13) through its brgemm ukernel,
// at::native::cpublas::brgemm: one [mb, K] x [K, nb] tile of the output per call, the tiles
// split over the threads here. Its f32 kernel has an AVX2 version (3.2's matmul has none), at
// 260-280 GFLOP/s on MiniLM's linears on 2 Zen 5 cores capped at AVX2 (3.2's gemm:jit: 218 at
// 128x384x1536, MKL: 180). The weight stays [K, N] row-major: f32 needs no packing. The bias
// is added in the tile's epilogue where it has one (GELU, a residual), else written into each
// tile first and the ukernel adds onto it.

enum class Gemm { onednn = 0, aten = 1, brgemm = 2 };

const char* gemm_label(Gemm g) {
  return g == Gemm::aten ? "ATen GEMM" : g == Gemm::brgemm ? "torch oneDNN brgemm" : "oneDNN";
}

}  // namespace
}  // namespace rtinfer

#if defined(__x86_64__)
// torch's ATen/native/CPUBlas.h declares these; it is not included because it pulls in torch's
// oneDNN headers, which clash with the oneDNN 3.2 this file is built against
namespace at::native::cpublas {
TORCH_API void brgemm(int64_t M, int64_t N, int64_t K, int64_t ld_a, int64_t ld_b, int64_t ld_c,
                      const bool add_C, const float* A, const float* B, float* C, bool is_vnni);
TORCH_API void brgemm_release(bool is_vnni);
}  // namespace at::native::cpublas
#define RTINFER_HAVE_CPUBLAS_BRGEMM 1
#endif

namespace rtinfer {
namespace {

// GELU (erf), 0.5 x (1 + erf(x / sqrt 2)), with erf as the rational function Eigen and XLA use
// for float (an odd numerator of degree 13 over an even denominator of degree 8 on z clamped to
// [-4, 4], where erf is +-1 in float beyond): no exp, about half the time of Abramowitz and
// Stegun's 7.1.26 with its exp (0.35 against 0.65 ns an element on a Zen 5 core at AVX2); GELU's
// largest error against float64 over [-12, 12] is 9.7e-7 (7.1.26: 4.6e-7). NaN stays NaN (the
// clamp's compares are false for it). 16 lanes on AVX-512, kW (vf) on every other level.
constexpr float kErfAlpha[7] = {-2.72614225801306e-10f, 2.77068142495902e-08f,
                                -2.10102402082508e-06f, -5.69250639462346e-05f,
                                -7.34990630326855e-04f, -2.95459980854025e-03f,
                                -1.60960333262415e-02f};
constexpr float kErfBeta[5] = {-1.45660718464996e-05f, -2.13374055278905e-04f,
                               -1.68282697438203e-03f, -7.37332916720468e-03f,
                               -1.42647390514189e-02f};
#ifdef RTINFER_AVX512
inline __m512 gelu_erf512(__m512 x) {
  __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
  // clamp keeping NaN: max/min return their second operand when either is NaN
  z = _mm512_min_ps(_mm512_set1_ps(4.0f), _mm512_max_ps(_mm512_set1_ps(-4.0f), z));
  const __m512 z2 = _mm512_mul_ps(z, z);
  __m512 p = _mm512_set1_ps(kErfAlpha[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(kErfAlpha[i]));
  p = _mm512_mul_ps(p, z);
  __m512 q = _mm512_set1_ps(kErfBeta[0]);
  for (int i = 1; i < 5; ++i) q = _mm512_fmadd_ps(q, z2, _mm512_set1_ps(kErfBeta[i]));
  const __m512 erf = _mm512_div_ps(p, q);
  return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)),
                       _mm512_add_ps(erf, _mm512_set1_ps(1.0f)));
}
#else
#if defined(__AVX2__) && defined(__FMA__)
// the same on AVX2 in intrinsics: the clamp as max/min (one instruction each, where the vector
// extension's selects compile to a compare and a blend), 0.29 against 0.35 ns an element on a
// Zen 5 core; the same formula as vgelu_erf below
inline __m256 gelu_erf256(__m256 x) {
  __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
  // max/min return their second operand when either is NaN: NaN stays
  z = _mm256_min_ps(_mm256_set1_ps(4.0f), _mm256_max_ps(_mm256_set1_ps(-4.0f), z));
  const __m256 z2 = _mm256_mul_ps(z, z);
  __m256 p = _mm256_fmadd_ps(z2, _mm256_set1_ps(kErfAlpha[0]), _mm256_set1_ps(kErfAlpha[1]));
  for (int i = 2; i < 7; ++i) p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(kErfAlpha[i]));
  p = _mm256_mul_ps(p, z);
  __m256 q = _mm256_fmadd_ps(z2, _mm256_set1_ps(kErfBeta[0]), _mm256_set1_ps(kErfBeta[1]));
  for (int i = 2; i < 5; ++i) q = _mm256_fmadd_ps(q, z2, _mm256_set1_ps(kErfBeta[i]));
  const __m256 erf = _mm256_div_ps(p, q);
  return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)),
                       _mm256_add_ps(erf, _mm256_set1_ps(1.0f)));
}
#endif
inline vf vgelu_erf(vf x) {
  vf z = x * 0.70710678118654752f;
  z = z < -4.0f ? -4.0f : z;  // NaN compares false and stays
  z = z > 4.0f ? 4.0f : z;
  const vf z2 = z * z;
  vf p = z2 * kErfAlpha[0] + kErfAlpha[1];
  for (int i = 2; i < 7; ++i) p = p * z2 + kErfAlpha[i];
  p = p * z;
  vf q = z2 * kErfBeta[0] + kErfBeta[1];
  for (int i = 2; i < 5; ++i) q = q * z2 + kErfBeta[i];
  return 0.5f * x * (1.0f + p / q);
}
#endif

struct AtenGemm {
  torch::Tensor w;     // [K, N] contiguous
  torch::Tensor bias;  // [N] or undefined
  int64_t rows, K, N;
  int a, dst;
  Gemm how = Gemm::aten;             // aten: at::addmm; brgemm: cpublas::brgemm tiles
  int64_t mb = 128, nb = 64;         // brgemm's tile
  torch::Tensor panels;              // brgemm's weight: [N / nb, K, nb], zero-padded columns
  // brgemm's epilogue on each tile while it is in cache (then post and tail are null): GELU
  // (erf) or none, and the residual (`residual` slot, dst's layout) before or after it
  bool tile_epilogue = false, tile_gelu = false;
  int residual = -1;
  bool residual_pre = false;

  // The weight's column blocks as contiguous [K, nb] panels (each tile reads one panel front to
  // back, which the hardware prefetches; 10-30 us faster than the [K, N] rows when cold).
  void pack_panels() {
    if (panels.defined()) return;
    const int64_t tn = (N + nb - 1) / nb;
    auto padded = torch::zeros({K, tn * nb}, w.options());
    padded.narrow(1, 0, N).copy_(w);
    panels = padded.reshape({K, tn, nb}).permute({1, 0, 2}).contiguous();
  }
  std::shared_ptr<Kernel> post;      // the epilogue's oneDNN primitive in place on dst, or null
  std::shared_ptr<const Tail> tail;  // a clamp with no oneDNN step before it, or null

  void run(Ctx& ctx) const {
    if (how == Gemm::brgemm) {
      run_brgemm(ctx);
    } else {
      auto opt = torch::TensorOptions().dtype(torch::kFloat32);
      auto x = torch::from_blob(ctx.ptr[a], {rows, K}, opt);
      auto y = torch::from_blob(ctx.ptr[dst], {rows, N}, opt);
      if (bias.defined())
        at::addmm_out(y, bias, x, w);
      else
        at::mm_out(y, x, w);
    }
    if (how == Gemm::brgemm && tile_epilogue) return;
    if (post) post->run(ctx);
    if (tail) tail->run(ctx);
  }

  // act(c + r) ("pre"), act(c) + r ("post") or act(c) on an m x n tile with row stride N, c
  // first plus the bias's n columns bias_n where not null
  void epilogue(float* c, const float* r, const float* bias_n, int64_t m, int64_t n) const {
    for (int64_t row = 0; row < m; ++row) {
      float* y = c + row * N;
      const float* q = r == nullptr ? nullptr : r + row * N;
#ifdef RTINFER_AVX512
      for (int64_t col = 0; col < n; col += 16) {
        const __mmask16 k = tail_mask(n - col);
        __m512 v = _mm512_maskz_loadu_ps(k, y + col);
        if (bias_n) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias_n + col));
        const __m512 rv = q ? _mm512_maskz_loadu_ps(k, q + col) : _mm512_setzero_ps();
        if (q && residual_pre) v = _mm512_add_ps(v, rv);
        if (tile_gelu) v = gelu_erf512(v);
        if (q && !residual_pre) v = _mm512_add_ps(v, rv);
        _mm512_mask_storeu_ps(y + col, k, v);
      }
#else
      int64_t col0 = 0;
#if defined(__AVX2__) && defined(__FMA__)
      for (; col0 + 8 <= n; col0 += 8) {
        __m256 v = _mm256_loadu_ps(y + col0);
        if (bias_n) v = _mm256_add_ps(v, _mm256_loadu_ps(bias_n + col0));
        if (q && residual_pre) v = _mm256_add_ps(v, _mm256_loadu_ps(q + col0));
        if (tile_gelu) v = gelu_erf256(v);
        if (q && !residual_pre) v = _mm256_add_ps(v, _mm256_loadu_ps(q + col0));
        _mm256_storeu_ps(y + col0, v);
      }
#endif
      for (int64_t col = col0; col < n; col += kW) {
        const int64_t w = std::min<int64_t>(kW, n - col);
        alignas(64) float buf[kW] = {}, res[kW] = {};
        alignas(64) float bb[kW] = {};
        vf v, rv = vset(0.f);
        if (w == kW) {
          v = vload(y + col);
          if (q) rv = vload(q + col);
          if (bias_n) v += vload(bias_n + col);
        } else {
          std::memcpy(buf, y + col, w * sizeof(float));
          if (q) std::memcpy(res, q + col, w * sizeof(float));
          if (bias_n) std::memcpy(bb, bias_n + col, w * sizeof(float));
          v = vload(buf) + vload(bb);
          rv = vload(res);
        }
        if (q && residual_pre) v += rv;
        if (tile_gelu) v = vgelu_erf(v);
        if (q && !residual_pre) v += rv;
        if (w == kW) {
          vstore(y + col, v);
        } else {
          vstore(buf, v);
          std::memcpy(y + col, buf, w * sizeof(float));
        }
      }
#endif
    }
  }

  // The tiles, column blocks outer: with a static schedule each thread reads its own share of
  // the weight (the big operand) once.
  void run_brgemm(Ctx& ctx) const {
#ifdef RTINFER_HAVE_CPUBLAS_BRGEMM
    const float* A = reinterpret_cast<const float*>(ctx.ptr[a]);
    float* C = reinterpret_cast<float*>(ctx.ptr[dst]);
    const float* B = panels.data_ptr<float>();
    const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
    const float* R = residual >= 0 ? reinterpret_cast<const float*>(ctx.ptr[residual]) : nullptr;
    const int64_t tm = (rows + mb - 1) / mb, tn = (N + nb - 1) / nb;
    const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(ctx.threads, tm * tn));
    // the bias: added in the tile's epilogue where there is one, else written into the tile
    // first and the ukernel adds onto it
    const bool bias_first = b != nullptr && !tile_epilogue;
#pragma omp parallel num_threads(nt)
    {
#pragma omp for collapse(2) schedule(static)
      for (int64_t j = 0; j < tn; ++j)
        for (int64_t i = 0; i < tm; ++i) {
          const int64_t m = std::min(mb, rows - i * mb), n = std::min(nb, N - j * nb);
          float* c = C + i * mb * N + j * nb;
          if (bias_first)
            for (int64_t r = 0; r < m; ++r) std::memcpy(c + r * N, b + j * nb, n * sizeof(float));
          at::native::cpublas::brgemm(m, n, K, K, nb, N, bias_first, A + i * mb * K,
                                      B + j * K * nb, c, false);
          if (tile_epilogue)
            epilogue(c, R == nullptr ? nullptr : R + (c - C),
                     b == nullptr || bias_first ? nullptr : b + j * nb, m, n);
        }
      at::native::cpublas::brgemm_release(false);
    }
#else
    (void)ctx;
    throw std::runtime_error("torch's brgemm is x86-64 only");
#endif
  }
};

// brgemm's tile for an output of `rows` x `n`: 64 columns (the best or within 3% of it at every
// MiniLM linear measured, against 48, 96, 128 and 192), all rows up to 128; narrower columns
// where that leaves fewer than two tiles per thread.
std::pair<int64_t, int64_t> brgemm_tile(int64_t rows, int64_t n, int threads) {
  int64_t mb = std::min<int64_t>(rows, 128), nb = 64;
  auto tiles = [&] { return ((rows + mb - 1) / mb) * ((n + nb - 1) / nb); };
  while (nb > 16 && tiles() < 2 * threads) nb /= 2;
  return {mb, nb};
}

// The epilogue (activation, residual "pre") on dst in place as one primitive: binary_add with
// the residual then the activation as a post-op, or the activation alone. Null when there is
// nothing to do; "post" residuals (act then add) are not offered (returns false). A clamp
// (relu, clip) runs as rtinfer's own Tail: after the binary primitive, or alone (`tail`).
bool aten_epilogue(const std::string& name, const std::string& activation, double alpha,
                   double beta, const std::string& residual_mode, int residual, int dst,
                   const memory::desc& dst_md, std::shared_ptr<Kernel>& out,
                   std::shared_ptr<const Tail>& tail, Plan& plan) {
  Eltwise act = eltwise(name, activation, (float)alpha, (float)beta);
  if (residual_mode == "post") return false;
  if (act.clamp) tail = make_tail(act, dst, -1, dst_md.get_dims());
  if (!act.on && residual_mode == "none") return true;
  auto k = std::make_shared<Kernel>();
  k->name = name;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  memory::desc scratch;
  if (residual_mode == "pre") {
    dnnl::post_ops ops;
    if (act.on) ops.append_eltwise(act.alg, act.alpha, act.beta);
    attr.set_post_ops(ops);
    dnnl::binary::primitive_desc pd(cpu_engine(), dnnl::algorithm::binary_add, dst_md, dst_md,
                                    dst_md, attr);
    k->prim = dnnl::binary(pd);
    k->bound = {{DNNL_ARG_SRC_0, dst, dst_md}, {DNNL_ARG_SRC_1, residual, dst_md},
                {DNNL_ARG_DST, dst, dst_md}};
    scratch = pd.scratchpad_desc();
  } else {
    dnnl::eltwise_forward::primitive_desc pd(cpu_engine(), dnnl::prop_kind::forward_inference,
                                             act.alg, dst_md, dst_md, act.alpha, act.beta, attr);
    k->prim = dnnl::eltwise_forward(pd);
    k->bound = {{DNNL_ARG_SRC, dst, dst_md}, {DNNL_ARG_DST, dst, dst_md}};
    scratch = pd.scratchpad_desc();
  }
  plan.need_scratch((int64_t)scratch.get_size());
  if (scratch.get_size() > 0) k->bound.push_back({DNNL_ARG_SCRATCHPAD, -1, scratch});
  for (const auto& b : k->bound) k->cached.emplace_back(b.md, cpu_engine(), nullptr);
  out = std::move(k);
  return true;
}

// A matmul smaller than this (multiply-adds) stays on oneDNN without timing: the candidates'
// difference is below the timer's noise there.
constexpr double kGemmChoiceMacs = 1 << 20;

// $RTINFER_GEMM=onednn keeps every matmul on oneDNN, =aten takes ATen's and =brgemm torch's
// brgemm wherever offered (for comparisons, tests and bisecting); unset, the fastest is timed.
std::string gemm_forced() {
  const char* v = std::getenv("RTINFER_GEMM");
  return v == nullptr ? std::string() : std::string(v);
}

// Median seconds of `run` over a few calls on scratch data (after two warm-up calls).
template <typename F>
double time_step(const F& run) {
  run();
  run();
  double best[7];
  for (double& t : best) {
    double t0 = omp_get_wtime();
    run();
    t = omp_get_wtime() - t0;
  }
  std::sort(best, best + 7);
  return best[3];
}

// -- choosing among oneDNN's convolution implementations ---------------------------------------
//
// oneDNN takes the first implementation in its fixed list that accepts the problem, not the
// fastest at this shape and thread count. $RTINFER_CONV_IMPL offers the others (up to
// kConvCandidates distinct kernels, reference kernels never), each computing the same
// convolution with the same epilogue (only the summation order, so the rounding, differs):
//
//   unset   oneDNN's first choice;
//   N       the N-th candidate (0: oneDNN's first; past the last: the last), for comparisons,
//           tests and bisecting;
//   race    a convolution big enough for the difference to show times its candidates on scratch
//           data when the plan is built and keeps the fastest (the verdict is remembered per
//           problem and thread count for the process).
//
// The race is not the default: measured on a 2-core AVX-512 Xeon at one thread, oneDNN 3.2's first
// choice (brgconv for every ResNet-18 layer but the 7x7 stem, which has jit:avx512_core) was the
// fastest or tied at every ResNet-18 layer, and on a busy machine the timings pick at random.
constexpr int kConvCandidates = 3;
constexpr double kConvChoiceMacs = 1 << 22;  // below: about 10 us, under the timer's noise
// another implementation wins the race only when faster than oneDNN's first choice by this factor
constexpr double kConvChoiceMargin = 0.97;
constexpr int kConvFirst = -1, kConvRace = -2;
// A Winograd kernel (conv_winograd.h) replaces oneDNN's only when faster than it by this factor:
// its rounding differs more from the direct sum's
constexpr double kWinoMargin = 0.95;
// The race times warm weights; in a model bigger than the caches they come from memory. On 2
// Zen 5 cores at AVX2, ResNet-18's 256-channel 14x14 layer took 0.40 ms more in the model than
// warm with Winograd's 16.7 MB transformed weight (0.46 -> 0.86) and 0.12 more with the direct
// 2.4 MB one (0.88 -> 1.0): 0.28 ms for 14.3 MB, about 50 GB/s.
constexpr double kColdBytesPerSecond = 50e9;

int conv_impl_setting() {
  const char* v = std::getenv("RTINFER_CONV_IMPL");
  if (v == nullptr || *v == '\0') return kConvFirst;
  if (std::string(v) == "race") return kConvRace;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || n < 0 || n > 64)
    throw std::invalid_argument("$RTINFER_CONV_IMPL must be 'race' or a candidate number (0, 1, "
                                "...), got '" + std::string(v) + "'");
  return (int)n;
}

// Median seconds of a built kernel on scratch operands: src and residual random, dst and the
// scratchpad (`sp`) fresh, at `threads`.
double time_kernel(const Kernel& k, const memory::desc& sp, int threads) {
  auto opt = torch::TensorOptions().dtype(torch::kFloat32);
  int top = 0;
  for (const auto& b : k.bound) top = std::max(top, b.slot);
  std::vector<torch::Tensor> keep;
  Ctx ctx;
  ctx.ptr.assign(top + 1, nullptr);
  for (const auto& b : k.bound) {
    if (b.slot < 0 || ctx.ptr[b.slot] != nullptr) continue;
    keep.push_back(torch::randn({(int64_t)b.md.get_size() / 4 + 16}, opt));
    ctx.ptr[b.slot] = static_cast<char*>(keep.back().data_ptr());
  }
  auto scratch = torch::empty({(int64_t)sp.get_size() / 4 + 32}, opt);
  ctx.scratch = reinterpret_cast<char*>(
      (reinterpret_cast<uintptr_t>(scratch.data_ptr()) + 63) / 64 * 64);
  ctx.threads = threads;
  dnnl::stream stream(cpu_engine());
  ctx.stream = &stream;
  auto run = [&] {
    dnnl_exec_arg_t args[8];
    int n = 0;
    for (const auto& f : k.fixed) args[n++] = {f.first, f.second.get()};
    std::vector<memory> mems;
    mems.reserve(k.bound.size() + 1);
    for (const auto& b : k.bound) {
      mems.emplace_back(b.md, cpu_engine(), Kernel::where(b, ctx));
      args[n++] = {b.arg, mems.back().get()};
    }
    if (sp.get_size() > 0) {
      mems.emplace_back(sp, cpu_engine(), ctx.scratch);
      args[n++] = {DNNL_ARG_SCRATCHPAD, mems.back().get()};
    }
    k.execute(ctx, args, n);
  };
  const int old = omp_get_max_threads();
  omp_set_num_threads(threads);
  const double t = time_step(run);
  omp_set_num_threads(old);
  return t;
}

}  // namespace

std::string add_conv(Plan& plan, const std::string& name, int src, int dst, int residual,
                     std::vector<int64_t> src_shape, torch::Tensor weight,
                     std::optional<torch::Tensor> bias, std::vector<int64_t> stride,
                     std::vector<int64_t> pad_begin, std::vector<int64_t> pad_end,
                     std::vector<int64_t> dilation, int64_t groups, const std::string& activation,
                     double alpha, double beta, const std::string& residual_mode, bool src_nhwc,
                     bool dst_nhwc, int threads, std::vector<int64_t> dst_shape) try {
  const size_t rank = src_shape.size();
  if (rank != 3 && rank != 4)
    invalid(name, "conv src must be [N, C, L] or [N, C, H, W], got " + str(src_shape));
  const size_t sp = rank - 2;
  if (stride.size() != sp || pad_begin.size() != sp || pad_end.size() != sp ||
      dilation.size() != sp)
    invalid(name, "stride, pad_begin, pad_end and dilation need " + std::to_string(sp) +
                      " values each, got " + str(stride) + ", " + str(pad_begin) + ", " +
                      str(pad_end) + ", " + str(dilation));
  if (src < 0 || dst < 0) invalid(name, "src and dst must be slots");
  check_weight(name, "the weight", weight);
  if ((size_t)weight.dim() != rank)
    invalid(name, "the weight must have rank " + std::to_string(rank) + ", got " +
                      str(weight.sizes().vec()));
  for (auto d : src_shape)
    if (d <= 0) invalid(name, "bad src shape " + str(src_shape));
  const int64_t N = src_shape[0], C = src_shape[1], O = weight.size(0);
  if (groups < 1 || C % groups != 0 || O % groups != 0 || weight.size(1) * groups != C)
    invalid(name, "groups=" + std::to_string(groups) + " does not fit src channels " +
                      std::to_string(C) + " and weight " + str(weight.sizes().vec()));
  // as 2-D: conv1d is a conv2d over [N, C, 1, L]
  auto lift = [&](const std::vector<int64_t>& v, int64_t h) {
    return sp == 2 ? v : std::vector<int64_t>{h, v[0]};
  };
  std::vector<int64_t> in = sp == 2 ? std::vector<int64_t>{src_shape[2], src_shape[3]}
                                    : std::vector<int64_t>{1, src_shape[2]};
  std::vector<int64_t> k = {sp == 2 ? weight.size(2) : 1, weight.size(rank - 1)};
  auto st = lift(stride, 1), pb = lift(pad_begin, 0), pe = lift(pad_end, 0),
       dil = lift(dilation, 1);
  std::vector<int64_t> out(2);
  for (int i = 0; i < 2; ++i) {
    if (st[i] < 1 || dil[i] < 1 || pb[i] < 0 || pe[i] < 0)
      invalid(name, "stride and dilation must be >= 1 and pads >= 0, got stride " + str(stride) +
                        ", dilation " + str(dilation) + ", pads " + str(pad_begin) + " " +
                        str(pad_end));
    int64_t span = dil[i] * (k[i] - 1) + 1;
    out[i] = (in[i] + pb[i] + pe[i] - span) / st[i] + 1;
    if (in[i] + pb[i] + pe[i] < span || out[i] < 1)
      invalid(name, "the kernel " + str(weight.sizes().vec()) + " does not fit the padded src " +
                        str(src_shape));
  }
  if (bias) {
    check_weight(name, "the bias", *bias);
    if (bias->numel() != O)
      invalid(name, "the bias must have " + std::to_string(O) + " values, got " +
                        str(bias->sizes().vec()));
  }
  // the dst slot was sized for dst_shape: a window that gives another shape would write past it
  std::vector<int64_t> computed = {N, O};
  for (size_t i = 2 - sp; i < 2; ++i) computed.push_back(out[i]);
  if (!dst_shape.empty() && dst_shape != computed)
    invalid(name, "the window gives an output of " + str(computed) + ", the dst is " +
                      str(dst_shape));

  using tag = memory::format_tag;
  Dims src_dims = {N, C, in[0], in[1]}, dst_dims = {N, O, out[0], out[1]};
  memory::desc src_md(src_dims, f32, src_nhwc ? tag::nhwc : tag::nchw);
  memory::desc dst_md(dst_dims, f32, dst_nhwc ? tag::nhwc : tag::nchw);
  Dims w_dims = groups == 1 ? Dims{O, C, k[0], k[1]}
                            : Dims{groups, O / groups, C / groups, k[0], k[1]};
  memory::desc w_user(w_dims, f32, groups == 1 ? tag::oihw : tag::goihw);
  memory::desc w_any(w_dims, f32, tag::any);
  memory::desc b_md = bias ? memory::desc({O}, f32, tag::a) : memory::desc();

  Epilogue e = epilogue(name, activation, alpha, beta, residual_mode, residual, dst_md);
  double macs = (double)N * O * out[0] * out[1] * (C / groups) * k[0] * k[1];
  CreationThreads creation(threads, macs);
  using PD = dnnl::convolution_forward::primitive_desc;
  // oneDNN's implementation number `skip` (0: its first choice), or none past the last
  auto make_pd = [&](int skip) -> std::optional<PD> {
    PD pd(cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
          src_md, w_any, b_md, dst_md, Dims{st[0], st[1]}, Dims{dil[0] - 1, dil[1] - 1},
          Dims{pb[0], pb[1]}, Dims{pe[0], pe[1]}, e.attr);
    for (int i = 0; i < skip; ++i)
      if (!pd.next_impl()) return std::nullopt;
    return pd;
  };
  auto build = [&](const PD& pd) {
    auto kern = std::make_shared<Kernel>();
    kern->name = name;
    kern->prim = dnnl::convolution_forward(pd);
    kern->bound.push_back({DNNL_ARG_SRC, src, pd.src_desc()});
    kern->bound.push_back({DNNL_ARG_DST, dst, pd.dst_desc()});
    if (e.residual_arg) kern->bound.push_back({e.residual_arg, residual, dst_md});
    kern->fixed.emplace_back(DNNL_ARG_WEIGHTS,
                             pack(weight.reshape(w_dims), w_user, pd.weights_desc()));
    if (bias) kern->fixed.emplace_back(DNNL_ARG_BIAS, copy_bias(*bias, pd.bias_desc()));
    if (e.tail) kern->tail = make_tail(e.act, dst, e.tail_residual, dst_dims);
    return kern;
  };
  PD pd = *make_pd(0);
  const int setting = conv_impl_setting();
  const int nthreads = threads > 0 ? threads : omp_get_max_threads();
  const std::string key = str(src_dims) + str(w_dims) + str(dst_dims) + str(st) + str(pb) +
                          str(pe) + str(dil) + (src_nhwc ? "h" : "c") + (dst_nhwc ? "h" : "c") +
                          activation + "/" + residual_mode + (bias ? "b" : "") + "@" +
                          std::to_string(nthreads);
  const bool log = std::getenv("RTINFER_CONV_IMPL_LOG") != nullptr;
  // the oneDNN kernel chosen, or a Winograd kernel (conv_winograd.h: NNPACK's, rtinfer's own)
  // where one is faster by kWinoMargin on this layer (timed once per problem and thread count in
  // this process; an explicit $RTINFER_CONV_IMPL keeps oneDNN)
  auto done = [&](const PD& chosen) -> std::string {
    const WinoMode mode = winograd_mode();
    const bool eligible = (setting == kConvFirst || setting == kConvRace) && sp == 2 &&
                          groups == 1 && k == std::vector<int64_t>{3, 3} &&
                          st == std::vector<int64_t>{1, 1} && dil == std::vector<int64_t>{1, 1} &&
                          pb == std::vector<int64_t>{1, 1} && pe == std::vector<int64_t>{1, 1} &&
                          src_nhwc && dst_nhwc && mode != WinoMode::off &&
                          (macs >= kConvChoiceMacs || mode != WinoMode::race);
    if (!eligible) return finish(plan, build(chosen), chosen);
    struct Alt {
      std::string label;               // the step name's suffix
      std::string impl;                // add_conv's answer
      std::function<bool(Ctx&)> run;   // false: not a finite input, the direct kernel runs
      int64_t scratch;                 // bytes of the call's scratch it needs
    };
    auto res_ptr = [residual](Ctx& ctx) -> const float* {
      return residual >= 0 ? ctx.at<float>(residual) : nullptr;
    };
    // the candidate with this label, prepared (its weight transformed), if it applies here
    auto make = [&](const std::string& label) -> std::optional<Alt> {
      if (label == "NNPACK Winograd") {
        std::shared_ptr<const WinoConv> wc =
            make_wino_conv(src_shape, weight, bias, activation, residual_mode);
        if (!wc) return std::nullopt;
        return Alt{label, "nnpack:wt8x8",
                   [wc, src, dst, res_ptr](Ctx& ctx) {
                     return run_wino_conv(*wc, ctx.at<float>(src), ctx.at<float>(dst),
                                          res_ptr(ctx), ctx.threads);
                   },
                   0};
      }
      std::shared_ptr<const OwnWino> wc =
          make_own_wino(src_shape, weight, bias, activation, residual_mode, nthreads);
      if (!wc) return std::nullopt;
      return Alt{label, "rtinfer:wino6x6",
                 [wc, src, dst, res_ptr](Ctx& ctx) {
                   return run_own_wino(*wc, ctx.at<float>(src), ctx.at<float>(dst),
                                       res_ptr(ctx), ctx.scratch, native_stream(ctx),
                                       ctx.threads);
                 },
                 own_wino_scratch(*wc)};
    };
    // oneDNN's kernel: the step itself, or kept beside a Winograd one for the calls whose input
    // is not finite (built once, timed by the race too)
    std::shared_ptr<Kernel> direct = build(chosen);
    std::optional<Alt> pick;
    if (mode == WinoMode::always) {
      pick = make("NNPACK Winograd");
    } else if (mode == WinoMode::own) {
      pick = make("rtinfer Winograd");
    } else {  // the race; a verdict of this process is reused, and only its winner prepared
      static std::map<std::string, std::string> wino_verdicts;  // the winner's label or ""
      static std::mutex wino_mutex;
      std::lock_guard<std::mutex> lock(wino_mutex);
      const std::string vkey = key + chosen.impl_info_str();
      auto it = wino_verdicts.find(vkey);
      if (it != wino_verdicts.end()) {
        if (!it->second.empty()) pick = make(it->second);
      } else {
        std::vector<Alt> alts;
        for (const char* label : {"NNPACK Winograd", "rtinfer Winograd"})
          if (std::optional<Alt> alt = make(label)) alts.push_back(std::move(*alt));
        std::string best;
        if (!alts.empty()) {
          const double t_onednn = time_kernel(*direct, chosen.scratchpad_desc(), nthreads);
          auto opt = torch::TensorOptions().dtype(torch::kFloat32);
          std::vector<torch::Tensor> keep = {torch::randn({N, in[0], in[1], C}, opt),
                                             torch::empty({N, out[0], out[1], O}, opt),
                                             torch::randn({N, out[0], out[1], O}, opt)};
          Ctx ctx;
          ctx.ptr.assign(std::max({src, dst, residual}) + 1, nullptr);
          ctx.ptr[src] = static_cast<char*>(keep[0].data_ptr());
          ctx.ptr[dst] = static_cast<char*>(keep[1].data_ptr());
          if (residual >= 0) ctx.ptr[residual] = static_cast<char*>(keep[2].data_ptr());
          ctx.threads = nthreads;
          dnnl::stream stream(cpu_engine());
          ctx.stream = &stream;
          // in a model the weights come cold: each candidate pays for reading its own once
          // (Winograd's transformed weight is 64 / 9 times the size) at kColdBytesPerSecond
          const double direct_w = 4.0 * O * C * 9, wino_w = 4.0 * O * C * 64;
          double best_t = (t_onednn + direct_w / kColdBytesPerSecond) * kWinoMargin;
          std::string line = std::string(chosen.impl_info_str()) + " " +
                             std::to_string(t_onednn * 1e3) + " ms";
          const int old = omp_get_max_threads();
          omp_set_num_threads(nthreads);
          for (Alt& alt : alts) {
            auto scratch = torch::empty({alt.scratch / 4 + 32}, opt);
            ctx.scratch = reinterpret_cast<char*>(
                (reinterpret_cast<uintptr_t>(scratch.data_ptr()) + 63) / 64 * 64);
            const double t = time_step([&] { alt.run(ctx); });
            line += ", " + alt.impl + " " + std::to_string(t * 1e3) + " ms";
            const double cold = t + wino_w / kColdBytesPerSecond;
            if (cold < best_t) best = alt.label, best_t = cold;
          }
          omp_set_num_threads(old);
          if (log) std::fprintf(stderr, "rtinfer conv %s: %s\n", key.c_str(), line.c_str());
          for (Alt& alt : alts)
            if (alt.label == best) pick = std::move(alt);
        }
        wino_verdicts.emplace(vkey, best);
      }
    }
    if (!pick) return finish(plan, direct, chosen);
    bind_scratchpad(plan, *direct, chosen);
    plan.need_scratch(pick->scratch);
    std::shared_ptr<const Kernel> dc = std::move(direct);
    auto fast = pick->run;
    plan.add_step({name + " (" + pick->label + ")", [fast, dc](Ctx& ctx) {
      if (!fast(ctx)) dc->run(ctx);
    }});
    return pick->impl;
  };
  if (setting == 0 || setting == kConvFirst || (setting == kConvRace && macs < kConvChoiceMacs))
    return done(pd);

  // the candidates: the first of each kernel name (oneDNN's list holds one kernel several
  // times, once per ISA or variant, and those that accept the problem run the same code),
  // reference kernels never
  std::vector<PD> cands;
  std::vector<std::string> names;
  for (int i = 0; i < 64 && (int)cands.size() < kConvCandidates; ++i) {
    std::optional<PD> cand = make_pd(i);
    if (!cand) break;
    std::string impl = cand->impl_info_str();
    if (impl.rfind("ref", 0) == 0 || std::find(names.begin(), names.end(), impl) != names.end())
      continue;
    cands.push_back(*cand);
    names.push_back(impl);
  }
  if (cands.empty()) return done(pd);
  if (setting > 0) {
    pd = cands[std::min<size_t>(setting, cands.size() - 1)];
    return done(pd);
  }
  // which is fastest, timed once per problem and thread count in this process
  static std::map<std::string, std::string> verdicts;  // the winner's kernel name
  static std::mutex verdicts_mutex;
  std::unique_lock<std::mutex> lock(verdicts_mutex);
  auto it = verdicts.find(key);
  if (it == verdicts.end()) {
    size_t best = 0;
    double best_t = 0.0;
    for (size_t i = 0; i < cands.size(); ++i) {
      double t = time_kernel(*build(cands[i]), cands[i].scratchpad_desc(), nthreads);
      // oneDNN's first choice unless another is clearly faster
      if (i == 0 || t < best_t * (best == 0 ? kConvChoiceMargin : 1.0)) best = i, best_t = t;
      if (log)
        std::fprintf(stderr, "rtinfer conv %s: %s %.4f ms\n", key.c_str(), names[i].c_str(),
                     t * 1e3);
    }
    it = verdicts.emplace(key, names[best]).first;
  }
  for (size_t i = 0; i < cands.size(); ++i)
    if (names[i] == it->second) pd = cands[i];
  lock.unlock();
  return done(pd);
} catch (const dnnl::error& err) {  // at plan-build time: name the step
  throw dnnl_failure(name, err);
}

// A 1x1 convolution whose output only a depthwise 3x3 convolution reads (MobileNet's expansion
// and depthwise pair), as one oneDNN primitive with a depthwise post-op: the expanded activation
// is made and consumed a few rows at a time and never written out whole. NHWC in and out;
// stride 1 and no padding for the 1x1, padding 1 for the depthwise. `plan` null: a dry run
// that only reports the implementation oneDNN would pick (it fuses for real only where the
// expanded activation is large against the L2 caches; "ref_fused..." runs the two apart).
std::string add_conv_dw(Plan* plan, const std::string& name, int src, int dst,
                        std::vector<int64_t> src_shape, torch::Tensor weight,
                        std::optional<torch::Tensor> bias, const std::string& activation,
                        double alpha, double beta, torch::Tensor dw_weight,
                        std::optional<torch::Tensor> dw_bias, int64_t dw_stride,
                        const std::string& dw_activation, double dw_alpha, double dw_beta,
                        int threads) try {
  if (src_shape.size() != 4) invalid(name, "src must be [N, C, H, W], got " + str(src_shape));
  for (auto d : src_shape)
    if (d <= 0) invalid(name, "bad src shape " + str(src_shape));
  if (plan && (src < 0 || dst < 0)) invalid(name, "src and dst must be slots");
  check_weight(name, "the weight", weight);
  check_weight(name, "the depthwise weight", dw_weight);
  const int64_t N = src_shape[0], C = src_shape[1], H = src_shape[2], W = src_shape[3];
  const int64_t O = weight.size(0);
  if (weight.sizes().vec() != std::vector<int64_t>{O, C, 1, 1})
    invalid(name, "the weight must be [O, " + std::to_string(C) + ", 1, 1], got " +
                      str(weight.sizes().vec()));
  if (dw_weight.sizes().vec() != std::vector<int64_t>{O, 1, 3, 3})
    invalid(name, "the depthwise weight must be [" + std::to_string(O) + ", 1, 3, 3], got " +
                      str(dw_weight.sizes().vec()));
  if (dw_stride != 1 && dw_stride != 2)
    invalid(name, "the depthwise stride must be 1 or 2, got " + std::to_string(dw_stride));
  for (auto [b, n] : {std::pair{&bias, "the bias"}, std::pair{&dw_bias, "the depthwise bias"}})
    if (*b) {
      check_weight(name, n, **b);
      if ((*b)->numel() != O)
        invalid(name, std::string(n) + " must have " + std::to_string(O) + " values, got " +
                          str((*b)->sizes().vec()));
    }
  using tag = memory::format_tag;
  // padding 1 on both sides: ceil(H / stride) rows out, which is what oneDNN's fused
  // depthwise computes (its right padding follows)
  const int64_t Ho = (H + dw_stride - 1) / dw_stride, Wo = (W + dw_stride - 1) / dw_stride;
  memory::desc src_md({N, C, H, W}, f32, tag::nhwc), mid_md({N, O, H, W}, f32, tag::nhwc);
  memory::desc want_dst({N, O, Ho, Wo}, f32, tag::nhwc);
  memory::desc w_user({O, C, 1, 1}, f32, tag::oihw), w_any({O, C, 1, 1}, f32, tag::any);
  memory::desc b_md({O}, f32, tag::a);
  Eltwise act = eltwise(name, activation, (float)alpha, (float)beta);
  Eltwise dw_act = eltwise(name, dw_activation, (float)dw_alpha, (float)dw_beta);
  // the clamp between the two convolutions cannot leave the primitive (the depthwise post-op
  // reads the 1x1's rows as they are made), and oneDNN's would lose NaN: the caller runs the
  // pair apart
  if (act.clamp)
    invalid(name, "the 1x1 convolution's " + activation +
                      " cannot run inside the fused pair (oneDNN's turns NaN into the bound)");
  dnnl::post_ops ops;
  if (act.on) ops.append_eltwise(act.alg, act.alpha, act.beta);
  ops.append_dw(f32, f32, f32, 3, dw_stride, 1);
  if (dw_act.on) ops.append_eltwise(dw_act.alg, dw_act.alpha, dw_act.beta);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  double macs = (double)N * O * H * W * C + (double)N * O * Ho * Wo * 9;
  CreationThreads creation(threads, macs);
  dnnl::convolution_forward::primitive_desc pd(
      cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
      src_md, w_any, b_md, mid_md, Dims{1, 1}, Dims{0, 0}, Dims{0, 0}, attr);
  std::string impl = pd.impl_info_str();
  if (pd.dst_desc() != want_dst)
    invalid(name, "oneDNN's fused depthwise output is not [N, O, ceil(H/s), ceil(W/s)] NHWC");
  if (!plan) return impl;
  const int dw_w = DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS;
  const int dw_b = DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS;
  auto kern = std::make_shared<Kernel>();
  kern->name = name;
  kern->prim = dnnl::convolution_forward(pd);
  kern->bound.push_back({DNNL_ARG_SRC, src, pd.src_desc()});
  kern->bound.push_back({DNNL_ARG_DST, dst, pd.dst_desc()});
  kern->fixed.emplace_back(DNNL_ARG_WEIGHTS, pack(weight, w_user, pd.weights_desc()));
  auto zeros = torch::zeros({O}, torch::kFloat32);
  kern->fixed.emplace_back(DNNL_ARG_BIAS, copy_bias(bias ? *bias : zeros, pd.bias_desc()));
  memory::desc dw_user({O, 1, 1, 3, 3}, f32, tag::goihw);
  kern->fixed.emplace_back(dw_w, pack(dw_weight.reshape({O, 1, 1, 3, 3}), dw_user,
                                      pd.query_md(dnnl::query::exec_arg_md, dw_w)));
  kern->fixed.emplace_back(dw_b, copy_bias(dw_bias ? *dw_bias : zeros,
                                           pd.query_md(dnnl::query::exec_arg_md, dw_b)));
  if (dw_act.clamp) kern->tail = make_tail(dw_act, dst, -1, Dims{N, O, Ho, Wo});
  finish(*plan, std::move(kern), pd);
  return impl;
} catch (const dnnl::error& err) {  // at plan-build time: name the step
  throw dnnl_failure(name, err);
}

std::string add_matmul(Plan& plan, const std::string& name, int a, int b, int dst, int residual,
                       std::vector<int64_t> a_shape, std::vector<int64_t> b_shape,
                       std::optional<torch::Tensor> weight, std::optional<torch::Tensor> bias,
                       const std::string& activation, double alpha, double beta,
                       const std::string& residual_mode, int threads) try {
  const size_t ra = a_shape.size(), rb = b_shape.size();
  if (ra < 2 || rb < 2)
    invalid(name, "matmul operands need rank >= 2, got " + str(a_shape) + " @ " + str(b_shape));
  const size_t r = std::max(ra, rb);
  for (auto d : a_shape)
    if (d <= 0) invalid(name, "bad a shape " + str(a_shape));
  for (auto d : b_shape)
    if (d <= 0) invalid(name, "bad b shape " + str(b_shape));
  const int64_t M = a_shape[ra - 2], K = a_shape[ra - 1], N = b_shape[rb - 1];
  if (b_shape[rb - 2] != K)
    invalid(name, "inner dimensions differ: " + str(a_shape) + " @ " + str(b_shape));
  if (a < 0 || dst < 0) invalid(name, "a and dst must be slots");
  if ((b < 0) == !weight)
    invalid(name, weight ? "give either the b slot or a constant weight, not both"
                         : "b is neither a slot nor a constant weight");
  if (weight) {
    check_weight(name, "the weight", *weight);
    if (weight->sizes().vec() != b_shape)
      invalid(name, "the weight has shape " + str(weight->sizes().vec()) + ", b_shape says " +
                        str(b_shape));
  }
  if (bias) {
    check_weight(name, "the bias", *bias);
    if (bias->dim() != 1 || bias->size(0) != N)
      invalid(name, "the bias must be [" + std::to_string(N) + "], got " +
                        str(bias->sizes().vec()));
  }
  // batch dims, right-aligned and padded with 1 to rank r; numpy broadcasting
  Dims ab(r, 1), bb(r, 1), ob(r, 1);
  for (size_t i = 0; i < ra - 2; ++i) ab[r - ra + i] = a_shape[i];
  for (size_t i = 0; i < rb - 2; ++i) bb[r - rb + i] = b_shape[i];
  bool b_flat = true;
  for (size_t i = 0; i + 2 < r; ++i) {
    if (ab[i] != bb[i] && ab[i] != 1 && bb[i] != 1)
      invalid(name, "batch dimensions do not broadcast: " + str(a_shape) + " @ " + str(b_shape));
    ob[i] = std::max(ab[i], bb[i]);
    b_flat = b_flat && bb[i] == 1;
  }

  if (!b_flat && r > DNNL_MAX_NDIMS)
    invalid(name, "a batched matmul of rank " + std::to_string(r) + " exceeds oneDNN's " +
                      std::to_string(DNNL_MAX_NDIMS));
  Dims a_dims, b_dims, d_dims;
  if (b_flat) {  // one [K, N] for every row of a: fold a's batch into M (a is contiguous)
    int64_t rows = M;
    for (size_t i = 0; i < ra - 2; ++i) rows *= a_shape[i];
    a_dims = {rows, K};
    b_dims = {K, N};
    d_dims = {rows, N};
  } else {
    a_dims = ab, b_dims = bb, d_dims = ob;
    a_dims[r - 2] = M, a_dims[r - 1] = K;
    b_dims[r - 2] = K, b_dims[r - 1] = N;
    d_dims[r - 2] = M, d_dims[r - 1] = N;
  }
  const size_t rank = a_dims.size();
  memory::desc a_md = plain(a_dims), b_user = plain(b_dims), dst_md = plain(d_dims);
  memory::desc b_md = weight ? memory::desc(b_dims, f32, memory::format_tag::any) : b_user;
  Dims bias_dims(rank, 1);
  bias_dims[rank - 1] = N;
  memory::desc bias_md = bias ? plain(bias_dims) : memory::desc();

  Epilogue e = epilogue(name, activation, alpha, beta, residual_mode, residual, dst_md);
  double macs = (double)K * N;
  for (size_t i = 0; i + 1 < rank; ++i) macs *= d_dims[i];
  CreationThreads creation(threads, macs);
  dnnl::matmul::primitive_desc pd(cpu_engine(), a_md, b_md, bias_md, dst_md, e.attr);
  auto kern = std::make_shared<Kernel>();
  kern->name = name;
  kern->prim = dnnl::matmul(pd);
  kern->bound.push_back({DNNL_ARG_SRC, a, pd.src_desc()});
  kern->bound.push_back({DNNL_ARG_DST, dst, pd.dst_desc()});
  if (e.residual_arg) kern->bound.push_back({e.residual_arg, residual, dst_md});
  if (weight)
    kern->fixed.emplace_back(DNNL_ARG_WEIGHTS,
                             pack(weight->reshape(b_dims), b_user, pd.weights_desc()));
  else
    kern->bound.push_back({DNNL_ARG_WEIGHTS, b, pd.weights_desc()});
  if (bias) kern->fixed.emplace_back(DNNL_ARG_BIAS, copy_bias(*bias, pd.bias_desc()));
  if (e.tail) kern->tail = make_tail(e.act, dst, e.tail_residual, d_dims);
  std::shared_ptr<Kernel> post;
  std::shared_ptr<const Tail> tail;
  const std::string forced = gemm_forced();
  const bool offer = weight && b_flat &&
                     (macs >= kGemmChoiceMacs || forced == "aten" || forced == "brgemm") &&
                     forced != "onednn" &&
                     aten_epilogue(name, activation, alpha, beta, residual_mode, residual, dst,
                                   dst_md, post, tail, plan);
  if (!offer) return finish(plan, std::move(kern), pd);

  auto alt = std::make_shared<AtenGemm>();
  alt->w = weight->reshape(b_dims).contiguous().clone();
  if (bias) alt->bias = bias->detach().contiguous().clone();
  alt->rows = d_dims[0], alt->K = K, alt->N = N, alt->a = a, alt->dst = dst;
  alt->post = post;
  alt->tail = tail;
  const int nthreads = threads > 0 ? threads : omp_get_max_threads();
  std::tie(alt->mb, alt->nb) = brgemm_tile(alt->rows, N, nthreads);
  // brgemm's epilogue in each tile, where it is GELU (erf) or none with a residual: then the
  // epilogue pass over the whole output (about 100 us for GELU on 128 x 1536) is not needed
  const bool gelu = activation == "gelu";
  if ((gelu || activation == "none") && (gelu || residual_mode != "none")) {
    alt->tile_epilogue = true;
    alt->tile_gelu = activation == "gelu";
    alt->residual = residual_mode == "none" ? -1 : residual;
    alt->residual_pre = residual_mode == "pre";
  }
  // which is fastest, timed once per shape, epilogue and thread count in this process
  using Key = std::tuple<int64_t, int64_t, int64_t, std::string, std::string, bool, int>;
  static std::map<Key, Gemm> verdicts;
  static std::mutex verdicts_mutex;
  Key key{alt->rows, K, N, activation, residual_mode, (bool)bias, nthreads};
  Gemm use;
  {
    std::lock_guard<std::mutex> lock(verdicts_mutex);
    auto it = verdicts.find(key);
    if (forced == "aten") {
      use = Gemm::aten;
    } else if (forced == "brgemm") {
#ifdef RTINFER_HAVE_CPUBLAS_BRGEMM
      use = Gemm::brgemm;
#else
      use = Gemm::aten;  // x86-64 only
#endif
    } else if (it != verdicts.end()) {
      use = it->second;
    } else {
      // scratch operands: a, dst, residual and the scratchpad, at their slots
      auto opt = torch::TensorOptions().dtype(torch::kFloat32);
      auto ta = torch::randn({alt->rows, K}, opt), ty = torch::empty({alt->rows, N}, opt);
      auto tr = torch::randn({alt->rows, N}, opt);
      Ctx ctx;
      ctx.ptr.assign(std::max({a, dst, residual}) + 1, nullptr);
      ctx.ptr[a] = static_cast<char*>(ta.data_ptr());
      ctx.ptr[dst] = static_cast<char*>(ty.data_ptr());
      if (residual >= 0) ctx.ptr[residual] = static_cast<char*>(tr.data_ptr());
      // the scratchpad of either candidate (this matmul's is not in the plan's total yet)
      const int64_t scratch_bytes = std::max<int64_t>(
          {plan.scratch_bytes(), (int64_t)pd.scratchpad_desc().get_size(), 64});
      auto scratch = torch::empty({scratch_bytes / 4 + 16}, opt);
      ctx.scratch = reinterpret_cast<char*>(
          (reinterpret_cast<uintptr_t>(scratch.data_ptr()) + 63) / 64 * 64);
      ctx.threads = nthreads;
      dnnl::stream stream(cpu_engine());
      ctx.stream = &stream;
      memory::desc sp = pd.scratchpad_desc();
      auto onednn_run = [&] {
        dnnl_exec_arg_t args[8];
        int n = 0;
        for (const auto& f : kern->fixed) args[n++] = {f.first, f.second.get()};
        std::vector<memory> mems;
        for (const auto& b : kern->bound) {
          mems.emplace_back(b.md, cpu_engine(), Kernel::where(b, ctx));
          args[n++] = {b.arg, mems.back().get()};
        }
        if (sp.get_size() > 0) {
          mems.emplace_back(sp, cpu_engine(), ctx.scratch);
          args[n++] = {DNNL_ARG_SCRATCHPAD, mems.back().get()};
        }
        kern->execute(ctx, args, n);
      };
      const int old = omp_get_max_threads();
      omp_set_num_threads(nthreads);
      const double t_onednn = time_step(onednn_run);
      alt->how = Gemm::aten;
      const double t_aten = time_step([&] { alt->run(ctx); });
      // torch's brgemm only where oneDNN 3.2 has no brgemm matmul of its own (below AVX-512):
      // next to 3.2's brgemm it won this timing with warm weights and lost in MiniLM (cold
      // weights), 7.06 against 6.82 ms on a Zen 5
      double t_brgemm = INFINITY;
      if (std::string(pd.impl_info_str()).find("brg") == std::string::npos) {
        alt->how = Gemm::brgemm;
        try {
          alt->pack_panels();
          t_brgemm = time_step([&] { alt->run(ctx); });
        } catch (const std::exception&) {
          // torch's brgemm refuses this CPU or shape: not a candidate
        }
      }
      omp_set_num_threads(old);
      // another candidate only when 5% faster than oneDNN (one fused primitive)
      use = Gemm::onednn;
      double best = 0.95 * t_onednn;
      if (t_aten < best) use = Gemm::aten, best = t_aten;
      if (t_brgemm < best) use = Gemm::brgemm;
      verdicts[key] = use;
    }
  }
  if (use == Gemm::onednn) return finish(plan, std::move(kern), pd);
  alt->how = use;
  if (use == Gemm::brgemm) {
    alt->pack_panels();
    alt->w = torch::Tensor();  // the panels hold it
  } else {
    alt->panels = torch::Tensor();
  }
  if (use != Gemm::brgemm) alt->tile_epilogue = false;
  plan.need_scratch((int64_t)pd.scratchpad_desc().get_size());
  std::shared_ptr<const AtenGemm> ac = std::move(alt);
  plan.add_step({name + " (" + gemm_label(use) + ": faster here)",
                 [ac](Ctx& ctx) { ac->run(ctx); }});
  return std::string(use == Gemm::aten ? "aten:gemm" : "torch:brgemm") + " (faster than oneDNN " +
         pd.impl_info_str() + " here)";
} catch (const dnnl::error& err) {  // at plan-build time: name the step
  throw dnnl_failure(name, err);
}

}  // namespace rtinfer
