// Fused attention for the short sequences of real-time inference,
//
//   out = softmax(q k^T * scale + mask) v     per (batch, head),
//
// flash-attention style: a block owns kBQ query rows (kRows per warp) and streams the keys in
// tiles of 32, one key per lane, through shared memory, keeping per row an online max m, sum l
// and unnormalized output acc in fp32:
//
//   m' = max(m, max_j s_j),  p_j = exp(s_j - m'),  l' = l exp(m - m') + sum_j p_j,
//   acc' = acc exp(m - m') + sum_j p_j v_j,          out = acc / l  at the end.
//
// Plain FMA, no tensor cores: at these lengths the kernel is bound by launches and memory.
//
// Masked scores are -inf. While a row has seen only -inf, m' = -inf and the exponents use 0 in
// its place (exp(-inf - 0) = 0, never -inf - -inf = NaN). A row whose keys are all masked ends
// with l = 0 and is written as zeros: torch's scaled_dot_product_attention does the same since
// 2.5 (_safe_softmax), where a plain softmax would give NaN.
#include "common.cuh"

namespace rtinfer::cuda {
namespace {
using namespace detail;

constexpr int kWarps = 4;              // warps per block
constexpr int kRows = 4;               // query rows per warp
constexpr int kBQ = kWarps * kRows;    // query rows per block
constexpr int kBK = 32;                // keys per tile: one per lane
constexpr int kThreads = kWarps * 32;

// DP: head_dim rounded up to a multiple of 32 (32, 64, 96 or 128); the padding is zeros in
// shared memory and never written out. Shared memory at DP = 128: 16 x 128 + 32 x 129 + 32 x 128
// floats = 41 KB, under the 48 KB of static shared memory.
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const AttentionArgs a, int64_t q_tiles) {
    constexpr int NJ = DP / 32;  // output columns per lane: d = lane + 32 j
    __shared__ float sq[kBQ][DP];       // the block's query rows, times scale
    __shared__ float sk[kBK][DP + 1];   // +1: lane t reads row t, column d: banks t + d differ
    __shared__ float sv[kBK][DP];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t tile = blockIdx.x % q_tiles, bh = blockIdx.x / q_tiles;
    const int64_t b = bh / a.heads, h = bh % a.heads;
    const int64_t kvh = h / (a.heads / a.kv_heads);
    const int64_t q0 = tile * kBQ;
    const int64_t Sq = a.q_len, Sk = a.kv_len;
    const int D = static_cast<int>(a.head_dim);

    const T* q = static_cast<const T*>(a.q) + b * a.q_stride.b + h * a.q_stride.h;
    const T* k = static_cast<const T*>(a.k) + b * a.k_stride.b + kvh * a.k_stride.h;
    const T* v = static_cast<const T*>(a.v) + b * a.v_stride.b + kvh * a.v_stride.h;
    T* o = static_cast<T*>(a.out) + b * a.out_stride.b + h * a.out_stride.h;
    const int64_t mask_base = b * a.mask_stride[0] + h * a.mask_stride[1];

    for (int i = threadIdx.x; i < kBQ * DP; i += kThreads) {
        const int r = i / DP, d = i % DP;
        const int64_t qi = q0 + r;
        sq[r][d] = qi < Sq && d < D ? to_float(q[qi * a.q_stride.s + d]) * a.scale : 0.f;
    }

    float m[kRows], l[kRows], acc[kRows][NJ];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.f;
#pragma unroll
        for (int j = 0; j < NJ; ++j) acc[r][j] = 0.f;
    }

    // Causal: no key after the block's last query row counts.
    const int64_t q_last = (q0 + kBQ < Sq ? q0 + kBQ : Sq) - 1;
    const int64_t k_end = a.causal && q_last + 1 < Sk ? q_last + 1 : Sk;
    for (int64_t k0 = 0; k0 < k_end; k0 += kBK) {
        __syncthreads();  // every warp is done with the previous tile (and sq is written)
        for (int i = threadIdx.x; i < kBK * DP; i += kThreads) {
            const int t = i / DP, d = i % DP;
            const int64_t key = k0 + t;
            // Zeros past the end: a garbage NaN would survive 0 * NaN in the p v sum.
            const bool in = key < Sk && d < D;
            sk[t][d] = in ? to_float(k[key * a.k_stride.s + d]) : 0.f;
            sv[t][d] = in ? to_float(v[key * a.v_stride.s + d]) : 0.f;
        }
        __syncthreads();

        // Lane `lane` scores key k0 + lane against the warp's kRows query rows.
        float s[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) s[r] = 0.f;
#pragma unroll 8
        for (int d = 0; d < DP; ++d) {
            const float kd = sk[lane][d];
#pragma unroll
            for (int r = 0; r < kRows; ++r) s[r] += sq[warp * kRows + r][d] * kd;
        }

        const int64_t key = k0 + lane;
        float p[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const int64_t qi = q0 + warp * kRows + r;
            bool ok = key < Sk && qi < Sq && !(a.causal && key > qi);
            float x = s[r];
            if (ok && a.mask_kind != MaskKind::none) {
                const int64_t at = mask_base + qi * a.mask_stride[2] + key * a.mask_stride[3];
                if (a.mask_kind == MaskKind::boolean)
                    ok = static_cast<const uint8_t*>(a.mask)[at] != 0;
                else
                    x += load_as_float(a.mask_dtype, a.mask, at);
            }
            x = ok ? x : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(x));
            const float m_use = m_new == -INFINITY ? 0.f : m_new;
            p[r] = expf(x - m_use);
            const float alpha = expf(m[r] - m_use);  // 0 when m = -inf: acc and l are 0 anyway
            l[r] = l[r] * alpha + warp_sum(p[r]);
            m[r] = m_new;
#pragma unroll
            for (int j = 0; j < NJ; ++j) acc[r][j] *= alpha;
        }

        // acc[r][j] += sum_t p_t v[t][lane + 32 j], p_t broadcast from lane t.
#pragma unroll 4
        for (int t = 0; t < kBK; ++t) {
            float pt[kRows];
#pragma unroll
            for (int r = 0; r < kRows; ++r) pt[r] = __shfl_sync(kFullMask, p[r], t);
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const float vv = sv[t][lane + 32 * j];
#pragma unroll
                for (int r = 0; r < kRows; ++r) acc[r][j] += pt[r] * vv;
            }
        }
    }

#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        const int64_t qi = q0 + warp * kRows + r;
        if (qi >= Sq) continue;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;  // all keys masked: zeros, as torch
        // (a NaN l fails l > 0 too, but then acc is NaN as well and NaN * 0 stays NaN)
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            const int d = lane + 32 * j;
            if (d < D) o[qi * a.out_stride.s + d] = from_float<T>(acc[r][j] * inv);
        }
    }
}

template <typename T>
Status run_attention(const AttentionArgs& a, cudaStream_t stream) {
    const int64_t q_tiles = ceil_div(a.q_len, kBQ);
    const int64_t blocks = a.batch * a.heads * q_tiles;
    if (blocks > INT32_MAX) return kInvalidValue;
    const dim3 grid(static_cast<unsigned>(blocks)), block(kThreads);
    if (a.head_dim <= 32) return launch(attention_kernel<T, 32>, grid, block, stream, a, q_tiles);
    if (a.head_dim <= 64) return launch(attention_kernel<T, 64>, grid, block, stream, a, q_tiles);
    if (a.head_dim <= 96) return launch(attention_kernel<T, 96>, grid, block, stream, a, q_tiles);
    return launch(attention_kernel<T, 128>, grid, block, stream, a, q_tiles);
}

}  // namespace

Status attention(const AttentionArgs& a, cudaStream_t stream) {
    if (a.batch < 0 || a.heads < 0 || a.q_len < 0 || a.kv_len < 0) return kInvalidValue;
    if (a.head_dim < 1 || a.head_dim > kAttentionMaxHeadDim) return kInvalidValue;
    if (a.kv_heads < 1 || (a.heads > 0 && a.heads % a.kv_heads != 0)) return kInvalidValue;
    if (a.batch == 0 || a.heads == 0 || a.q_len == 0) return 0;  // empty data may be null
    if (a.q == nullptr || a.out == nullptr) return kInvalidValue;
    if (a.kv_len > 0 && (a.k == nullptr || a.v == nullptr)) return kInvalidValue;
    if (a.mask_kind != MaskKind::none && a.kv_len > 0 && a.mask == nullptr) return kInvalidValue;
    return dispatch_dtype(a.dtype, [&](auto type) {
        return run_attention<typename decltype(type)::type>(a, stream);
    });
}

}  // namespace rtinfer::cuda
