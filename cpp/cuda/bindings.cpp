// torch bindings of rtinfer's CUDA kernels (rtinfer_cuda.h): check device, dtype and shape,
// allocate the output, launch on torch's current stream. kernels/cuda.py builds and wraps them.
//
// The stream comes from c10/cuda/CUDAStream.h (what at::cuda::getCurrentCUDAStream() forwards
// to): ATen/cuda/CUDAContext.h would pull in cuBLAS and cuSPARSE headers for nothing.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <optional>
#include <string>

#include "rtinfer_cuda.h"

namespace rc = rtinfer::cuda;

namespace {

rc::DType dtype_of(const at::Tensor& t, const char* what) {
    switch (t.scalar_type()) {
        case at::kFloat: return rc::DType::f32;
        case at::kHalf: return rc::DType::f16;
        case at::kBFloat16: return rc::DType::bf16;
        default:
            TORCH_CHECK(false, "rtinfer cuda: ", what,
                        " must be float32, float16 or bfloat16, not ", t.scalar_type());
    }
}

void check_cuda(const at::Tensor& t, const char* what, const at::Tensor& like) {
    TORCH_CHECK(t.is_cuda(), "rtinfer cuda: ", what, " must be a CUDA tensor, not on ", t.device());
    TORCH_CHECK(t.device() == like.device(), "rtinfer cuda: ", what, " is on ", t.device(),
                " but the input is on ", like.device());
}

// A [cols] parameter (gamma, beta, bias) of x's dtype and device, contiguous.
std::optional<at::Tensor> vector_param(const std::optional<at::Tensor>& p, const char* what,
                                       const at::Tensor& x) {
    if (!p.has_value()) return std::nullopt;
    check_cuda(*p, what, x);
    TORCH_CHECK(p->scalar_type() == x.scalar_type(), "rtinfer cuda: ", what, " is ",
                p->scalar_type(), " but the input is ", x.scalar_type());
    TORCH_CHECK(p->dim() == 1 && p->size(0) == x.size(-1), "rtinfer cuda: ", what,
                " must have shape [", x.size(-1), "] (the input's last axis), not ", p->sizes());
    return p->contiguous();
}

const void* data_or_null(const std::optional<at::Tensor>& t) {
    return t.has_value() ? t->data_ptr() : nullptr;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check_status(rc::Status status, const char* op) {
    TORCH_CHECK(status == 0, "rtinfer cuda: ", op, " failed: ", rc::status_string(status));
}

rc::Act parse_act(const std::string& name) {
    if (name == "none" || name == "identity") return rc::Act::none;
    if (name == "relu") return rc::Act::relu;
    if (name == "gelu" || name == "gelu_erf") return rc::Act::gelu_erf;
    if (name == "gelu_tanh") return rc::Act::gelu_tanh;
    if (name == "silu") return rc::Act::silu;
    if (name == "sigmoid") return rc::Act::sigmoid;
    if (name == "tanh") return rc::Act::tanh;
    TORCH_CHECK(false, "rtinfer cuda: unknown activation '", name,
                "' (none, relu, gelu, gelu_tanh, silu, sigmoid, tanh)");
}

// The input as contiguous [rows, cols] over its last axis; at least one dimension.
at::Tensor rows_of(const at::Tensor& x, const char* what) {
    check_cuda(x, what, x);
    dtype_of(x, what);
    TORCH_CHECK(x.dim() >= 1, "rtinfer cuda: ", what, " needs at least one dimension");
    return x.contiguous();
}

at::Tensor layer_norm(const at::Tensor& x_, const std::optional<at::Tensor>& gamma_,
                      const std::optional<at::Tensor>& beta_, double eps) {
    const at::Tensor x = rows_of(x_, "layer_norm input");
    const auto gamma = vector_param(gamma_, "layer_norm weight", x);
    const auto beta = vector_param(beta_, "layer_norm bias", x);
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor y = at::empty_like(x);
    const int64_t cols = x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
    check_status(rc::layer_norm(dtype_of(x, "x"), y.data_ptr(), x.data_ptr(),
                                data_or_null(gamma), data_or_null(beta), rows, cols,
                                static_cast<float>(eps), current_stream()),
                 "layer_norm");
    return y;
}

at::Tensor rms_norm(const at::Tensor& x_, const std::optional<at::Tensor>& gamma_, double eps) {
    const at::Tensor x = rows_of(x_, "rms_norm input");
    const auto gamma = vector_param(gamma_, "rms_norm weight", x);
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor y = at::empty_like(x);
    const int64_t cols = x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
    check_status(rc::rms_norm(dtype_of(x, "x"), y.data_ptr(), x.data_ptr(), data_or_null(gamma),
                              rows, cols, static_cast<float>(eps),
                              current_stream()),
                 "rms_norm");
    return y;
}

at::Tensor softmax(const at::Tensor& x_, bool log) {
    const at::Tensor x = rows_of(x_, "softmax input");
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor y = at::empty_like(x);
    const int64_t cols = x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
    check_status(rc::softmax(dtype_of(x, "x"), y.data_ptr(), x.data_ptr(), rows, cols, log,
                             current_stream()),
                 "softmax");
    return y;
}

at::Tensor bias_act(const at::Tensor& x_, const std::optional<at::Tensor>& bias_,
                    const std::string& activation) {
    const rc::Act act = parse_act(activation);
    const at::Tensor x = rows_of(x_, "bias_act input");
    const auto bias = vector_param(bias_, "bias_act bias", x);
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor y = at::empty_like(x);
    const int64_t cols = x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
    check_status(rc::bias_act(dtype_of(x, "x"), act, y.data_ptr(), x.data_ptr(),
                              data_or_null(bias), rows, cols, current_stream()),
                 "bias_act");
    return y;
}

// act(a op b) where b's shape is a suffix of a's (b repeats over a's leading axes).
at::Tensor binary(const at::Tensor& a_, const at::Tensor& b_, const std::string& op,
                  const std::string& activation) {
    TORCH_CHECK(op == "add" || op == "mul", "rtinfer cuda: unknown binary op '", op,
                "' (add, mul)");
    const rc::Act act = parse_act(activation);
    const at::Tensor a = rows_of(a_, "binary input a");
    check_cuda(b_, "binary input b", a);
    TORCH_CHECK(b_.scalar_type() == a.scalar_type(), "rtinfer cuda: binary input b is ",
                b_.scalar_type(), " but a is ", a.scalar_type());
    const int64_t lead = a.dim() - b_.dim();
    TORCH_CHECK(lead >= 0 && a.sizes().slice(lead).equals(b_.sizes()), "rtinfer cuda: binary: ",
                "b's shape ", b_.sizes(), " must be a suffix of a's ", a.sizes());
    const at::Tensor b = b_.contiguous();
    const c10::cuda::CUDAGuard guard(a.device());
    at::Tensor y = at::empty_like(a);
    if (a.numel() == 0) return y;
    check_status(rc::elementwise(dtype_of(a, "a"), op == "add" ? rc::BinOp::add : rc::BinOp::mul,
                                 act, y.data_ptr(), a.data_ptr(), b.data_ptr(), a.numel(),
                                 b.numel(), current_stream()),
                 "binary");
    return y;
}

rc::Strides3 strides3(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// q [B, H, Sq, D], k and v [B, Hkv, Sk, D], out [B, H, Sq, D]: any strides, D contiguous.
// mask: [B, H, Sq, Sk] (an expanded view: broadcast axes have stride 0), bool or additive float.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask, double scale, bool causal,
                     const at::Tensor& out) {
    check_cuda(q, "attention q", q);
    check_cuda(k, "attention k", q);
    check_cuda(v, "attention v", q);
    check_cuda(out, "attention out", q);
    const rc::DType dtype = dtype_of(q, "attention q");
    for (const auto* t : {&k, &v, &out})
        TORCH_CHECK(t->scalar_type() == q.scalar_type(), "rtinfer cuda: attention operands must ",
                    "share one dtype: q is ", q.scalar_type(), ", another is ", t->scalar_type());
    TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && out.dim() == 4,
                "rtinfer cuda: attention takes 4-d [batch, heads, seq, head_dim] views, got q ",
                q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
    const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3);
    const int64_t Hkv = k.size(1), Sk = k.size(2);
    TORCH_CHECK(k.size(0) == B && k.size(3) == D && v.sizes() == k.sizes(),
                "rtinfer cuda: attention k and v must be [", B, ", heads, kv_len, ", D,
                "] and alike, got k ", k.sizes(), ", v ", v.sizes());
    TORCH_CHECK(Hkv >= 1 && H % Hkv == 0, "rtinfer cuda: attention q has ", H,
                " heads, not a multiple of k/v's ", Hkv);
    TORCH_CHECK(out.sizes() == q.sizes(), "rtinfer cuda: attention out must be ", q.sizes(),
                ", not ", out.sizes());
    TORCH_CHECK(D >= 1 && D <= rc::kAttentionMaxHeadDim, "rtinfer cuda: attention head_dim ", D,
                " is outside 1..", rc::kAttentionMaxHeadDim);
    for (const auto* t : {&q, &k, &v, &out})
        TORCH_CHECK(t->stride(3) == 1 || t->size(3) == 1,
                    "rtinfer cuda: attention needs head_dim contiguous (stride 1), got strides ",
                    t->strides());

    rc::AttentionArgs a;
    a.dtype = dtype;
    a.q = q.data_ptr();
    a.k = k.data_ptr();
    a.v = v.data_ptr();
    a.out = out.data_ptr();
    a.batch = B;
    a.heads = H;
    a.kv_heads = Hkv;
    a.q_len = Sq;
    a.kv_len = Sk;
    a.head_dim = D;
    a.q_stride = strides3(q);
    a.k_stride = strides3(k);
    a.v_stride = strides3(v);
    a.out_stride = strides3(out);
    a.scale = static_cast<float>(scale);
    a.causal = causal;
    if (mask.has_value()) {
        const at::Tensor& m = *mask;
        check_cuda(m, "attention mask", q);
        TORCH_CHECK(m.dim() == 4 && m.size(0) == B && m.size(1) == H && m.size(2) == Sq &&
                        m.size(3) == Sk,
                    "rtinfer cuda: attention mask must be (a view) [", B, ", ", H, ", ", Sq, ", ",
                    Sk, "], got ", m.sizes());
        if (m.scalar_type() == at::kBool) {
            a.mask_kind = rc::MaskKind::boolean;
        } else {
            a.mask_kind = rc::MaskKind::additive;
            a.mask_dtype = dtype_of(m, "attention mask (bool or float)");
        }
        a.mask = m.data_ptr();
        for (int i = 0; i < 4; ++i) a.mask_stride[i] = m.stride(i);
    }
    const c10::cuda::CUDAGuard guard(q.device());
    check_status(rc::attention(a, current_stream()), "attention");
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "rtinfer's CUDA kernels (cpp/cuda)";
    m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("gamma"), py::arg("beta"),
          py::arg("eps"));
    m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("gamma"), py::arg("eps"));
    m.def("softmax", &softmax, py::arg("x"), py::arg("log"));
    m.def("bias_act", &bias_act, py::arg("x"), py::arg("bias"), py::arg("activation"));
    m.def("binary", &binary, py::arg("a"), py::arg("b"), py::arg("op"), py::arg("activation"));
    m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"),
          py::arg("scale"), py::arg("causal"), py::arg("out"));
}
