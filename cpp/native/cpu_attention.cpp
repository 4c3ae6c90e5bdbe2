// Attention: softmax(q k^T * scale + mask) v per (batch, head), tiled for L1 (declared in
// cpu_kernels.h).
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

// -- attention --------------------------------------------------------------------------------
//
// Per task (b, h, a block of query rows): K^T is packed once ([D][ldk], keys contiguous, zero
// padded to 32), then per tile of kRows query rows (8; 6 at AVX2): the kRows x Skv scores
// (blocks of accumulators in registers, scaled), the mask and softmax on each row in L1, and
// P V (kRows rows x up to 64 dims of accumulators) scaled by 1/sum into y. At S = 128 the score
// tile is 4 KB, so a flash-style online softmax would only add rescaling work.

// query rows per tile: 6 on AVX2 (6 rows x 16 keys or dims: 12 accumulators of its 16
// registers, where 4 rows leave 8, too few to cover the FMA latency with D = 32's short
// loops), 8 elsewhere
#if !defined(RTINFER_AVX512) && defined(__AVX__)
constexpr int kRows = 6;
#else
constexpr int kRows = 8;
#endif
constexpr int kKeys = 32;  // keys per score tile

struct AttnParams {
  int64_t B, H, Sq, Skv, D;
  int64_t qs[3], ks[3], vs[3], ys[3], ms[4];
  int mask_kind;
  float scale;
  bool causal;
};

#ifndef RTINFER_AVX512
// s[r][j + h..j + h + 16) = scale * sum_d q_r[d] * kt[d][...] for RG rows and both halves h
template <int RG>
void qk_rows(const float* const* qr, const float* kt, int64_t ldk, int64_t D, int64_t j, float* s,
             int64_t lds, float scale) {
  constexpr int NK = 16 / kW;
  const vf sc = vset(scale);
  for (int h = 0; h < kKeys; h += 16) {
    vf acc[RG][NK] = {};
    for (int64_t d = 0; d < D; ++d) {
      const float* kd = kt + d * ldk + j + h;
      vf kv[NK];
#pragma GCC unroll 4
      for (int n = 0; n < NK; ++n) kv[n] = vload(kd + n * kW);
#pragma GCC unroll 8
      for (int r = 0; r < RG; ++r) {
        const vf qv = vset(qr[r][d]);
#pragma GCC unroll 4
        for (int n = 0; n < NK; ++n) acc[r][n] += qv * kv[n];
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RG; ++r)
#pragma GCC unroll 4
      for (int n = 0; n < NK; ++n) vstore(s + r * lds + j + h + n * kW, acc[r][n] * sc);
  }
}
#endif

// s[r][j..j+32) = scale * sum_d q_r[d] * kt[d][j..j+32) for the kRows rows q_r (`rows` of
// them are real: the rest repeat the last)
void qk_tile(const float* const* qr, const float* kt, int64_t ldk, int64_t D, int64_t j, float* s,
             int64_t lds, float scale, int rows) {
#ifdef RTINFER_AVX512
  (void)rows;
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
#elif defined(__AVX__)
  // 6 rows x 16 keys of accumulators (12 registers); a last tile of up to 4 rows takes 4
  if (rows > 4)
    qk_rows<6>(qr, kt, ldk, D, j, s, lds, scale);
  else
    qk_rows<4>(qr, kt, ldk, D, j, s, lds, scale);
#else
  // 4 rows x 16 keys of accumulators at a time
  (void)rows;
  for (int r0 = 0; r0 < kRows; r0 += 4)
    qk_rows<4>(qr + r0, kt, ldk, D, j, s + r0 * lds, lds, scale);
#endif
}

#ifndef RTINFER_AVX512
// y_r[d0, d0 + 16) = inv_r * sum_j s[r][j] v_j[d0, d0 + 16) for RB rows (rows_valid stored)
template <int RB>
void pv_block(const float* s, int64_t lds, const float* v, int64_t vstride, int64_t jn,
              int64_t d0, float* const* yr, const float* inv, int rows_valid) {
  constexpr int NV = 16 / kW;
  vf acc[RB][NV] = {};
  for (int64_t j = 0; j < jn; ++j) {
    const float* vr = v + j * vstride + d0;
    vf vv[NV];
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) vv[n] = vload(vr + n * kW);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const vf pb = vset(s[r * lds + j]);
#pragma GCC unroll 4
      for (int n = 0; n < NV; ++n) acc[r][n] += pb * vv[n];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {
    if (r >= rows_valid) continue;
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) vstore(yr[r] + d0 + n * kW, acc[r][n] * inv[r]);
  }
}
#endif

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
  const int64_t D16 = D / 16 * 16;  // 16 columns at a time; the rest below
#if defined(__AVX__)
  // 6 rows (12 accumulators), or 4 where no more are real
  if (rows_valid > 4) {
    for (int64_t d0 = 0; d0 < D16; d0 += 16)
      pv_block<6>(s, lds, v, vstride, jn, d0, yr, inv, rows_valid);
  } else {
    for (int64_t d0 = 0; d0 < D16; d0 += 16)
      pv_block<4>(s, lds, v, vstride, jn, d0, yr, inv, rows_valid);
  }
#else
  for (int r0 = 0; r0 < rows_valid; r0 += 4)
    for (int64_t d0 = 0; d0 < D16; d0 += 16)
      pv_block<4>(s + r0 * lds, lds, v, vstride, jn, d0, yr + r0, inv + r0, rows_valid - r0);
#endif
  if (D16 == D) return;
  for (int r = 0; r < rows_valid; ++r) {
    float* y = yr[r];
    for (int64_t d = D16; d < D; ++d) y[d] = 0.0f;
    for (int64_t j = 0; j < jn; ++j) {
      const float p = s[r * lds + j];
      const float* vr = v + j * vstride;
      for (int64_t d = D16; d < D; ++d) y[d] += p * vr[d];
    }
    for (int64_t d = D16; d < D; ++d) y[d] *= inv[r];
  }
#endif
}

// Mask, causal limit and softmax of one score row in place; returns 1/sum (0 when no key is
// left: the row then outputs zeros, as torch's SDPA does). Keys in [lim, jn) get probability 0.
float softmax_scores(const AttnParams& A, float* s, int64_t jn, int64_t lim, const char* mrow) {
  float mx = -kInf;
  bool have_max = false;
#if defined(__AVX2__) && !defined(RTINFER_AVX512)
  if (A.mask_kind == 1 && A.ms[3] == 1) {  // a boolean row: the mask and the max in one pass
    const uint8_t* m = reinterpret_cast<const uint8_t*>(mrow);
    const __m256 ninf = _mm256_set1_ps(-kInf);
    __m256 mv = ninf;
    int64_t j = 0;
    for (; j + 8 <= lim; j += 8) {
      int64_t bytes;
      std::memcpy(&bytes, m + j, 8);
      const __m256i mi = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes));
      const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(mi, _mm256_setzero_si256()));
      const __m256 v = _mm256_blendv_ps(ninf, _mm256_loadu_ps(s + j), keep);
      _mm256_storeu_ps(s + j, v);
      mv = _mm256_max_ps(mv, v);  // as row_max's vmax(mv, v)
    }
    mx = hmax(reinterpret_cast<const vf&>(mv));
    for (; j < lim; ++j) {
      s[j] = m[j] ? s[j] : -kInf;
      mx = s[j] > mx ? s[j] : mx;
    }
    have_max = true;
  } else
#endif
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
  if (!have_max) mx = row_max(s, lim);
  if (mx == -kInf) {
    for (int64_t j = 0; j < lim; ++j) s[j] = 0.0f;
    return 0.0f;
  }
  return 1.0f / exp_sub_sum(s, s, lim, mx);
}

// The keys [0, result) that a boolean mask lets some row of [i0, i1) see, of [0, jn): the keys
// after the last such one get score -inf and probability exactly 0 in every row, so they are
// left out of the scores, the softmax and P V (a padded batch: a 10-token sentence padded to
// 128 keeps 10 of them). Not where a value row of theirs is not finite: eager's 0 x NaN is NaN.
int64_t live_keys(const AttnParams& A, const uint8_t* mask, const float* vb, int64_t i0,
                  int64_t i1, int64_t jn) {
  const int64_t mq = A.ms[2], mk = A.ms[3];
  int64_t live = 0;
  for (int64_t i = i0; i < (mq == 0 ? i0 + 1 : i1) && live < jn; ++i) {
    const uint8_t* row = mask + i * mq;
    int64_t j = jn;
    while (j > live && row[(j - 1) * mk] == 0) --j;
    live = j;
  }
  for (int64_t j = live; j < jn; ++j)
    if (!within(vb + j * A.vs[2], A.D, std::numeric_limits<float>::max())) return jn;
  return live;
}

void attention_task(const AttnParams& A, const Ctx& ctx, int qslot, int kslot, int vslot,
                    int mslot, int yslot, int64_t b, int64_t h, int64_t i0, int64_t i1) {
  const int64_t D = A.D;
  const float* qb = ctx.at<float>(qslot) + b * A.qs[0] + h * A.qs[1];
  const float* vb = ctx.at<float>(vslot) + b * A.vs[0] + h * A.vs[1];
  float* yb = ctx.at<float>(yslot) + b * A.ys[0] + h * A.ys[1];
  const int64_t melem = A.mask_kind == 1 ? 1 : 4;
  const char* mb = mslot >= 0 ? ctx.ptr[mslot] + (b * A.ms[0] + h * A.ms[1]) * melem : nullptr;

  int64_t jn_task = A.causal ? std::min(A.Skv, i1) : A.Skv;
  if (A.mask_kind == 1 && mb != nullptr)
    jn_task = live_keys(A, reinterpret_cast<const uint8_t*>(mb), vb, i0, i1, jn_task);
  const int64_t ldk = round_up(std::max<int64_t>(jn_task, 1), kKeys);
  float* kt = tls_floats(0, D * ldk);
  float* s = tls_floats(1, kRows * ldk);

  const float* kb = ctx.at<float>(kslot) + b * A.ks[0] + h * A.ks[1];
  transpose_block<float>(kb, A.ks[2], kt, ldk, jn_task, D);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = jn_task; j < ldk; ++j) kt[d * ldk + j] = 0.0f;

  for (int64_t i = i0; i < i1; i += kRows) {
    const int rows = (int)std::min<int64_t>(kRows, i1 - i);
    const int64_t jn = A.causal ? std::min(jn_task, i + rows) : jn_task;
    const float* qr[kRows];
    float* yr[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t ir = i + std::min(r, rows - 1);  // rows past the end repeat the last one
      qr[r] = qb + ir * A.qs[2];
      yr[r] = yb + ir * A.ys[2];
    }
    for (int64_t j = 0; j < jn; j += kKeys) qk_tile(qr, kt, ldk, D, j, s, ldk, A.scale, rows);
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

}  // namespace

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

}  // namespace rtinfer
