// Helpers the CPU kernel files (cpu_*.cpp) share: threading, per-thread scratch buffers, the
// vector exp and row reductions of softmax, and the blocked 2-d transpose. They have internal
// linkage (an anonymous namespace), so each kernel file inlines them as it sees fit, as when
// the kernels were one file.
#pragma once

#include "plan.h"
#include "rt_exp.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

// The CPU level this file is built for (rtinfer.kernels.isa builds one extension per level):
// AVX-512 gets hand-written intrinsics; every other level gets the same tiled kernels written
// with GCC vector extensions (vf: kW floats, 8 on AVX2, 4 on SSE/NEON), which the compiler
// maps onto the level's registers. No path is scalar-only.
#if defined(__AVX512F__) && !defined(RTINFER_NO_AVX512)
#define RTINFER_AVX512 1
#include <immintrin.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace rtinfer {
namespace {

// A shape for error messages: "[1, 3, 224, 224]".
std::string str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

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

// Per-thread buffer `which` (0..3) of at least n floats; the families keep apart (attention:
// 0 and 1, pooling: 2, reductions: 3) so one kernel's scratch never aliases another's.
float* tls_floats(int which, size_t n) {
  thread_local GrowBuf bufs[4];
  return static_cast<float*>(bufs[which].get(std::max<size_t>(n, 16) * sizeof(float)));
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// every |p[i]| <= limit: false on NaN and infinities (Winograd's guard against inputs whose
// NaN or infinity its transforms would spread, cpu_conv_winograd.cpp and dnnl_winograd.cpp)
bool within(const float* p, int64_t n, float limit) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= !(std::fabs(p[i]) <= limit);
  return bad == 0;
}

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

// `v`, checked to hold n values (`what` names it in the error).
std::vector<int64_t> need(const std::vector<int64_t>& v, size_t n, const char* what) {
  if (v.size() != n)
    throw std::invalid_argument(std::string(what) + " needs " + std::to_string(n) + " values");
  return v;
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

#ifndef RTINFER_AVX512
// -- generic vectors: kW floats in the widest registers of the level ----------------------------
#if defined(__AVX__)
constexpr int kW = 8;
#else
constexpr int kW = 4;
#endif
typedef float vf __attribute__((vector_size(kW * 4)));
typedef int32_t vi __attribute__((vector_size(kW * 4)));
// an unaligned view of kW floats in memory (a plain load and store, no copy through the stack)
typedef float vf_u __attribute__((vector_size(kW * 4), aligned(4), may_alias));

inline vf vload(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
inline void vstore(float* p, vf v) { *reinterpret_cast<vf_u*>(p) = v; }
inline vf vset(float x) {
#if defined(__AVX__)
  return vf{x, x, x, x, x, x, x, x};
#else
  return vf{x, x, x, x};
#endif
}
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline float hsum(vf v) {
#if defined(__AVX2__)
  // a tree (as _mm512_reduce_add_ps), not 8 dependent scalar adds
  const __m256 x = reinterpret_cast<const __m256&>(v);
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
#else
  float s = 0.0f;
  for (int i = 0; i < kW; ++i) s += v[i];
  return s;
#endif
}
inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < kW; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// rt::exp (rt_exp.h) kW lanes at a time, rounding alike (round-to-nearest by the 1.5 * 2^23
// trick, exact for the clamped range)
inline vf vexp(vf x) {
  const vf lo = vset(kExpLo), hi = vset(kExpHi);
  vf xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const vf big = vset(12582912.0f);
  vf fn = (xc * 1.44269504088896341f + big) - big;
  vf r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  vf p = vset(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi n = (__builtin_convertvector(fn, vi) + 126) << 23;
  const vf s = reinterpret_cast<const vf&>(n);
  vf y = (p * 2.0f) * s;
  y = x < lo ? vf{} : y;
  y = x > hi ? vset(kInf) : y;
  return x != x ? x : y;
}
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
  int64_t j = 0;
  float m = -kInf;
  if (n >= kW) {
    vf mv = vset(-kInf);
    for (; j + kW <= n; j += kW) mv = vmax(mv, vload(x + j));
    m = hmax(mv);
  }
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
#endif
}

#if defined(__AVX2__) && defined(__FMA__) && !defined(RTINFER_AVX512)
// e^x for x <= 0, -inf or NaN (a softmax's x - max): rt::exp without the upper clamp and the
// selects it needs for +inf and NaN (NaN passes through every step: max(lo, NaN) is NaN); the
// exponent from the bits of x log2(e) + 1.5 2^23 in place of a round and a convert. 0.34 against
// 0.50 ns an element for vexp on a Zen 5 core; equal, on 1,024 values in [-100, 0] with -inf
// and NaN, to exp512's sequence (round and convert) written for AVX2.
inline __m256 exp256_nonpos(__m256 x) {
  const __m256 lo = _mm256_set1_ps(kExpLo), big = _mm256_set1_ps(12582912.0f);
  const __m256 xc = _mm256_max_ps(lo, x);
  const __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), big);
  const __m256 fn = _mm256_sub_ps(t, big);  // round(x log2 e): [-126, 0]
  __m256 r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // t's low bits hold fn: (bits(t) + 126) << 23 is 2^(fn - 1), the 1.5 2^23 shifted out
  const __m256i s =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(126)), 23);
  const __m256 y = _mm256_mul_ps(_mm256_add_ps(p, p), _mm256_castsi256_ps(s));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);  // below -87 (and -inf): 0
}
#endif

// y[j] = exp(x[j] - m) over [0, n); returns the sum (y may be x). m is the max of x[0, n)
// (row_max), so every x[j] - m is <= 0, -inf or NaN.
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
  const vf mv = vset(m);
  vf sv{};
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  {
    const __m256 mv8 = _mm256_set1_ps(m);
    __m256 s8 = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
      const __m256 e = exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv8));
      _mm256_storeu_ps(y + j, e);
      s8 = _mm256_add_ps(s8, e);
    }
    sv = reinterpret_cast<const vf&>(s8);
  }
#endif
  for (; j + kW <= n; j += kW) {
    const vf e = vexp(vload(x + j) - mv);
    vstore(y + j, e);
    sv += e;
  }
  float s = hsum(sv);
  for (; j < n; ++j) {
    float e = rt::exp(x[j] - m);
    y[j] = e;
    s += e;
  }
  return s;
#endif
}

// max pooling's pick: the larger, and NaN once either is NaN (torch's max_pool2d keeps NaN)
inline float pool_pick(float m, float v) { return (v > m || v != v) ? v : m; }

void scale_row(float* y, int64_t n, float c) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] *= c;
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

#if defined(__AVX2__) && !defined(RTINFER_AVX512)
// r[i] = column i of the 8 x 8 block whose rows are r[0..8)
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
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
#elif defined(__AVX2__)
      if constexpr (sizeof(T) == 4) {  // four 8 x 8 blocks
        if (tn == B && an == B) {
          for (int bt = 0; bt < 16; bt += 8)
            for (int ba = 0; ba < 16; ba += 8) {
              __m256 r[8];
              for (int i = 0; i < 8; ++i)
                r[i] = _mm256_loadu_ps(
                    reinterpret_cast<const float*>(in + (a0 + ba + i) * ia + t0 + bt));
              transpose8(r);
              for (int i = 0; i < 8; ++i)
                _mm256_storeu_ps(reinterpret_cast<float*>(out + (t0 + bt + i) * ot + a0 + ba),
                                 r[i]);
            }
          continue;
        }
      }
#endif
      for (int64_t t = t0; t < t0 + tn; ++t)
        for (int64_t a = a0; a < a0 + an; ++a) out[a + t * ot] = in[a * ia + t];
    }
  }
}

}  // namespace
}  // namespace rtinfer
