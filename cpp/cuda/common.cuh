// Device helpers shared by rtinfer's CUDA kernels: fp16/bf16 <-> fp32, warp and block
// reductions, dtype dispatch and the launch wrapper.
#pragma once

#ifdef RTINFER_CUDA_EMULATE
#include "testing/emulate.h"  // the kernels on the CPU, for tests where there is no GPU
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "rtinfer_cuda.h"

namespace rtinfer::cuda::detail {

constexpr unsigned kFullMask = 0xffffffffu;
// Grid-stride kernels need no more blocks than fill the largest GPU a few times over (tests
// set a small cap so that every thread loops).
#ifndef RTINFER_CUDA_MAX_BLOCKS
#define RTINFER_CUDA_MAX_BLOCKS 4096
#endif
constexpr int64_t kMaxBlocks = RTINFER_CUDA_MAX_BLOCKS;

// The explicit conversion intrinsics: torch builds with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, so there are no implicit ones.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// Element i of an array whose type is known only at run time (masks).
__device__ __forceinline__ float load_as_float(DType dtype, const void* p, int64_t i) {
    switch (dtype) {
        case DType::f16: return to_float(static_cast<const __half*>(p)[i]);
        case DType::bf16: return to_float(static_cast<const __nv_bfloat16*>(p)[i]);
        default: return static_cast<const float*>(p)[i];
    }
}

// Every lane of a full warp gets the sum / max over the warp.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}

// Every thread of a 1-D block (a multiple of 32 threads, at most 1024) gets the sum over the
// block. scratch: 32 floats of shared memory; the leading barrier lets consecutive calls reuse it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.f;
    return warp_sum(v);
}

template <typename T>
struct Type {
    using type = T;
};

// f(Type<T>{}) with T the C++ type of dtype.
template <typename F>
Status dispatch_dtype(DType dtype, F&& f) {
    switch (dtype) {
        case DType::f32: return f(Type<float>{});
        case DType::f16: return f(Type<__half>{});
        case DType::bf16: return f(Type<__nv_bfloat16>{});
    }
    return kInvalidValue;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <typename... Params, typename... Args>
Status launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
              Args&&... args) {
#ifdef RTINFER_CUDA_EMULATE
    (void)stream;
    return rtinfer_emu::launch(kernel, grid, block, std::forward<Args>(args)...);
#else
    kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
    return static_cast<Status>(cudaGetLastError());
#endif
}

}  // namespace rtinfer::cuda::detail
