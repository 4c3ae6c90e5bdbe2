// LayerNorm and RMSNorm over the last axis: one warp per row up to 1024 columns, one block per
// row beyond; sums by warp shuffles, in fp32 whatever the element type.
//
// Two passes over the row (mean, then the mean of squared deviations) rather than a one-pass
// E[x^2] - E[x]^2, which cancels badly when |mean| >> std; the row is re-read from L1/L2.
#include <climits>

#include "common.cuh"

namespace rtinfer::cuda {
namespace {
using namespace detail;

constexpr int kWarpRows = 4;        // rows per block of the warp kernel, one per warp
constexpr int kWarpMaxCols = 1024;  // longer rows get a block each
constexpr int kBlockThreads = 256;

// Normalizes one row; this thread handles columns first, first + step, ...; sum(v) reduces
// over the threads sharing the row (a warp or the block), all of which call it together.
template <typename T, bool RMS, typename Sum>
__device__ __forceinline__ void norm_row(T* y, const T* x, const T* gamma, const T* beta,
                                         int cols, float eps, int first, int step, Sum sum) {
    float mean = 0.f;
    if constexpr (!RMS) {
        float s = 0.f;
        for (int c = first; c < cols; c += step) s += to_float(x[c]);
        mean = sum(s) / static_cast<float>(cols);
    }
    // LayerNorm: the biased variance; RMSNorm (mean = 0): the mean square.
    float q = 0.f;
    for (int c = first; c < cols; c += step) {
        const float d = to_float(x[c]) - mean;
        q += d * d;
    }
    const float rstd = rsqrtf(sum(q) / static_cast<float>(cols) + eps);
    for (int c = first; c < cols; c += step) {
        float v = (to_float(x[c]) - mean) * rstd;
        if (gamma != nullptr) v *= to_float(gamma[c]);
        if constexpr (!RMS) {
            if (beta != nullptr) v += to_float(beta[c]);
        }
        y[c] = from_float<T>(v);
    }
}

template <typename T, bool RMS>
__global__ void __launch_bounds__(32 * kWarpRows)
    norm_warp_kernel(T* y, const T* x, const T* gamma, const T* beta, int64_t rows, int cols,
                     float eps) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // r is the same across a warp, so all 32 lanes reach each shuffle.
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpRows + warp; r < rows;
         r += static_cast<int64_t>(gridDim.x) * kWarpRows) {
        norm_row<T, RMS>(y + r * cols, x + r * cols, gamma, beta, cols, eps, lane, 32,
                         [](float v) { return warp_sum(v); });
    }
}

template <typename T, bool RMS>
__global__ void __launch_bounds__(kBlockThreads)
    norm_block_kernel(T* y, const T* x, const T* gamma, const T* beta, int64_t rows, int cols,
                      float eps) {
    __shared__ float scratch[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        norm_row<T, RMS>(y + r * cols, x + r * cols, gamma, beta, cols, eps,
                         static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x),
                         [&](float v) { return block_sum(v, scratch); });
    }
}

template <bool RMS>
Status run_norm(DType dtype, void* out, const void* x, const void* gamma, const void* beta,
                int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
    if (rows < 0 || cols < 0 || cols > INT_MAX) return kInvalidValue;
    if (rows == 0 || cols == 0) return 0;  // before the pointer checks: empty data may be null
    if (out == nullptr || x == nullptr) return kInvalidValue;
    return dispatch_dtype(dtype, [&](auto type) {
        using T = typename decltype(type)::type;
        T* y = static_cast<T*>(out);
        const T* xs = static_cast<const T*>(x);
        const T* g = static_cast<const T*>(gamma);
        const T* b = static_cast<const T*>(beta);
        const int c = static_cast<int>(cols);
        if (cols <= kWarpMaxCols) {
            const dim3 grid(static_cast<unsigned>(std::min(ceil_div(rows, kWarpRows), kMaxBlocks)));
            return launch(norm_warp_kernel<T, RMS>, grid, dim3(32 * kWarpRows), stream, y, xs, g,
                          b, rows, c, eps);
        }
        const dim3 grid(static_cast<unsigned>(std::min(rows, kMaxBlocks)));
        return launch(norm_block_kernel<T, RMS>, grid, dim3(kBlockThreads), stream, y, xs, g, b,
                      rows, c, eps);
    });
}

}  // namespace

Status layer_norm(DType dtype, void* out, const void* x, const void* gamma, const void* beta,
                  int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
    return run_norm<false>(dtype, out, x, gamma, beta, rows, cols, eps, stream);
}

Status rms_norm(DType dtype, void* out, const void* x, const void* gamma, int64_t rows,
                int64_t cols, float eps, cudaStream_t stream) {
    return run_norm<true>(dtype, out, x, gamma, nullptr, rows, cols, eps, stream);
}

}  // namespace rtinfer::cuda
