// 2-d max/avg pooling (NCHW or NHWC) and reductions over the middle axis of
// [outer, extent, inner] (declared in cpu_kernels.h).
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

// -- pooling ----------------------------------------------------------------------------------

struct PoolParams {
  int64_t N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW;
  bool max;
  // per output row/column: the first and one-past-last valid kernel tap, and (avg) the tap
  // counts that divide: clipped to the padded input, or to the input (count_include_pad off)
  std::vector<int64_t> kh0, kh1, kw0, kw1;
  std::vector<float> inv_div;  // [OH * OW]: 1 / divisor (0 for a window with no input)
};

// taps k in [0, K) with 0 <= o * S - P + k * Dl < size
void valid_taps(int64_t o, int64_t S, int64_t P, int64_t Dl, int64_t K, int64_t size,
                int64_t& k0, int64_t& k1) {
  const int64_t start = o * S - P;
  k0 = 0;
  while (k0 < K && start + k0 * Dl < 0) ++k0;
  k1 = K;
  while (k1 > k0 && start + (k1 - 1) * Dl >= size) --k1;
}

// taps with -P_begin <= position < size + P_end (the padded input)
int64_t padded_taps(int64_t o, int64_t S, int64_t P, int64_t Pe, int64_t Dl, int64_t K,
                    int64_t size) {
  const int64_t start = o * S - P;
  int64_t n = 0;
  for (int64_t k = 0; k < K; ++k) n += start + k * Dl < size + Pe;
  return n;
}

// One output pixel's channels [c0, c0 + B): the window's taps accumulate in a local block the
// compiler keeps in registers (B / 16 zmm, B / 8 ymm), stored once. Before, every tap read and
// wrote the output row: ResNet-18's 3x3/2 pool over 32 pruned channels took 0.06-0.08 ms against
// ONNX Runtime's 0.04.
template <int B, bool MAX>
inline void pool_block(const PoolParams& P, const float* x, float* yr, int64_t n, int64_t oh,
                       int64_t ow, int64_t c0) {
  const int64_t C = P.C;
  float acc[B];
#pragma omp simd
  for (int i = 0; i < B; ++i) acc[i] = MAX ? -kInf : 0.0f;
  for (int64_t kh = P.kh0[oh]; kh < P.kh1[oh]; ++kh) {
    const int64_t ih = oh * P.SH - P.PH + kh * P.DH;
    for (int64_t kw = P.kw0[ow]; kw < P.kw1[ow]; ++kw) {
      const int64_t iw = ow * P.SW - P.PW + kw * P.DW;
      const float* xr = x + ((n * P.H + ih) * P.W + iw) * C + c0;
#pragma omp simd
      for (int i = 0; i < B; ++i) acc[i] = MAX ? pool_pick(acc[i], xr[i]) : acc[i] + xr[i];
    }
  }
#pragma omp simd
  for (int i = 0; i < B; ++i) yr[c0 + i] = acc[i];
}

template <bool MAX>
void pool_nhwc_rows(const PoolParams& P, const float* x, float* y, int64_t t0, int64_t t1) {
  const int64_t C = P.C;
  for (int64_t t = t0; t < t1; ++t) {  // t = n * OH + oh
    const int64_t n = t / P.OH, oh = t % P.OH;
    for (int64_t ow = 0; ow < P.OW; ++ow) {
      float* yr = y + ((n * P.OH + oh) * P.OW + ow) * C;
      int64_t c = 0;
      for (; c + 64 <= C; c += 64) pool_block<64, MAX>(P, x, yr, n, oh, ow, c);
      for (; c + 16 <= C; c += 16) pool_block<16, MAX>(P, x, yr, n, oh, ow, c);
      for (; c + 4 <= C; c += 4) pool_block<4, MAX>(P, x, yr, n, oh, ow, c);
      for (; c < C; ++c) pool_block<1, MAX>(P, x, yr, n, oh, ow, c);
      if (!MAX) scale_row(yr, C, P.inv_div[oh * P.OW + ow]);
    }
  }
}

void pool_nhwc(const PoolParams& P, const float* x, float* y, int64_t t0, int64_t t1) {
  if (P.max) pool_nhwc_rows<true>(P, x, y, t0, t1);
  else pool_nhwc_rows<false>(P, x, y, t0, t1);
}

void pool_nchw(const PoolParams& P, const float* x, float* y, int64_t t0, int64_t t1) {
  float* acc = tls_floats(2, P.OW);
  for (int64_t t = t0; t < t1; ++t) {  // t = (n * C + c) * OH + oh
    const int64_t plane = t / P.OH, oh = t % P.OH;
    const float* xp = x + plane * P.H * P.W;
    const float init = P.max ? -kInf : 0.0f;
    for (int64_t ow = 0; ow < P.OW; ++ow) acc[ow] = init;
    for (int64_t kh = P.kh0[oh]; kh < P.kh1[oh]; ++kh) {
      const float* xr = xp + (oh * P.SH - P.PH + kh * P.DH) * P.W;
      for (int64_t kw = 0; kw < P.KW; ++kw) {
        const int64_t off = kw * P.DW - P.PW;  // iw = ow * SW + off
        int64_t lo = off >= 0 ? 0 : (-off + P.SW - 1) / P.SW;
        int64_t hi = off > P.W - 1 ? 0 : std::min<int64_t>(P.OW, (P.W - 1 - off) / P.SW + 1);
        if (P.max) {
#pragma omp simd
          for (int64_t ow = lo; ow < hi; ++ow) acc[ow] = pool_pick(acc[ow], xr[ow * P.SW + off]);
        } else {
#pragma omp simd
          for (int64_t ow = lo; ow < hi; ++ow) acc[ow] += xr[ow * P.SW + off];
        }
      }
    }
    float* yr = y + t * P.OW;
    if (P.max) {
      for (int64_t ow = 0; ow < P.OW; ++ow) yr[ow] = acc[ow];
    } else {
      const float* inv = P.inv_div.data() + oh * P.OW;
#pragma omp simd
      for (int64_t ow = 0; ow < P.OW; ++ow) yr[ow] = acc[ow] * inv[ow];
    }
  }
}

// -- reductions -------------------------------------------------------------------------------

enum ReduceKind { kSum, kMean, kMax, kMin };

inline float pick_max(float m, float v) { return (v > m || v != v) ? v : m; }
inline float pick_min(float m, float v) { return (v < m || v != v) ? v : m; }

// reduce a contiguous run of n floats: sums in float over blocks of 1024 (vector lanes), the
// blocks in double; max/min with a separate NaN flag so the lanes stay plain max/min
float reduce_run(const float* x, int64_t n, ReduceKind kind) {
  if (kind == kSum || kind == kMean) {
    double total = 0.0;
    for (int64_t b = 0; b < n; b += 1024) {
      const int64_t e = std::min(n, b + 1024);
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = b; j < e; ++j) s += x[j];
      total += s;
    }
    return kind == kMean ? (float)(total / (double)n) : (float)total;
  }
  int nan = 0;
  float m;
  if (kind == kMax) {
    m = -kInf;
#pragma omp simd reduction(max : m) reduction(| : nan)
    for (int64_t j = 0; j < n; ++j) {
      m = x[j] > m ? x[j] : m;
      nan |= x[j] != x[j];
    }
  } else {
    m = kInf;
#pragma omp simd reduction(min : m) reduction(| : nan)
    for (int64_t j = 0; j < n; ++j) {
      m = x[j] < m ? x[j] : m;
      nan |= x[j] != x[j];
    }
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : m;
}

}  // namespace

void add_pool2d(Plan& p, const std::string& name, int x, int y, int64_t N, int64_t C, int64_t H,
                int64_t W, int64_t OH, int64_t OW, std::vector<int64_t> kernel,
                std::vector<int64_t> stride, std::vector<int64_t> pad_begin,
                std::vector<int64_t> dilation, const std::string& kind, bool count_include_pad,
                bool nhwc, std::optional<std::vector<int64_t>> pad_end) {
  if (kind != "max" && kind != "avg")
    throw std::invalid_argument(name + ": pool kind must be max or avg, got " + kind);
  kernel = need(kernel, 2, "kernel");
  stride = need(stride, 2, "stride");
  pad_begin = need(pad_begin, 2, "pad_begin");
  dilation = need(dilation, 2, "dilation");
  std::vector<int64_t> pe = pad_end ? need(*pad_end, 2, "pad_end") : pad_begin;
  auto P = std::make_shared<PoolParams>();
  *P = PoolParams{N, C, H, W, OH, OW, kernel[0], kernel[1], stride[0], stride[1],
                  pad_begin[0], pad_begin[1], dilation[0], dilation[1], kind == "max"};
  P->kh0.resize(OH), P->kh1.resize(OH), P->kw0.resize(OW), P->kw1.resize(OW);
  for (int64_t o = 0; o < OH; ++o)
    valid_taps(o, P->SH, P->PH, P->DH, P->KH, H, P->kh0[o], P->kh1[o]);
  for (int64_t o = 0; o < OW; ++o)
    valid_taps(o, P->SW, P->PW, P->DW, P->KW, W, P->kw0[o], P->kw1[o]);
  P->inv_div.assign(OH * OW, 0.0f);
  for (int64_t oh = 0; oh < OH; ++oh)
    for (int64_t ow = 0; ow < OW; ++ow) {
      const int64_t valid = (P->kh1[oh] - P->kh0[oh]) * (P->kw1[ow] - P->kw0[ow]);
      if (valid <= 0) continue;  // a window on padding only: 0, as torch
      const int64_t div =
          count_include_pad
              ? padded_taps(oh, P->SH, P->PH, pe[0], P->DH, P->KH, H) *
                    padded_taps(ow, P->SW, P->PW, pe[1], P->DW, P->KW, W)
              : valid;
      P->inv_div[oh * OW + ow] = 1.0f / (float)div;
    }
  p.add_step({name, [P, x, y, nhwc](Ctx& ctx) {
    const float* xp = ctx.at<float>(x);
    float* yp = ctx.at<float>(y);
    const int64_t work = P->N * P->C * P->OH * P->OW * P->KH * P->KW;
    if (nhwc) {
      parallel_for(threads_for(ctx, work), P->N * P->OH,
                   [&](int64_t b, int64_t e) { pool_nhwc(*P, xp, yp, b, e); });
    } else {
      parallel_for(threads_for(ctx, work), P->N * P->C * P->OH,
                   [&](int64_t b, int64_t e) { pool_nchw(*P, xp, yp, b, e); });
    }
  }});
}

void add_reduce(Plan& p, const std::string& name, int x, int y, int64_t outer, int64_t extent,
                int64_t inner, const std::string& kind) {
  ReduceKind rk;
  if (kind == "sum") rk = kSum;
  else if (kind == "mean") rk = kMean;
  else if (kind == "max") rk = kMax;
  else if (kind == "min") rk = kMin;
  else
    throw std::invalid_argument(name + ": reduce kind must be sum, mean, max or min, got " + kind);
  p.add_step({name, [=](Ctx& ctx) {
    const float* xp = ctx.at<float>(x);
    float* yp = ctx.at<float>(y);
    const int nt = threads_for(ctx, outer * extent * inner);
    if (inner == 1) {
      parallel_for(nt, outer, [&](int64_t b, int64_t e) {
        for (int64_t o = b; o < e; ++o) yp[o] = reduce_run(xp + o * extent, extent, rk);
      });
      return;
    }
    // columns in chunks of 256 (so a few outer rows still split over the threads)
    constexpr int64_t kChunk = 256;
    const int64_t nchunk = (inner + kChunk - 1) / kChunk;
    parallel_for(nt, outer * nchunk, [&](int64_t b, int64_t e) {
      float* accf = tls_floats(3, 2 * kChunk);
      double* accd = reinterpret_cast<double*>(accf);
      for (int64_t t = b; t < e; ++t) {
        const int64_t o = t / nchunk, c0 = (t % nchunk) * kChunk;
        const int64_t cn = std::min(kChunk, inner - c0);
        const float* xo = xp + o * extent * inner + c0;
        float* yo = yp + o * inner + c0;
        if (rk == kSum || rk == kMean) {
          for (int64_t c = 0; c < cn; ++c) accd[c] = 0.0;
          for (int64_t r = 0; r < extent; ++r) {
            const float* xr = xo + r * inner;
#pragma omp simd
            for (int64_t c = 0; c < cn; ++c) accd[c] += (double)xr[c];
          }
          const double div = rk == kMean ? (double)extent : 1.0;
          for (int64_t c = 0; c < cn; ++c) yo[c] = (float)(accd[c] / div);
        } else {
          const float init = rk == kMax ? -kInf : kInf;
          for (int64_t c = 0; c < cn; ++c) yo[c] = init;
          for (int64_t r = 0; r < extent; ++r) {
            const float* xr = xo + r * inner;
            if (rk == kMax) {
#pragma omp simd
              for (int64_t c = 0; c < cn; ++c) yo[c] = pick_max(yo[c], xr[c]);
            } else {
#pragma omp simd
              for (int64_t c = 0; c < cn; ++c) yo[c] = pick_min(yo[c], xr[c]);
            }
          }
        }
      }
    });
  }});
}

}  // namespace rtinfer
