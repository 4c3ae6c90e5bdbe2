// LayerNorm / RMSNorm and softmax over the rows of [rows, cols] (declared in cpu_kernels.h).
#include "cpu_kernels.h"
#include "cpu_common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace rtinfer {

namespace {

// -- layer norm / RMS norm --------------------------------------------------------------------

struct NormParams {
  int64_t rows, cols;
  std::vector<float> gamma, beta;
  float eps;
  bool rms;
};

// the widest vector of the level, for the row sums below
#if defined(RTINFER_AVX512)
constexpr int kNW = 16;
#elif defined(__AVX__)
constexpr int kNW = 8;
#else
constexpr int kNW = 4;
#endif
typedef float nv __attribute__((vector_size(kNW * 4)));
typedef float nv_u __attribute__((vector_size(kNW * 4), aligned(4), may_alias));

// sum over [0, n) of x[c] - m (P = 1) or (x[c] - m)^2 (P = 2) in four vector accumulators: one
// is bound by its adds' latency (a 384-wide row: 2.3x slower at AVX2 on a Zen 5)
template <int P>
float row_moment(const float* x, int64_t n, float m) {
  nv a[4] = {};
  const nv mv = nv{} + m;
  int64_t c = 0;
  for (; c + 4 * kNW <= n; c += 4 * kNW)
    for (int k = 0; k < 4; ++k) {
      const nv d = *reinterpret_cast<const nv_u*>(x + c + k * kNW) - mv;
      a[k] += P == 1 ? d : d * d;
    }
  for (; c + kNW <= n; c += kNW) {
    const nv d = *reinterpret_cast<const nv_u*>(x + c) - mv;
    a[0] += P == 1 ? d : d * d;
  }
  const nv t = (a[0] + a[1]) + (a[2] + a[3]);
  float s = 0.0f;
  for (int i = 0; i < kNW; ++i) s += t[i];
  for (; c < n; ++c) {
    const float d = x[c] - m;
    s += P == 1 ? d : d * d;
  }
  return s;
}

void norm_rows(const NormParams& P, const float* x, float* y, int64_t r0, int64_t r1) {
  const int64_t n = P.cols;
  const float* g = P.gamma.empty() ? nullptr : P.gamma.data();
  const float* b = P.beta.empty() ? nullptr : P.beta.data();
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    const float mean = P.rms ? 0.0f : row_moment<1>(xr, n, 0.0f) / (float)n;
    const float v = row_moment<2>(xr, n, mean);
    const float rstd = 1.0f / std::sqrt(v / (float)n + P.eps);
    if (g && b) {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) yr[c] = (xr[c] - mean) * rstd * g[c] + b[c];
    } else if (g) {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) yr[c] = (xr[c] - mean) * rstd * g[c];
    } else if (b) {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) yr[c] = (xr[c] - mean) * rstd + b[c];
    } else {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) yr[c] = (xr[c] - mean) * rstd;
    }
  }
}

}  // namespace

void add_layer_norm(Plan& p, const std::string& name, int x, int y, int64_t rows, int64_t cols,
                    std::optional<torch::Tensor> gamma, std::optional<torch::Tensor> beta,
                    double eps, bool rms) {
  auto P = std::make_shared<NormParams>();
  P->rows = rows;
  P->cols = cols;
  P->gamma = float_vector(gamma, cols, name + ": gamma");
  P->beta = float_vector(beta, cols, name + ": beta");
  P->eps = (float)eps;
  P->rms = rms;
  p.add_step({name, [P, x, y](Ctx& ctx) {
    const float* xp = ctx.at<float>(x);
    float* yp = ctx.at<float>(y);
    parallel_for(threads_for(ctx, P->rows * P->cols), P->rows,
                 [&](int64_t b, int64_t e) { norm_rows(*P, xp, yp, b, e); });
  }});
}

void add_softmax(Plan& p, const std::string& name, int x, int y, int64_t rows, int64_t cols,
                 bool log) {
  p.add_step({name, [=](Ctx& ctx) {
    const float* xp = ctx.at<float>(x);
    float* yp = ctx.at<float>(y);
    parallel_for(threads_for(ctx, rows * cols, 8192), rows, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const float* xr = xp + r * cols;
        float* yr = yp + r * cols;
        const float m = row_max(xr, cols);
        const float s = exp_sub_sum(xr, yr, cols, m);
        if (log) {
          const float c = m + std::log(s);
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) yr[j] = xr[j] - c;
        } else {
          scale_row(yr, cols, 1.0f / s);
        }
      }
    });
  }});
}

}  // namespace rtinfer
