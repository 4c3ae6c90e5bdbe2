// The pieces of the oneDNN steps that dnnl_ops.cpp (f32) and dnnl_int8.cpp (int8) share: the
// activation table as eltwise post-ops, rtinfer's NaN-keeping clamp after a primitive (Tail),
// the f32 epilogue, weight prepacking and the built step (Kernel). Internal linkage (an
// anonymous namespace), as cpu_common.h: each file inlines what it uses.
#pragma once

#include "cpu_common.h"
#include "plan.h"

#include <dnnl.hpp>
#include <oneapi/dnnl/dnnl_debug.h>

#include <omp.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace rtinfer {

dnnl::engine& cpu_engine();

// The finite fast path (rtinfer.backends.native.finite): true on this thread while a plan is
// built for inputs proven finite and bounded, so that no value reaching a relu or clip can be
// NaN or infinite; eltwise() then fuses them as oneDNN post-ops (dnnl_ops.cpp defines it).
bool& fast_clamps();

namespace {


using dnnl::memory;
using Dims = memory::dims;
constexpr auto f32 = memory::data_type::f32;


[[noreturn]] void invalid(const std::string& name, const std::string& what) {
  throw std::invalid_argument(name + ": " + what);
}

std::runtime_error dnnl_failure(const std::string& name, const dnnl::error& e) {
  return std::runtime_error(name + ": oneDNN failed (" + dnnl_status2str(e.status) + "): " +
                            e.what());
}

// A row-major contiguous descriptor of any rank.
memory::desc plain(const Dims& dims) {
  Dims strides(dims.size(), 1);
  for (int i = (int)dims.size() - 2; i >= 0; --i) strides[i] = strides[i + 1] * dims[i + 1];
  return memory::desc(dims, f32, strides);
}

// The activation as a oneDNN eltwise post-op (`on`), or run by rtinfer after the primitive
// (`clamp`: a clamp to [lo, hi], or `leaky` with slope 0): oneDNN's relu with slope 0 is
// `vmaxps x, 0` and its clip `vmaxps` then `vminps`, which return the bound where x is NaN
// (torch.relu / clamp keep NaN; measured: a NaN pixel through a fused conv+relu came out 0).
struct Eltwise {
  bool on = false;
  dnnl::algorithm alg = dnnl::algorithm::undef;
  float alpha = 0.f, beta = 0.f;
  bool clamp = false;
  float lo = -kInf, hi = kInf;
  bool leaky = false;  // instead of the clamp: x > 0 ? x : x * slope (slope 0: -inf * 0 = NaN)
  float slope = 0.f;
};

// fused.py's activation table in oneDNN's eltwise terms.
Eltwise eltwise(const std::string& name, const std::string& act, float alpha, float beta) {
  using A = dnnl::algorithm;
  if (act == "none") return {};
  if (fast_clamps()) {  // no NaN or infinity can arrive: oneDNN's max/min are exact
    if (act == "relu" || (act == "leaky_relu" && alpha == 0.f))
      return {true, A::eltwise_relu, 0.f, 0.f};
    if (act == "clip" && alpha <= beta) return {true, A::eltwise_clip_v2, alpha, beta};
  }
  Eltwise clamp;
  clamp.clamp = true;
  if (act == "relu") return clamp.lo = 0.f, clamp;
  // a nonzero slope takes oneDNN's compare-and-blend path, which keeps NaN (NaN * slope); slope
  // 0 is not relu either: eager's -inf * 0 is NaN
  if (act == "leaky_relu" && alpha == 0.f) return clamp.leaky = true, clamp;
  if (act == "leaky_relu") return {true, A::eltwise_relu, alpha, 0.f};  // alpha: the slope
  if (act == "clip") {
    if (!(alpha <= beta))
      invalid(name, "clip needs alpha (min) <= beta (max), got " + std::to_string(alpha) + " > " +
                        std::to_string(beta));
    clamp.lo = alpha, clamp.hi = beta;
    return clamp;
  }
  if (act == "gelu") return {true, A::eltwise_gelu_erf, 0.f, 0.f};
  if (act == "gelu_tanh") return {true, A::eltwise_gelu_tanh, 0.f, 0.f};
  if (act == "silu") return {true, A::eltwise_swish, 1.f, 0.f};  // y * sigmoid(alpha * y)
  if (act == "sigmoid") return {true, A::eltwise_logistic, 0.f, 0.f};
  // oneDNN 3.x: y * min(max(alpha * y + beta, 0), 1) = y * relu6(y + 3) / 6
  if (act == "hardswish") return {true, A::eltwise_hardswish, 1.f / 6.f, 0.5f};
  if (act == "tanh") return {true, A::eltwise_tanh, 0.f, 0.f};
  invalid(name, "unknown activation '" + act +
                    "' (none, relu, leaky_relu, clip, gelu, gelu_tanh, silu, sigmoid, hardswish, "
                    "tanh)");
}

// After the primitive, in place on dst (n floats, any layout: it is elementwise and a residual
// has dst's layout): y = min(max(y, lo), hi) (or leaky: y > 0 ? y : y * slope), then + r where
// residual >= 0. Written with compares so that NaN stays NaN (NaN < lo, NaN > hi are false).
struct Tail {
  float lo = -kInf, hi = kInf;
  bool leaky = false;
  float slope = 0.f;
  int dst = -1, residual = -1;
  int64_t n = 0;

  template <bool kLeaky, bool kResidual>
  void loop(float* y, const float* r, int64_t b, int64_t e) const {
    const float l = lo, h = hi, s = slope;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      float v;
      if constexpr (kLeaky) {
        v = y[i] > 0.f ? y[i] : y[i] * s;
      } else {
        v = y[i] < l ? l : y[i];
        v = v > h ? h : v;
      }
      if constexpr (kResidual) v += r[i];
      y[i] = v;
    }
  }

  void run(Ctx& ctx) const {
    float* y = ctx.at<float>(dst);
    const float* r = residual >= 0 ? ctx.at<float>(residual) : nullptr;
    parallel_for(threads_for(ctx, n), n, [&](int64_t b, int64_t e) {
      if (leaky)
        r ? loop<true, true>(y, r, b, e) : loop<true, false>(y, r, b, e);
      else
        r ? loop<false, true>(y, r, b, e) : loop<false, false>(y, r, b, e);
    });
  }
};

std::shared_ptr<const Tail> make_tail(const Eltwise& act, int dst, int residual,
                                      const Dims& dims) {
  auto t = std::make_shared<Tail>();
  t->lo = act.lo, t->hi = act.hi, t->leaky = act.leaky, t->slope = act.slope;
  t->dst = dst, t->residual = residual;
  t->n = 1;
  for (auto d : dims) t->n *= d;
  return t;
}

// The epilogue's attributes; residual_arg is the execute() argument of the residual (0: none).
// tail: the clamp (and a "post" residual after it, slot tail_residual) rtinfer runs after the
// primitive.
struct Epilogue {
  dnnl::primitive_attr attr;
  int residual_arg = 0;
  bool tail = false;
  Eltwise act;
  int tail_residual = -1;
};

Epilogue epilogue(const std::string& name, const std::string& activation, double alpha,
                  double beta, const std::string& residual_mode, int residual,
                  const memory::desc& dst) {
  Eltwise act = eltwise(name, activation, (float)alpha, (float)beta);
  if (residual_mode != "none" && residual_mode != "pre" && residual_mode != "post")
    invalid(name, "unknown residual mode '" + residual_mode + "' (none, pre, post)");
  bool has_residual = residual_mode != "none";
  if (has_residual && residual < 0)
    invalid(name, "residual mode '" + residual_mode + "' needs a residual slot");
  if (!has_residual && residual >= 0)
    invalid(name, "a residual slot was given with residual mode 'none'");
  Epilogue e;
  e.act = act;
  dnnl::post_ops ops;
  if (act.clamp) {
    e.tail = true;
    // act(y) + r: both in the tail, after the clamp; act(y + r): the add stays a post-op
    if (residual_mode == "post") {
      e.tail_residual = residual;
      has_residual = false;
    }
  }
  if (act.on && residual_mode == "post") ops.append_eltwise(act.alg, act.alpha, act.beta);
  if (has_residual) {
    e.residual_arg = DNNL_ARG_ATTR_MULTIPLE_POST_OP(ops.len()) | DNNL_ARG_SRC_1;
    ops.append_binary(dnnl::algorithm::binary_add, dst);
  }
  if (act.on && residual_mode != "post") ops.append_eltwise(act.alg, act.alpha, act.beta);
  e.attr.set_post_ops(ops);
  e.attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return e;
}

void check_weight(const std::string& name, const char* what, const torch::Tensor& t) {
  if (t.scalar_type() != torch::kFloat32 || !t.device().is_cpu())
    invalid(name, std::string(what) + " must be a float32 CPU tensor, got " +
                      std::string(c10::toString(t.scalar_type())) + " on " + t.device().str());
}

// `w` (any strides) reordered once into `packed`, the layout the primitive chose.
memory pack(const torch::Tensor& w, const memory::desc& user, const memory::desc& packed) {
  auto wc = w.detach().contiguous();
  memory src(user, cpu_engine(), wc.data_ptr());
  memory dst(packed, cpu_engine());
  dnnl::stream s(cpu_engine());
  dnnl::reorder(src, dst).execute(s, src, dst);
  s.wait();
  return dst;
}

memory copy_bias(const torch::Tensor& b, const memory::desc& md) {
  auto bc = b.detach().contiguous();
  memory m(md, cpu_engine());
  std::memcpy(m.get_data_handle(), bc.data_ptr(), md.get_size());
  return m;
}

// A built step: the primitive, its constant operands, and the operands bound to slots per call.
struct Kernel {
  struct Bound {
    int arg;
    int slot;  // -1: the call's scratch
    memory::desc md;
  };
  std::string name;
  dnnl::primitive prim;
  std::vector<Bound> bound;                   // src, dst, residual, non-constant weights, scratch
  std::vector<std::pair<int, memory>> fixed;  // packed weights, bias
  std::shared_ptr<const Tail> tail;           // rtinfer's clamp after the primitive, or null
  // Memory objects for `bound`, made once: a call that finds them free only swaps their
  // pointers (10 ns against 200 ns to create one); a concurrent call creates its own.
  std::vector<memory> cached;
  mutable std::atomic<bool> busy{false};

  void execute(Ctx& ctx, dnnl_exec_arg_t* args, int n) const {
    dnnl::stream& s = native_stream(ctx);
    dnnl_status_t st = dnnl_primitive_execute(prim.get(), s.get(), n, args);
    if (st != dnnl_success)
      throw std::runtime_error(name + ": oneDNN execute failed (" + dnnl_status2str(st) + ")");
    s.wait();
    if (tail) tail->run(ctx);
  }

  static void* where(const Bound& b, Ctx& ctx) {
    return b.slot < 0 ? ctx.scratch : static_cast<void*>(ctx.ptr[b.slot]);
  }

  void run(Ctx& ctx) const {
    constexpr int kMax = 16;  // int8: scales and zero points add up to five
    dnnl_exec_arg_t args[kMax];
    int n = 0;
    for (const auto& f : fixed) args[n++] = {f.first, f.second.get()};
    if (!busy.exchange(true, std::memory_order_acquire)) {
      struct Release {
        std::atomic<bool>& b;
        ~Release() { b.store(false, std::memory_order_release); }
      } release{busy};
      for (size_t i = 0; i < bound.size(); ++i) {
        dnnl_memory_set_data_handle(cached[i].get(), where(bound[i], ctx));
        args[n++] = {bound[i].arg, cached[i].get()};
      }
      execute(ctx, args, n);
      return;
    }
    struct Owned {
      dnnl_memory_t m[kMax];
      int n = 0;
      ~Owned() {
        for (int i = 0; i < n; ++i) dnnl_memory_destroy(m[i]);
      }
    } owned;
    for (const auto& b : bound) {
      dnnl_memory_t m = nullptr;
      dnnl_status_t st = dnnl_memory_create(&m, b.md.get(), cpu_engine().get(), where(b, ctx));
      if (st != dnnl_success)
        throw std::runtime_error(name + ": oneDNN memory_create failed (" +
                                 dnnl_status2str(st) + ")");
      owned.m[owned.n++] = m;
      args[n++] = {b.arg, m};
    }
    execute(ctx, args, n);
  }
};

// The thread count a primitive is planned for is the one current when it is created (oneDNN
// sizes its work split then and keeps it): `threads`, or 1 for work too small to pay for a
// parallel region.
struct CreationThreads {
  int old;
  CreationThreads(int threads, double macs) : old(omp_get_max_threads()) {
    int n = threads > 0 ? threads : old;
    if (macs < kSerialMacs) n = 1;
    omp_set_num_threads(n);
  }
  ~CreationThreads() { omp_set_num_threads(old); }
  // about a microsecond of one core's work: less than a fork/join costs
  static constexpr double kSerialMacs = 1 << 17;
};

// Binds the primitive's scratchpad (the plan's shared one) and caches its memories.
template <typename PD>
void bind_scratchpad(Plan& plan, Kernel& k, const PD& pd) {
  memory::desc scratch = pd.scratchpad_desc();
  plan.need_scratch((int64_t)scratch.get_size());
  if (scratch.get_size() > 0) k.bound.push_back({DNNL_ARG_SCRATCHPAD, -1, scratch});
  for (const auto& b : k.bound) k.cached.emplace_back(b.md, cpu_engine(), nullptr);
}

// Registers the step (scratchpad included) and returns the implementation oneDNN picked.
template <typename PD>
std::string finish(Plan& plan, std::shared_ptr<Kernel> k, const PD& pd) {
  bind_scratchpad(plan, *k, pd);
  std::string impl = pd.impl_info_str();
  std::shared_ptr<const Kernel> kc = std::move(k);
  plan.add_step({kc->name, [kc](Ctx& ctx) { kc->run(ctx); }});
  return impl;
}

}  // namespace

}  // namespace rtinfer
