// rtinfer's own Winograd F(6x6, 3x3) for a 3x3, stride-1, padding-1 convolution over NHWC: the
// input and output transforms written here, on 16 channels at a time straight from and into
// NHWC (no layout change), and the 64 products of the transformed tiles with the transformed
// weight as one batched oneDNN matmul ([64, tiles, C] x [64, C, O], the weight prepacked once).
// Unlike NNPACK's (cpu_conv_winograd.cpp, AVX2 code), the GEMM runs at the level oneDNN
// dispatches, AVX-512 included. add_conv races it with oneDNN's direct kernel and NNPACK's.
//
// The transforms (B^T, G, A^T for the points 0, +-1, +-2, +-1/2 and infinity; Lavin and Gray,
// "Fast Algorithms for Convolutional Neural Networks", 2015) are checked against the direct sum
// by the tests; B^T's and A^T's coefficients are exact in binary, G's are applied in double once.
#include "conv_winograd.h"

#include "dnnl_common.h"

namespace rtinfer {

namespace {

using v16 = float __attribute__((vector_size(64)));  // 16 channels of one pixel

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

// t = B^T d along one axis (8 values in, 8 out)
inline void in8(const v16* d, v16* t) {
  const v16 a = d[2] + d[6] - 4.25f * d[4], b = d[1] + d[5] - 4.25f * d[3];
  const v16 c = 0.25f * d[2] - 1.25f * d[4] + d[6], e = 0.5f * d[1] - 2.5f * d[3] + 2.0f * d[5];
  const v16 f = 4.0f * d[2] - 5.0f * d[4] + d[6], g = 2.0f * d[1] - 2.5f * d[3] + 0.5f * d[5];
  t[0] = d[0] - d[6] + 5.25f * (d[4] - d[2]);
  t[1] = a + b;
  t[2] = a - b;
  t[3] = c + e;
  t[4] = c - e;
  t[5] = f + g;
  t[6] = f - g;
  t[7] = d[7] - d[1] + 5.25f * (d[3] - d[5]);
}

// y = A^T m along one axis (8 values in, 6 out)
inline void out8(const v16* m, v16* y) {
  const v16 a1 = m[1] + m[2], s1 = m[1] - m[2], a2 = m[3] + m[4], s2 = m[3] - m[4];
  const v16 a3 = m[5] + m[6], s3 = m[5] - m[6];
  y[0] = m[0] + a1 + a2 + a3;
  y[1] = s1 + 2.0f * s2 + 0.5f * s3;
  y[2] = a1 + 4.0f * a2 + 0.25f * a3;
  y[3] = s1 + 8.0f * s2 + 0.125f * s3;
  y[4] = a1 + 16.0f * a2 + 0.0625f * a3;
  y[5] = s1 + 32.0f * s2 + 0.03125f * s3 + m[7];
}

constexpr double kG[8][3] = {{1, 0, 0},
                             {-2.0 / 9, -2.0 / 9, -2.0 / 9},
                             {-2.0 / 9, 2.0 / 9, -2.0 / 9},
                             {1.0 / 90, 1.0 / 45, 2.0 / 45},
                             {1.0 / 90, -1.0 / 45, 2.0 / 45},
                             {32.0 / 45, 16.0 / 45, 8.0 / 45},
                             {32.0 / 45, -16.0 / 45, 8.0 / 45},
                             {0, 0, 1}};
constexpr int64_t kTile = 6;
// B^T's largest row sum is 15 and A^T's 67.1: a value grows at most 15^2 * 67.1^2 = 1.01e6 times
// through the two 2-d transforms (the products with the weight add C * max|U|)
constexpr double kGain = 2e6;

}  // namespace

struct OwnWino {
  int64_t N = 0, C = 0, O = 0, H = 0, W = 0, TH = 0, TW = 0, T = 0;
  std::vector<float> bias;
  int act = 0, residual = 0;  // as WinoConv's
  float limit = 0.0f;
  dnnl::matmul prim;
  memory::desc v_md, m_md, sp_md;
  memory u;  // the transformed weight, packed for prim
  int64_t v_off = 0, m_off = 0, total = 0;  // scratch: oneDNN's, then V, then M (bytes)
};

namespace {

// V[xi][t][c] for tiles [t0, t1) (t = (n * TH + ty) * TW + tx) and channel block cb
void input_tiles(const OwnWino& P, const float* x, float* V, int64_t t0, int64_t t1) {
  const v16 zero = {};
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (P.TH * P.TW), ty = t / P.TW % P.TH, tx = t % P.TW;
    for (int64_t cb = 0; cb < P.C; cb += 16) {
      v16 d[8][8], tt[8][8];
      for (int i = 0; i < 8; ++i) {
        const int64_t yy = ty * kTile - 1 + i;
        for (int j = 0; j < 8; ++j) {
          const int64_t xx = tx * kTile - 1 + j;
          d[i][j] = (yy >= 0 && yy < P.H && xx >= 0 && xx < P.W)
                        ? load16(x + ((n * P.H + yy) * P.W + xx) * P.C + cb)
                        : zero;
        }
      }
      for (int j = 0; j < 8; ++j) {  // along y
        v16 col[8], r[8];
        for (int i = 0; i < 8; ++i) col[i] = d[i][j];
        in8(col, r);
        for (int i = 0; i < 8; ++i) tt[i][j] = r[i];
      }
      for (int i = 0; i < 8; ++i) {  // along x
        v16 r[8];
        in8(tt[i], r);
        for (int j = 0; j < 8; ++j) store16(V + ((i * 8 + j) * P.T + t) * P.C + cb, r[j]);
      }
    }
  }
}

// y (NHWC) for tiles [t0, t1) from M[xi][t][o], with bias, residual and relu (NaN-keeping)
void output_tiles(const OwnWino& P, const float* M, const float* r, float* y, int64_t t0,
                  int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (P.TH * P.TW), ty = t / P.TW % P.TH, tx = t % P.TW;
    for (int64_t ob = 0; ob < P.O; ob += 16) {
      v16 u[6][8];
      for (int j = 0; j < 8; ++j) {  // along y
        v16 col[8], o6[6];
        for (int i = 0; i < 8; ++i) col[i] = load16(M + ((i * 8 + j) * P.T + t) * P.O + ob);
        out8(col, o6);
        for (int i = 0; i < 6; ++i) u[i][j] = o6[i];
      }
      const v16 b = load16(P.bias.data() + ob);
      for (int i = 0; i < 6; ++i) {
        const int64_t yy = ty * kTile + i;
        if (yy >= P.H) break;
        v16 row[6];
        out8(u[i], row);
        for (int j = 0; j < 6; ++j) {
          const int64_t xx = tx * kTile + j;
          if (xx >= P.W) break;
          const int64_t at = ((n * P.H + yy) * P.W + xx) * P.O + ob;
          v16 v = row[j] + b;
          if (P.residual == 1) v += load16(r + at);
          if (P.act) v = v < 0.0f ? v16{} : v;  // NaN compares false and stays
          if (P.residual == 2) v += load16(r + at);
          store16(y + at, v);
        }
      }
    }
  }
}

bool all_within(const float* p, int64_t n, float limit, int threads) {
  std::atomic<bool> ok{true};
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(threads, n / 65536));
  parallel_for(nt, n, [&](int64_t b, int64_t e) {
    if (!within(p + b, e - b, limit)) ok = false;
  });
  return ok;
}

}  // namespace

std::shared_ptr<OwnWino> make_own_wino(const std::vector<int64_t>& src_shape,
                                       const torch::Tensor& weight,
                                       const std::optional<torch::Tensor>& bias,
                                       const std::string& activation,
                                       const std::string& residual_mode, int threads) {
  if (!wino_applies(src_shape, weight, activation)) return nullptr;
  auto P = std::make_shared<OwnWino>();
  P->N = src_shape[0], P->C = src_shape[1], P->H = src_shape[2], P->W = src_shape[3];
  P->O = weight.size(0);
  if (P->C % 16 != 0 || P->O % 16 != 0) return nullptr;  // whole 16-channel vectors only
  P->TH = (P->H + kTile - 1) / kTile, P->TW = (P->W + kTile - 1) / kTile;
  P->T = P->N * P->TH * P->TW;
  P->act = activation == "relu";
  P->residual = residual_mode == "pre" ? 1 : residual_mode == "post" ? 2 : 0;
  P->bias = float_vector(bias, P->O, "the bias");
  if (P->bias.empty()) P->bias.assign((size_t)P->O, 0.0f);
  auto w = weight.to(torch::kDouble).contiguous();
  if (!torch::isfinite(w).all().item<bool>() ||
      !std::all_of(P->bias.begin(), P->bias.end(), [](float v) { return std::isfinite(v); }))
    return nullptr;
  // U[xi][c][o] = (G g G^T)[i][j], xi = 8 i + j
  auto U = torch::empty({64, P->C, P->O}, torch::kFloat32);
  float* u = U.data_ptr<float>();
  const double* g = w.data_ptr<double>();
  float umax = 0.0f;
  for (int64_t o = 0; o < P->O; ++o)
    for (int64_t c = 0; c < P->C; ++c) {
      const double* k = g + (o * P->C + c) * 9;
      double gk[8][3];
      for (int i = 0; i < 8; ++i)
        for (int b = 0; b < 3; ++b)
          gk[i][b] = kG[i][0] * k[b] + kG[i][1] * k[3 + b] + kG[i][2] * k[6 + b];
      for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 8; ++j) {
          const float v = (float)(gk[i][0] * kG[j][0] + gk[i][1] * kG[j][1] + gk[i][2] * kG[j][2]);
          u[((i * 8 + j) * P->C + c) * P->O + o] = v;
          umax = std::max(umax, std::fabs(v));
        }
    }
  P->limit = (float)std::min<double>(std::numeric_limits<float>::max(),
                                     1e37 / (kGain * (double)P->C * std::max(umax, 1e-30f)));
  using tag = memory::format_tag;
  P->v_md = memory::desc({64, P->T, P->C}, f32, tag::abc);
  P->m_md = memory::desc({64, P->T, P->O}, f32, tag::abc);
  memory::desc u_user({64, P->C, P->O}, f32, tag::abc), u_any({64, P->C, P->O}, f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  CreationThreads creation(threads, 64.0 * P->T * P->C * P->O);
  dnnl::matmul::primitive_desc pd(cpu_engine(), P->v_md, u_any, P->m_md, attr);
  if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0) return nullptr;
  P->prim = dnnl::matmul(pd);
  P->u = pack(U, u_user, pd.weights_desc());
  P->sp_md = pd.scratchpad_desc();
  auto up = [](int64_t b) { return (b + 63) / 64 * 64; };
  P->v_off = up((int64_t)P->sp_md.get_size());
  P->m_off = P->v_off + up(64 * P->T * P->C * 4);
  P->total = P->m_off + up(64 * P->T * P->O * 4);
  return P;
}

int64_t own_wino_scratch(const OwnWino& P) { return P.total; }

bool run_own_wino(const OwnWino& P, const float* x, float* y, const float* r, char* scratch,
                  dnnl::stream& stream, int threads) {
  const int nt = std::max(threads, 1);
  if (!all_within(x, P.N * P.H * P.W * P.C, P.limit, nt)) return false;
  float* V = reinterpret_cast<float*>(scratch + P.v_off);
  float* M = reinterpret_cast<float*>(scratch + P.m_off);
  parallel_for(nt, P.T, [&](int64_t b, int64_t e) { input_tiles(P, x, V, b, e); });
  memory vm(P.v_md, cpu_engine(), V), mm(P.m_md, cpu_engine(), M);
  memory sp(P.sp_md, cpu_engine(), scratch);
  P.prim.execute(stream, {{DNNL_ARG_SRC, vm},
                          {DNNL_ARG_WEIGHTS, P.u},
                          {DNNL_ARG_DST, mm},
                          {DNNL_ARG_SCRATCHPAD, sp}});
  stream.wait();
  parallel_for(nt, P.T, [&](int64_t b, int64_t e) { output_tiles(P, M, r, y, b, e); });
  return true;
}

}  // namespace rtinfer
