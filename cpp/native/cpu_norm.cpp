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

void norm_rows(const NormParams& P, const float* x, float* y, int64_t r0, int64_t r1) {
  const int64_t n = P.cols;
  const float* g = P.gamma.empty() ? nullptr : P.gamma.data();
  const float* b = P.beta.empty() ? nullptr : P.beta.data();
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    float mean = 0.0f;
    if (!P.rms) {
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < n; ++c) s += xr[c];
      mean = s / (float)n;
    }
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int64_t c = 0; c < n; ++c) {
      float d = xr[c] - mean;
      v += d * d;
    }
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
