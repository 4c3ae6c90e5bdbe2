// Launchers of rtinfer's own CUDA kernels (cpp/cuda/*.cu).
//
// Plain C++17: no CUDA, no torch headers, so the CPU side (cpp/native) can include it and call
// the launchers through raw pointers. Every launcher enqueues its kernel on `stream` and returns
// at once; it never synchronizes. Tensors are row-major with the strides given; element counts
// and strides are in elements, not bytes.
//
// A launcher returns a Status: 0 on success, else a cudaError_t value (cudaErrorInvalidValue,
// 1, for arguments it rejects; the launch error otherwise). status_string() names it.
#pragma once

#include <cstdint>

// The runtime's own spelling (driver_types.h), so the two declarations agree in either order.
typedef struct CUstream_st* cudaStream_t;

namespace rtinfer::cuda {

using Status = int;
constexpr Status kInvalidValue = 1;  // == cudaErrorInvalidValue

const char* status_string(Status status);

// Element types of the kernels' inputs and outputs; they compute in fp32 throughout.
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

// ---------------------------------------------------------------------------------------------
// elementwise.cu

enum class Act : int {
    none = 0,
    relu,       // max(x, 0)
    gelu_erf,   // x/2 * (1 + erf(x/sqrt(2)))
    gelu_tanh,  // x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    silu,       // x * sigmoid(x)
    sigmoid,    // 1 / (1 + exp(-x))
    tanh,
};

enum class BinOp : int { add = 0, mul };

// out[i] = act(a[i] op b[i % b_period]) for i < n, or act(a[i]) when b is null.
// b_period = n: same shapes; = cols: b broadcast over the rows of a [n/cols, cols];
// = 1: a scalar. out may alias a.
Status elementwise(DType dtype, BinOp op, Act act, void* out, const void* a, const void* b,
                   int64_t n, int64_t b_period, cudaStream_t stream);

// The fused epilogue of a matmul or conv: out[r, c] = act(x[r, c] + bias[c]) over a contiguous
// [rows, cols]; bias may be null.
Status bias_act(DType dtype, Act act, void* out, const void* x, const void* bias, int64_t rows,
                int64_t cols, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// layernorm.cu: over the last axis of a contiguous [rows, cols]; gamma and beta ([cols], the
// dtype of x) may be null.

// y = (x - mean) / sqrt(var + eps) * gamma + beta   (biased variance, as torch)
Status layer_norm(DType dtype, void* out, const void* x, const void* gamma, const void* beta,
                  int64_t rows, int64_t cols, float eps, cudaStream_t stream);

// y = x / sqrt(mean(x^2) + eps) * gamma
Status rms_norm(DType dtype, void* out, const void* x, const void* gamma, int64_t rows,
                int64_t cols, float eps, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// softmax.cu: over the last axis of a contiguous [rows, cols], any cols. As torch, a row that is
// all -inf gives NaN.

Status softmax(DType dtype, void* out, const void* x, int64_t rows, int64_t cols, bool log,
               cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// attention.cu

// Element strides of a [batch, heads, seq, head_dim] operand whose head_dim is contiguous:
// [B, H, S, D] contiguous is {H*S*D, S*D, D}; [B, S, H*D] is {S*H*D, D, H*D}.
struct Strides3 {
    int64_t b = 0, h = 0, s = 0;
};

enum class MaskKind : int {
    none = 0,
    boolean,   // one byte per element, nonzero = attend (torch.bool)
    additive,  // added to the scaled scores; dtype mask_dtype
};

struct AttentionArgs {
    DType dtype = DType::f32;  // of q, k, v and out
    const void* q = nullptr;   // [batch, heads, q_len, head_dim]
    const void* k = nullptr;   // [batch, kv_heads, kv_len, head_dim]
    const void* v = nullptr;   // [batch, kv_heads, kv_len, head_dim]
    void* out = nullptr;       // [batch, heads, q_len, head_dim]
    int64_t batch = 0, heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0;
    Strides3 q_stride, k_stride, v_stride, out_stride;
    MaskKind mask_kind = MaskKind::none;
    DType mask_dtype = DType::f32;
    const void* mask = nullptr;      // [batch, heads, q_len, kv_len]
    int64_t mask_stride[4] = {};     // b, h, q, k; 0 broadcasts
    float scale = 0.f;               // the caller's 1/sqrt(head_dim) by default
    bool causal = false;             // key j attends to query i iff j <= i (top-left, as torch)
};

constexpr int64_t kAttentionMaxHeadDim = 128;

// out = softmax(q k^T * scale + mask) v per (batch, head); query head h reads key/value head
// h / (heads / kv_heads) (grouped-query attention; heads % kv_heads == 0). A query row whose
// keys are all masked gives zeros, as torch's scaled_dot_product_attention (since 2.5).
Status attention(const AttentionArgs& args, cudaStream_t stream);

}  // namespace rtinfer::cuda
