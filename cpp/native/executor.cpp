// The plan executor (see plan.h) and the Python module rtinfer_native: every binding is here,
// so this is the one translation unit that includes torch/extension.h (it alone takes about
// 27 s of a build to parse; the kernel files include torch/types.h).
#include <torch/extension.h>

#include "cpu_gemv.h"
#include "cpu_kernels.h"
#include "dnnl_ops.h"
#include "plan.h"

#include <dnnl.hpp>
#include <omp.h>

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

namespace rtinfer {

namespace {
constexpr int64_t kAlign = 64;

int64_t round_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

struct AlignedFree {
  void operator()(char* p) const { std::free(p); }
};

std::unique_ptr<char, AlignedFree> aligned_bytes(int64_t n) {
  if (n <= 0) return nullptr;
  void* p = std::aligned_alloc(kAlign, (size_t)round_up(n));
  if (p == nullptr) throw std::bad_alloc();
  return std::unique_ptr<char, AlignedFree>(static_cast<char*>(p));
}
}  // namespace

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// One call's private memory: the arena, the scratch and a oneDNN stream; pooled by the plan so
// a steady stream of calls allocates nothing.
struct Arena {
  std::unique_ptr<char, AlignedFree> data, scratch;
  std::unique_ptr<dnnl::stream> stream;
  Ctx ctx;
};

dnnl::stream& native_stream(Ctx& ctx) {
  if (ctx.stream == nullptr) throw std::logic_error("rtinfer: a call without a oneDNN stream");
  return *ctx.stream;
}

Plan::Plan() = default;
Plan::~Plan() = default;

int Plan::add_slot(int kind, int64_t offset, int base) {
  if (kind < INPUT || kind > ALIAS) throw std::invalid_argument("rtinfer: bad slot kind");
  if (kind == ALIAS && (base < 0 || base >= (int)slots_.size()))
    throw std::invalid_argument("rtinfer: an alias slot must name an earlier slot");
  Slot s;
  s.kind = static_cast<SlotKind>(kind);
  s.offset = offset;
  s.base = base;
  slots_.push_back(std::move(s));
  return (int)slots_.size() - 1;
}

int Plan::add_const(torch::Tensor t) {
  Slot s;
  s.kind = CONST;
  s.tensor = t.contiguous();
  slots_.push_back(std::move(s));
  return (int)slots_.size() - 1;
}

std::vector<std::string> Plan::step_names() const {
  std::vector<std::string> out;
  for (const auto& s : steps_) out.push_back(s.name);
  return out;
}

int64_t Plan::pooled_arenas() const {
  std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(pool_mu_));
  return (int64_t)pool_.size();
}

std::unique_ptr<Arena> Plan::acquire() {
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (!pool_.empty()) {
      auto a = std::move(pool_.back());
      pool_.pop_back();
      return a;
    }
  }
  auto a = std::make_unique<Arena>();
  a->data = aligned_bytes(arena_bytes_);
  a->scratch = aligned_bytes(scratch_bytes_);
  a->stream = std::make_unique<dnnl::stream>(cpu_engine());
  a->ctx.ptr.assign(slots_.size(), nullptr);
  a->ctx.scratch = a->scratch.get();
  a->ctx.stream = a->stream.get();
  return a;
}

void Plan::release(std::unique_ptr<Arena> a) {
  std::lock_guard<std::mutex> lock(pool_mu_);
  pool_.push_back(std::move(a));
}

void Plan::bind(Ctx& ctx, Arena& a, const std::vector<torch::Tensor>& inputs,
                std::vector<torch::Tensor>& outputs) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    switch (s.kind) {
      case INPUT: ctx.ptr[i] = static_cast<char*>(inputs[s.base].data_ptr()); break;
      case OUTPUT: ctx.ptr[i] = static_cast<char*>(outputs[s.base].data_ptr()); break;
      case CONST: ctx.ptr[i] = static_cast<char*>(s.tensor.data_ptr()); break;
      case ARENA: ctx.ptr[i] = a.data.get() + s.offset; break;
      case ALIAS: ctx.ptr[i] = ctx.ptr[s.base] + s.offset; break;
    }
  }
}

// Thread pinning (RTINFER_PIN_THREADS). A worker woken after idle is often queued on the
// waking thread's core (the scheduler's wake-affine choice) while that thread spins at the
// region's barrier waiting for it: the call then waits for a time slice, milliseconds. With
// each OpenMP worker bound to its own core and the calling thread held on the first one for
// the length of a parallel run, the woken worker starts at once.
static std::atomic<int> g_master_cpu{-1};
static std::atomic<int> g_pinned_team{0};

static std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (pthread_getaffinity_np(pthread_self(), sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

// The CPUs of the pinned team (worker t on g_pin_cpus[t]), set by pin_threads.
static std::mutex g_pin_mutex;
static std::vector<int> g_pin_cpus;
// Each thread that runs plans leads an OpenMP team of its own (libgomp keeps a pool per master
// thread): the team size this thread's workers are pinned for, 0 when they are not.
static thread_local int t_pinned_team = 0;

// Binds worker t (t >= 1) of the calling thread's team of `cpus.size()` threads to cpus[t].
// Run while the caller is unbound: a worker created here inherits the caller's CPU mask
// before it binds itself.
static void pin_own_team(const std::vector<int>& cpus) {
  const int threads = (int)cpus.size();
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    if (t > 0) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpus[t], &one);
      pthread_setaffinity_np(pthread_self(), sizeof one, &one);
    }
  }
  t_pinned_team = threads;
}

// Binds OpenMP thread t (t >= 1) of a team of `threads` to the t-th CPU the caller may use and
// remembers the first for the caller. Returns the CPUs, empty (and unpinned) when the caller
// may use fewer CPUs than threads. `threads` <= 0 unpins. Other threads that run plans pin
// their own teams on their first run (MasterPin).
static std::vector<int> pin_threads(int threads) {
  if (threads <= 0) {
    g_master_cpu = -1;
    g_pinned_team = 0;
    return {};
  }
  auto cpus = allowed_cpus();
  if ((int)cpus.size() < threads) return {};
  cpus.resize(threads);
  pin_own_team(cpus);
  {
    std::lock_guard<std::mutex> lock(g_pin_mutex);
    g_pin_cpus = cpus;
  }
  g_pinned_team = threads;
  g_master_cpu = cpus[0];
  return cpus;
}

// Holds the calling thread on the pinned team's first CPU for a scope, then gives it back the
// CPUs it had (the caller's thread is the user's: it is never left bound). Only one run at a
// time is held: concurrent callers (each with a team of its own) are left where they are, so
// they never queue on one CPU.
static std::atomic<int> g_held_runs{0};

struct MasterPin {
  bool held = false;
  cpu_set_t old;
  explicit MasterPin(int threads) {
    const int cpu = g_master_cpu.load(std::memory_order_relaxed);
    if (cpu < 0 || threads != g_pinned_team.load(std::memory_order_relaxed)) return;
    if (t_pinned_team != threads) {
      // a thread's first run (a batcher's worker, a server's thread): its own team is pinned
      // first, while it is unbound. Held first, the team's workers would be created inside
      // the held mask and all share the first CPU for good (ResNet-18 from a second thread:
      // 35 ms instead of 18 on 2 cores)
      std::vector<int> cpus;
      {
        std::lock_guard<std::mutex> lock(g_pin_mutex);
        cpus = g_pin_cpus;
      }
      if ((int)cpus.size() != threads) return;
      pin_own_team(cpus);
    }
    if (g_held_runs.fetch_add(1) != 0) {
      g_held_runs.fetch_sub(1);
      return;
    }
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    held = pthread_getaffinity_np(pthread_self(), sizeof old, &old) == 0 &&
           CPU_ISSET(cpu, &old) && pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
    if (!held) g_held_runs.fetch_sub(1);
  }
  ~MasterPin() {
    if (!held) return;
    pthread_setaffinity_np(pthread_self(), sizeof old, &old);
    g_held_runs.fetch_sub(1);
  }
};

// Sets the calling thread's OpenMP thread count for a scope (0: leave it) and restores it.
struct ThreadCount {
  int old = 0;
  explicit ThreadCount(int threads) {
    if (threads > 0 && threads != omp_get_max_threads()) {
      old = omp_get_max_threads();
      omp_set_num_threads(threads);
    }
  }
  ~ThreadCount() {
    if (old > 0) omp_set_num_threads(old);
  }
};

std::unique_ptr<Arena> Plan::start(const std::vector<torch::Tensor>& inputs, int threads,
                                   std::vector<torch::Tensor>& outputs) {
  outputs.reserve(out_types_.size());
  for (size_t i = 0; i < out_types_.size(); ++i)
    outputs.push_back(torch::empty(out_shapes_[i], torch::TensorOptions().dtype(out_types_[i])));
  auto arena = acquire();
  arena->ctx.threads = threads;
  bind(arena->ctx, *arena, inputs, outputs);
  return arena;
}

std::vector<torch::Tensor> Plan::run(const std::vector<torch::Tensor>& inputs, int threads) {
  std::vector<torch::Tensor> outputs;
  auto arena = start(inputs, threads, outputs);
  Ctx& ctx = arena->ctx;
  {
    pybind11::gil_scoped_release nogil;
    // the calling thread's OpenMP thread count is the user's (torch reads it too): a plan run
    // with another count puts it back
    ThreadCount count(threads);
    MasterPin pin(threads);
    try {
      for (const auto& s : steps_) s.run(ctx);
    } catch (...) {
      release(std::move(arena));  // the arena stays reusable; the error goes to the caller
      throw;
    }
  }
  release(std::move(arena));
  return outputs;
}

std::vector<double> Plan::profile(const std::vector<torch::Tensor>& inputs, int threads,
                                  int iters) {
  std::vector<double> seconds(steps_.size(), 0.0);
  std::vector<torch::Tensor> outputs;
  auto arena = start(inputs, threads, outputs);
  Ctx& ctx = arena->ctx;
  {
    pybind11::gil_scoped_release nogil;
    ThreadCount count(threads);
    for (int it = 0; it < iters; ++it) {
      for (size_t k = 0; k < steps_.size(); ++k) {
        auto t0 = std::chrono::steady_clock::now();
        steps_[k].run(ctx);
        seconds[k] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
    }
  }
  release(std::move(arena));
  for (auto& s : seconds) s /= std::max(iters, 1);
  return seconds;
}

// A step that runs a Python callable (the torch backend's code for a node the native kernels
// do not cover): fn(*inputs) -> tensor or tuple of tensors, copied into the output slots.
void add_python_step(Plan& p, const std::string& name, pybind11::function fn,
                     std::vector<int> in_slots, std::vector<torch::ScalarType> in_types,
                     std::vector<std::vector<int64_t>> in_shapes, std::vector<int> out_slots,
                     std::vector<torch::ScalarType> out_types,
                     std::vector<std::vector<int64_t>> out_shapes) {
  auto holder = std::make_shared<pybind11::function>(std::move(fn));
  p.add_step({name, [=](Ctx& ctx) {
    pybind11::gil_scoped_acquire gil;
    pybind11::tuple args(in_slots.size());
    for (size_t i = 0; i < in_slots.size(); ++i)
      args[i] = torch::from_blob(ctx.ptr[in_slots[i]], in_shapes[i],
                                 torch::TensorOptions().dtype(in_types[i]));
    pybind11::object r = (*holder)(*args);
    std::vector<torch::Tensor> outs;
    if (pybind11::isinstance<pybind11::tuple>(r) || pybind11::isinstance<pybind11::list>(r)) {
      for (auto item : r) outs.push_back(item.cast<torch::Tensor>());
    } else {
      outs.push_back(r.cast<torch::Tensor>());
    }
    if (outs.size() != out_slots.size())
      throw std::runtime_error(name + ": the fallback returned " + std::to_string(outs.size()) +
                               " tensors, expected " + std::to_string(out_slots.size()));
    for (size_t i = 0; i < out_slots.size(); ++i) {
      auto dst = torch::from_blob(ctx.ptr[out_slots[i]], out_shapes[i],
                                  torch::TensorOptions().dtype(out_types[i]));
      dst.copy_(outs[i].reshape(out_shapes[i]));
    }
  }});
}


void bind_dnnl(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("add_conv", &add_conv, py::arg("plan"), py::arg("name"), py::arg("src"), py::arg("dst"),
        py::arg("residual"), py::arg("src_shape"), py::arg("weight"), py::arg("bias"),
        py::arg("stride"), py::arg("pad_begin"), py::arg("pad_end"), py::arg("dilation"),
        py::arg("groups"), py::arg("activation") = "none", py::arg("alpha") = 0.0,
        py::arg("beta") = 0.0, py::arg("residual_mode") = "none", py::arg("src_nhwc") = false,
        py::arg("dst_nhwc") = false, py::arg("threads") = 0,
        py::arg("dst_shape") = std::vector<int64_t>{},
        "A oneDNN convolution step (conv2d on [N,C,H,W], conv1d on [N,C,L]) with its fused "
        "epilogue; returns the oneDNN implementation chosen. dst_shape (logical NCHW / NCL), "
        "when given, must be the shape the window gives.");
  m.def("add_conv_dw", &add_conv_dw, py::arg("plan"), py::arg("name"), py::arg("src"),
        py::arg("dst"), py::arg("src_shape"), py::arg("weight"), py::arg("bias"),
        py::arg("activation"), py::arg("alpha"), py::arg("beta"), py::arg("dw_weight"),
        py::arg("dw_bias"), py::arg("dw_stride"), py::arg("dw_activation"), py::arg("dw_alpha"),
        py::arg("dw_beta"), py::arg("threads") = 0,
        "A 1x1 convolution and the depthwise 3x3 convolution after it as one oneDNN step "
        "(NHWC); plan=None only returns the implementation oneDNN would pick.");
  m.def("add_matmul", &add_matmul, py::arg("plan"), py::arg("name"), py::arg("a"), py::arg("b"),
        py::arg("dst"), py::arg("residual"), py::arg("a_shape"), py::arg("b_shape"),
        py::arg("weight"), py::arg("bias"), py::arg("activation") = "none",
        py::arg("alpha") = 0.0, py::arg("beta") = 0.0, py::arg("residual_mode") = "none",
        py::arg("threads") = 0,
        "A oneDNN matmul step [..., M, K] @ [..., K, N] (batch dims broadcast) with its fused "
        "epilogue; b = -1 with a constant weight; returns the oneDNN implementation chosen.");
  m.def("add_quantize", &add_quantize, py::arg("plan"), py::arg("name"), py::arg("x"),
        py::arg("y"), py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("scale"),
        py::arg("zero_point"), py::arg("dtype"), py::arg("dequantize") = false);
  m.def("add_quantize_nhwc", &add_quantize_nhwc, py::arg("plan"), py::arg("name"), py::arg("x"),
        py::arg("y"), py::arg("n"), py::arg("channels"), py::arg("hw"), py::arg("scale"),
        py::arg("zero_point"), py::arg("dtype"),
        "quantize of an NCHW f32 image into NHWC u8/i8 codes (add_quantize's codes).");
  m.def("add_pool_int8", &add_pool_int8, py::arg("plan"), py::arg("name"), py::arg("x"),
        py::arg("y"), py::arg("dtype"), py::arg("src_shape"), py::arg("dst_shape"),
        py::arg("kernel"), py::arg("stride"), py::arg("pad_begin"), py::arg("dilation"),
        py::arg("nhwc"), py::arg("threads") = 0);
  m.def("add_qconv", &add_qconv, py::arg("plan"), py::arg("name"), py::arg("src"),
        py::arg("dst"), py::arg("residual"), py::arg("src_shape"), py::arg("src_dt"),
        py::arg("src_scale"), py::arg("src_zp"), py::arg("weight"), py::arg("w_scales"),
        py::arg("bias"), py::arg("stride"), py::arg("pad_begin"), py::arg("pad_end"),
        py::arg("dilation"), py::arg("groups"), py::arg("activation"), py::arg("alpha"),
        py::arg("beta"), py::arg("residual_mode"), py::arg("res_dt"), py::arg("res_scale"),
        py::arg("res_zp"), py::arg("dst_dt"), py::arg("dst_scale"), py::arg("dst_zp"),
        py::arg("threads"), py::arg("dst_shape"),
        "An int8 oneDNN convolution step (NHWC); returns the implementation chosen.");
  m.def("add_qmatmul", &add_qmatmul, py::arg("plan"), py::arg("name"), py::arg("a"),
        py::arg("dst"), py::arg("residual"), py::arg("rows"), py::arg("src_dt"),
        py::arg("src_scale"), py::arg("src_zp"), py::arg("weight"), py::arg("w_scales"),
        py::arg("bias"), py::arg("activation"), py::arg("alpha"), py::arg("beta"),
        py::arg("residual_mode"), py::arg("res_dt"), py::arg("res_scale"), py::arg("res_zp"),
        py::arg("dst_dt"), py::arg("dst_scale"), py::arg("dst_zp"), py::arg("threads"),
        "An int8 oneDNN matmul step with a constant [K, N] weight; returns the implementation.");
  m.def("onednn_has_vnni", &onednn_has_vnni);
  m.def("onednn_has_bf16", &onednn_has_bf16);
  m.def("add_bf16_conv", &add_bf16_conv);
  m.def("add_bf16_matmul", &add_bf16_matmul);
}

void bind_cpu_kernels(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("add_layer_norm", &add_layer_norm, py::arg("plan"), py::arg("name"), py::arg("x"),
        py::arg("y"), py::arg("rows"), py::arg("cols"), py::arg("gamma"), py::arg("beta"),
        py::arg("eps"), py::arg("rms"));
  m.def("add_softmax", &add_softmax, py::arg("plan"), py::arg("name"), py::arg("x"),
        py::arg("y"), py::arg("rows"), py::arg("cols"), py::arg("log"));
  m.def("add_attention", &add_attention, py::arg("plan"), py::arg("name"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("y"), py::arg("B"), py::arg("H"),
        py::arg("Sq"), py::arg("Skv"), py::arg("D"), py::arg("q_strides"),
        py::arg("k_strides"), py::arg("v_strides"), py::arg("y_strides"), py::arg("mask_kind"),
        py::arg("mask_strides"), py::arg("scale"), py::arg("causal"));
  m.def("add_pool2d", &add_pool2d, py::arg("plan"), py::arg("name"), py::arg("x"), py::arg("y"),
        py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("OH"), py::arg("OW"),
        py::arg("kernel"), py::arg("stride"), py::arg("pad_begin"), py::arg("dilation"),
        py::arg("kind"), py::arg("count_include_pad"), py::arg("nhwc"),
        py::arg("pad_end") = py::none());
  m.def("add_conv_stem", &add_conv_stem, py::arg("plan"), py::arg("name"), py::arg("x"),
        py::arg("y"), py::arg("src_shape"), py::arg("weight"), py::arg("bias"),
        py::arg("stride"), py::arg("pad_begin"), py::arg("pad_end"), py::arg("dilation"),
        py::arg("activation"), py::arg("alpha"), py::arg("beta"), py::arg("dst_shape"));
  m.def("add_conv_stem_pool", &add_conv_stem_pool, py::arg("plan"), py::arg("name"),
        py::arg("x"), py::arg("y"), py::arg("src_shape"), py::arg("weight"), py::arg("bias"),
        py::arg("stride"), py::arg("pad_begin"), py::arg("pad_end"), py::arg("dilation"),
        py::arg("activation"), py::arg("alpha"), py::arg("beta"), py::arg("pool_kernel"),
        py::arg("pool_stride"), py::arg("pool_pad_begin"), py::arg("pool_pad_end"),
        py::arg("pool_dilation"), py::arg("dst_shape"));
  m.def("add_gemv", &add_gemv, py::arg("plan"), py::arg("name"), py::arg("x"), py::arg("y"),
        py::arg("residual"), py::arg("rows"), py::arg("K"), py::arg("N"), py::arg("weight"),
        py::arg("bias"), py::arg("activation"), py::arg("alpha"), py::arg("beta"),
        py::arg("residual_mode"));
  m.def("add_reduce", &add_reduce, py::arg("plan"), py::arg("name"), py::arg("x"), py::arg("y"),
        py::arg("outer"), py::arg("extent"), py::arg("inner"), py::arg("kind"));
  m.def("add_embedding", &add_embedding, py::arg("plan"), py::arg("name"), py::arg("weight"),
        py::arg("indices"), py::arg("y"), py::arg("num_indices"), py::arg("dim"),
        py::arg("vocab"), py::arg("index_dtype"), py::arg("elem_size") = 4,
        py::arg("allow_negative") = true);
  m.def("add_copy", &add_copy, py::arg("plan"), py::arg("name"), py::arg("x"), py::arg("y"),
        py::arg("elem_size"), py::arg("sizes"), py::arg("in_strides"), py::arg("in_offset"),
        py::arg("out_strides"), py::arg("out_offset"));
  m.def("add_elementwise", &add_elementwise, py::arg("plan"), py::arg("name"), py::arg("fn"),
        py::arg("inputs"), py::arg("y"), py::arg("n"));
}

void bind_int8_dynamic(pybind11::module_& m);  // int8_dynamic.cpp

}  // namespace rtinfer

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using rtinfer::Plan;
  namespace py = pybind11;
  // module_local: each CPU level's extension (rtinfer_native_avx2, ..._avx512) has its own Plan
  py::class_<Plan, std::shared_ptr<Plan>>(m, "Plan", py::module_local())
      .def(py::init<>())
      .def("add_slot", &Plan::add_slot, py::arg("kind"), py::arg("offset") = 0,
           py::arg("base") = -1)
      .def("add_const", &Plan::add_const)
      .def("need_scratch", &Plan::need_scratch)
      .def("set_arena_bytes", &Plan::set_arena_bytes)
      .def("add_output", &Plan::add_output)
      .def("run", &Plan::run)
      .def("profile", &Plan::profile)
      .def_property_readonly("num_steps", &Plan::num_steps)
      .def_property_readonly("step_names", &Plan::step_names)
      .def_property_readonly("arena_bytes", &Plan::arena_bytes)
      .def_property_readonly("scratch_bytes", &Plan::scratch_bytes)
      .def_property_readonly("pooled_arenas", &Plan::pooled_arenas);
  m.def("add_python_step", &rtinfer::add_python_step);
  m.def("max_threads", []() { return omp_get_max_threads(); });
  m.def("pin_threads", &rtinfer::pin_threads, py::arg("threads"));
  m.def("dnnl_version", []() {
    auto v = dnnl::version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch);
  });
  // oneDNN's ISA cap ("AVX2", "AVX512_CORE", ...): takes effect only before its first
  // primitive, as ONEDNN_MAX_CPU_ISA does; returns whether oneDNN took it
  m.def("set_max_cpu_isa", [](const std::string& isa) {
    static const std::pair<const char*, dnnl::cpu_isa> kIsas[] = {
        {"SSE41", dnnl::cpu_isa::sse41}, {"AVX2", dnnl::cpu_isa::avx2},
        {"AVX512_CORE", dnnl::cpu_isa::avx512_core}};
    for (const auto& [n, v] : kIsas)
      if (isa == n) return dnnl::set_max_cpu_isa(v) == dnnl::status::success;
    throw std::invalid_argument("unknown oneDNN ISA " + isa);
  });
  m.def("cpu_isa", []() { return (int)dnnl::get_effective_cpu_isa(); });
  // the finite fast path's switch for plans built on this thread; returns the previous value
  m.def("set_fast_clamps", [](bool on) {
    const bool old = rtinfer::fast_clamps();
    rtinfer::fast_clamps() = on;
    return old;
  });
  m.def("level", []() {
#if defined(__AVX512F__)
    return std::string("avx512");
#elif defined(__AVX2__)
    return std::string("avx2");
#else
    return std::string("generic");
#endif
  });
  rtinfer::bind_dnnl(m);
  rtinfer::bind_cpu_kernels(m);
  rtinfer::bind_int8_dynamic(m);
}
