// A CPU stand-in for a CUDA device, so rtinfer's kernels can be tested on machines without one
// (tests/kernels/test_cuda_sources.py). common.cuh includes it when RTINFER_CUDA_EMULATE is
// defined and the .cu files are compiled as plain C++ (g++ -x c++).
//
// Each block runs on its own as one fiber per thread, switched by hand on one OS thread, in one
// of three orders (round robin, lowest thread first, highest first) so that a race between
// warps on shared memory shows.
// __syncthreads() waits for every live thread of the block, a warp shuffle for all 32 lanes of
// the warp. A barrier that can never be met (a shuffle in a divergent branch, a lane that left
// early), where a GPU would hang or go wrong, prints what happened and fails the launch with
// cudaErrorLaunchFailure. __shared__ variables are statics, which is right because blocks run
// one at a time.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

using std::isnan;
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

namespace rtinfer_emu {

const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

void syncthreads();
// Every lane of the current warp publishes `bits`; returns the bits of lane `src`.
uint32_t exchange(unsigned mask, uint32_t bits, int src_lane);
int lane_id();

// Runs body(ctx) as every thread of every block of the grid, block after block; a cudaError_t.
int run_grid(dim3 grid, dim3 block, void (*body)(void*), void* ctx);

template <typename T>
T shuffle(unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) == 4, "the emulator shuffles 4-byte values");
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    bits = exchange(mask, bits, src_lane);
    std::memcpy(&v, &bits, 4);
    return v;
}

template <typename... Params, typename... Args>
int launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) {
    // The kernel's own copies of its arguments, as a real launch makes.
    auto call = [&] { kernel(Params(args)...); };
    return run_grid(grid, block, [](void* f) { (*static_cast<decltype(call)*>(f))(); }, &call);
}

}  // namespace rtinfer_emu

#define threadIdx (::rtinfer_emu::thread_idx())
#define blockIdx (::rtinfer_emu::block_idx())
#define blockDim (::rtinfer_emu::block_dim())
#define gridDim (::rtinfer_emu::grid_dim())

inline void __syncthreads() { rtinfer_emu::syncthreads(); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    const int segment = rtinfer_emu::lane_id() & ~(width - 1);
    return rtinfer_emu::shuffle(mask, v, segment + src_lane % width);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = rtinfer_emu::lane_id();
    const int src = lane ^ lane_mask;
    // a source outside the lane's segment of `width` lanes reads the lane itself
    return rtinfer_emu::shuffle(mask, v, src / width == lane / width ? src : lane);
}
