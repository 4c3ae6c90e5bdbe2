// rtinfer's own CPU kernels (declared in cpu_kernels.h): layer/RMS norm, softmax, attention,
// pooling, reductions, embedding, strided copies and the driver of generated elementwise code.
//
// AVX-512 paths (intrinsics, or `#pragma omp simd` loops the compiler widens) where the target
// has it; portable loops otherwise. Shapes are static: everything that depends only on them is
// computed when the step is added, so a call does the arithmetic and nothing else.
#include "cpu_kernels.h"
#include "rt_exp.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>

#if defined(__AVX512F__) && !defined(RTINFER_NO_AVX512)
#define RTINFER_AVX512 1
#include <immintrin.h>
#endif

namespace rtinfer {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// -- threading and per-thread buffers ---------------------------------------------------------

// Threads worth using for `work` elements: below `grain` elements a thread, the fork/join
// (a few microseconds) costs more than the work it splits.
int threads_for(const Ctx& ctx, int64_t work, int64_t grain = 16384) {
  int64_t t = std::max(ctx.threads, 1);
  return (int)std::max<int64_t>(1, std::min(t, work / grain));
}

// f(begin, end) over [0, n) split evenly over `nt` threads (inline when nt is 1).
template <typename F>
void parallel_for(int nt, int64_t n, const F& f) {
  if (n <= 0) return;
  if (nt <= 1 || n == 1) {
    f(int64_t(0), n);
    return;
  }
  nt = (int)std::min<int64_t>(nt, n);
#pragma omp parallel num_threads(nt)
  {
    int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    int64_t b = n * t / T, e = n * (t + 1) / T;
    if (b < e) f(b, e);
  }
}

// A 64-byte aligned buffer of one thread that grows and is kept for the thread's later calls.
struct GrowBuf {
  void* p = nullptr;
  size_t bytes = 0;
  ~GrowBuf() { std::free(p); }
  void* get(size_t want) {
    if (want > bytes) {
      std::free(p);
      bytes = (want + 4095) / 4096 * 4096;
      p = std::aligned_alloc(64, bytes);
      if (p == nullptr) {
        bytes = 0;
        throw std::bad_alloc();
      }
    }
    return p;
  }
};

// Per-thread buffer `which` (0..3) of at least n floats.
float* tls_floats(int which, size_t n) {
  thread_local GrowBuf bufs[4];
  return static_cast<float*>(bufs[which].get(std::max<size_t>(n, 16) * sizeof(float)));
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

std::vector<float> float_vector(const std::optional<torch::Tensor>& t, int64_t n,
                                const std::string& what) {
  if (!t.has_value() || !t->defined()) return {};
  auto c = t->to(torch::kFloat).contiguous();
  if (c.numel() != n)
    throw std::invalid_argument(what + " has " + std::to_string(c.numel()) +
                                " elements, expected " + std::to_string(n));
  const float* d = c.data_ptr<float>();
  return std::vector<float>(d, d + n);
}

// -- exp: rt::exp (rt_exp.h) for scalars; the same polynomial 16 lanes at a time ----------------

constexpr float kExpLo = -87.0f, kExpHi = 88.72283935546875f;

#ifdef RTINFER_AVX512
inline __m512 exp512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(kExpLo), hi = _mm512_set1_ps(kExpHi);
  __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
  __m512 fn = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  __m512i n = _mm512_add_epi32(_mm512_cvtps_epi32(fn), _mm512_set1_epi32(126));
  __m512 y = _mm512_mul_ps(_mm512_add_ps(p, p), _mm512_castsi512_ps(_mm512_slli_epi32(n, 23)));
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), y, _mm512_setzero_ps());
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), y, _mm512_set1_ps(kInf));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
}

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1); }
#endif

// max of x[0, n) (-inf for n == 0)
float row_max(const float* x, int64_t n) {
#ifdef RTINFER_AVX512
  __m512 m = _mm512_set1_ps(-kInf);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + j));
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, x + j));
  }
  return _mm512_reduce_max_ps(m);
#else
  float m = -kInf;
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
#endif
}

// y[j] = exp(x[j] - m) over [0, n); returns the sum (y may be x)
float exp_sub_sum(const float* x, float* y, int64_t n, float m) {
#ifdef RTINFER_AVX512
  const __m512 mv = _mm512_set1_ps(m);
  __m512 s = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), mv));
    _mm512_storeu_ps(y + j, e);
    s = _mm512_add_ps(s, e);
  }
  if (j < n) {
    __mmask16 k = tail_mask(n - j);
    __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), mv));
    _mm512_mask_storeu_ps(y + j, k, e);
    s = _mm512_add_ps(s, _mm512_maskz_mov_ps(k, e));
  }
  return _mm512_reduce_add_ps(s);
#else
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) {
    float e = rt::exp(x[j] - m);
    y[j] = e;
    s += e;
  }
  return s;
#endif
}

void scale_row(float* y, int64_t n, float c) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] *= c;
}

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

// -- transposes ------------------------------------------------------------------------------

#ifdef RTINFER_AVX512
// r[i] = column i of the 16 x 16 block whose rows are r[0..16)
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + m], 128-bit lane k: rows 4i..4i+3 at column 4k + m
  __m512 u[16];
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 a88 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88);
    const __m512 aDD = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD);
    const __m512 b88 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
    const __m512 bDD = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
    r[m] = _mm512_shuffle_f32x4(a88, b88, 0x88);       // column m
    r[8 + m] = _mm512_shuffle_f32x4(a88, b88, 0xDD);   // column 8 + m
    r[4 + m] = _mm512_shuffle_f32x4(aDD, bDD, 0x88);   // column 4 + m
    r[12 + m] = _mm512_shuffle_f32x4(aDD, bDD, 0xDD);  // column 12 + m
  }
}
#endif

// out[a + t * ot] = in[a * ia + t] for a < na, t < nt: the 2-d transpose under a copy.
template <typename T>
void transpose_block(const T* in, int64_t ia, T* out, int64_t ot, int64_t na, int64_t nt) {
  constexpr int64_t B = 16;
  for (int64_t t0 = 0; t0 < nt; t0 += B) {
    const int64_t tn = std::min(B, nt - t0);
    for (int64_t a0 = 0; a0 < na; a0 += B) {
      const int64_t an = std::min(B, na - a0);
#ifdef RTINFER_AVX512
      if constexpr (sizeof(T) == 4) {  // float or any 4-byte type: moved as float bits
        if (tn == B && an == B) {
          __m512 r[16];
          for (int i = 0; i < 16; ++i)
            r[i] = _mm512_loadu_ps(reinterpret_cast<const float*>(in + (a0 + i) * ia + t0));
          transpose16(r);
          for (int i = 0; i < 16; ++i)
            _mm512_storeu_ps(reinterpret_cast<float*>(out + (t0 + i) * ot + a0), r[i]);
          continue;
        }
      }
#endif
      for (int64_t t = t0; t < t0 + tn; ++t)
        for (int64_t a = a0; a < a0 + an; ++a) out[a + t * ot] = in[a * ia + t];
    }
  }
}

// -- attention --------------------------------------------------------------------------------
//
// Per task (b, h, a block of query rows): K^T is packed once ([D][ldk], keys contiguous, zero
// padded to 32), then per tile of 8 query rows: the 8 x Skv scores (8 rows x 32 keys of
// accumulators in registers, scaled), the mask and softmax on each row in L1, and P V (8 rows x
// up to 64 dims of accumulators) scaled by 1/sum into y. At S = 128 the score tile is 4 KB, so
// a flash-style online softmax would only add rescaling work.

constexpr int kRows = 8;   // query rows per tile
constexpr int kKeys = 32;  // keys per score tile

struct AttnParams {
  int64_t B, H, Sq, Skv, D;
  int64_t qs[3], ks[3], vs[3], ys[3], ms[4];
  int mask_kind;
  float scale;
  bool causal;
};

// s[r][j..j+32) = scale * sum_d q_r[d] * kt[d][j..j+32) for the 8 rows q_r
void qk_tile(const float* const* qr, const float* kt, int64_t ldk, int64_t D, int64_t j, float* s,
             int64_t lds, float scale) {
#ifdef RTINFER_AVX512
  __m512 acc[kRows][2];
  for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const __m512 k0 = _mm512_loadu_ps(kt + d * ldk + j);
    const __m512 k1 = _mm512_loadu_ps(kt + d * ldk + j + 16);
    for (int r = 0; r < kRows; ++r) {
      const __m512 qv = _mm512_set1_ps(qr[r][d]);
      acc[r][0] = _mm512_fmadd_ps(qv, k0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(qv, k1, acc[r][1]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < kRows; ++r) {
    _mm512_storeu_ps(s + r * lds + j, _mm512_mul_ps(acc[r][0], sc));
    _mm512_storeu_ps(s + r * lds + j + 16, _mm512_mul_ps(acc[r][1], sc));
  }
#else
  for (int r = 0; r < kRows; ++r) {
    float acc[kKeys] = {};
    for (int64_t d = 0; d < D; ++d) {
      const float qv = qr[r][d];
      const float* kd = kt + d * ldk + j;
#pragma omp simd
      for (int c = 0; c < kKeys; ++c) acc[c] += qv * kd[c];
    }
    for (int c = 0; c < kKeys; ++c) s[r * lds + j + c] = acc[c] * scale;
  }
#endif
}

#ifdef RTINFER_AVX512
// y_r[d0, d0 + 16 NV) = inv_r * sum_j s[r][j] v_j[d0, ...) for RB rows (rows_valid stored)
template <int RB, int NV>
void pv_tile(const float* s, int64_t lds, const float* v, int64_t vstride, int64_t jn, int64_t d0,
             int64_t D, float* const* yr, const float* inv, int rows_valid) {
  __m512 acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_setzero_ps();
  const __mmask16 last = tail_mask(D - d0 - 16 * (NV - 1));
  for (int64_t j = 0; j < jn; ++j) {
    const float* vr = v + j * vstride + d0;
    __m512 vv[NV];
    for (int n = 0; n < NV - 1; ++n) vv[n] = _mm512_loadu_ps(vr + 16 * n);
    vv[NV - 1] = _mm512_maskz_loadu_ps(last, vr + 16 * (NV - 1));
    for (int r = 0; r < RB; ++r) {
      const __m512 pb = _mm512_set1_ps(s[r * lds + j]);
      for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_fmadd_ps(pb, vv[n], acc[r][n]);
    }
  }
  // constant bounds only (a runtime bound would make acc an array in memory)
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {
    if (r >= rows_valid) continue;
    const __m512 c = _mm512_set1_ps(inv[r]);
#pragma GCC unroll 4
    for (int n = 0; n < NV - 1; ++n)
      _mm512_storeu_ps(yr[r] + d0 + 16 * n, _mm512_mul_ps(acc[r][n], c));
    _mm512_mask_storeu_ps(yr[r] + d0 + 16 * (NV - 1), last, _mm512_mul_ps(acc[r][NV - 1], c));
  }
}
#endif

// y rows (rows_valid of them) = diag(inv) * P[:, 0:jn) V[0:jn, :]
void pv_rows(const float* s, int64_t lds, const float* v, int64_t vstride, int64_t jn, int64_t D,
             float* const* yr, const float* inv, int rows_valid) {
#ifdef RTINFER_AVX512
  for (int64_t d0 = 0; d0 < D;) {
    const int64_t nv = std::min<int64_t>(4, (D - d0 + 15) / 16);
    switch (nv) {
      case 1: pv_tile<8, 1>(s, lds, v, vstride, jn, d0, D, yr, inv, rows_valid); break;
      case 2: pv_tile<8, 2>(s, lds, v, vstride, jn, d0, D, yr, inv, rows_valid); break;
      default:
        for (int half = 0; half < 2 && 4 * half < rows_valid; ++half) {
          const float* sh = s + 4 * half * lds;
          if (nv == 3)
            pv_tile<4, 3>(sh, lds, v, vstride, jn, d0, D, yr + 4 * half, inv + 4 * half,
                          rows_valid - 4 * half);
          else
            pv_tile<4, 4>(sh, lds, v, vstride, jn, d0, D, yr + 4 * half, inv + 4 * half,
                          rows_valid - 4 * half);
        }
    }
    d0 += 16 * nv;
  }
#else
  for (int r = 0; r < rows_valid; ++r) {
    float* y = yr[r];
    for (int64_t d = 0; d < D; ++d) y[d] = 0.0f;
    for (int64_t j = 0; j < jn; ++j) {
      const float p = s[r * lds + j];
      const float* vr = v + j * vstride;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) y[d] += p * vr[d];
    }
    for (int64_t d = 0; d < D; ++d) y[d] *= inv[r];
  }
#endif
}

// Mask, causal limit and softmax of one score row in place; returns 1/sum (0 when no key is
// left: the row then outputs zeros, as torch's SDPA does). Keys in [lim, jn) get probability 0.
float softmax_scores(const AttnParams& A, float* s, int64_t jn, int64_t lim, const char* mrow) {
  if (A.mask_kind == 1) {
    const uint8_t* m = reinterpret_cast<const uint8_t*>(mrow);
    const int64_t mk = A.ms[3];
    if (mk == 1) {
#pragma omp simd
      for (int64_t j = 0; j < lim; ++j) s[j] = m[j] ? s[j] : -kInf;
    } else {
      for (int64_t j = 0; j < lim; ++j) s[j] = m[j * mk] ? s[j] : -kInf;
    }
  } else if (A.mask_kind == 2) {
    const float* m = reinterpret_cast<const float*>(mrow);
    const int64_t mk = A.ms[3];
    if (mk == 1) {
#pragma omp simd
      for (int64_t j = 0; j < lim; ++j) s[j] += m[j];
    } else {
      for (int64_t j = 0; j < lim; ++j) s[j] += m[j * mk];
    }
  }
  for (int64_t j = lim; j < jn; ++j) s[j] = 0.0f;
  const float mx = row_max(s, lim);
  if (mx == -kInf) {
    for (int64_t j = 0; j < lim; ++j) s[j] = 0.0f;
    return 0.0f;
  }
  return 1.0f / exp_sub_sum(s, s, lim, mx);
}

void attention_task(const AttnParams& A, const Ctx& ctx, int qslot, int kslot, int vslot,
                    int mslot, int yslot, int64_t b, int64_t h, int64_t i0, int64_t i1) {
  const int64_t D = A.D;
  const int64_t jn_task = A.causal ? std::min(A.Skv, i1) : A.Skv;
  const int64_t ldk = round_up(std::max<int64_t>(jn_task, 1), kKeys);
  float* kt = tls_floats(0, D * ldk);
  float* s = tls_floats(1, kRows * ldk);

  const float* kb = ctx.at<float>(kslot) + b * A.ks[0] + h * A.ks[1];
  transpose_block<float>(kb, A.ks[2], kt, ldk, jn_task, D);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = jn_task; j < ldk; ++j) kt[d * ldk + j] = 0.0f;

  const float* qb = ctx.at<float>(qslot) + b * A.qs[0] + h * A.qs[1];
  const float* vb = ctx.at<float>(vslot) + b * A.vs[0] + h * A.vs[1];
  float* yb = ctx.at<float>(yslot) + b * A.ys[0] + h * A.ys[1];
  const int64_t melem = A.mask_kind == 1 ? 1 : 4;
  const char* mb = mslot >= 0 ? ctx.ptr[mslot] + (b * A.ms[0] + h * A.ms[1]) * melem : nullptr;

  for (int64_t i = i0; i < i1; i += kRows) {
    const int rows = (int)std::min<int64_t>(kRows, i1 - i);
    const int64_t jn = A.causal ? std::min(A.Skv, i + rows) : A.Skv;
    const float* qr[kRows];
    float* yr[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t ir = i + std::min(r, rows - 1);  // rows past the end repeat the last one
      qr[r] = qb + ir * A.qs[2];
      yr[r] = yb + ir * A.ys[2];
    }
    for (int64_t j = 0; j < jn; j += kKeys) qk_tile(qr, kt, ldk, D, j, s, ldk, A.scale);
    float inv[kRows] = {};
    for (int r = 0; r < rows; ++r) {
      const int64_t ir = i + r;
      const int64_t lim = A.causal ? std::min(jn, ir + 1) : jn;
      const char* mrow = mb ? mb + ir * A.ms[2] * melem : nullptr;
      inv[r] = softmax_scores(A, s + r * ldk, jn, lim, mrow);
    }
    pv_rows(s, ldk, vb, A.vs[2], jn, D, yr, inv, rows);
  }
}

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

inline float pool_pick(float m, float v) { return (v > m || v != v) ? v : m; }

void pool_nhwc(const PoolParams& P, const float* x, float* y, int64_t t0, int64_t t1) {
  const int64_t C = P.C;
  for (int64_t t = t0; t < t1; ++t) {  // t = n * OH + oh
    const int64_t n = t / P.OH, oh = t % P.OH;
    for (int64_t ow = 0; ow < P.OW; ++ow) {
      float* yr = y + ((n * P.OH + oh) * P.OW + ow) * C;
      const float init = P.max ? -kInf : 0.0f;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = init;
      for (int64_t kh = P.kh0[oh]; kh < P.kh1[oh]; ++kh) {
        const int64_t ih = oh * P.SH - P.PH + kh * P.DH;
        for (int64_t kw = P.kw0[ow]; kw < P.kw1[ow]; ++kw) {
          const int64_t iw = ow * P.SW - P.PW + kw * P.DW;
          const float* xr = x + ((n * P.H + ih) * P.W + iw) * C;
          if (P.max) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) yr[c] = pool_pick(yr[c], xr[c]);
          } else {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) yr[c] += xr[c];
          }
        }
      }
      if (!P.max) scale_row(yr, C, P.inv_div[oh * P.OW + ow]);
    }
  }
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

// -- strided copy -----------------------------------------------------------------------------

constexpr int kMaxRank = 8;

// The copy's geometry after dropping size-1 dims, ordering dims by output stride and merging
// dims that are contiguous in both input and output.
struct CopyGeom {
  int rank = 0;
  int64_t size[kMaxRank], is[kMaxRank], os[kMaxRank];
  int64_t in_off = 0, out_off = 0, elem = 4, total = 0;
  int tdim = -1;  // transpose: the dim (not the last) contiguous in the input
};

// An index over the dims [0, n) of a geometry, walked in row-major order.
struct Odometer {
  int n;
  const int64_t *size, *is, *os;
  int64_t idx[kMaxRank] = {};
  int64_t ioff = 0, ooff = 0;

  Odometer(int n_, const int64_t* size_, const int64_t* is_, const int64_t* os_)
      : n(n_), size(size_), is(is_), os(os_) {}
  void seek(int64_t flat) {
    ioff = ooff = 0;
    for (int d = n - 1; d >= 0; --d) {
      idx[d] = flat % size[d];
      flat /= size[d];
      ioff += idx[d] * is[d];
      ooff += idx[d] * os[d];
    }
  }
  void next() {
    for (int d = n - 1; d >= 0; --d) {
      ++idx[d];
      ioff += is[d];
      ooff += os[d];
      if (idx[d] < size[d]) return;
      ioff -= is[d] * size[d];
      ooff -= os[d] * size[d];
      idx[d] = 0;
    }
  }
};

CopyGeom make_copy_geom(int64_t elem, const std::vector<int64_t>& sizes,
                        const std::vector<int64_t>& in_strides, int64_t in_off,
                        const std::vector<int64_t>& out_strides, int64_t out_off) {
  if (sizes.size() > kMaxRank || in_strides.size() != sizes.size() ||
      out_strides.size() != sizes.size())
    throw std::invalid_argument("add_copy: sizes and strides need one entry per dim (rank <= 8)");
  if (elem != 1 && elem != 2 && elem != 4 && elem != 8)
    throw std::invalid_argument("add_copy: elem_size must be 1, 2, 4 or 8");
  CopyGeom g;
  g.elem = elem;
  g.in_off = in_off;
  g.out_off = out_off;
  g.total = 1;
  struct Dim {
    int64_t size, is, os;
  };
  std::vector<Dim> dims;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] < 0) throw std::invalid_argument("add_copy: negative size");
    g.total *= sizes[d];
    if (sizes[d] != 1) dims.push_back({sizes[d], in_strides[d], out_strides[d]});
  }
  if (g.total == 0) return g;
  std::stable_sort(dims.begin(), dims.end(), [](const Dim& a, const Dim& b) {
    return std::llabs(a.os) > std::llabs(b.os);
  });
  std::vector<Dim> merged;
  for (const Dim& d : dims) {
    if (!merged.empty()) {
      Dim& p = merged.back();
      if (p.is == d.is * d.size && p.os == d.os * d.size) {
        p = {p.size * d.size, d.is, d.os};
        continue;
      }
    }
    merged.push_back(d);
  }
  g.rank = (int)merged.size();
  for (int d = 0; d < g.rank; ++d) {
    g.size[d] = merged[d].size;
    g.is[d] = merged[d].is;
    g.os[d] = merged[d].os;
  }
  const int last = g.rank - 1;
  int in_inner = -1;  // the dim (not the last) along which the input is contiguous
  for (int d = 0; d < last; ++d)
    if (g.is[d] == 1 && g.size[d] >= 8) in_inner = d;
  if (in_inner >= 0 && g.os[last] == 1 && g.is[last] != 1 && g.size[last] >= 8) {
    g.tdim = in_inner;
  } else if (in_inner >= 0 && g.size[last] < 8) {
    // the output's rows are short (NCHW -> NHWC with 3 channels): loop along the input's
    // contiguous dim instead, writing with a stride
    std::rotate(g.size + in_inner, g.size + in_inner + 1, g.size + g.rank);
    std::rotate(g.is + in_inner, g.is + in_inner + 1, g.is + g.rank);
    std::rotate(g.os + in_inner, g.os + in_inner + 1, g.os + g.rank);
  }
  return g;
}

template <typename T>
void copy_run(const CopyGeom& g, const char* xb, char* yb, int nt) {
  const T* x = reinterpret_cast<const T*>(xb) + g.in_off;
  T* y = reinterpret_cast<T*>(yb) + g.out_off;
  if (g.rank == 0) {
    *y = *x;
    return;
  }
  const int last = g.rank - 1;
  if (g.tdim >= 0) {
    // outer dims: all but tdim and last; tasks: outer index x blocks of 64 along tdim
    int64_t osize[kMaxRank], ois[kMaxRank], oos[kMaxRank];
    int on = 0;
    for (int d = 0; d < last; ++d)
      if (d != g.tdim) {
        osize[on] = g.size[d];
        ois[on] = g.is[d];
        oos[on] = g.os[d];
        ++on;
      }
    int64_t outer = 1;
    for (int d = 0; d < on; ++d) outer *= osize[d];
    const int64_t nt_total = g.size[g.tdim], tb = 64, nblk = (nt_total + tb - 1) / tb;
    const int64_t na = g.size[last], ia = g.is[last], ot = g.os[g.tdim];
    parallel_for(nt, outer * nblk, [&](int64_t b, int64_t e) {
      Odometer od(on, osize, ois, oos);
      od.seek(b / nblk);
      int64_t cur = b / nblk;
      for (int64_t task = b; task < e; ++task) {
        const int64_t o = task / nblk, blk = task % nblk;
        while (cur < o) {
          od.next();
          ++cur;
        }
        const int64_t t0 = blk * tb, tn = std::min(tb, nt_total - t0);
        transpose_block<T>(x + od.ioff + t0, ia, y + od.ooff + t0 * ot, ot, na, tn);
      }
    });
    return;
  }
  int64_t outer = 1;
  for (int d = 0; d < last; ++d) outer *= g.size[d];
  const int64_t n = g.size[last], is = g.is[last], os = g.os[last];
  // few long rows (a 3-channel image's planes): split them too, or a thread gets 2 of 3
  int64_t pieces = 1;
  if (outer < 4 * nt)
    pieces = std::max<int64_t>(1, std::min((n + 1023) / 1024, (4 * nt + outer - 1) / outer));
  const int64_t piece = (n + pieces - 1) / pieces;
  parallel_for(nt, outer * pieces, [&](int64_t b, int64_t e) {
    Odometer od(last, g.size, g.is, g.os);
    int64_t cur = b / pieces;
    od.seek(cur);
    for (int64_t task = b; task < e; ++task) {
      for (; cur < task / pieces; ++cur) od.next();
      const int64_t j0 = task % pieces * piece, m = std::min(n, j0 + piece) - j0;
      const T* xi = x + od.ioff + j0 * is;
      T* yo = y + od.ooff + j0 * os;
      if (m <= 0) {
        continue;
      } else if (is == 1 && os == 1) {
        std::memcpy(yo, xi, m * sizeof(T));
      } else if (is == 0 && os == 1) {
        const T v = *xi;
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) yo[j] = v;
      } else {
        for (int64_t j = 0; j < m; ++j) yo[j * os] = xi[j * is];
      }
    }
  });
}

std::vector<int64_t> need(const std::vector<int64_t>& v, size_t n, const char* what) {
  if (v.size() != n)
    throw std::invalid_argument(std::string(what) + " needs " + std::to_string(n) + " values");
  return v;
}

}  // namespace

// -- step factories ---------------------------------------------------------------------------

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

void add_attention(Plan& p, const std::string& name, int q, int k, int v, int mask, int y,
                   int64_t B, int64_t H, int64_t Sq, int64_t Skv, int64_t D,
                   std::vector<int64_t> q_strides, std::vector<int64_t> k_strides,
                   std::vector<int64_t> v_strides, std::vector<int64_t> y_strides, int mask_kind,
                   std::vector<int64_t> mask_strides, double scale, bool causal) {
  if (mask_kind < 0 || mask_kind > 2) throw std::invalid_argument(name + ": bad mask_kind");
  if (mask_kind != 0 && mask < 0) throw std::invalid_argument(name + ": a mask kind needs a mask");
  auto A = std::make_shared<AttnParams>();
  A->B = B, A->H = H, A->Sq = Sq, A->Skv = Skv, A->D = D;
  auto put = [&](int64_t* dst, const std::vector<int64_t>& s, size_t n, const char* what) {
    auto c = need(s, n, what);
    std::copy(c.begin(), c.end(), dst);
  };
  put(A->qs, q_strides, 3, "q_strides");
  put(A->ks, k_strides, 3, "k_strides");
  put(A->vs, v_strides, 3, "v_strides");
  put(A->ys, y_strides, 3, "y_strides");
  if (mask_kind != 0) {
    put(A->ms, mask_strides, 4, "mask_strides");
  } else {
    std::fill(A->ms, A->ms + 4, 0);
    mask = -1;
  }
  A->mask_kind = mask_kind;
  A->scale = (float)scale;
  A->causal = causal;
  p.add_step({name, [A, q, k, v, mask, y](Ctx& ctx) {
    const AttnParams& a = *A;
    if (a.Sq <= 0 || a.D <= 0) return;
    if (a.Skv <= 0) {  // no keys: every row is fully masked
      for (int64_t b = 0; b < a.B; ++b)
        for (int64_t h = 0; h < a.H; ++h)
          for (int64_t i = 0; i < a.Sq; ++i)
            std::fill_n(ctx.at<float>(y) + b * a.ys[0] + h * a.ys[1] + i * a.ys[2], a.D, 0.0f);
      return;
    }
    const int64_t heads = a.B * a.H;
    const int nt = threads_for(ctx, heads * a.Sq * a.Skv * a.D, 65536);
    // split query rows when there are too few heads to keep the threads busy
    const int64_t row_tiles = (a.Sq + kRows - 1) / kRows;
    const int64_t split = std::min(row_tiles, std::max<int64_t>(1, (4 * nt + heads - 1) / heads));
    const int64_t block = (row_tiles + split - 1) / split * kRows;
    const int64_t nblk = (a.Sq + block - 1) / block;
    parallel_for(nt, heads * nblk, [&](int64_t b0, int64_t e0) {
      for (int64_t t = b0; t < e0; ++t) {
        const int64_t bh = t / nblk, blk = t % nblk;
        const int64_t i0 = blk * block, i1 = std::min(a.Sq, i0 + block);
        attention_task(a, ctx, q, k, v, mask, y, bh / a.H, bh % a.H, i0, i1);
      }
    });
  }});
}

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

void add_embedding(Plan& p, const std::string& name, int weight, int indices, int y,
                   int64_t num_indices, int64_t dim, int64_t vocab,
                   torch::ScalarType index_dtype, int64_t elem_size) {
  if (index_dtype != torch::kLong && index_dtype != torch::kInt)
    throw std::invalid_argument(name + ": embedding indices must be int64 or int32");
  const bool i64 = index_dtype == torch::kLong;
  const int64_t row = dim * elem_size;
  p.add_step({name, [=](Ctx& ctx) {
    const char* w = ctx.ptr[weight];
    char* out = ctx.ptr[y];
    auto index = [&](int64_t i) -> int64_t {
      return i64 ? ctx.at<int64_t>(indices)[i] : (int64_t)ctx.at<int32_t>(indices)[i];
    };
    for (int64_t i = 0; i < num_indices; ++i) {  // check first: no exception leaves a thread
      const int64_t ix = index(i);
      if (ix < -vocab || ix >= vocab)
        throw std::out_of_range(name + ": index " + std::to_string(ix) + " (at position " +
                                std::to_string(i) + ") is out of range for " +
                                std::to_string(vocab) + " rows");
    }
    parallel_for(threads_for(ctx, num_indices * row / 4), num_indices, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        int64_t ix = index(i);
        if (ix < 0) ix += vocab;
        std::memcpy(out + i * row, w + ix * row, row);
      }
    });
  }});
}

void add_copy(Plan& p, const std::string& name, int x, int y, int64_t elem_size,
              std::vector<int64_t> sizes, std::vector<int64_t> in_strides, int64_t in_offset,
              std::vector<int64_t> out_strides, int64_t out_offset) {
  auto G = std::make_shared<CopyGeom>(
      make_copy_geom(elem_size, sizes, in_strides, in_offset, out_strides, out_offset));
  p.add_step({name, [G, x, y](Ctx& ctx) {
    const CopyGeom& g = *G;
    if (g.total == 0) return;
    const int nt = threads_for(ctx, g.total * g.elem / 4, 32768);
    switch (g.elem) {
      case 1: copy_run<uint8_t>(g, ctx.ptr[x], ctx.ptr[y], nt); break;
      case 2: copy_run<uint16_t>(g, ctx.ptr[x], ctx.ptr[y], nt); break;
      case 4: copy_run<uint32_t>(g, ctx.ptr[x], ctx.ptr[y], nt); break;
      default: copy_run<uint64_t>(g, ctx.ptr[x], ctx.ptr[y], nt); break;
    }
  }});
}

void add_elementwise(Plan& p, const std::string& name, uintptr_t fn, std::vector<int> inputs,
                     int y, int64_t n) {
  if (fn == 0) throw std::invalid_argument(name + ": null elementwise function");
  const auto f = reinterpret_cast<ElementwiseFn>(fn);
  p.add_step({name, [f, inputs, y, n](Ctx& ctx) {
    constexpr size_t kStack = 32;
    const char* stack[kStack];
    std::vector<const char*> heap;
    const char** ins = stack;
    if (inputs.size() > kStack) {
      heap.resize(inputs.size());
      ins = heap.data();
    }
    for (size_t i = 0; i < inputs.size(); ++i) ins[i] = ctx.ptr[inputs[i]];
    char* out = ctx.ptr[y];
    const int nt = threads_for(ctx, n);
    if (nt <= 1) {
      f(ins, out, 0, n);
      return;
    }
    // chunks of whole 64-element blocks, so no two threads write one cache line
    const int64_t blocks = (n + 63) / 64;
    parallel_for(nt, blocks, [&](int64_t b, int64_t e) {
      f(ins, out, b * 64, std::min(n, e * 64));
    });
  }});
}

}  // namespace rtinfer
