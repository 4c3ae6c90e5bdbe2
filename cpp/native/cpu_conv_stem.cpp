// A direct convolution for the first layer of a CNN (declared in cpu_kernels.h): few input
// channels (the image's 1-4), any window, read from the NCHW source as it is and written NHWC,
// the layout the oneDNN convolutions after it read. oneDNN needs an NHWC source for its fast
// kernels (an NCHW one takes its reference kernel), so without this step the image is reordered
// first, and with AVX-512 its jit kernel runs 3 input channels below the FMA peak (with AVX2 it
// does not: compiler/backends/native/conv.py picks this step at the avx512 level only).
//
// The output channels go in chunks of up to 4 vectors (3 below AVX-512), each chunk's weight
// packed once as [K = C * KH * KW][its channels] (zeros past O). A microkernel computes P
// output pixels of one row times NJ vectors of output channels in P * NJ accumulators: per tap
// it loads NJ weight vectors, broadcasts one source value per pixel and does P * NJ FMAs.
// Rows clip their taps to the image; the few pixels per row whose window leaves it to the left
// or right read a small zero-padded copy of their window, so the padded image is never
// materialized. Output rows split over the threads.
//
// add_conv_stem_pool runs the max pool after the stem in the same step (ResNet's 3x3/2): the
// stem output (112x112x64 f32, 3.2 MB for ResNet-18) is larger than L2, so a separate pool step
// reads it back from memory. Here each thread computes the stem rows its band of pool rows
// needs into a ring of a few rows (3 and their max: 115 KB at 64 channels) and pools them from
// cache (measured in compiler/backends/native/conv.py).
#include "cpu_kernels.h"
#include "cpu_common.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace rtinfer {

namespace {


enum StemAct : int { kActNone, kActClamp, kActLeaky, kActHardswish };

struct StemParams {
  int64_t N, C, H, W, O, Op, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW;
  StemAct act;
  float lo, hi, slope;  // clamp bounds (relu: 0, inf; clip: min, max); leaky slope
  // the channel vectors in chunks of at most kMaxNJ (a block's accumulators), as even as can be
  // (8 as 2 + 3 + 3, 4 as 2 + 2 rather than 3 + 1: a chunk of 1 has too few accumulators to
  // hide the FMA latency): chunk i is nj[i] vectors from vector v0[i]
  std::vector<int> nj;
  std::vector<int64_t> v0;
  std::vector<float> w;  // per chunk [C * KH * KW][nj * lanes], the chunks one after the other
  std::vector<float> b;  // [Op]
};

// -- vector types: a zmm on AVX-512, else the level's GCC vector (8 floats on AVX2) ------------

#ifdef RTINFER_AVX512
struct Vec {
  static constexpr int kLanes = 16;
  __m512 v;
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  // max/min return their second operand when one is NaN: (bound, v) keeps a NaN v
  static Vec clamp(Vec x, float lo, float hi) {
    return {_mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), x.v))};
  }
  static Vec leaky(Vec x, float s) {
    const __mmask16 neg = _mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_LT_OQ);
    return {_mm512_mask_mul_ps(x.v, neg, x.v, _mm512_set1_ps(s))};
  }
  static Vec hardswish(Vec x) {
    Vec r = clamp({_mm512_add_ps(x.v, _mm512_set1_ps(3.0f))}, 0.0f, 6.0f);
    return {_mm512_mul_ps(x.v, _mm512_mul_ps(r.v, _mm512_set1_ps(1.0f / 6.0f)))};
  }
  // the max pool's NaN-keeping max, pool_pick lane by lane: max_ps gives v when either is
  // NaN, so only a NaN already in m needs putting back
  static Vec pick(Vec m, Vec v) {
    const __mmask16 m_nan = _mm512_cmp_ps_mask(m.v, m.v, _CMP_UNORD_Q);
    return {_mm512_mask_mov_ps(_mm512_max_ps(m.v, v.v), m_nan, m.v)};
  }
  static void store(float* p, Vec x, int n) {
    if (n == kLanes)
      _mm512_storeu_ps(p, x.v);
    else
      _mm512_mask_storeu_ps(p, tail_mask(n), x.v);
  }
};
// a row block of P pixels x NJ zmm: 4 zmm (64 channels) by 6 pixels is 24 accumulators, the
// 4 weights and the broadcast in the 32 registers
constexpr int kMaxNJ = 4;
constexpr int stem_pixels(int nj) { return nj == 1 ? 16 : nj == 2 ? 14 : nj == 3 ? 8 : 6; }
#else
struct Vec {
  static constexpr int kLanes = kW;
  vf v;
  static Vec load(const float* p) { return {vload(p)}; }
  static Vec set1(float x) { return {vset(x)}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {a.v * b.v + c.v}; }
  // compares keep NaN (NaN < lo and NaN > hi are false)
  static Vec clamp(Vec x, float lo, float hi) {
    const vf l = vset(lo), h = vset(hi);
    vf r = x.v < l ? l : x.v;
    return {r > h ? h : r};
  }
  static Vec leaky(Vec x, float s) { return {x.v < vset(0.0f) ? x.v * s : x.v}; }
  static Vec hardswish(Vec x) {
    Vec r = clamp({x.v + 3.0f}, 0.0f, 6.0f);
    return {x.v * (r.v * (1.0f / 6.0f))};
  }
  static Vec pick(Vec m, Vec v) { return {(v.v > m.v) | (v.v != v.v) ? v.v : m.v}; }
  static void store(float* p, Vec x, int n) {
    if (n == kLanes) {
      vstore(p, x.v);
    } else {
      alignas(64) float t[kLanes];
      vstore(t, x.v);
      std::memcpy(p, t, sizeof(float) * n);
    }
  }
};
// 16 registers on AVX2: 3 vectors (24 channels) by 4 pixels is 12 accumulators, the 3 weights
// and the broadcast
constexpr int kMaxNJ = 3;
constexpr int stem_pixels(int nj) { return nj == 1 ? 12 : nj == 2 ? 6 : 4; }
#endif

inline Vec activate(const StemParams& P, Vec v) {
  switch (P.act) {
    case kActClamp: return Vec::clamp(v, P.lo, P.hi);
    case kActLeaky: return Vec::leaky(v, P.slope);
    case kActHardswish: return Vec::hardswish(v);
    default: return v;
  }
}

// Where a block reads: tap (c, kh, kw) of its pixel p is at
//     p[c * cs + (r0 + kh * kd) * rs + kw * DW + p * SW]
// (the image: r0 the window's top row, kd = DH, rs = W; a zero-padded copy: r0 0, kd 1).
struct StemSrc {
  const float* p;
  int64_t cs, r0, kd, rs;
};

// NP pixels of one output row (y: the first one's output, channel 0), output channels
// [o0, o0 + NJ * lanes) (their packed weights at w; the last vector holds `last` valid
// channels), taps kh in [kh0, kh1).
template <int NJ, int NP>
void stem_block(const StemParams& P, const StemSrc& s, const float* w, float* y, int64_t o0,
                int last, int64_t kh0, int64_t kh1) {
  constexpr int L = Vec::kLanes;
  // (a compile-time window width, unrolled whole, measured slower: g++ then hoists the weight
  // loads of several taps and spills accumulators on AVX2's 16 registers)
  const int64_t KW = P.KW, SW = P.SW, DW = P.DW;
  Vec acc[NP][NJ];
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j) {
    const Vec b = Vec::load(P.b.data() + o0 + j * L);
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) acc[p][j] = b;
  }
  for (int64_t c = 0; c < P.C; ++c) {
    for (int64_t kh = kh0; kh < kh1; ++kh) {
      const float* xr = s.p + c * s.cs + (s.r0 + kh * s.kd) * s.rs;
      const float* wr = w + ((c * P.KH + kh) * KW) * (NJ * L);
      // unrolled: the loop control is a third of the uops of a 12-FMA tap otherwise
#pragma GCC unroll 4
      for (int64_t kw = 0; kw < KW; ++kw) {
        const float* xs = xr + kw * DW;
        const float* ws = wr + kw * (NJ * L);
        Vec wv[NJ];
#pragma GCC unroll 16
        for (int j = 0; j < NJ; ++j) wv[j] = Vec::load(ws + j * L);
#pragma GCC unroll 16
        for (int p = 0; p < NP; ++p) {
          const Vec b = Vec::set1(xs[p * SW]);
#pragma GCC unroll 16
          for (int j = 0; j < NJ; ++j) acc[p][j] = Vec::fma(wv[j], b, acc[p][j]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p)
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j)
      Vec::store(y + p * P.O + o0 + j * L, activate(P, acc[p][j]), j == NJ - 1 ? last : L);
}

// stem_block<NJ, np> for a run-time np in [1, NP]
template <int NJ, int NP>
void stem_block_n(int np, const StemParams& P, const StemSrc& s, const float* w, float* y,
                  int64_t o0, int last, int64_t kh0, int64_t kh1) {
  if constexpr (NP > 0) {
    if (np == NP)
      stem_block<NJ, NP>(P, s, w, y, o0, last, kh0, kh1);
    else
      stem_block_n<NJ, NP - 1>(np, P, s, w, y, o0, last, kh0, kh1);
  }
}

// first and one-past-last tap k with 0 <= start + k * dil < size
void clip_taps(int64_t start, int64_t dil, int64_t K, int64_t size, int64_t& k0, int64_t& k1) {
  k0 = 0;
  while (k0 < K && start + k0 * dil < 0) ++k0;
  k1 = K;
  while (k1 > k0 && start + (k1 - 1) * dil >= size) --k1;
}

// Floats of the zero-padded window copy of up to stem_pixels(nj) pixels.
int64_t stem_window_floats(const StemParams& P, int64_t np) {
  return P.C * P.KH * ((np - 1) * P.SW + (P.KW - 1) * P.DW + 1);
}

// One output row (xn: its image, y: its first pixel's output), output channels
// [o0, o0 + NJ * lanes). Pixels whose whole window lies within the image's width
// ([ow_lo, ow_hi)) read the image in blocks of NP, their rows' taps clipped to the image; the
// others (the borders and the last block's remainder) read a zero-padded copy of their window,
// so they too run NP at a time rather than one by one (one pixel alone has too few
// accumulators to hide the FMA latency: 3 border pixels cost as much as 12 in blocks).
template <int NJ>
void stem_row(const StemParams& P, const float* xn, float* y, int64_t oh, const float* w,
              int64_t o0, int last, int64_t ow_lo, int64_t ow_hi, float* window) {
  constexpr int NP = stem_pixels(NJ);
  const int64_t ih0 = oh * P.SH - P.PT;
  int64_t kh0, kh1;
  clip_taps(ih0, P.DH, P.KH, P.H, kh0, kh1);
  int64_t ow = ow_lo;
  for (; ow + NP <= ow_hi; ow += NP) {
    const StemSrc s{xn + ow * P.SW - P.PL, P.H * P.W, ih0, P.DH, P.W};
    stem_block<NJ, NP>(P, s, w, y + ow * P.O, o0, last, kh0, kh1);
  }
  auto padded = [&](int64_t a, int64_t b) {
    for (; a < b; a += NP) {
      const int64_t np = std::min<int64_t>(NP, b - a);
      const int64_t sw = (np - 1) * P.SW + (P.KW - 1) * P.DW + 1, iw0 = a * P.SW - P.PL;
      for (int64_t c = 0; c < P.C; ++c)
        for (int64_t kh = 0; kh < P.KH; ++kh) {
          float* d = window + (c * P.KH + kh) * sw;
          const int64_t ih = ih0 + kh * P.DH;
          if (ih < 0 || ih >= P.H) {
            std::fill(d, d + sw, 0.0f);
            continue;
          }
          const float* xr = xn + (c * P.H + ih) * P.W;
          for (int64_t i = 0; i < sw; ++i) {
            const int64_t iw = iw0 + i;
            d[i] = iw >= 0 && iw < P.W ? xr[iw] : 0.0f;
          }
        }
      const StemSrc s{window, P.KH * sw, 0, 1, sw};
      stem_block_n<NJ, NP>((int)np, P, s, w, y + a * P.O, o0, last, 0, P.KH);
    }
  };
  padded(0, ow_lo);
  padded(ow, P.OW);
}

// The output columns whose whole window lies within the image's width: [lo, hi).
void interior_cols(const StemParams& P, int64_t& lo, int64_t& hi) {
  // ow * SW - PL >= 0 and ow * SW - PL + (KW - 1) * DW < W
  lo = std::min<int64_t>(P.OW, (P.PL + P.SW - 1) / P.SW);
  const int64_t span = P.W - 1 - (P.KW - 1) * P.DW + P.PL;  // ow * SW <= span
  hi = span < 0 ? lo : std::max(lo, std::min(P.OW, span / P.SW + 1));
}

// The thread's zero-padded window copy (stem_row's `window`).
float* stem_window(const StemParams& P) {
  thread_local GrowBuf window_buf;
  return static_cast<float*>(
      window_buf.get(sizeof(float) * stem_window_floats(P, stem_pixels(1))));
}

// Output row oh of image xn, all channels, to yr ([OW][O]).
void stem_full_row(const StemParams& P, const float* xn, float* yr, int64_t oh, int64_t ow_lo,
                   int64_t ow_hi, float* window) {
  constexpr int L = Vec::kLanes;
  const int64_t K = P.C * P.KH * P.KW;
  for (size_t i = 0; i < P.nj.size(); ++i) {
    const int nj = P.nj[i];
    const int64_t o0 = P.v0[i] * L;
    const float* w = P.w.data() + K * o0;
    const int last = (int)std::min<int64_t>(L, P.O - o0 - (nj - 1) * L);
    switch (nj) {
      case 1: stem_row<1>(P, xn, yr, oh, w, o0, last, ow_lo, ow_hi, window); break;
      case 2: stem_row<2>(P, xn, yr, oh, w, o0, last, ow_lo, ow_hi, window); break;
      case 3: stem_row<3>(P, xn, yr, oh, w, o0, last, ow_lo, ow_hi, window); break;
#ifdef RTINFER_AVX512
      case 4: stem_row<4>(P, xn, yr, oh, w, o0, last, ow_lo, ow_hi, window); break;
#endif
    }
  }
}

void stem_rows(const StemParams& P, const float* x, float* y, int64_t r0, int64_t r1) {
  int64_t ow_lo, ow_hi;
  interior_cols(P, ow_lo, ow_hi);
  float* window = stem_window(P);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / P.OH, oh = r % P.OH;
    stem_full_row(P, x + n * P.C * P.H * P.W, y + r * P.OW * P.O, oh, ow_lo, ow_hi, window);
  }
}

// -- the stem and the max pool after it as one step ---------------------------------------------

// A max pool over the stem's output [N, OH, OW, O]: window KH x KW, stride, pads (the end pads
// include ceil_mode's extra row or column), dilation; dst [N, POH, POW, O].
struct PoolWin {
  int64_t KH, KW, SH, SW, PT, PL, DH, DW, POH, POW;
  // per pool row / column: the first and one-past-last tap inside the stem output (taps on the
  // padding are skipped: torch pads with -inf)
  std::vector<int64_t> kh0, kh1, kw0, kw1;
};

// dst[i] = the max of rows[0..nrows)[i] for i < n (nrows >= 1), NaN-keeping, in one pass (the
// running max stays in a register).
void max_rows(float* dst, const float* const* rows, int nrows, int64_t n) {
  constexpr int L = Vec::kLanes;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    Vec m = Vec::load(rows[0] + i);
    for (int r = 1; r < nrows; ++r) m = Vec::pick(m, Vec::load(rows[r] + i));
    Vec::store(dst + i, m, L);
  }
  for (; i < n; ++i) {
    float m = rows[0][i];
    for (int r = 1; r < nrows; ++r) m = pool_pick(m, rows[r][i]);
    dst[i] = m;
  }
}

// Pool rows t in [t0, t1) (t = n * POH + ph). The stem rows they read go to a per-thread ring
// of R = (KH - 1) * DH + 1 rows (all one pool row spans), slot r % R holding stem row r: the
// rows of a pool row are R consecutive ones at most, so they take distinct slots, and a row
// the next pool row shares is still in its slot (a row that could overwrite it lies past the
// next window). Each stem row is computed once in a band; two neighbouring threads compute
// the row their bands share each in its own ring. The max is separable: first over the
// window's rows (one long contiguous loop), then over its columns: a quarter fewer picks than
// window by window for 3x3/2, and no per-pixel tap bookkeeping in the long loop (window by
// window, compiled from plain loops, measured 0.1 ms slower for ResNet-18's 3->64 stem).
void stem_pool_rows(const StemParams& P, const PoolWin& Q, const float* x, float* y, int64_t t0,
                    int64_t t1) {
  constexpr int L = Vec::kLanes;
  const int64_t O = P.O, row = P.OW * O, R = (Q.KH - 1) * Q.DH + 1;
  thread_local GrowBuf ring_buf;
  // R stem rows, then the row of their vertical max
  float* ring = static_cast<float*>(ring_buf.get(sizeof(float) * (R + 1) * row));
  float* vmax = ring + R * row;
  // the stem row (n * OH + oh) each slot holds; reset per call, so no call trusts a ring an
  // earlier call (another plan, another input) left behind
  thread_local std::vector<int64_t> tag;
  thread_local std::vector<const float*> rows;
  tag.assign((size_t)R, -1);  // (thread-local: no allocation per call once grown)
  rows.resize((size_t)Q.KH);
  int64_t ow_lo, ow_hi;
  interior_cols(P, ow_lo, ow_hi);
  float* window = stem_window(P);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / Q.POH, ph = t % Q.POH;
    const float* xn = x + n * P.C * P.H * P.W;
    int nrows = 0;
    for (int64_t kh = Q.kh0[ph]; kh < Q.kh1[ph]; ++kh) {
      const int64_t oh = ph * Q.SH - Q.PT + kh * Q.DH, slot = oh % R;
      float* yr = ring + slot * row;
      if (tag[(size_t)slot] != n * P.OH + oh) {
        stem_full_row(P, xn, yr, oh, ow_lo, ow_hi, window);
        tag[(size_t)slot] = n * P.OH + oh;
      }
      rows[(size_t)nrows++] = yr;
    }
    float* yt = y + t * Q.POW * O;
    if (nrows == 0) {  // a window on padding rows only: -inf, as the pool step gives
      std::fill(yt, yt + Q.POW * O, -kInf);
      continue;
    }
    max_rows(vmax, rows.data(), nrows, row);
    for (int64_t pw = 0; pw < Q.POW; ++pw) {
      float* yp = yt + pw * O;
      const int64_t k0 = Q.kw0[pw], k1 = Q.kw1[pw], iw0 = pw * Q.SW - Q.PL;
      if (k0 >= k1) {
        std::fill(yp, yp + O, -kInf);
        continue;
      }
      const float* first = vmax + (iw0 + k0 * Q.DW) * O;
      const int64_t taps = k1 - k0, step = Q.DW * O;
      int64_t c = 0;
      for (; c + L <= O; c += L) {
        Vec m = Vec::load(first + c);
        for (int64_t k = 1; k < taps; ++k) m = Vec::pick(m, Vec::load(first + c + k * step));
        Vec::store(yp + c, m, L);
      }
      for (; c < O; ++c) {
        float m = first[c];
        for (int64_t k = 1; k < taps; ++k) m = pool_pick(m, first[c + k * step]);
        yp[c] = m;
      }
    }
  }
}

// The stem's parameters, checked (errors name the step) and its weight packed.
std::shared_ptr<StemParams> make_stem(const std::string& name, std::vector<int64_t> src_shape,
                                      const torch::Tensor& weight,
                                      const std::optional<torch::Tensor>& bias,
                                      const std::vector<int64_t>& stride,
                                      const std::vector<int64_t>& pad_begin,
                                      const std::vector<int64_t>& pad_end,
                                      const std::vector<int64_t>& dilation,
                                      const std::string& activation, double alpha, double beta) {
  auto bad = [&](const std::string& why) { throw std::invalid_argument(name + ": " + why); };
  if (src_shape.size() != 4) bad("the stem convolution's src must be [N, C, H, W], got " +
                                 str(src_shape));
  for (auto d : src_shape)
    if (d <= 0) bad("bad src shape " + str(src_shape));
  if (weight.dim() != 4 || weight.scalar_type() != torch::kFloat)
    bad("the weight must be a float32 [O, C, KH, KW] tensor, got " +
        str(weight.sizes().vec()) + " " + std::string(c10::toString(weight.scalar_type())));
  if (stride.size() != 2 || pad_begin.size() != 2 || pad_end.size() != 2 || dilation.size() != 2)
    bad("stride, pad_begin, pad_end and dilation need 2 values each");
  auto P = std::make_shared<StemParams>();
  P->N = src_shape[0], P->C = src_shape[1], P->H = src_shape[2], P->W = src_shape[3];
  P->O = weight.size(0), P->KH = weight.size(2), P->KW = weight.size(3);
  P->SH = stride[0], P->SW = stride[1], P->PT = pad_begin[0], P->PL = pad_begin[1];
  P->DH = dilation[0], P->DW = dilation[1];
  if (weight.size(1) != P->C || P->O < 1 || P->KH < 1 || P->KW < 1)
    bad("the weight " + str(weight.sizes().vec()) + " does not fit src channels " +
        std::to_string(P->C));
  for (int i = 0; i < 2; ++i)
    if (stride[i] < 1 || dilation[i] < 1 || pad_begin[i] < 0 || pad_end[i] < 0)
      bad("stride and dilation must be >= 1 and pads >= 0, got stride " + str(stride) +
          ", dilation " + str(dilation) + ", pads " + str(pad_begin) + " " + str(pad_end));
  const int64_t span_h = P->DH * (P->KH - 1) + 1, span_w = P->DW * (P->KW - 1) + 1;
  const int64_t hp = P->H + pad_begin[0] + pad_end[0], wp = P->W + pad_begin[1] + pad_end[1];
  if (hp < span_h || wp < span_w)
    bad("the kernel " + str(weight.sizes().vec()) + " does not fit the padded src " +
        str(src_shape));
  P->OH = (hp - span_h) / P->SH + 1, P->OW = (wp - span_w) / P->SW + 1;

  if (activation == "none") {
    P->act = kActNone;
  } else if (activation == "relu" || activation == "clip") {
    P->act = kActClamp;
    P->lo = activation == "relu" ? 0.0f : (float)alpha;
    P->hi = activation == "relu" ? kInf : (float)beta;
    if (!(P->lo <= P->hi))
      bad("clip needs alpha (min) <= beta (max), got " + std::to_string(alpha) + " > " +
          std::to_string(beta));
  } else if (activation == "leaky_relu") {
    P->act = kActLeaky, P->slope = (float)alpha;
  } else if (activation == "hardswish") {
    P->act = kActHardswish;
  } else {
    bad("the stem convolution fuses none, relu, clip, leaky_relu or hardswish, not '" +
        activation + "'");
  }

  constexpr int L = Vec::kLanes;
  P->Op = round_up(P->O, L);
  const int64_t K = P->C * P->KH * P->KW;
  const int64_t nvec = P->Op / L, nchunk = (nvec + kMaxNJ - 1) / kMaxNJ;
  for (int64_t i = 0, v0 = 0; i < nchunk; ++i) {
    const int nj = (int)((nvec - v0) / (nchunk - i));  // the larger chunks last
    P->nj.push_back(nj), P->v0.push_back(v0);
    v0 += nj;
  }
  P->w.assign((size_t)(K * P->Op), 0.0f);
  P->b.assign((size_t)P->Op, 0.0f);
  auto wc = weight.contiguous();
  const float* wd = wc.data_ptr<float>();
  for (size_t i = 0; i < P->nj.size(); ++i) {  // [O][K] -> per chunk [K][nj * lanes]
    const int64_t o0 = P->v0[i] * L, width = P->nj[i] * L;
    float* wchunk = P->w.data() + K * o0;
    for (int64_t o = o0; o < std::min(P->O, o0 + width); ++o)
      for (int64_t k = 0; k < K; ++k) wchunk[k * width + (o - o0)] = wd[o * K + k];
  }
  std::vector<float> bv = float_vector(bias, P->O, name + ": the bias");
  std::copy(bv.begin(), bv.end(), P->b.begin());
  return P;
}

}  // namespace

void add_conv_stem(Plan& p, const std::string& name, int x, int y, std::vector<int64_t> src_shape,
                   torch::Tensor weight, std::optional<torch::Tensor> bias,
                   std::vector<int64_t> stride, std::vector<int64_t> pad_begin,
                   std::vector<int64_t> pad_end, std::vector<int64_t> dilation,
                   const std::string& activation, double alpha, double beta,
                   std::vector<int64_t> dst_shape) {
  auto P = make_stem(name, src_shape, weight, bias, stride, pad_begin, pad_end, dilation,
                     activation, alpha, beta);
  // the dst slot was sized for dst_shape: a window that gives another shape would write past it
  const std::vector<int64_t> computed = {P->N, P->O, P->OH, P->OW};
  if (dst_shape != computed)
    throw std::invalid_argument(name + ": the window gives an output of " + str(computed) +
                                ", the dst is " + str(dst_shape));
  p.add_step({name, [P, x, y](Ctx& ctx) {
    const float* xp = ctx.at<float>(x);
    float* yp = ctx.at<float>(y);
    const int64_t rows = P->N * P->OH;
    const int64_t macs = rows * P->OW * P->Op * P->C * P->KH * P->KW;
    // a thread takes at least ~256k MACs (tens of microseconds), else fork/join dominates
    parallel_for(threads_for(ctx, macs, 1 << 18), rows,
                 [&](int64_t b, int64_t e) { stem_rows(*P, xp, yp, b, e); });
  }});
}

void add_conv_stem_pool(Plan& p, const std::string& name, int x, int y,
                        std::vector<int64_t> src_shape, torch::Tensor weight,
                        std::optional<torch::Tensor> bias, std::vector<int64_t> stride,
                        std::vector<int64_t> pad_begin, std::vector<int64_t> pad_end,
                        std::vector<int64_t> dilation, const std::string& activation,
                        double alpha, double beta, std::vector<int64_t> pool_kernel,
                        std::vector<int64_t> pool_stride, std::vector<int64_t> pool_pad_begin,
                        std::vector<int64_t> pool_pad_end, std::vector<int64_t> pool_dilation,
                        std::vector<int64_t> dst_shape) {
  auto bad = [&](const std::string& why) { throw std::invalid_argument(name + ": " + why); };
  auto P = make_stem(name, src_shape, weight, bias, stride, pad_begin, pad_end, dilation,
                     activation, alpha, beta);
  if (pool_kernel.size() != 2 || pool_stride.size() != 2 || pool_pad_begin.size() != 2 ||
      pool_pad_end.size() != 2 || pool_dilation.size() != 2)
    bad("the max pool's kernel, stride, pad_begin, pad_end and dilation need 2 values each");
  for (int i = 0; i < 2; ++i)
    if (pool_kernel[i] < 1 || pool_stride[i] < 1 || pool_dilation[i] < 1 ||
        pool_pad_begin[i] < 0 || pool_pad_end[i] < 0)
      bad("the max pool's kernel, stride and dilation must be >= 1 and its pads >= 0, got "
          "kernel " + str(pool_kernel) + ", stride " + str(pool_stride) + ", dilation " +
          str(pool_dilation) + ", pads " + str(pool_pad_begin) + " " + str(pool_pad_end));
  auto Q = std::make_shared<PoolWin>();
  Q->KH = pool_kernel[0], Q->KW = pool_kernel[1], Q->SH = pool_stride[0], Q->SW = pool_stride[1];
  Q->PT = pool_pad_begin[0], Q->PL = pool_pad_begin[1];
  Q->DH = pool_dilation[0], Q->DW = pool_dilation[1];
  const int64_t span_h = Q->DH * (Q->KH - 1) + 1, span_w = Q->DW * (Q->KW - 1) + 1;
  const int64_t hp = P->OH + Q->PT + pool_pad_end[0], wp = P->OW + Q->PL + pool_pad_end[1];
  const std::vector<int64_t> stem_out = {P->N, P->O, P->OH, P->OW};
  if (hp < span_h || wp < span_w)
    bad("the max pool's kernel " + str(pool_kernel) + " does not fit the padded stem output " +
        str(stem_out));
  Q->POH = (hp - span_h) / Q->SH + 1, Q->POW = (wp - span_w) / Q->SW + 1;
  // the dst slot was sized for dst_shape (ceil_mode arrives as a larger pad_end)
  const std::vector<int64_t> computed = {P->N, P->O, Q->POH, Q->POW};
  if (dst_shape != computed)
    bad("the stem output " + str(stem_out) + " max-pooled gives " + str(computed) +
        ", the dst is " + str(dst_shape));
  Q->kh0.resize(Q->POH), Q->kh1.resize(Q->POH), Q->kw0.resize(Q->POW), Q->kw1.resize(Q->POW);
  for (int64_t o = 0; o < Q->POH; ++o)
    clip_taps(o * Q->SH - Q->PT, Q->DH, Q->KH, P->OH, Q->kh0[o], Q->kh1[o]);
  for (int64_t o = 0; o < Q->POW; ++o)
    clip_taps(o * Q->SW - Q->PL, Q->DW, Q->KW, P->OW, Q->kw0[o], Q->kw1[o]);

  p.add_step({name, [P, Q, x, y](Ctx& ctx) {
    const float* xp = ctx.at<float>(x);
    float* yp = ctx.at<float>(y);
    // threads as add_conv_stem's: the stem's multiply-adds are the work
    const int64_t macs = P->N * P->OH * P->OW * P->Op * P->C * P->KH * P->KW;
    parallel_for(threads_for(ctx, macs, 1 << 18), P->N * Q->POH,
                 [&](int64_t b, int64_t e) { stem_pool_rows(*P, *Q, xp, yp, b, e); });
  }});
}

}  // namespace rtinfer
