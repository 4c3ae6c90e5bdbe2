// qlinear_dynamic (docs/int8.md): a linear whose f32 activation is quantized per row at run
// time. Three phases in one step:
//   1. each row of x [M, K] -> u8 codes with its own scale and zero point (the row's range
//      widened to contain 0; rtinfer.ir.ops.quant.dynamic_row_params, bit for bit),
//   2. a oneDNN u8 x s8 -> s32 matmul against the prepacked [K, N] weight (VNNI where the CPU
//      has it),
//   3. the epilogue: y = sx[m] * sw[n] * (acc - zp[m] * colsum[n]) + bias[n] (+ a "pre"
//      residual), the activation, then a "post" residual.
// A thread takes a block of rows through all three (RowBlock, DynamicLinear::run); the codes and
// the s32 accumulators live in per-thread buffers of the thread that runs the block.
#include "dnnl_common.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

namespace rtinfer {

namespace {

constexpr float kLevels = 255.f;
constexpr float kRoundMagic = 12582912.f;  // 1.5 * 2^23: (v + m) - m rounds half to even

// The row's range widened to contain 0 (so the codes represent 0 exactly); false when the row
// holds a NaN or an infinity (x - x is NaN there, 0 elsewhere; min/max would drop a NaN).
bool row_range(const float* x, int64_t k, float& lo, float& hi) {
#ifdef RTINFER_AVX512
  __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps(), vnan = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(k - i), x + i);  // masked lanes: 0
    vlo = _mm512_min_ps(vlo, v);
    vhi = _mm512_max_ps(vhi, v);
    vnan = _mm512_add_ps(vnan, _mm512_sub_ps(v, v));
  }
  lo = _mm512_reduce_min_ps(vlo);
  hi = _mm512_reduce_max_ps(vhi);
  return _mm512_reduce_add_ps(vnan) == 0.f;
#else
  float l = 0.f, h = 0.f, nan = 0.f;
#pragma omp simd reduction(min : l) reduction(max : h) reduction(+ : nan)
  for (int64_t i = 0; i < k; ++i) {
    l = x[i] < l ? x[i] : l;
    h = x[i] > h ? x[i] : h;
    nan += x[i] - x[i];
  }
  lo = l, hi = h;
  return nan == 0.f;
#endif
}

// Codes of one row: clamp(rint(x / scale) + zp, 0, 255); |x / scale| <= 255 by construction.
void quantize_row(const float* x, int64_t k, float scale, float zp, uint8_t* q) {
#ifdef RTINFER_AVX512
  const __m512 s = _mm512_set1_ps(scale), z = _mm512_set1_ps(zp);
  const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(kLevels);
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 m = tail_mask(k - i);
    __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, x + i), s);  // a division: bit-exact
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, z), zero), top);
    _mm_mask_storeu_epi8(q + i, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
  }
#else
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) {
    float v = ((x[i] / scale + kRoundMagic) - kRoundMagic) + zp;
    v = v < 0.f ? 0.f : (v > kLevels ? kLevels : v);
    q[i] = (uint8_t)(int32_t)v;
  }
#endif
}

// One row block's primitives: the u8 x s8 -> s32 matmul of `rows` rows (created for one
// thread: a block runs inside rtinfer's parallel region, where oneDNN runs sequentially) and the
// oneDNN activation over its rows * N outputs.
struct RowBlock {
  int64_t rows = 0;
  dnnl::matmul prim;
  memory packed;  // the weight in the layout this primitive chose (shared when equal)
  memory::desc src_md, acc_md, scratch_md;
  std::optional<dnnl::eltwise_forward> act;
  memory::desc act_md;
};

struct DynamicLinear {
  std::string name;
  int64_t M = 0, K = 0, N = 0;
  int x = -1, dst = -1, residual = -1;
  bool pre = false, post = false;  // where the residual is added: before / after the activation
  // The rows are cut into blocks of `full.rows` (the last one `tail.rows`, 0: none), one block a
  // thread at a time: each block is quantized, multiplied and finished while its codes and
  // accumulators are still in the thread's cache, in one parallel region (one fork/join per
  // step instead of four: quantize, matmul, epilogue, activation).
  RowBlock full, tail;
  std::vector<float> w_scale, colsum, bias;  // [N] each (bias empty: none)
  Tail clamp;  // relu / clip / leaky with slope 0: rtinfer's NaN-keeping clamp
  bool has_clamp = false;
  bool serial = false;  // too little work for a fork/join: every block on the calling thread

  int64_t blocks() const { return (M + full.rows - 1) / full.rows; }

  // One output row: y = (acc - zp * colsum) * (sx * sw) (+ bias) (+ the pre residual).
  // acc - zp * colsum is exact in int32 (|.| <= 255 * 127 * K); in f32 it rounds once (fused).
  // Written out for AVX-512: the compiler's own vectorization of this loop (bias and residual
  // optional) took 80% of the matmul's time in MiniLM, this one about 20% (cycle counters, one
  // thread).
  template <bool kBias, bool kResidual>
  void finish_row(const int32_t* a, float s, float z, const float* bp, const float* rm,
                  float* ym) const {
    const float* cs = colsum.data();
    const float* ws = w_scale.data();
#ifdef RTINFER_AVX512
    const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
    for (int64_t n = 0; n < N; n += 16) {
      const __mmask16 k = tail_mask(N - n);
      const __m512 av = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(k, a + n));
      __m512 v = _mm512_fnmadd_ps(vz, _mm512_maskz_loadu_ps(k, cs + n), av);
      v = _mm512_mul_ps(v, _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(k, ws + n)));
      if constexpr (kBias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bp + n));
      if constexpr (kResidual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, rm + n));
      _mm512_mask_storeu_ps(ym + n, k, v);
    }
#else
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) {
      float v = ((float)a[n] - z * cs[n]) * (s * ws[n]);
      if constexpr (kBias) v += bp[n];
      if constexpr (kResidual) v += rm[n];
      ym[n] = v;
    }
#endif
  }

  // Rows [r0, r0 + blk.rows) of x -> u8 codes, the matmul, then
  // y = sx[m] * sw[n] * (acc - zp[m] * colsum[n]) + bias[n] (+ pre residual), act, post residual.
  void run_block(Ctx& ctx, const RowBlock& blk, int64_t r0) const {
    thread_local GrowBuf codes_buf, acc_buf, params_buf, scratch_buf;
    thread_local dnnl::stream stream(cpu_engine());
    const int64_t rows = blk.rows;
    auto* codes = static_cast<uint8_t*>(codes_buf.get((size_t)(rows * K)));
    auto* acc = static_cast<int32_t*>(acc_buf.get((size_t)(rows * N) * sizeof(int32_t)));
    auto* params = static_cast<float*>(params_buf.get((size_t)(2 * rows) * sizeof(float)));
    float* row_scale = params;
    float* row_zp = params + rows;
    const float* xp = ctx.at<float>(x) + r0 * K;
    for (int64_t m = 0; m < rows; ++m) {
      float lo, hi;
      if (!row_range(xp + m * K, K, lo, hi)) {
        // a NaN or an infinity: no range, so the row's outputs are NaN (the reference's NaN
        // scale); the codes are defined (0) but unused
        row_scale[m] = std::numeric_limits<float>::quiet_NaN(), row_zp[m] = 0.f;
        std::memset(codes + m * K, 0, (size_t)K);
        continue;
      }
      float s = (hi - lo) / kLevels;
      s = s > 0.f ? s : 1.f;
      float z = std::nearbyint(-lo / s);
      z = z < 0.f ? 0.f : (z > kLevels ? kLevels : z);
      row_scale[m] = s, row_zp[m] = z;
      quantize_row(xp + m * K, K, s, z, codes + m * K);
    }

    memory src(blk.src_md, cpu_engine(), codes), out(blk.acc_md, cpu_engine(), acc);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, blk.packed}, {DNNL_ARG_DST, out}};
    if (blk.scratch_md.get_size() > 0)
      args.emplace(DNNL_ARG_SCRATCHPAD, memory(blk.scratch_md, cpu_engine(),
                                               scratch_buf.get(blk.scratch_md.get_size())));
    blk.prim.execute(stream, args);
    stream.wait();

    float* y = ctx.at<float>(dst) + r0 * N;
    const float* r = residual >= 0 ? ctx.at<float>(residual) + r0 * N : nullptr;
    const float* bp = bias.empty() ? nullptr : bias.data();
    const bool add_pre = pre && r != nullptr;
    for (int64_t m = 0; m < rows; ++m) {
      const float* rm = add_pre ? r + m * N : nullptr;
      if (bp)
        rm ? finish_row<true, true>(acc + m * N, row_scale[m], row_zp[m], bp, rm, y + m * N)
           : finish_row<true, false>(acc + m * N, row_scale[m], row_zp[m], bp, rm, y + m * N);
      else
        rm ? finish_row<false, true>(acc + m * N, row_scale[m], row_zp[m], bp, rm, y + m * N)
           : finish_row<false, false>(acc + m * N, row_scale[m], row_zp[m], bp, rm, y + m * N);
    }
    const int64_t len = rows * N;
    if (blk.act) {
      memory ym(blk.act_md, cpu_engine(), y);
      blk.act->execute(stream, {{DNNL_ARG_SRC, ym}, {DNNL_ARG_DST, ym}});
      stream.wait();
    }
    const float* post_r = post ? r : nullptr;
    if (has_clamp) {  // the clamp, then the post residual (the Tail's order)
      if (clamp.leaky)
        post_r ? clamp.loop<true, true>(y, post_r, 0, len)
               : clamp.loop<true, false>(y, nullptr, 0, len);
      else
        post_r ? clamp.loop<false, true>(y, post_r, 0, len)
               : clamp.loop<false, false>(y, nullptr, 0, len);
    } else if (post_r) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) y[i] += post_r[i];
    }
  }

  void run(Ctx& ctx) const {
    const int64_t nb = blocks();
    const int nt = serial ? 1 : (int)std::min<int64_t>(std::max(ctx.threads, 1), nb);
    auto block = [&](int64_t b) {
      const int64_t r0 = b * full.rows;
      run_block(ctx, r0 + full.rows <= M ? full : tail, r0);
    };
    if (nt <= 1) {
      for (int64_t b = 0; b < nb; ++b) block(b);
      return;
    }
    // blocks go to threads in order (block b to thread b * nt / nb): equal rows, equal work
    parallel_for(nt, nb, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) block(i);
    });
  }
};

// The rows of one block for `rows` rows on `threads` threads: an even share a thread (so M
// rows on T threads are T blocks, or a multiple of T), at most kMaxBlockRows so that a block's
// codes and s32 accumulators stay in a core's L2 cache (64 x 1536 x 4 bytes: 384 KiB).
constexpr int64_t kMaxBlockRows = 64;
int64_t block_rows(int64_t rows, int threads) {
  const int64_t t = std::max(threads, 1);
  const int64_t share = (rows + t - 1) / t;
  if (share <= kMaxBlockRows) return share;
  const int64_t per_thread = (share + kMaxBlockRows - 1) / kMaxBlockRows;  // blocks a thread
  return (share + per_thread - 1) / per_thread;
}

}  // namespace

std::string add_qlinear_dynamic(Plan& plan, const std::string& name, int x, int dst,
                                int residual, int64_t rows, torch::Tensor weight,
                                std::vector<double> w_scales, std::optional<torch::Tensor> bias,
                                const std::string& activation, double alpha, double beta,
                                const std::string& residual_mode, int threads) try {
  if (x < 0 || dst < 0) invalid(name, "x and dst must be slots");
  if (weight.scalar_type() != torch::kInt8 || weight.dim() != 2)
    invalid(name, "the weight must be an int8 [K, N] tensor, got " +
                      std::string(c10::toString(weight.scalar_type())) + " " +
                      str(weight.sizes().vec()));
  if (rows < 1) invalid(name, "bad row count " + std::to_string(rows));
  auto k = std::make_shared<DynamicLinear>();
  k->name = name, k->M = rows, k->K = weight.size(0), k->N = weight.size(1);
  const int64_t K = k->K, N = k->N;
  if (w_scales.size() != 1 && (int64_t)w_scales.size() != N)
    invalid(name, std::to_string(w_scales.size()) + " weight scales for " + std::to_string(N) +
                      " output columns");
  for (int64_t n = 0; n < N; ++n) k->w_scale.push_back((float)w_scales[w_scales.size() == 1 ? 0 : n]);
  if (bias) {
    check_weight(name, "the bias", *bias);
    if (bias->numel() != N) invalid(name, "the bias must have " + std::to_string(N) + " values");
    auto bc = bias->contiguous();
    k->bias.assign(bc.data_ptr<float>(), bc.data_ptr<float>() + N);
  }
  auto colsum = weight.to(torch::kInt32).sum(0).to(torch::kFloat32).contiguous();
  k->colsum.assign(colsum.data_ptr<float>(), colsum.data_ptr<float>() + N);
  if (residual_mode != "none" && residual_mode != "pre" && residual_mode != "post")
    invalid(name, "unknown residual mode '" + residual_mode + "' (none, pre, post)");
  if ((residual_mode != "none") != (residual >= 0))
    invalid(name, "residual mode '" + residual_mode + "' and the residual slot disagree");
  k->x = x, k->dst = dst, k->residual = residual;
  k->pre = residual_mode == "pre", k->post = residual_mode == "post";
  Eltwise act = eltwise(name, activation, (float)alpha, (float)beta);
  if (act.clamp) {
    k->has_clamp = true;
    k->clamp.lo = act.lo, k->clamp.hi = act.hi, k->clamp.leaky = act.leaky;
    k->clamp.slope = act.slope;
  }
  using tag = memory::format_tag;
  memory::desc w_user({K, N}, memory::data_type::s8, tag::ab);
  memory::desc w_any({K, N}, memory::data_type::s8, tag::any);
  std::string impl;
  auto make_block = [&](RowBlock& blk, int64_t block, const RowBlock* shared) {
    blk.rows = block;
    blk.src_md = memory::desc({block, K}, memory::data_type::u8, tag::ab);
    blk.acc_md = memory::desc({block, N}, memory::data_type::s32, tag::ab);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    // one thread: the block runs on one thread of rtinfer's parallel region
    CreationThreads creation(1, 0.0);
    dnnl::matmul::primitive_desc pd(cpu_engine(), blk.src_md, w_any, blk.acc_md, attr);
    blk.prim = dnnl::matmul(pd);
    blk.packed = shared != nullptr && shared->packed.get_desc() == pd.weights_desc()
                     ? shared->packed
                     : pack(weight, w_user, pd.weights_desc());
    blk.scratch_md = pd.scratchpad_desc();
    if (impl.empty()) impl = pd.impl_info_str();
    if (act.on) {
      blk.act_md = memory::desc({block * N}, f32, tag::a);
      dnnl::eltwise_forward::primitive_desc apd(cpu_engine(),
                                                dnnl::prop_kind::forward_inference, act.alg,
                                                blk.act_md, blk.act_md, act.alpha, act.beta);
      blk.act.emplace(apd);
    }
  };
  // a layer too small to pay for a fork/join is one block on the calling thread
  k->serial = (double)rows * K * N < CreationThreads::kSerialMacs;
  const int64_t block = block_rows(rows, k->serial ? 1 : threads);
  make_block(k->full, block, nullptr);
  if (rows % block != 0) make_block(k->tail, rows % block, &k->full);
  std::shared_ptr<const DynamicLinear> kc = std::move(k);
  plan.add_step({kc->name, [kc](Ctx& ctx) { kc->run(ctx); }});
  return impl;
} catch (const dnnl::error& err) {
  throw dnnl_failure(name, err);
}

void bind_int8_dynamic(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("add_qlinear_dynamic", &add_qlinear_dynamic, py::arg("plan"), py::arg("name"),
        py::arg("x"), py::arg("dst"), py::arg("residual"), py::arg("rows"), py::arg("weight"),
        py::arg("w_scales"), py::arg("bias"), py::arg("activation"), py::arg("alpha"),
        py::arg("beta"), py::arg("residual_mode"), py::arg("threads"),
        "A dynamic int8 linear step: each row of x [rows, K] quantized to u8 at run time, a "
        "oneDNN u8 x s8 matmul against the constant [K, N] weight, then scales, bias and the "
        "epilogue in f32; returns the matmul's implementation.");
}

}  // namespace rtinfer
