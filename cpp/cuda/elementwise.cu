// Fused elementwise kernels: a functor over n elements in a grid-stride loop, with 16-byte
// vector loads (4 floats, 8 halves) when every pointer is aligned, and the binary op + activation
// instantiations behind elementwise() and bias_act().
#include "common.cuh"

namespace rtinfer::cuda {

const char* status_string(Status status) {
    return cudaGetErrorString(static_cast<cudaError_t>(status));
}

namespace {
using namespace detail;

template <Act A>
__device__ __forceinline__ float activate(float x) {
    if constexpr (A == Act::relu) {
        return x < 0.f ? 0.f : x;  // NaN stays NaN, as torch
    } else if constexpr (A == Act::gelu_erf) {
        return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    } else if constexpr (A == Act::gelu_tanh) {
        const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.f + tanhf(inner));
    } else if constexpr (A == Act::silu) {
        return x / (1.f + expf(-x));
    } else if constexpr (A == Act::sigmoid) {
        return 1.f / (1.f + expf(-x));
    } else if constexpr (A == Act::tanh) {
        return tanhf(x);
    } else {
        return x;
    }
}

template <Act A>
struct Unary {
    __device__ __forceinline__ float operator()(float a) const { return activate<A>(a); }
};

template <BinOp OP, Act A>
struct Binary {
    __device__ __forceinline__ float operator()(float a, float b) const {
        return activate<A>(OP == BinOp::add ? a + b : a * b);
    }
};

// 16 bytes of T, the unit of a vector load.
template <typename T>
struct alignas(16) Pack {
    static constexpr int size = 16 / sizeof(T);
    T v[size];
};

// out[i] = f(a[i]). VEC: out and a are 16-byte aligned.
template <typename T, typename F, bool VEC>
__global__ void map1_kernel(F f, T* out, const T* a, int64_t n) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t done = 0;
    if constexpr (VEC) {
        constexpr int V = Pack<T>::size;
        const int64_t packs = n / V;
        for (int64_t p = tid; p < packs; p += stride) {
            Pack<T> x = reinterpret_cast<const Pack<T>*>(a)[p];
#pragma unroll
            for (int j = 0; j < V; ++j) x.v[j] = from_float<T>(f(to_float(x.v[j])));
            reinterpret_cast<Pack<T>*>(out)[p] = x;
        }
        done = packs * V;
    }
    for (int64_t i = done + tid; i < n; i += stride) out[i] = from_float<T>(f(to_float(a[i])));
}

// out[i] = f(a[i], b[i % b_period]). VEC: out, a and b are 16-byte aligned and b_period is a
// multiple of the pack size, so a pack of a meets one aligned pack of b.
template <typename T, typename F, bool VEC>
__global__ void map2_kernel(F f, T* out, const T* a, const T* b, int64_t n, int64_t b_period) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t done = 0;
    if constexpr (VEC) {
        constexpr int V = Pack<T>::size;
        const int64_t packs = n / V;
        for (int64_t p = tid; p < packs; p += stride) {
            Pack<T> x = reinterpret_cast<const Pack<T>*>(a)[p];
            const Pack<T> y = *reinterpret_cast<const Pack<T>*>(b + (p * V) % b_period);
#pragma unroll
            for (int j = 0; j < V; ++j)
                x.v[j] = from_float<T>(f(to_float(x.v[j]), to_float(y.v[j])));
            reinterpret_cast<Pack<T>*>(out)[p] = x;
        }
        done = packs * V;
    }
    for (int64_t i = done + tid; i < n; i += stride)
        out[i] = from_float<T>(f(to_float(a[i]), to_float(b[i % b_period])));
}

constexpr int kThreads = 256;

template <typename T, typename F>
Status run_map1(F f, T* out, const T* a, int64_t n, cudaStream_t stream) {
    const bool vec = aligned16(out) && aligned16(a);
    const int64_t work = vec ? std::max<int64_t>(n / Pack<T>::size, 1) : n;
    const dim3 grid(static_cast<unsigned>(std::min(ceil_div(work, kThreads), kMaxBlocks)));
    if (vec) return launch(map1_kernel<T, F, true>, grid, dim3(kThreads), stream, f, out, a, n);
    return launch(map1_kernel<T, F, false>, grid, dim3(kThreads), stream, f, out, a, n);
}

template <typename T, typename F>
Status run_map2(F f, T* out, const T* a, const T* b, int64_t n, int64_t b_period,
                cudaStream_t stream) {
    const bool vec =
        aligned16(out) && aligned16(a) && aligned16(b) && b_period % Pack<T>::size == 0;
    const int64_t work = vec ? std::max<int64_t>(n / Pack<T>::size, 1) : n;
    const dim3 grid(static_cast<unsigned>(std::min(ceil_div(work, kThreads), kMaxBlocks)));
    if (vec)
        return launch(map2_kernel<T, F, true>, grid, dim3(kThreads), stream, f, out, a, b, n,
                      b_period);
    return launch(map2_kernel<T, F, false>, grid, dim3(kThreads), stream, f, out, a, b, n,
                  b_period);
}

template <Act A>
using ActTag = std::integral_constant<Act, A>;

// f(ActTag<act>{}): one instantiation per activation.
template <typename F>
Status dispatch_act(Act act, F&& f) {
    switch (act) {
        case Act::none: return f(ActTag<Act::none>{});
        case Act::relu: return f(ActTag<Act::relu>{});
        case Act::gelu_erf: return f(ActTag<Act::gelu_erf>{});
        case Act::gelu_tanh: return f(ActTag<Act::gelu_tanh>{});
        case Act::silu: return f(ActTag<Act::silu>{});
        case Act::sigmoid: return f(ActTag<Act::sigmoid>{});
        case Act::tanh: return f(ActTag<Act::tanh>{});
    }
    return kInvalidValue;
}

}  // namespace

Status elementwise(DType dtype, BinOp op, Act act, void* out, const void* a, const void* b,
                   int64_t n, int64_t b_period, cudaStream_t stream) {
    if (n < 0 || (op != BinOp::add && op != BinOp::mul)) return kInvalidValue;
    if (n == 0) return 0;  // before the pointer checks: empty tensors may have null data
    if (out == nullptr || a == nullptr) return kInvalidValue;
    if (b != nullptr && (b_period <= 0 || b_period > n)) return kInvalidValue;
    return dispatch_dtype(dtype, [&](auto type) {
        using T = typename decltype(type)::type;
        T* o = static_cast<T*>(out);
        const T* x = static_cast<const T*>(a);
        const T* y = static_cast<const T*>(b);
        return dispatch_act(act, [&](auto tag) {
            constexpr Act A = decltype(tag)::value;
            if (y == nullptr) return run_map1(Unary<A>{}, o, x, n, stream);
            if (op == BinOp::add)
                return run_map2(Binary<BinOp::add, A>{}, o, x, y, n, b_period, stream);
            return run_map2(Binary<BinOp::mul, A>{}, o, x, y, n, b_period, stream);
        });
    });
}

Status bias_act(DType dtype, Act act, void* out, const void* x, const void* bias, int64_t rows,
                int64_t cols, cudaStream_t stream) {
    if (rows < 0 || cols < 0) return kInvalidValue;
    if (rows == 0 || cols == 0) return 0;
    return elementwise(dtype, BinOp::add, act, out, x, bias, rows * cols, cols, stream);
}

}  // namespace rtinfer::cuda
