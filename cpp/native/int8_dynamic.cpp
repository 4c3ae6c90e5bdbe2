// qlinear_dynamic (docs/int8.md): a linear whose f32 activation is quantized per row at run
// time. Three phases in one step:
//   1. each row of x [M, K] -> u8 codes with its own scale and zero point (the row's range
//      widened to contain 0; rtinfer.ir.ops.quant.dynamic_row_params, bit for bit),
//   2. a oneDNN u8 x s8 -> s32 matmul against the prepacked [K, N] weight (VNNI where the CPU
//      has it),
//   3. the epilogue: y = sx[m] * sw[n] * (acc - zp[m] * colsum[n]) + bias[n] (+ a "pre"
//      residual), the activation, then a "post" residual.
// The codes and the s32 accumulators live in per-thread buffers of the calling thread.
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

struct DynamicLinear {
  std::string name;
  int64_t M = 0, K = 0, N = 0;
  int x = -1, dst = -1, residual = -1;
  bool pre = false, post = false;  // where the residual is added: before / after the activation
  dnnl::matmul prim;
  memory packed;
  memory::desc src_md, acc_md, scratch_md;
  std::vector<float> w_scale, colsum, bias;  // [N] each (bias empty: none)
  std::optional<dnnl::eltwise_forward> act;  // an activation oneDNN computes, in place on dst
  memory::desc act_md;
  Eltwise clamp;  // relu / clip / leaky with slope 0: rtinfer's NaN-keeping clamp (Tail)

  void run(Ctx& ctx) const {
    thread_local GrowBuf codes_buf, acc_buf, params_buf;
    auto* codes = static_cast<uint8_t*>(codes_buf.get((size_t)(M * K)));
    auto* acc = static_cast<int32_t*>(acc_buf.get((size_t)(M * N) * sizeof(int32_t)));
    auto* params = static_cast<float*>(params_buf.get((size_t)(2 * M) * sizeof(float)));
    float* row_scale = params;
    float* row_zp = params + M;
    const float* xp = ctx.at<float>(x);
    parallel_for(threads_for(ctx, M * K), M, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        float lo, hi;
        if (!row_range(xp + m * K, K, lo, hi)) {
          // a NaN or an infinity: no range, so the row's outputs are NaN (the reference's
          // NaN scale); the codes are defined (0) but unused
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
    });

    dnnl::stream& st = native_stream(ctx);
    memory src(src_md, cpu_engine(), codes), out(acc_md, cpu_engine(), acc);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, packed}, {DNNL_ARG_DST, out}};
    if (scratch_md.get_size() > 0)
      args.emplace(DNNL_ARG_SCRATCHPAD, memory(scratch_md, cpu_engine(), ctx.scratch));
    prim.execute(st, args);
    st.wait();

    float* y = ctx.at<float>(dst);
    const float* r = residual >= 0 ? ctx.at<float>(residual) : nullptr;
    const float* ws = w_scale.data();
    const float* cs = colsum.data();
    const float* bp = bias.empty() ? nullptr : bias.data();
    const bool add_pre = pre && r != nullptr;
    parallel_for(threads_for(ctx, M * N), M, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        const float s = row_scale[m], z = row_zp[m];
        const int32_t* a = acc + m * N;
        float* ym = y + m * N;
        const float* rm = add_pre ? r + m * N : nullptr;
        // acc - zp * colsum is exact in int32 (|.| <= 255 * 127 * K); in f32 it rounds once
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) {
          float v = ((float)a[n] - z * cs[n]) * (s * ws[n]);
          if (bp) v += bp[n];
          if (rm) v += rm[n];
          ym[n] = v;
        }
      }
    });
    const float* post_r = post ? r : nullptr;
    if (act) {
      memory ym(act_md, cpu_engine(), y);
      act->execute(st, {{DNNL_ARG_SRC, ym}, {DNNL_ARG_DST, ym}});
      st.wait();
    }
    if (clamp.clamp) {
      make_tail(clamp, dst, post ? residual : -1, Dims{M, N})->run(ctx);
      post_r = nullptr;  // the Tail added it after the clamp
    }
    if (post_r) {
      parallel_for(threads_for(ctx, M * N), M * N, [&](int64_t b, int64_t e) {
#pragma omp simd
        for (int64_t i = b; i < e; ++i) y[i] += post_r[i];
      });
    }
  }
};

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
  if (act.clamp) k->clamp = act;
  using tag = memory::format_tag;
  k->src_md = memory::desc({rows, K}, memory::data_type::u8, tag::ab);
  k->acc_md = memory::desc({rows, N}, memory::data_type::s32, tag::ab);
  memory::desc w_user({K, N}, memory::data_type::s8, tag::ab);
  memory::desc w_any({K, N}, memory::data_type::s8, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  std::string impl;
  {
    CreationThreads creation(threads, (double)rows * K * N);
    dnnl::matmul::primitive_desc pd(cpu_engine(), k->src_md, w_any, k->acc_md, attr);
    k->prim = dnnl::matmul(pd);
    k->packed = pack(weight, w_user, pd.weights_desc());
    k->scratch_md = pd.scratchpad_desc();
    plan.need_scratch((int64_t)k->scratch_md.get_size());
    impl = pd.impl_info_str();
    if (act.on) {
      k->act_md = memory::desc({rows * N}, f32, tag::a);
      dnnl::eltwise_forward::primitive_desc apd(cpu_engine(),
                                                dnnl::prop_kind::forward_inference, act.alg,
                                                k->act_md, k->act_md, act.alpha, act.beta);
      k->act.emplace(apd);
    }
  }
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
