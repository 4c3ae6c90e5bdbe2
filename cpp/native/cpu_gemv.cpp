// Small-batch linear (GEMV) with a constant weight: y[M, N] = epilogue(x[M, K] @ W[K, N] + b)
// for M of a few rows (cpu_gemv.h).
//
// At such M the step is memory-bound: every weight element is read once per call and used for
// M multiply-adds. So the weight is packed once, when the plan is built, into column blocks
// [N / B][K][B] (the last block zero-padded; B = 64 columns on AVX-512, 16 on AVX2 and below):
// a block is one contiguous stream, and the threads split the blocks. The microkernel keeps
// rows x (B / lanes) accumulators in registers; for each k it loads the block's B weights once,
// broadcasts x[m][k] for each row and multiply-adds. At one or two rows that is too few
// independent FMA chains to cover the FMA latency (4 cycles, 2 ports: 8 chains), so k is
// unrolled into separate partial sums then. Rows past kMaxRows run as further row groups over
// the same block (the block is then read from L2). NaN and Inf propagate as in any matmul
// (padded columns may turn NaN but are never stored).
#include "cpu_gemv.h"
#include "cpu_common.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace rtinfer {

namespace {

#ifdef RTINFER_AVX512
using Vec = __m512;
constexpr int kLanes = 16;
constexpr int kVecs = 4;  // 64 columns: 4 rows x 4 = 16 of the 32 zmm registers
constexpr const char* kImpl = "gemv:avx512";
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload_a(const float* p) { return _mm512_load_ps(p); }
inline Vec vbcast(float v) { return _mm512_set1_ps(v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline void vstore_a(float* p, Vec v) { _mm512_store_ps(p, v); }
// k-rows the weight stream is prefetched ahead (into L2): 64 rows = 16 KB. Measured (rough, one
// thread, weights evicted from L2 before each call): 1 x 1280 x 1000 about 630 -> 570 us,
// 1 x 512 x 1000 280 -> 245 us; no change with the weights in L2 or L3.
constexpr int64_t kPrefetchRows = 64;
inline void prefetch_row(const float* p) {
  for (int v = 0; v < kVecs; ++v) _mm_prefetch((const char*)(p + v * kLanes), _MM_HINT_T1);
}
#else
// GCC vector extensions: ymm on AVX2 (x86-64-v3 fuses a * b + c into vfmadd), xmm below
using Vec = vf;
constexpr int kLanes = kW;
// AVX2: 16 columns, so 4 rows x 2 accumulators (+ 2 weights, a broadcast) fit the 16 ymm
constexpr int kVecs = kW == 8 ? 2 : 4;
#if defined(__AVX2__)
constexpr const char* kImpl = "gemv:avx2";
#else
constexpr const char* kImpl = "gemv:generic";
#endif
inline Vec vzero() { return vset(0.0f); }
inline Vec vload_a(const float* p) { return vload(p); }
inline Vec vbcast(float v) { return vset(v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return a * b + c; }
inline Vec vadd(Vec a, Vec b) { return a + b; }
inline void vstore_a(float* p, Vec v) { vstore(p, v); }
constexpr int64_t kPrefetchRows = 0;  // not measured below AVX-512: the hardware's alone
inline void prefetch_row(const float*) {}
#endif

constexpr int kBlock = kLanes * kVecs;  // columns of one packed block
constexpr int kMaxRows = 4;             // rows of one microkernel call

// k-unroll for `rows` rows: independent partial sums until about 8 FMA chains are in flight
constexpr int unroll_for(int rows) { return std::max(1, 8 / (rows * kVecs)); }

// out[m][0, kBlock) = sum over k of x[m * ldx + k] * w[k][0, kBlock), m < MR
template <int MR>
void block_kernel(const float* x, int64_t ldx, const float* w, int64_t K, float* out) {
  constexpr int U = unroll_for(MR);
  Vec acc[U][MR][kVecs];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < kVecs; ++v) acc[u][m][v] = vzero();
  int64_t k = 0;
  for (; k + U <= K; k += U) {
    for (int u = 0; u < U; ++u) {
      const float* wk = w + (k + u) * kBlock;
      if constexpr (kPrefetchRows > 0) prefetch_row(wk + kPrefetchRows * kBlock);
      Vec wv[kVecs];
      for (int v = 0; v < kVecs; ++v) wv[v] = vload_a(wk + v * kLanes);
      for (int m = 0; m < MR; ++m) {
        const Vec xb = vbcast(x[m * ldx + k + u]);
        for (int v = 0; v < kVecs; ++v) acc[u][m][v] = vfma(xb, wv[v], acc[u][m][v]);
      }
    }
  }
  for (; k < K; ++k) {
    const float* wk = w + k * kBlock;
    for (int m = 0; m < MR; ++m) {
      const Vec xb = vbcast(x[m * ldx + k]);
      for (int v = 0; v < kVecs; ++v) acc[0][m][v] = vfma(xb, vload_a(wk + v * kLanes),
                                                          acc[0][m][v]);
    }
  }
  for (int u = 1; u < U; ++u)
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < kVecs; ++v) acc[0][m][v] = vadd(acc[0][m][v], acc[u][m][v]);
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < kVecs; ++v) vstore_a(out + m * kBlock + v * kLanes, acc[0][m][v]);
}

enum class Act { kNone, kClamp, kLeaky, kGelu, kGeluTanh };
enum class Res { kNone, kPre, kPost };

struct Epi {
  Act act = Act::kNone;
  float lo = -kInf, hi = kInf, slope = 0.0f;
  Res res = Res::kNone;
};

// The activation as torch computes it; the clamp and leaky forms are compares, so NaN stays
// NaN (as relu / clamp / leaky_relu do in eager).
template <Act A>
inline float activate(float v, const Epi& e) {
  if constexpr (A == Act::kClamp) {
    v = v < e.lo ? e.lo : v;
    return v > e.hi ? e.hi : v;
  } else if constexpr (A == Act::kLeaky) {
    return v > 0.0f ? v : v * e.slope;
  } else if constexpr (A == Act::kGelu) {
    return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
  } else if constexpr (A == Act::kGeluTanh) {
    const float c = 0.79788456080286536f;  // sqrt(2 / pi)
    return 0.5f * v * (1.0f + std::tanh(c * (v + 0.044715f * v * v * v)));
  } else {
    return v;
  }
}

// y[j] = act(acc[j] + b[j] (+ r[j])) (+ r[j]) for j < n, as the residual mode says
template <Act A, Res R>
void finish_row(const float* acc, const float* b, const float* r, float* y, int64_t n,
                const Epi& e) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    float v = acc[j] + b[j];
    if constexpr (R == Res::kPre) v += r[j];
    v = activate<A>(v, e);
    if constexpr (R == Res::kPost) v += r[j];
    y[j] = v;
  }
}

template <Act A>
void finish_row_res(const float* acc, const float* b, const float* r, float* y, int64_t n,
                    const Epi& e) {
  switch (e.res) {
    case Res::kPre: return finish_row<A, Res::kPre>(acc, b, r, y, n, e);
    case Res::kPost: return finish_row<A, Res::kPost>(acc, b, r, y, n, e);
    default: return finish_row<A, Res::kNone>(acc, b, r, y, n, e);
  }
}

void finish(const float* acc, const float* b, const float* r, float* y, int64_t n,
            const Epi& e) {
  switch (e.act) {
    case Act::kClamp: return finish_row_res<Act::kClamp>(acc, b, r, y, n, e);
    case Act::kLeaky: return finish_row_res<Act::kLeaky>(acc, b, r, y, n, e);
    case Act::kGelu: return finish_row_res<Act::kGelu>(acc, b, r, y, n, e);
    case Act::kGeluTanh: return finish_row_res<Act::kGeluTanh>(acc, b, r, y, n, e);
    default: return finish_row_res<Act::kNone>(acc, b, r, y, n, e);
  }
}

// Weight floats a thread streams at least (512 KB, about 10 us from L2 at ~50 GB/s a core):
// below it the fork/join (a few microseconds) would eat what a second thread saves. An
// estimate, not tuned: the shared machine's 2-thread timings were too noisy to place it.
constexpr int64_t kGrain = 1 << 17;

struct Gemv {
  torch::Tensor packed;     // [blocks, K, kBlock], 64-byte aligned (torch's allocator)
  std::vector<float> bias;  // [blocks * kBlock], zeros past N (and when there is no bias)
  int64_t M = 0, K = 0, N = 0, blocks = 0;
  int x = -1, y = -1, residual = -1;
  Epi epi;

  void run(Ctx& ctx) const {
    const float* xp = ctx.at<float>(x);
    float* yp = ctx.at<float>(y);
    const float* rp = residual >= 0 ? ctx.at<float>(residual) : nullptr;
    const float* wp = packed.data_ptr<float>();
    const int nt = threads_for(ctx, blocks * K * kBlock, kGrain);
    parallel_for(nt, blocks, [&](int64_t b0, int64_t b1) {
      alignas(64) float acc[kMaxRows * kBlock];
      for (int64_t blk = b0; blk < b1; ++blk) {
        const float* w = wp + blk * K * kBlock;
        const int64_t n0 = blk * kBlock, n = std::min<int64_t>(kBlock, N - n0);
        for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
          const int mr = (int)std::min<int64_t>(kMaxRows, M - m0);
          const float* xr = xp + m0 * K;
          switch (mr) {
            case 1: block_kernel<1>(xr, K, w, K, acc); break;
            case 2: block_kernel<2>(xr, K, w, K, acc); break;
            case 3: block_kernel<3>(xr, K, w, K, acc); break;
            default: block_kernel<4>(xr, K, w, K, acc); break;
          }
          for (int i = 0; i < mr; ++i) {
            const int64_t row = (m0 + i) * N + n0;
            finish(acc + i * kBlock, bias.data() + n0, rp ? rp + row : nullptr, yp + row, n,
                   epi);
          }
        }
      }
    });
  }
};

[[noreturn]] void bad(const std::string& name, const std::string& what) {
  throw std::invalid_argument(name + ": " + what);
}

std::string dims(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

Epi make_epilogue(const std::string& name, const std::string& act, float alpha, float beta,
                  const std::string& mode, int residual) {
  Epi e;
  if (mode == "pre") e.res = Res::kPre;
  else if (mode == "post") e.res = Res::kPost;
  else if (mode != "none") bad(name, "unknown residual mode '" + mode + "' (none, pre, post)");
  if (e.res != Res::kNone && residual < 0)
    bad(name, "residual mode '" + mode + "' needs a residual slot");
  if (e.res == Res::kNone && residual >= 0)
    bad(name, "a residual slot was given with residual mode 'none'");
  if (act == "none") {
    e.act = Act::kNone;
  } else if (act == "relu") {
    e.act = Act::kClamp, e.lo = 0.0f;
  } else if (act == "leaky_relu") {
    e.act = Act::kLeaky, e.slope = alpha;
  } else if (act == "clip") {
    if (!(alpha <= beta))
      bad(name, "clip needs alpha (min) <= beta (max), got " + std::to_string(alpha) + " > " +
                    std::to_string(beta));
    e.act = Act::kClamp, e.lo = alpha, e.hi = beta;
  } else if (act == "gelu") {
    e.act = Act::kGelu;
  } else if (act == "gelu_tanh") {
    e.act = Act::kGeluTanh;
  } else {
    bad(name, "the gemv kernel has no activation '" + act +
                  "' (none, relu, leaky_relu, clip, gelu, gelu_tanh)");
  }
  return e;
}

}  // namespace

std::string add_gemv(Plan& p, const std::string& name, int x, int y, int residual, int64_t rows,
                     int64_t K, int64_t N, const torch::Tensor& weight,
                     std::optional<torch::Tensor> bias, const std::string& activation,
                     double alpha, double beta, const std::string& residual_mode) {
  if (rows <= 0 || K <= 0 || N <= 0)
    bad(name, "gemv needs rows, K and N > 0, got rows " + std::to_string(rows) + ", K " +
                  std::to_string(K) + ", N " + std::to_string(N));
  if (x < 0 || y < 0) bad(name, "x and y must be slots");
  if (weight.scalar_type() != torch::kFloat32 || !weight.device().is_cpu())
    bad(name, "the weight must be a float32 CPU tensor");
  if (weight.dim() != 2 || weight.size(0) != K || weight.size(1) != N)
    bad(name, "the weight must be [K, N] = [" + std::to_string(K) + ", " + std::to_string(N) +
                  "], got " + dims(weight));
  if (bias && bias->defined() &&
      (bias->scalar_type() != torch::kFloat32 || bias->dim() != 1 || bias->size(0) != N))
    bad(name, "the bias must be float32 [" + std::to_string(N) + "], got " + dims(*bias));
  auto g = std::make_shared<Gemv>();
  g->epi = make_epilogue(name, activation, (float)alpha, (float)beta, residual_mode, residual);
  g->M = rows, g->K = K, g->N = N, g->x = x, g->y = y, g->residual = residual;
  g->blocks = (N + kBlock - 1) / kBlock;
  const int64_t padded = g->blocks * kBlock;
  // [K, N] -> [blocks, K, kBlock]: zero-pad the columns, then move the block index outermost
  auto w = weight.detach().to(torch::kCPU).contiguous();
  auto wp = torch::zeros({K, padded}, w.options());
  wp.narrow(1, 0, N).copy_(w);
  g->packed = wp.view({K, g->blocks, kBlock}).permute({1, 0, 2}).contiguous();
  g->bias.assign(padded, 0.0f);
  if (bias && bias->defined()) {
    auto bc = bias->detach().contiguous();
    std::copy(bc.data_ptr<float>(), bc.data_ptr<float>() + N, g->bias.begin());
  }
  std::shared_ptr<const Gemv> run = std::move(g);
  p.add_step({name, [run](Ctx& ctx) { run->run(ctx); }});
  return kImpl;
}

}  // namespace rtinfer
