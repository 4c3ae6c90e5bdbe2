// rtinfer's native executor: a static plan (a flat list of kernel calls over buffer slots).
//
// Python (rtinfer.backends.native_backend) lowers the optimized IR to a Plan: every tensor value
// gets a slot, intermediates get an offset in one arena (liveness-planned at compile time),
// constants are owned by the plan (weights are prepacked by the step that uses them), and every
// node becomes one Step. A call binds the inputs' and outputs' memory to their slots, borrows an
// arena from a pool (so concurrent calls never share scratch memory), runs the steps in order and
// returns the arena. No Python runs per step except in "python" fallback steps.
//
// A kernel file adds steps through functions like
//     void add_layer_norm(Plan& p, std::string name, int x, int gamma, int beta, int y, ...);
// declared in the file's header and bound in executor.cpp (the one file that includes pybind11
// and torch/extension.h, the slow headers to compile). A step's
// closure captures only slot ids, static shapes and prepacked data; everything per-call is in Ctx.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace dnnl {
struct stream;
}

namespace rtinfer {

// A call's view of the plan's memory.
struct Ctx {
  std::vector<char*> ptr;  // ptr[slot]: where the slot's bytes are during this call
  char* scratch = nullptr; // plan.scratch_bytes of scratch (oneDNN scratchpads, temporaries),
                           // 64-byte aligned, private to this call
  int threads = 1;         // the caller's thread count (torch.get_num_threads())
  dnnl::stream* stream = nullptr;  // a oneDNN CPU stream private to this call (may be null
                                   // until a oneDNN step asks for it: use native_stream(ctx))
  template <typename T>
  T* at(int slot) const { return reinterpret_cast<T*>(ptr[slot]); }
};

struct Step {
  std::string name;  // "<IR node name>: <kernel>" for errors and profiles
  std::function<void(Ctx&)> run;
};

// Slot kinds. INPUT and OUTPUT are bound per call; CONST is owned by the plan; ARENA lives at
// `offset` in the call's arena; ALIAS is slot `base`'s memory plus `offset` bytes.
enum SlotKind : int { INPUT = 0, OUTPUT = 1, CONST = 2, ARENA = 3, ALIAS = 4 };

struct Slot {
  SlotKind kind = ARENA;
  int64_t offset = 0;  // ARENA: byte offset in the arena; ALIAS: byte offset in base
  int base = -1;       // ALIAS: the slot aliased; INPUT/OUTPUT: the input/output index
  torch::Tensor tensor;  // CONST: the data (contiguous)
};

struct Arena;

class Plan {
 public:
  Plan();
  ~Plan();
  int add_slot(int kind, int64_t offset, int base);
  int add_const(torch::Tensor t);
  void add_step(Step s) { steps_.push_back(std::move(s)); }
  // at least `bytes` of per-call scratch (the maximum over steps is kept)
  void need_scratch(int64_t bytes) { scratch_bytes_ = std::max(scratch_bytes_, bytes); }
  void set_arena_bytes(int64_t bytes) { arena_bytes_ = bytes; }
  // outputs: (dtype, shape) per output, allocated per call
  void add_output(torch::ScalarType dtype, std::vector<int64_t> shape) {
    out_types_.push_back(dtype);
    out_shapes_.push_back(std::move(shape));
  }
  std::vector<torch::Tensor> run(const std::vector<torch::Tensor>& inputs, int threads);
  // seconds per step over `iters` runs (profiling)
  std::vector<double> profile(const std::vector<torch::Tensor>& inputs, int threads, int iters);
  int64_t num_steps() const { return (int64_t)steps_.size(); }
  std::vector<std::string> step_names() const;
  int64_t arena_bytes() const { return arena_bytes_; }
  int64_t scratch_bytes() const { return scratch_bytes_; }
  int64_t pooled_arenas() const;

 private:
  std::unique_ptr<Arena> acquire();
  // a call's outputs allocated, an arena borrowed and every slot bound
  std::unique_ptr<Arena> start(const std::vector<torch::Tensor>& inputs, int threads,
                               std::vector<torch::Tensor>& outputs);
  void release(std::unique_ptr<Arena> a);
  void bind(Ctx& ctx, Arena& a, const std::vector<torch::Tensor>& inputs,
            std::vector<torch::Tensor>& outputs);

  std::vector<Slot> slots_;
  std::vector<Step> steps_;
  std::vector<torch::ScalarType> out_types_;
  std::vector<std::vector<int64_t>> out_shapes_;
  int64_t arena_bytes_ = 0;
  int64_t scratch_bytes_ = 0;
  std::mutex pool_mu_;
  std::vector<std::unique_ptr<Arena>> pool_;
};

// The oneDNN stream of this call (created on first use, owned by the call's arena).
dnnl::stream& native_stream(Ctx& ctx);

}  // namespace rtinfer
