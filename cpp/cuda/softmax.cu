// Softmax and log-softmax over the last axis, rows of any length: each thread keeps an online
// (max, sum of exp(x - max)) over its columns, the threads' pairs merge by warp shuffles (and
// shared memory for a block), and a second pass writes exp(x - max) / sum or x - max - log(sum).
//
//   merge((m1, s1), (m2, s2)) = (m, s1 exp(m1 - m) + s2 exp(m2 - m)),  m = max(m1, m2)
//
// with (-inf, 0) as the empty pair. As torch, a row that is all -inf gives NaN (-inf - -inf),
// and a NaN or +inf anywhere in a row makes the whole row NaN.
#include <climits>

#include "common.cuh"

namespace rtinfer::cuda {
namespace {
using namespace detail;

constexpr int kWarpRows = 4;        // rows per block of the warp kernel, one per warp
constexpr int kWarpMaxCols = 1024;  // longer rows get a block each
constexpr int kBlockThreads = 256;

struct MaxSum {
    float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
    const float m = fmaxf(a.m, b.m);
    // Nothing above -inf yet: exp(-inf - -inf) would be NaN, and both scales are exp(0) = 1.
    if (m == -INFINITY) return {m, a.s + b.s};
    // exp(-inf - m) = 0 drops an empty side; a NaN sum sticks (0 * NaN = NaN).
    return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ MaxSum warp_merge(MaxSum v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const MaxSum o{__shfl_xor_sync(kFullMask, v.m, offset),
                       __shfl_xor_sync(kFullMask, v.s, offset)};
        v = merge(v, o);
    }
    return v;
}

// Every thread of the block gets the merge over the block; scratch: 2 x 32 floats of shared
// memory (the leading barrier lets a block loop over rows with it).
__device__ __forceinline__ MaxSum block_merge(MaxSum v, float* scratch_m, float* scratch_s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_merge(v);
    __syncthreads();
    if (lane == 0) {
        scratch_m[warp] = v.m;
        scratch_s[warp] = v.s;
    }
    __syncthreads();
    const bool live = lane < static_cast<int>(blockDim.x >> 5);
    v = live ? MaxSum{scratch_m[lane], scratch_s[lane]} : MaxSum{-INFINITY, 0.f};
    return warp_merge(v);
}

template <typename T, bool LOG, typename Merge>
__device__ __forceinline__ void softmax_row(T* y, const T* x, int cols, int first, int step,
                                            Merge merge_all) {
    MaxSum acc{-INFINITY, 0.f};
    for (int c = first; c < cols; c += step) {
        // fmaxf skips a NaN, so a NaN element carries a NaN sum instead.
        const float v = to_float(x[c]);
        acc = merge(acc, MaxSum{v, isnan(v) ? NAN : 1.f});
    }
    acc = merge_all(acc);
    // -inf - -inf = NaN for an all -inf row, as torch.
    if constexpr (LOG) {
        const float shift = acc.m + logf(acc.s);
        for (int c = first; c < cols; c += step) y[c] = from_float<T>(to_float(x[c]) - shift);
    } else {
        const float inv = 1.f / acc.s;
        for (int c = first; c < cols; c += step)
            y[c] = from_float<T>(expf(to_float(x[c]) - acc.m) * inv);
    }
}

template <typename T, bool LOG>
__global__ void __launch_bounds__(32 * kWarpRows)
    softmax_warp_kernel(T* y, const T* x, int64_t rows, int cols) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpRows + warp; r < rows;
         r += static_cast<int64_t>(gridDim.x) * kWarpRows) {
        softmax_row<T, LOG>(y + r * cols, x + r * cols, cols, lane, 32,
                            [](MaxSum v) { return warp_merge(v); });
    }
}

template <typename T, bool LOG>
__global__ void __launch_bounds__(kBlockThreads)
    softmax_block_kernel(T* y, const T* x, int64_t rows, int cols) {
    __shared__ float scratch_m[32], scratch_s[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        softmax_row<T, LOG>(y + r * cols, x + r * cols, cols, static_cast<int>(threadIdx.x),
                            static_cast<int>(blockDim.x),
                            [&](MaxSum v) { return block_merge(v, scratch_m, scratch_s); });
    }
}

template <bool LOG>
Status run_softmax(DType dtype, void* out, const void* x, int64_t rows, int64_t cols,
                   cudaStream_t stream) {
    return dispatch_dtype(dtype, [&](auto type) {
        using T = typename decltype(type)::type;
        T* y = static_cast<T*>(out);
        const T* xs = static_cast<const T*>(x);
        const int c = static_cast<int>(cols);
        if (cols <= kWarpMaxCols) {
            const dim3 grid(static_cast<unsigned>(std::min(ceil_div(rows, kWarpRows), kMaxBlocks)));
            return launch(softmax_warp_kernel<T, LOG>, grid, dim3(32 * kWarpRows), stream, y, xs,
                          rows, c);
        }
        const dim3 grid(static_cast<unsigned>(std::min(rows, kMaxBlocks)));
        return launch(softmax_block_kernel<T, LOG>, grid, dim3(kBlockThreads), stream, y, xs,
                      rows, c);
    });
}

}  // namespace

Status softmax(DType dtype, void* out, const void* x, int64_t rows, int64_t cols, bool log,
               cudaStream_t stream) {
    if (rows < 0 || cols < 0 || cols > INT_MAX) return kInvalidValue;
    if (rows == 0 || cols == 0) return 0;  // before the pointer checks: empty data may be null
    if (out == nullptr || x == nullptr) return kInvalidValue;
    return log ? run_softmax<true>(dtype, out, x, rows, cols, stream)
               : run_softmax<false>(dtype, out, x, rows, cols, stream);
}

}  // namespace rtinfer::cuda
