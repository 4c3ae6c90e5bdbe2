// The emulator's runtime (see emulate.h) and a C interface to the launchers for ctypes.
// Build: g++ -std=c++17 -O1 -shared -fPIC -DRTINFER_CUDA_EMULATE -I<cuda>/include -x c++
//        elementwise.cu layernorm.cu softmax.cu attention.cu -x none testing/emulate.cpp
#include "emulate.h"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "../rtinfer_cuda.h"

#if !defined(__x86_64__)
#error "the CUDA emulator switches fibers with x86-64 assembly"
#endif

// Saves the callee-saved registers on the current stack, stores its pointer in *from, and
// resumes the fiber whose stack pointer is `to` (System V x86-64).
extern "C" void rtinfer_emu_switch(void** from, void* to);
asm(R"(
    .text
    .globl rtinfer_emu_switch
    .type rtinfer_emu_switch, @function
rtinfer_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rtinfer_emu_switch, .-rtinfer_emu_switch
)");

extern "C" const char* cudaGetErrorString(cudaError_t error) {
    return error == cudaSuccess ? "no error"
           : error == cudaErrorInvalidValue ? "invalid argument"
                                            : "emulated CUDA error";
}

namespace rtinfer_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;

enum class State { ready, at_warp_barrier, at_block_barrier, done };

enum class Schedule {
    round_robin,  // each ready thread in turn
    first_ahead,  // always the lowest ready thread: warp 0 runs ahead of the others
    last_ahead,   // always the highest: the last warp runs ahead
};

struct Fiber {
    void* sp = nullptr;
    std::unique_ptr<char[]> stack;
    uint3 tid{};
    int lane = 0, warp = 0;
    unsigned shuffles = 0;  // parity picks the slot buffer
    State state = State::ready;
};

struct Block {
    std::vector<Fiber> fibers;
    int current = -1;
    void* scheduler_sp = nullptr;
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    uint3 block_idx{};
    dim3 block_dim, grid_dim;
    std::vector<int> warp_arrived;
    std::vector<uint32_t> slots;  // [warp][2][32]
    int block_arrived = 0;
    int live = 0;
    bool failed = false;
};

Block* g_block = nullptr;

Fiber& me() { return g_block->fibers[g_block->current]; }

void yield() { rtinfer_emu_switch(&me().sp, g_block->scheduler_sp); }

// Reports what went wrong and abandons the launch, which returns cudaErrorLaunchFailure: from a
// fiber, it never resumes; the scheduler returns as soon as it sees `failed`.
void fail(const char* what, bool on_fiber) {
    Block& b = *g_block;
    const uint3& t = b.fibers[b.current].tid;
    std::fprintf(stderr, "rtinfer CUDA emulator: %s (block %u,%u,%u thread %u,%u,%u)\n", what,
                 b.block_idx.x, b.block_idx.y, b.block_idx.z, t.x, t.y, t.z);
    b.failed = true;
    if (on_fiber) {
        yield();
        std::abort();  // never resumed
    }
}

[[noreturn]] void fiber_main() {
    g_block->body(g_block->ctx);
    Block& b = *g_block;
    me().state = State::done;
    --b.live;
    // A thread leaving counts as arriving at the block barrier.
    if (b.block_arrived > 0 && b.block_arrived == b.live) {
        for (Fiber& f : b.fibers)
            if (f.state == State::at_block_barrier) f.state = State::ready;
        b.block_arrived = 0;
    }
    yield();
    std::abort();  // a finished fiber is never resumed
}

// false if the block failed (and was abandoned).
bool run_block(Block& b) {
    const int n = static_cast<int>(b.block_dim.x * b.block_dim.y * b.block_dim.z);
    const int warps = (n + 31) / 32;
    b.fibers.resize(n);
    b.warp_arrived.assign(warps, 0);
    b.slots.assign(static_cast<size_t>(warps) * 64, 0);
    b.block_arrived = 0;
    b.live = n;
    for (int i = 0; i < n; ++i) {
        Fiber& f = b.fibers[i];
        if (!f.stack) f.stack.reset(new char[kStackBytes]);
        f.tid = {static_cast<unsigned>(i % b.block_dim.x),
                 static_cast<unsigned>(i / b.block_dim.x % b.block_dim.y),
                 static_cast<unsigned>(i / (b.block_dim.x * b.block_dim.y))};
        f.lane = i % 32;
        f.warp = i / 32;
        f.shuffles = 0;
        f.state = State::ready;
        // The stack as rtinfer_emu_switch leaves it: six registers, then fiber_main as the
        // return address, entered with rsp = 8 mod 16 as after a call.
        auto top = reinterpret_cast<uintptr_t>(f.stack.get() + kStackBytes) & ~uintptr_t{15};
        auto* sp = reinterpret_cast<void**>(top);
        *--sp = nullptr;  // fiber_main's own return address; it never returns
        *--sp = reinterpret_cast<void*>(&fiber_main);
        for (int r = 0; r < 6; ++r) *--sp = nullptr;
        f.sp = sp;
    }
    // The order threads run in between barriers, which a correct kernel does not depend on:
    // a race on shared memory (a missing barrier) shows under one of them. Blocks take turns.
    const Schedule schedule = Schedule((b.block_idx.x + b.block_idx.y + b.block_idx.z) % 3);
    int next = 0;
    for (;;) {
        int pick = -1;
        for (int k = 0; k < n && pick < 0; ++k) {
            const int i = schedule == Schedule::round_robin ? (next + k) % n
                          : schedule == Schedule::first_ahead ? k
                                                              : n - 1 - k;
            if (b.fibers[i].state == State::ready) pick = i;
        }
        if (pick < 0) {
            if (b.live == 0) break;
            for (int i = 0; i < n; ++i)
                if (b.fibers[i].state != State::done) b.current = i;
            fail("deadlock: a barrier or warp shuffle that some thread never reaches", false);
            return false;
        }
        b.current = pick;
        rtinfer_emu_switch(&b.scheduler_sp, b.fibers[pick].sp);
        if (b.failed) return false;
        next = pick + 1;
    }
    b.current = -1;
    return true;
}

}  // namespace

const uint3& thread_idx() { return me().tid; }
const uint3& block_idx() { return g_block->block_idx; }
const dim3& block_dim() { return g_block->block_dim; }
const dim3& grid_dim() { return g_block->grid_dim; }
int lane_id() { return me().lane; }

void syncthreads() {
    Block& b = *g_block;
    if (++b.block_arrived == b.live) {
        for (Fiber& f : b.fibers)
            if (f.state == State::at_block_barrier) f.state = State::ready;
        b.block_arrived = 0;
        return;
    }
    me().state = State::at_block_barrier;
    yield();
}

uint32_t exchange(unsigned mask, uint32_t bits, int src_lane) {
    Block& b = *g_block;
    Fiber& f = me();
    if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated", true);
    if (b.block_dim.x * b.block_dim.y * b.block_dim.z % 32 != 0)
        fail("a shuffle in a block that is not whole warps", true);
    // Two slot buffers, alternating: a lane can get one shuffle ahead of the slowest lane of
    // its warp, never two, since the next barrier waits for that lane.
    uint32_t* slot = &b.slots[(static_cast<size_t>(f.warp) * 2 + (f.shuffles++ & 1)) * 32];
    slot[f.lane] = bits;
    if (++b.warp_arrived[f.warp] == 32) {
        for (int i = f.warp * 32; i < f.warp * 32 + 32; ++i)
            if (b.fibers[i].state == State::at_warp_barrier) b.fibers[i].state = State::ready;
        b.warp_arrived[f.warp] = 0;
    } else {
        f.state = State::at_warp_barrier;
        yield();
    }
    return slot[src_lane];
}

int run_grid(dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
    static Block b;  // reused: its fiber stacks are allocated once
    b.body = body;
    b.ctx = ctx;
    b.block_dim = block;
    b.grid_dim = grid;
    b.failed = false;
    g_block = &b;
    bool ok = true;
    for (unsigned z = 0; z < grid.z && ok; ++z)
        for (unsigned y = 0; y < grid.y && ok; ++y)
            for (unsigned x = 0; x < grid.x && ok; ++x) {
                b.block_idx = {x, y, z};
                ok = run_block(b);
            }
    g_block = nullptr;
    return ok ? cudaSuccess : cudaErrorLaunchFailure;
}

}  // namespace rtinfer_emu

// ---------------------------------------------------------------------------------------------
// The launchers with plain C arguments (stream: the null stream), for ctypes.

namespace {

// Wrong on a GPU (half the warp shuffles, the other half has left): the emulator must say so.
void divergent_shuffle_kernel(float* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

}  // namespace

namespace rc = rtinfer::cuda;

extern "C" {

int rtinfer_emu_divergent_shuffle(float* out) {
    return rtinfer_emu::launch(divergent_shuffle_kernel, dim3(1), dim3(32), out);
}

int rtinfer_emu_elementwise(int dtype, int op, int act, void* out, const void* a, const void* b,
                            int64_t n, int64_t b_period) {
    return rc::elementwise(rc::DType(dtype), rc::BinOp(op), rc::Act(act), out, a, b, n, b_period,
                           nullptr);
}

int rtinfer_emu_bias_act(int dtype, int act, void* out, const void* x, const void* bias,
                         int64_t rows, int64_t cols) {
    return rc::bias_act(rc::DType(dtype), rc::Act(act), out, x, bias, rows, cols, nullptr);
}

int rtinfer_emu_layer_norm(int dtype, void* out, const void* x, const void* gamma,
                           const void* beta, int64_t rows, int64_t cols, float eps) {
    return rc::layer_norm(rc::DType(dtype), out, x, gamma, beta, rows, cols, eps, nullptr);
}

int rtinfer_emu_rms_norm(int dtype, void* out, const void* x, const void* gamma, int64_t rows,
                         int64_t cols, float eps) {
    return rc::rms_norm(rc::DType(dtype), out, x, gamma, rows, cols, eps, nullptr);
}

int rtinfer_emu_softmax(int dtype, void* out, const void* x, int64_t rows, int64_t cols,
                        int log) {
    return rc::softmax(rc::DType(dtype), out, x, rows, cols, log != 0, nullptr);
}

// sizes: batch, heads, kv_heads, q_len, kv_len, head_dim; strides: q, k, v, out as (b, h, s);
// mask_strides: b, h, q, k.
int rtinfer_emu_attention(int dtype, const void* q, const void* k, const void* v, void* out,
                          const int64_t* sizes, const int64_t* strides, int mask_kind,
                          int mask_dtype, const void* mask, const int64_t* mask_strides,
                          float scale, int causal) {
    rc::AttentionArgs a;
    a.dtype = rc::DType(dtype);
    a.q = q;
    a.k = k;
    a.v = v;
    a.out = out;
    a.batch = sizes[0];
    a.heads = sizes[1];
    a.kv_heads = sizes[2];
    a.q_len = sizes[3];
    a.kv_len = sizes[4];
    a.head_dim = sizes[5];
    rc::Strides3* s[] = {&a.q_stride, &a.k_stride, &a.v_stride, &a.out_stride};
    for (int i = 0; i < 4; ++i) *s[i] = {strides[3 * i], strides[3 * i + 1], strides[3 * i + 2]};
    a.mask_kind = rc::MaskKind(mask_kind);
    a.mask_dtype = rc::DType(mask_dtype);
    a.mask = mask;
    for (int i = 0; i < 4; ++i) a.mask_stride[i] = mask_strides ? mask_strides[i] : 0;
    a.scale = scale;
    a.causal = causal != 0;
    return rc::attention(a, nullptr);
}

}  // extern "C"
