// int8 steps (docs/int8.md): quantize / dequantize (rtinfer's own loops), max pooling on the
// integers, and qconv2d / qlinear / qmatmul as oneDNN int8 primitives.
//
// A quantized op's reference is dequantize -> fused f32 op -> quantize; oneDNN v3 computes the
// same thing as
//
//     acc = sum((x - x_zp) * w)                      int32, exact
//     y   = x_scale * w_scale[oc] * acc + bias       f32 (the bias is the real one)
//     y   = post-ops(y)                             activation, residual (sum or binary add)
//     out = saturate(round_half_even(y / out_scale) + out_zp)     or y itself for f32 outputs
//
// so the only difference to the reference is where f32 rounds (the reference rounds each
// product), at most one unit of the output's last place. A quantized residual of an int8
// output is a sum post-op: the residual's codes are copied into dst and read back as
// res_scale * (r - res_zp); an f32 residual is a binary add. Weights are reordered once into
// the layout the implementation picked (with the compensation terms oneDNN adds there for s8
// sources and source zero points); scales and zero points are constant operands of the step.
#include "dnnl_ops.h"

#include "dnnl_common.h"
#include "int8_pool.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <limits>
#include <type_traits>

namespace rtinfer {

namespace {

using dt = memory::data_type;

dt data_type(const std::string& name, const std::string& s) {
  if (s == "u8") return dt::u8;
  if (s == "i8" || s == "s8") return dt::s8;
  if (s == "f32") return dt::f32;
  if (s == "i32" || s == "s32") return dt::s32;
  invalid(name, "unknown data type '" + s + "' (u8, i8, i32, f32)");
}

memory scalar_memory(float v) {
  memory m(memory::desc({1}, dt::f32, memory::format_tag::a), cpu_engine());
  *static_cast<float*>(m.get_data_handle()) = v;
  return m;
}

memory zero_point_memory(int32_t v) {
  memory m(memory::desc({1}, dt::s32, memory::format_tag::a), cpu_engine());
  *static_cast<int32_t*>(m.get_data_handle()) = v;
  return m;
}

memory scales_memory(const std::vector<float>& s) {
  memory m(memory::desc({(int64_t)s.size()}, dt::f32, memory::format_tag::a), cpu_engine());
  std::memcpy(m.get_data_handle(), s.data(), s.size() * sizeof(float));
  return m;
}

// The quantization attributes and the epilogue of one int8 primitive.
struct QuantSpec {
  dt src_dt;
  float src_scale;
  int32_t src_zp;
  std::vector<float> w_scales;  // 1 (per tensor) or one per output channel
  int w_mask;                   // oneDNN's scale mask of the weights when per channel
  dt dst_dt;
  float dst_scale;
  int32_t dst_zp;
  std::string activation;
  double alpha, beta;
  std::string residual_mode;
  int residual;  // slot, -1 none
  dt res_dt;     // f32: binary add; u8/s8: a sum post-op (the codes copied into dst first)
  float res_scale;
  int32_t res_zp;
};

void check_spec(const std::string& name, const QuantSpec& q) {
  if (q.src_dt != dt::u8 && q.src_dt != dt::s8) invalid(name, "the source must be u8 or i8");
  if (q.dst_dt != dt::u8 && q.dst_dt != dt::s8 && q.dst_dt != dt::f32)
    invalid(name, "the output must be u8, i8 or f32");
  if (!(q.src_scale > 0.f) || !(q.dst_scale > 0.f))
    invalid(name, "scales must be positive, got source " + std::to_string(q.src_scale) +
                      " and output " + std::to_string(q.dst_scale));
  for (float s : q.w_scales)
    if (!(s > 0.f) || !std::isfinite(s))
      invalid(name, "weight scales must be positive and finite, got " + std::to_string(s));
  if (q.residual_mode != "none" && q.residual < 0)
    invalid(name, "residual mode '" + q.residual_mode + "' needs a residual slot");
  if (q.residual_mode == "none" && q.residual >= 0)
    invalid(name, "a residual slot was given with residual mode 'none'");
  if (q.residual >= 0 && q.res_dt != dt::f32 && q.dst_dt == dt::f32)
    invalid(name, "a quantized residual needs a quantized output (dequantize it first)");
}

// The primitive attributes: scales, zero points and post-ops. An f32 output takes the f32
// epilogue (NaN-keeping clamps run after the primitive as a Tail); an int8 output clamps inside
// oneDNN (its int32 accumulation of int8 codes is finite, so there is no NaN to keep).
struct QuantAttr {
  dnnl::primitive_attr attr;
  int residual_arg = 0;  // binary add's execute() argument, 0: none
  bool sum = false;      // the residual is copied into dst and read by a sum post-op
  bool tail = false;
  Eltwise act;
  int tail_residual = -1;
};

QuantAttr quant_attr(const std::string& name, const QuantSpec& q, const memory::desc& dst_f32,
                     int w_mask) {
  QuantAttr a;
  if (q.dst_dt == dt::f32) {
    Epilogue e = epilogue(name, q.activation, q.alpha, q.beta, q.residual_mode, q.residual,
                          dst_f32);
    a.attr = e.attr;
    a.residual_arg = e.residual_arg;
    a.tail = e.tail, a.act = e.act, a.tail_residual = e.tail_residual;
  } else {
    Eltwise act = eltwise(name, q.activation, (float)q.alpha, (float)q.beta);
    if (q.residual_mode != "none" && q.residual_mode != "pre" && q.residual_mode != "post")
      invalid(name, "unknown residual mode '" + q.residual_mode + "' (none, pre, post)");
    dnnl::post_ops ops;
    auto append_act = [&] {
      if (act.on) ops.append_eltwise(act.alg, act.alpha, act.beta);
      else if (act.leaky || (act.clamp && act.lo == 0.f && act.hi == kInf))
        ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      else if (act.clamp)
        ops.append_eltwise(dnnl::algorithm::eltwise_clip_v2, act.lo, act.hi);
    };
    auto append_residual = [&] {
      if (q.residual < 0) return;
      if (q.res_dt == dt::f32) {
        a.residual_arg = DNNL_ARG_ATTR_MULTIPLE_POST_OP(ops.len()) | DNNL_ARG_SRC_1;
        ops.append_binary(dnnl::algorithm::binary_add, dst_f32);
      } else {
        a.sum = true;
        ops.append_sum(q.res_scale, q.res_zp, q.res_dt);
      }
    };
    if (q.residual_mode == "post") {
      append_act();
      append_residual();
    } else {
      append_residual();
      append_act();
    }
    a.attr.set_post_ops(ops);
    a.attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  }
  a.attr.set_scales_mask(DNNL_ARG_SRC, 0);
  a.attr.set_scales_mask(DNNL_ARG_WEIGHTS, q.w_scales.size() > 1 ? w_mask : 0);
  // A zero point of 0 sets no attribute: oneDNN 3.2 takes its older jit:avx512_core_amx kernel
  // for any convolution with a zero-point attribute, even one whose value is 0, where its
  // brgconv kernel runs the same layer in 0.5-0.7x the time (ResNet-18's 3x3 layers, AMX)
  if (q.src_zp != 0) a.attr.set_zero_points_mask(DNNL_ARG_SRC, 0);
  if (q.dst_dt != dt::f32) {
    a.attr.set_scales_mask(DNNL_ARG_DST, 0);
    if (q.dst_zp != 0) a.attr.set_zero_points_mask(DNNL_ARG_DST, 0);
  }
  return a;
}

// The constant operands: scales and zero points.
void add_quant_operands(Kernel& k, const QuantSpec& q) {
  k.fixed.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, scalar_memory(q.src_scale));
  k.fixed.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, scales_memory(q.w_scales));
  if (q.src_zp != 0)
    k.fixed.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, zero_point_memory(q.src_zp));
  if (q.dst_dt != dt::f32) {
    // oneDNN divides by the dst scale: out = y / dst_scale + dst_zp
    k.fixed.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST, scalar_memory(q.dst_scale));
    if (q.dst_zp != 0)
      k.fixed.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST, zero_point_memory(q.dst_zp));
  }
}

// Registers the step: a quantized residual's codes copied into dst first (unless the residual
// is dst itself), then the primitive (and the f32 tail).
// (The kernel's scratchpad is bound already.)
void add_int8_step(Plan& plan, std::shared_ptr<const Kernel> kc, bool sum, int residual,
                   int dst, int64_t dst_bytes) {
  if (!sum) {
    plan.add_step({kc->name, [kc](Ctx& ctx) { kc->run(ctx); }});
    return;
  }
  plan.add_step({kc->name, [kc, residual, dst, dst_bytes](Ctx& ctx) {
    if (ctx.ptr[residual] != ctx.ptr[dst])
      std::memcpy(ctx.ptr[dst], ctx.ptr[residual], (size_t)dst_bytes);
    kc->run(ctx);
  }});
}

template <typename PD>
std::string finish_int8(Plan& plan, std::shared_ptr<Kernel> k, const PD& pd, bool sum,
                        int residual, int dst, int64_t dst_bytes) {
  if (!sum) return finish(plan, std::move(k), pd);
  bind_scratchpad(plan, *k, pd);
  std::string impl = pd.impl_info_str();
  add_int8_step(plan, std::move(k), sum, residual, dst, dst_bytes);
  return impl;
}

void check_int8_weight(const std::string& name, const torch::Tensor& w) {
  if (w.scalar_type() != torch::kInt8 || !w.device().is_cpu())
    invalid(name, "the weight must be an int8 CPU tensor, got " +
                      std::string(c10::toString(w.scalar_type())) + " on " + w.device().str());
}

QuantSpec make_spec(const std::string& name, const std::string& src_dt, double src_scale,
                    int64_t src_zp, std::vector<double> w_scales, const std::string& dst_dt,
                    double dst_scale, int64_t dst_zp, const std::string& activation, double alpha,
                    double beta, const std::string& residual_mode, int residual,
                    const std::string& res_dt, double res_scale, int64_t res_zp) {
  QuantSpec q;
  q.src_dt = data_type(name, src_dt);
  q.src_scale = (float)src_scale, q.src_zp = (int32_t)src_zp;
  for (double s : w_scales) q.w_scales.push_back((float)s);
  if (q.w_scales.empty()) invalid(name, "no weight scales");
  q.dst_dt = data_type(name, dst_dt);
  q.dst_scale = (float)dst_scale, q.dst_zp = (int32_t)dst_zp;
  q.activation = activation, q.alpha = alpha, q.beta = beta;
  q.residual_mode = residual_mode, q.residual = residual;
  q.res_dt = residual >= 0 ? data_type(name, res_dt) : dt::f32;
  q.res_scale = (float)res_scale, q.res_zp = (int32_t)res_zp;
  check_spec(name, q);
  return q;
}

// -- quantize / dequantize ---------------------------------------------------------------------

// One affine map per channel over [outer, channels, inner]: per tensor is channels = 1.
struct Affine {
  int64_t outer, channels, inner;
  std::vector<float> scale;
  std::vector<int32_t> zp;
};

// 1.5 * 2^23: for |v| < 2^22, (v + kMagic) - kMagic is v rounded to an integer in the default
// rounding mode, half to even (the sum lies where the float spacing is 1); std::nearbyint is a
// libm call per element (measured 12 ns each, 50x the vector loop)
constexpr float kMagic = 12582912.f;

// y[i] = saturate(rint(x[i] / s) + zp) into u8/i8 codes
template <typename Q>
void quantize_span(const float* xr, Q* yr, int64_t len, float s, int32_t zp_code) {
  const float lo = (float)std::numeric_limits<Q>::min();
  const float hi = (float)std::numeric_limits<Q>::max();
  const float zp = (float)zp_code;
  // clamped to the integers that have codes, the rounding cannot leave them: one clamp, in the
  // form compilers turn into vmaxps/vminps; with the cast through int32 (and the build's
  // -fno-trapping-math) the loop is vectorized at every level: it had two clamps, compiled as
  // mask juggling, and a float -> u8 cast, and ran scalar in the AVX2 build (6x slower) and at
  // half speed in the AVX-512 one
  const float vlo = lo - zp, vhi = hi - zp;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const float u = xr[i] / s;
    float v = u > vlo ? u : vlo;  // NaN -> vlo, replaced below
    v = v < vhi ? v : vhi;
    const float q = ((v + kMagic) - kMagic) + zp;
    yr[i] = (Q)(int32_t)(u == u ? q : zp);  // NaN: the code of zero
  }
}

template <typename Q>
void quantize_rows(const Affine& a, const float* x, Q* y, int64_t b, int64_t e) {
  // numpy's reference: rint(x / scale) in f32 (half to even), plus the zero point, saturated;
  // the division (not a reciprocal multiply) keeps it bit-exact
  for (int64_t r = b; r < e; ++r) {
    const int64_t c = r % a.channels;
    const float s = a.scale[c];
    const float* xr = x + r * a.inner;
    Q* yr = y + r * a.inner;
    if constexpr (std::is_same_v<Q, int32_t>) {
      const double lo = (double)std::numeric_limits<Q>::min();
      const double hi = (double)std::numeric_limits<Q>::max();
      const double zp = a.zp[c];
      for (int64_t i = 0; i < a.inner; ++i) {
        double v = (double)std::nearbyint(xr[i] / s) + zp;
        v = v < lo ? lo : (v > hi ? hi : v);
        yr[i] = v == v ? (Q)v : (Q)a.zp[c];  // NaN: the code of zero
      }
    } else {
      quantize_span(xr, yr, a.inner, s, a.zp[c]);
    }
  }
}

template <typename Q>
void dequantize_rows(const Affine& a, const Q* x, float* y, int64_t b, int64_t e) {
  for (int64_t r = b; r < e; ++r) {
    const int64_t c = r % a.channels;
    const float s = a.scale[c];
    const int32_t zp = a.zp[c];
    const Q* xr = x + r * a.inner;
    float* yr = y + r * a.inner;
#pragma omp simd
    for (int64_t i = 0; i < a.inner; ++i) yr[i] = (float)((int32_t)xr[i] - zp) * s;
  }
}

}  // namespace

void add_quantize(Plan& plan, const std::string& name, int x, int y, int64_t outer,
                  int64_t channels, int64_t inner, std::vector<double> scale,
                  std::vector<int64_t> zero_point, const std::string& dtype, bool dequantize) {
  if (outer < 1 || channels < 1 || inner < 1)
    invalid(name, "bad extent [" + std::to_string(outer) + ", " + std::to_string(channels) +
                      ", " + std::to_string(inner) + "]");
  if ((int64_t)scale.size() != channels || (int64_t)zero_point.size() != channels)
    invalid(name, std::to_string(scale.size()) + " scales and " +
                      std::to_string(zero_point.size()) + " zero points for " +
                      std::to_string(channels) + " channels");
  const dt q = data_type(name, dtype);
  if (q == dt::f32) invalid(name, "quantized data must be u8, i8 or i32");
  auto a = std::make_shared<Affine>();
  a->outer = outer, a->channels = channels, a->inner = inner;
  for (double s : scale) {
    if (!(s > 0.0) || !std::isfinite(s))
      invalid(name, "scales must be positive and finite, got " + std::to_string(s));
    a->scale.push_back((float)s);
  }
  for (int64_t z : zero_point) a->zp.push_back((int32_t)z);
  const int64_t rows = outer * channels;
  plan.add_step({name, [a, x, y, q, dequantize, rows](Ctx& ctx) {
    const int nt = threads_for(ctx, rows * a->inner);
    // rows of one element (per channel, channels last) are split in runs, not one by one
    parallel_for(nt, rows, [&](int64_t b, int64_t e) {
      if (dequantize) {
        float* yp = ctx.at<float>(y);
        if (q == dt::u8) dequantize_rows(*a, ctx.at<uint8_t>(x), yp, b, e);
        else if (q == dt::s8) dequantize_rows(*a, ctx.at<int8_t>(x), yp, b, e);
        else dequantize_rows(*a, ctx.at<int32_t>(x), yp, b, e);
      } else {
        const float* xp = ctx.at<float>(x);
        if (q == dt::u8) quantize_rows(*a, xp, ctx.at<uint8_t>(y), b, e);
        else if (q == dt::s8) quantize_rows(*a, xp, ctx.at<int8_t>(y), b, e);
        else quantize_rows(*a, xp, ctx.at<int32_t>(y), b, e);
      }
    });
  }});
}

// quantize of an NCHW image straight into NHWC codes: [n, c, hw] f32 -> [n, hw, c] with one
// scale and zero point per tensor or per channel. The image a quantized network reads has 3
// channels: quantizing then reordering the codes cost ResNet-18 0.07 + 0.19 ms (a strided byte
// copy); here each task quantizes a block of positions plane by plane, as quantize_rows does
// (so the codes are the same), and interleaves the channels from a small buffer.
template <typename Q>
void quantize_nhwc_block(const Affine& a, const float* x, Q* y, int64_t n, int64_t hw,
                         int64_t p0, int64_t p1) {
  constexpr int64_t kBlock = 256;
  const int64_t c = a.channels;
  thread_local GrowBuf tmp_buf;  // no allocation per call
  Q* tmp = static_cast<Q*>(tmp_buf.get((size_t)(c * kBlock) * sizeof(Q)));
  for (int64_t p = p0; p < p1; p += kBlock) {
    const int64_t len = std::min(kBlock, p1 - p);
    for (int64_t ch = 0; ch < c; ++ch)
      quantize_span(x + (n * c + ch) * hw + p, tmp + ch * kBlock, len, a.scale[ch],
                    a.zp[ch]);
    Q* out = y + (n * hw + p) * c;
    for (int64_t i = 0; i < len; ++i)
      for (int64_t ch = 0; ch < c; ++ch) out[i * c + ch] = tmp[ch * kBlock + i];
  }
}

void add_quantize_nhwc(Plan& plan, const std::string& name, int x, int y, int64_t n,
                       int64_t channels, int64_t hw, std::vector<double> scale,
                       std::vector<int64_t> zero_point, const std::string& dtype) {
  if (n < 1 || channels < 1 || hw < 1)
    invalid(name, "bad extent [" + std::to_string(n) + ", " + std::to_string(channels) + ", " +
                      std::to_string(hw) + "]");
  if (scale.size() != 1 && (int64_t)scale.size() != channels)
    invalid(name, std::to_string(scale.size()) + " scales for " + std::to_string(channels) +
                      " channels (give one, or one per channel)");
  if (zero_point.size() != scale.size())
    invalid(name, std::to_string(zero_point.size()) + " zero points for " +
                      std::to_string(scale.size()) + " scales");
  const dt q = data_type(name, dtype);
  if (q != dt::u8 && q != dt::s8) invalid(name, "quantize to NHWC makes u8 or i8 codes");
  auto a = std::make_shared<Affine>();
  a->outer = n, a->channels = channels, a->inner = hw;
  for (int64_t ch = 0; ch < channels; ++ch) {
    const double s = scale[scale.size() == 1 ? 0 : ch];
    if (!(s > 0.0) || !std::isfinite(s))
      invalid(name, "scales must be positive and finite, got " + std::to_string(s));
    a->scale.push_back((float)s);
    a->zp.push_back((int32_t)zero_point[scale.size() == 1 ? 0 : ch]);
  }
  plan.add_step({name, [a, x, y, q](Ctx& ctx) {
    const int64_t hw = a->inner, blocks = (hw + 1023) / 1024;
    const int nt = threads_for(ctx, a->outer * a->channels * hw);
    parallel_for(nt, a->outer * blocks, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t img = t / blocks, p0 = (t % blocks) * 1024;
        const int64_t p1 = std::min(hw, p0 + 1024);
        if (q == dt::u8)
          quantize_nhwc_block(*a, ctx.at<float>(x), ctx.at<uint8_t>(y), img, hw, p0, p1);
        else
          quantize_nhwc_block(*a, ctx.at<float>(x), ctx.at<int8_t>(y), img, hw, p0, p1);
      }
    });
  }});
}

// Max pooling of u8/i8 codes (NHWC): max commutes with the increasing affine map, so the output
// has the input's QuantParams. rtinfer's own loop (int8_pool.cpp; oneDNN 3.2's was slower at
// ResNet-18's pool); $RTINFER_QPOOL=onednn takes oneDNN's (comparisons, bisecting), which
// skips padding taps alike.
std::string add_pool_int8(Plan& plan, const std::string& name, int x, int y,
                          const std::string& dtype, std::vector<int64_t> src_shape,
                          std::vector<int64_t> dst_shape, std::vector<int64_t> kernel,
                          std::vector<int64_t> stride, std::vector<int64_t> pad_begin,
                          std::vector<int64_t> dilation, bool nhwc, int threads) try {
  const dt q = data_type(name, dtype);
  if (q != dt::u8 && q != dt::s8) invalid(name, "int8 pooling takes u8 or i8");
  if (src_shape.size() != 4 || dst_shape.size() != 4 || kernel.size() != 2 ||
      stride.size() != 2 || pad_begin.size() != 2 || dilation.size() != 2)
    invalid(name, "2-d pooling: shapes [N, C, H, W], two kernel, stride, pad and dilation "
                  "values");
  // the end padding that gives dst_shape (ceil mode included): windows past it read padding
  Dims pe(2);
  for (int i = 0; i < 2; ++i)
    pe[i] = (dst_shape[2 + i] - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1 -
            src_shape[2 + i] - pad_begin[i];
  for (int i = 0; i < 2; ++i) pe[i] = std::max<int64_t>(pe[i], 0);
  const char* forced = std::getenv("RTINFER_QPOOL");
  if (forced == nullptr || std::string(forced) != "onednn")
    return add_qmax_pool(plan, name, x, y, q == dt::u8, src_shape, dst_shape, kernel, stride,
                         pad_begin, dilation, nhwc);
  auto tag = nhwc ? memory::format_tag::nhwc : memory::format_tag::nchw;
  memory::desc src_md(src_shape, q, tag), dst_md(dst_shape, q, tag);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  double work = 1;
  for (auto d : dst_shape) work *= d;
  CreationThreads creation(threads, work * kernel[0] * kernel[1]);
  dnnl::pooling_forward::primitive_desc pd(
      cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_max, src_md,
      dst_md, stride, kernel, Dims{dilation[0] - 1, dilation[1] - 1}, pad_begin, pe, attr);
  auto k = std::make_shared<Kernel>();
  k->name = name;
  k->prim = dnnl::pooling_forward(pd);
  k->bound.push_back({DNNL_ARG_SRC, x, pd.src_desc()});
  k->bound.push_back({DNNL_ARG_DST, y, pd.dst_desc()});
  return finish(plan, std::move(k), pd);
} catch (const dnnl::error& err) {
  throw dnnl_failure(name, err);
}

namespace {

// -- torch's bundled oneDNN as a second int8 convolution ----------------------------------------
//
// torch bundles a much newer oneDNN than the PyPI 3.2 rtinfer links (its VNNI / AMX int8
// convolutions ran ResNet-18's 3x3 layers up to 2x faster here, when rtinfer's still set
// zero-point attributes of value 0 and so ran 3.2's older kernel), reachable as the ATen
// operators onednn::qconv_prepack / qconv2d_pointwise. Both compute the formula at the top of
// this file (int32 accumulation, f32 scales, round half to even, saturation), so either may run
// a layer; the faster at the layer's shape is kept when the plan is built, as for f32 GEMMs.

// $RTINFER_QCONV: unset or =onednn keeps every int8 conv on rtinfer's oneDNN; =aten takes
// torch's wherever offered (tests, comparisons); =auto times both per layer and keeps the faster.
// auto is not the default: one layer timed alone favoured torch's build (5.15 against 7.53 ms
// over ResNet-18's convs, one thread), but the whole ResNet-18 ran slower with the layers it
// chose (2.95 against 2.58 ms median, 2 threads, quiet AVX-512/AMX Xeon), and slower still
// with every offered layer on torch (3.48 ms). With no zero-point attribute where the zero point
// is 0 (quant_attr), 3.2's brgconv runs ResNet-18's convolutions: per-step sums 1.38-1.42 ms
// against 3.30-3.36 with every offered layer on torch (2026-12-06).
std::string qconv_forced() {
  const char* v = std::getenv("RTINFER_QCONV");
  return v == nullptr ? std::string() : std::string(v);
}

// A layer smaller than this (multiply-adds) stays on rtinfer's oneDNN without timing: the
// candidates differ by less than the timer's noise there and ATen's dispatch costs microseconds.
constexpr double kQconvChoiceMacs = 1 << 22;

c10::OperatorHandle aten_op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}

Dims nhwc_strides(const Dims& d) { return {d[1] * d[2] * d[3], 1, d[3] * d[1], d[1]}; }

at::ScalarType torch_type(dt t) {
  return t == dt::u8 ? at::kByte : t == dt::s8 ? at::kChar : at::kFloat;
}

// One qconv2d as torch's operator on the plan's NHWC slots: the plain form, or the binary form
// whose accumulator (the residual's codes, copied into dst first) is overwritten by the output
// (the schema's `Tensor(a!) qaccum`), so the output lands in dst with no copy.
struct AtenQconv {
  std::optional<c10::OperatorHandle> op;
  std::vector<c10::IValue> proto;  // the operator's arguments; the tensors are set per call
  int src = -1, dst = -1, residual = -1;
  Dims src_dims, dst_dims;
  at::ScalarType src_type = at::kByte, dst_type = at::kByte;
  int64_t dst_bytes = 0;
  bool sum = false;

  void run(Ctx& ctx) const {
    std::vector<c10::IValue> stack = proto;
    stack[0] = torch::from_blob(ctx.ptr[src], src_dims, nhwc_strides(src_dims),
                                torch::TensorOptions().dtype(src_type));
    auto y = torch::from_blob(ctx.ptr[dst], dst_dims, nhwc_strides(dst_dims),
                              torch::TensorOptions().dtype(dst_type));
    if (sum) {
      if (ctx.ptr[residual] != ctx.ptr[dst])
        std::memcpy(ctx.ptr[dst], ctx.ptr[residual], (size_t)dst_bytes);
      stack[6] = y;
      op->callBoxed(stack);
      return;
    }
    op->callBoxed(stack);
    y.copy_(stack[0].toTensor());
  }
};

// torch's form of the layer, or null where it has none: u8 sources, symmetric padding, no
// activation but relu, a residual only added before it ("pre") as codes of the output's type.
std::shared_ptr<AtenQconv> aten_qconv(const QuantSpec& q, const torch::Tensor& weight,
                                      const std::optional<torch::Tensor>& bias, const Dims& src,
                                      const Dims& dst, const std::vector<int64_t>& stride,
                                      const std::vector<int64_t>& pad_begin,
                                      const std::vector<int64_t>& pad_end,
                                      const std::vector<int64_t>& dilation, int64_t groups,
                                      int src_slot, int dst_slot) {
  if (q.src_dt != dt::u8 || q.dst_dt == dt::f32 || pad_begin != pad_end) return nullptr;
  if (q.activation != "none" && q.activation != "relu") return nullptr;
  const bool sum = q.residual >= 0;
  if (sum && (q.residual_mode != "pre" || q.res_dt != q.dst_dt)) return nullptr;
  auto a = std::make_shared<AtenQconv>();
  a->op = aten_op("onednn::qconv2d_pointwise", sum ? "binary" : "");
  a->src = src_slot, a->dst = dst_slot, a->residual = q.residual, a->sum = sum;
  a->src_dims = src, a->dst_dims = dst;
  a->src_type = torch_type(q.src_dt), a->dst_type = torch_type(q.dst_dt);
  a->dst_bytes = dst[0] * dst[1] * dst[2] * dst[3];
  auto w_scales = torch::tensor(q.w_scales, torch::TensorOptions().dtype(at::kFloat));
  if (w_scales.numel() == 1 && weight.size(0) > 1) w_scales = w_scales.expand({weight.size(0)});
  w_scales = w_scales.contiguous();
  auto w_zps = torch::zeros({w_scales.numel()}, torch::TensorOptions().dtype(at::kLong));
  std::vector<int64_t> pad(pad_begin.begin(), pad_begin.end());
  std::vector<c10::IValue> pack{weight.contiguous(), w_scales, (double)q.src_scale,
                                (int64_t)q.src_zp, stride, pad, dilation, groups,
                                std::vector<int64_t>(src.begin(), src.end())};
  aten_op("onednn::qconv_prepack", "").callBoxed(pack);
  c10::IValue b = bias ? c10::IValue(bias->detach().contiguous().clone()) : c10::IValue();
  c10::IValue none_scalars = c10::List<std::optional<at::Scalar>>();
  c10::IValue out_type = a->dst_type;
  if (sum)
    a->proto = {c10::IValue(), (double)q.src_scale, (int64_t)q.src_zp, pack[0], w_scales, w_zps,
                c10::IValue(), b, stride, pad, dilation, groups, (double)q.dst_scale,
                (int64_t)q.dst_zp, out_type, (double)q.res_scale, (int64_t)q.res_zp,
                std::string("sum"), at::Scalar(1.0), q.activation, none_scalars,
                std::string("")};
  else
    a->proto = {c10::IValue(), (double)q.src_scale, (int64_t)q.src_zp, pack[0], w_scales, w_zps,
                b, stride, pad, dilation, groups, (double)q.dst_scale, (int64_t)q.dst_zp,
                out_type, q.activation, none_scalars, std::string("")};
  return a;
}

// Median seconds of `run` over seven calls after two warm-up calls.
template <typename F>
double median_seconds(const F& run) {
  run();
  run();
  double t[7];
  for (double& v : t) {
    double t0 = omp_get_wtime();
    run();
    v = omp_get_wtime() - t0;
  }
  std::sort(t, t + 7);
  return t[3];
}

// Whether torch's form is faster than rtinfer's primitive `k` (scratchpad bound) on scratch
// data, once per layer shape, epilogue and thread count in this process.
bool aten_qconv_faster(const Plan& plan, const Kernel& k, const AtenQconv& alt,
                       const std::string& key, int threads) {
  static std::map<std::string, bool> verdicts;
  static std::mutex verdicts_mutex;
  const int nthreads = threads > 0 ? threads : omp_get_max_threads();
  const std::string full = key + " t" + std::to_string(nthreads);
  std::lock_guard<std::mutex> lock(verdicts_mutex);
  auto it = verdicts.find(full);
  if (it != verdicts.end()) return it->second;
  auto u8 = torch::TensorOptions().dtype(at::kByte);
  auto count = [](const Dims& d) { return d[0] * d[1] * d[2] * d[3]; };
  auto ts = torch::randint(0, 256, {count(alt.src_dims)}, u8);
  auto td = torch::randint(0, 256, {count(alt.dst_dims)}, u8);
  auto tr = torch::randint(0, 256, {count(alt.dst_dims)}, u8);
  Ctx ctx;
  ctx.ptr.assign(std::max({alt.src, alt.dst, alt.residual}) + 1, nullptr);
  ctx.ptr[alt.src] = static_cast<char*>(ts.data_ptr());
  ctx.ptr[alt.dst] = static_cast<char*>(td.data_ptr());
  if (alt.residual >= 0) ctx.ptr[alt.residual] = static_cast<char*>(tr.data_ptr());
  auto scratch = torch::empty({std::max<int64_t>(plan.scratch_bytes(), 64) + 64}, u8);
  ctx.scratch = reinterpret_cast<char*>(
      (reinterpret_cast<uintptr_t>(scratch.data_ptr()) + 63) / 64 * 64);
  ctx.threads = nthreads;
  dnnl::stream stream(cpu_engine());
  ctx.stream = &stream;
  const int old = omp_get_max_threads();
  omp_set_num_threads(nthreads);
  const double t_onednn = median_seconds([&] {
    if (alt.sum && ctx.ptr[alt.residual] != ctx.ptr[alt.dst])
      std::memcpy(ctx.ptr[alt.dst], ctx.ptr[alt.residual], (size_t)alt.dst_bytes);
    k.run(ctx);
  });
  const double t_aten = median_seconds([&] { alt.run(ctx); });
  omp_set_num_threads(old);
  // rtinfer's own primitive on a near tie: no dispatcher, no per-call tensors
  return verdicts[full] = t_aten < 0.95 * t_onednn;
}

}  // namespace

std::string add_qconv(Plan& plan, const std::string& name, int src, int dst, int residual,
                      std::vector<int64_t> src_shape, const std::string& src_dt, double src_scale,
                      int64_t src_zp, torch::Tensor weight, std::vector<double> w_scales,
                      std::optional<torch::Tensor> bias, std::vector<int64_t> stride,
                      std::vector<int64_t> pad_begin, std::vector<int64_t> pad_end,
                      std::vector<int64_t> dilation, int64_t groups,
                      const std::string& activation, double alpha, double beta,
                      const std::string& residual_mode, const std::string& res_dt,
                      double res_scale, int64_t res_zp, const std::string& dst_dt,
                      double dst_scale, int64_t dst_zp, int threads,
                      std::vector<int64_t> dst_shape) try {
  if (src_shape.size() != 4 || dst_shape.size() != 4)
    invalid(name, "qconv2d src and dst must be [N, C, H, W], got " + str(src_shape) + " and " +
                      str(dst_shape));
  if (src < 0 || dst < 0) invalid(name, "src and dst must be slots");
  check_int8_weight(name, weight);
  QuantSpec q = make_spec(name, src_dt, src_scale, src_zp, std::move(w_scales), dst_dt,
                          dst_scale, dst_zp, activation, alpha, beta, residual_mode, residual,
                          res_dt, res_scale, res_zp);
  const int64_t N = src_shape[0], C = src_shape[1], O = weight.size(0);
  if (weight.dim() != 4 || groups < 1 || C % groups || O % groups ||
      weight.size(1) * groups != C)
    invalid(name, "the weight " + str(weight.sizes().vec()) + " does not fit src channels " +
                      std::to_string(C) + " with groups=" + std::to_string(groups));
  if (q.w_scales.size() != 1 && (int64_t)q.w_scales.size() != O)
    invalid(name, std::to_string(q.w_scales.size()) + " weight scales for " + std::to_string(O) +
                      " output channels");
  if (dst_shape[0] != N || dst_shape[1] != O) invalid(name, "bad dst shape " + str(dst_shape));
  if (bias) {
    check_weight(name, "the bias", *bias);
    if (bias->numel() != O) invalid(name, "the bias must have " + std::to_string(O) + " values");
  }
  using tag = memory::format_tag;
  const int64_t kh = weight.size(2), kw = weight.size(3);
  Dims src_dims = src_shape, dst_dims = dst_shape;
  memory::desc src_md(src_dims, q.src_dt, tag::nhwc);
  memory::desc dst_md(dst_dims, q.dst_dt, tag::nhwc), dst_f32(dst_dims, f32, tag::nhwc);
  Dims w_dims = groups == 1 ? Dims{O, C, kh, kw} : Dims{groups, O / groups, C / groups, kh, kw};
  memory::desc w_user(w_dims, dt::s8, groups == 1 ? tag::oihw : tag::goihw);
  memory::desc w_any(w_dims, dt::s8, tag::any);
  memory::desc b_md = bias ? memory::desc({O}, f32, tag::a) : memory::desc();
  // per output channel: axis 0 of oihw, axes 0 and 1 of goihw
  QuantAttr a = quant_attr(name, q, dst_f32, groups == 1 ? 1 : 3);
  double macs = (double)N * O * dst_shape[2] * dst_shape[3] * (C / groups) * kh * kw;
  CreationThreads creation(threads, macs);
  dnnl::convolution_forward::primitive_desc pd(
      cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
      src_md, w_any, b_md, dst_md, Dims{stride[0], stride[1]},
      Dims{dilation[0] - 1, dilation[1] - 1}, Dims{pad_begin[0], pad_begin[1]},
      Dims{pad_end[0], pad_end[1]}, a.attr);
  auto k = std::make_shared<Kernel>();
  k->name = name;
  k->prim = dnnl::convolution_forward(pd);
  k->bound.push_back({DNNL_ARG_SRC, src, pd.src_desc()});
  k->bound.push_back({DNNL_ARG_DST, dst, pd.dst_desc()});
  if (a.residual_arg) k->bound.push_back({a.residual_arg, residual, dst_f32});
  k->fixed.emplace_back(DNNL_ARG_WEIGHTS, pack(weight.reshape(w_dims), w_user, pd.weights_desc()));
  if (bias) k->fixed.emplace_back(DNNL_ARG_BIAS, copy_bias(*bias, pd.bias_desc()));
  add_quant_operands(*k, q);
  if (a.tail) k->tail = make_tail(a.act, dst, a.tail_residual, dst_dims);
  const std::string forced = qconv_forced();
  std::shared_ptr<AtenQconv> alt;
  if (forced == "aten" || (forced == "auto" && macs >= kQconvChoiceMacs))
    alt = aten_qconv(q, weight, bias, src_dims, dst_dims, stride, pad_begin, pad_end, dilation,
                     groups, src, dst);
  if (!alt)
    return finish_int8(plan, std::move(k), pd, a.sum, residual, dst,
                       (int64_t)dst_md.get_size());
  bind_scratchpad(plan, *k, pd);
  const std::string key = str(src_dims) + str(w_dims) + str(stride) + str(pad_begin) +
                          str(dilation) + q.activation + q.residual_mode + (bias ? "b" : "") +
                          std::to_string((int)q.dst_dt);
  if (forced != "aten" && !aten_qconv_faster(plan, *k, *alt, key, threads)) {
    std::string impl = pd.impl_info_str();
    add_int8_step(plan, std::move(k), a.sum, residual, dst, (int64_t)dst_md.get_size());
    return impl;
  }
  std::shared_ptr<const AtenQconv> ac = std::move(alt);
  plan.add_step({name + " (torch oneDNN int8 conv: faster here)", [ac](Ctx& ctx) {
    ac->run(ctx);
  }});
  return std::string("aten:qconv2d_pointwise (faster than oneDNN ") + pd.impl_info_str() +
         " here)";
} catch (const dnnl::error& err) {
  throw dnnl_failure(name, err);
}

std::string add_qmatmul(Plan& plan, const std::string& name, int a_slot, int dst, int residual,
                        int64_t rows, const std::string& src_dt, double src_scale,
                        int64_t src_zp, torch::Tensor weight, std::vector<double> w_scales,
                        std::optional<torch::Tensor> bias, const std::string& activation,
                        double alpha, double beta, const std::string& residual_mode,
                        const std::string& res_dt, double res_scale, int64_t res_zp,
                        const std::string& dst_dt, double dst_scale, int64_t dst_zp,
                        int threads) try {
  if (a_slot < 0 || dst < 0) invalid(name, "a and dst must be slots");
  check_int8_weight(name, weight);
  if (weight.dim() != 2) invalid(name, "the weight must be [K, N], got " +
                                           str(weight.sizes().vec()));
  QuantSpec q = make_spec(name, src_dt, src_scale, src_zp, std::move(w_scales), dst_dt,
                          dst_scale, dst_zp, activation, alpha, beta, residual_mode, residual,
                          res_dt, res_scale, res_zp);
  const int64_t K = weight.size(0), N = weight.size(1);
  if (rows < 1) invalid(name, "bad row count " + std::to_string(rows));
  if (q.w_scales.size() != 1 && (int64_t)q.w_scales.size() != N)
    invalid(name, std::to_string(q.w_scales.size()) + " weight scales for " + std::to_string(N) +
                      " output columns");
  if (bias) {
    check_weight(name, "the bias", *bias);
    if (bias->numel() != N) invalid(name, "the bias must have " + std::to_string(N) + " values");
  }
  using tag = memory::format_tag;
  memory::desc a_md({rows, K}, q.src_dt, tag::ab), dst_md({rows, N}, q.dst_dt, tag::ab);
  memory::desc dst_f32({rows, N}, f32, tag::ab);
  memory::desc w_user({K, N}, dt::s8, tag::ab), w_any({K, N}, dt::s8, tag::any);
  memory::desc b_md = bias ? memory::desc({1, N}, f32, tag::ab) : memory::desc();
  QuantAttr at = quant_attr(name, q, dst_f32, 1 << 1);  // per column of [K, N]
  CreationThreads creation(threads, (double)rows * K * N);
  dnnl::matmul::primitive_desc pd(cpu_engine(), a_md, w_any, b_md, dst_md, at.attr);
  auto k = std::make_shared<Kernel>();
  k->name = name;
  k->prim = dnnl::matmul(pd);
  k->bound.push_back({DNNL_ARG_SRC, a_slot, pd.src_desc()});
  k->bound.push_back({DNNL_ARG_DST, dst, pd.dst_desc()});
  if (at.residual_arg) k->bound.push_back({at.residual_arg, residual, dst_f32});
  k->fixed.emplace_back(DNNL_ARG_WEIGHTS, pack(weight, w_user, pd.weights_desc()));
  if (bias) k->fixed.emplace_back(DNNL_ARG_BIAS, copy_bias(*bias, pd.bias_desc()));
  add_quant_operands(*k, q);
  if (at.tail) k->tail = make_tail(at.act, dst, at.tail_residual, Dims{rows, N});
  return finish_int8(plan, std::move(k), pd, at.sum, residual, dst,
                     (int64_t)dst_md.get_size());
} catch (const dnnl::error& err) {
  throw dnnl_failure(name, err);
}

bool onednn_has_vnni() {
  // the ISA oneDNN runs (after any cap): VNNI multiplies u8 x s8 into int32 (vpdpbusd); without
  // it the pairs go through vpmaddubsw, whose int16 sums saturate
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto has = [isa](dnnl::cpu_isa want) {
    const auto w = static_cast<unsigned>(want);
    return (isa & w) == w;
  };
  return has(dnnl::cpu_isa::avx2_vnni) || has(dnnl::cpu_isa::avx512_core_vnni);
}

}  // namespace rtinfer
