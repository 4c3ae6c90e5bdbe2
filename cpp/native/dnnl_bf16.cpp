// bf16 oneDNN steps (docs/bf16.md): bf16_conv2d, bf16_linear and bf16_matmul with a constant
// weight, where the CPU has AVX512_BF16 or AMX-BF16:
//
//     src16 = bf16(src)                       a oneDNN reorder into a plan slot (nearest even)
//     dst   = op(src16, bf16 weight) + bias   f32 accumulation, f32 dst, the fp32 epilogue
//
// The weight arrives as f32 holding bf16 values (to-bf16 rounded it), so the one reorder into
// the bf16 layout the primitive asks for is exact. The bias, the residual and dst stay f32, and
// the epilogue is the fp32 steps' (dnnl_common.h): binary_add and eltwise post-ops, with relu and
// clip run after the primitive as rtinfer's NaN-keeping Tail.
#include "dnnl_ops.h"

#include "dnnl_common.h"

#include <dnnl.hpp>

#include <optional>
#include <string>
#include <vector>

namespace rtinfer {

namespace {

constexpr auto bf16 = memory::data_type::bf16;

void need_bf16_isa(const std::string& name) {
  if (!onednn_has_bf16())
    invalid(name, "oneDNN runs without AVX512_BF16 / AMX-BF16 here (bf16 would be emulated)");
}

// dst16 = bf16(src) as one reorder step (both slots, the same logical layout `tag`).
void add_to_bf16(Plan& plan, const std::string& name, int src, int dst16, const Dims& dims,
                 memory::format_tag tag) {
  memory::desc from(dims, f32, tag), to(dims, bf16, tag);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::reorder::primitive_desc pd(cpu_engine(), from, cpu_engine(), to, attr);
  auto k = std::make_shared<Kernel>();
  k->name = name + " (to bf16)";
  k->prim = dnnl::reorder(pd);
  k->bound = {{DNNL_ARG_FROM, src, from}, {DNNL_ARG_TO, dst16, to}};
  finish(plan, std::move(k), pd);
}

}  // namespace

bool onednn_has_bf16() {
  // the ISA oneDNN runs (after any cap); cpu_isa values are bit sets, each level a superset
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto w = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & w) == w;
}

std::string add_bf16_conv(Plan& plan, const std::string& name, int src, int src16, int dst,
                          int residual, std::vector<int64_t> src_shape, torch::Tensor weight,
                          std::optional<torch::Tensor> bias, std::vector<int64_t> stride,
                          std::vector<int64_t> pad_begin, std::vector<int64_t> pad_end,
                          std::vector<int64_t> dilation, int64_t groups,
                          const std::string& activation, double alpha, double beta,
                          const std::string& residual_mode, bool dst_nhwc, int threads,
                          std::vector<int64_t> dst_shape) try {
  need_bf16_isa(name);
  if (src_shape.size() != 4 || dst_shape.size() != 4)
    invalid(name, "a bf16 conv takes [N, C, H, W] src and dst, got " + str(src_shape) + " -> " +
                      str(dst_shape));
  if (stride.size() != 2 || pad_begin.size() != 2 || pad_end.size() != 2 || dilation.size() != 2)
    invalid(name, "stride, pads and dilation need 2 values each");
  if (src < 0 || src16 < 0 || dst < 0) invalid(name, "src, src16 and dst must be slots");
  check_weight(name, "the weight", weight);
  const int64_t N = src_shape[0], C = src_shape[1], O = weight.size(0);
  if (weight.dim() != 4 || groups < 1 || C % groups != 0 || O % groups != 0 ||
      weight.size(1) * groups != C)
    invalid(name, "the weight " + str(weight.sizes().vec()) + " does not fit src " +
                      str(src_shape) + " with groups=" + std::to_string(groups));
  if (dst_shape[0] != N || dst_shape[1] != O)
    invalid(name, "the dst " + str(dst_shape) + " does not fit the weight's " +
                      std::to_string(O) + " output channels");
  for (int i = 0; i < 2; ++i) {
    const int64_t span = dilation[i] * (weight.size(2 + i) - 1) + 1;
    if (stride[i] < 1 || dilation[i] < 1 || pad_begin[i] < 0 || pad_end[i] < 0 ||
        (src_shape[2 + i] + pad_begin[i] + pad_end[i] - span) / stride[i] + 1 != dst_shape[2 + i])
      invalid(name, "the window does not give the dst " + str(dst_shape));
  }
  if (bias) {
    check_weight(name, "the bias", *bias);
    if (bias->numel() != O) invalid(name, "the bias must have " + std::to_string(O) + " values");
  }
  using tag = memory::format_tag;
  const int64_t kh = weight.size(2), kw = weight.size(3);
  Dims src_dims = {N, C, src_shape[2], src_shape[3]};
  Dims dst_dims = {N, O, dst_shape[2], dst_shape[3]};
  add_to_bf16(plan, name, src, src16, src_dims, tag::nhwc);
  memory::desc src_md(src_dims, bf16, tag::nhwc);
  memory::desc dst_md(dst_dims, f32, dst_nhwc ? tag::nhwc : tag::nchw);
  Dims w_dims = groups == 1 ? Dims{O, C, kh, kw} : Dims{groups, O / groups, C / groups, kh, kw};
  memory::desc w_user(w_dims, f32, groups == 1 ? tag::oihw : tag::goihw);
  memory::desc w_any(w_dims, bf16, tag::any);
  memory::desc b_md = bias ? memory::desc({O}, f32, tag::a) : memory::desc();
  Epilogue e = epilogue(name, activation, alpha, beta, residual_mode, residual, dst_md);
  const double macs = (double)N * O * dst_dims[2] * dst_dims[3] * (C / groups) * kh * kw;
  CreationThreads creation(threads, macs);
  dnnl::convolution_forward::primitive_desc pd(
      cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
      src_md, w_any, b_md, dst_md, Dims{stride[0], stride[1]},
      Dims{dilation[0] - 1, dilation[1] - 1}, Dims{pad_begin[0], pad_begin[1]},
      Dims{pad_end[0], pad_end[1]}, e.attr);
  // oneDNN 3.2's brgconv:avx512_core_bf16 (AVX512_BF16 without AMX) takes input channels in
  // pairs across groups when a group has an odd number of them: the zero-padded weight then
  // multiplies the next group's channel, and a NaN or inf there reaches this group's outputs
  // (0 * NaN). Measured on a Zen 5: groups of 1 and 3 channels leak, of 2 not; its next
  // implementation (jit_bf16) and the depthwise kernels (brdgmm_dw) keep the groups apart.
  if (groups > 1 && (C / groups) % 2 == 1)
    while (std::string(pd.impl_info_str()) == "brgconv:avx512_core_bf16" && pd.next_impl()) {
    }
  auto kern = std::make_shared<Kernel>();
  kern->name = name;
  kern->prim = dnnl::convolution_forward(pd);
  kern->bound.push_back({DNNL_ARG_SRC, src16, pd.src_desc()});
  kern->bound.push_back({DNNL_ARG_DST, dst, pd.dst_desc()});
  if (e.residual_arg) kern->bound.push_back({e.residual_arg, residual, dst_md});
  kern->fixed.emplace_back(DNNL_ARG_WEIGHTS,
                           pack(weight.reshape(w_dims), w_user, pd.weights_desc()));
  if (bias) kern->fixed.emplace_back(DNNL_ARG_BIAS, copy_bias(*bias, pd.bias_desc()));
  if (e.tail) kern->tail = make_tail(e.act, dst, e.tail_residual, dst_dims);
  return finish(plan, std::move(kern), pd);
} catch (const dnnl::error& err) {  // at plan-build time: name the step
  throw dnnl_failure(name, err);
}

std::string add_bf16_matmul(Plan& plan, const std::string& name, int a, int a16, int dst,
                            int residual, int64_t rows, torch::Tensor weight,
                            std::optional<torch::Tensor> bias, const std::string& activation,
                            double alpha, double beta, const std::string& residual_mode,
                            int threads) try {
  need_bf16_isa(name);
  if (a < 0 || a16 < 0 || dst < 0) invalid(name, "a, a16 and dst must be slots");
  check_weight(name, "the weight", weight);
  if (weight.dim() != 2 || rows < 1)
    invalid(name, "a bf16 matmul takes [rows, K] @ [K, N] with a constant [K, N] weight, got " +
                      std::to_string(rows) + " rows and " + str(weight.sizes().vec()));
  const int64_t K = weight.size(0), N = weight.size(1);
  if (bias) {
    check_weight(name, "the bias", *bias);
    if (bias->numel() != N) invalid(name, "the bias must have " + std::to_string(N) + " values");
  }
  Dims a_dims = {rows, K}, b_dims = {K, N}, d_dims = {rows, N};
  add_to_bf16(plan, name, a, a16, a_dims, memory::format_tag::ab);
  memory::desc a_md(a_dims, bf16, memory::format_tag::ab);
  memory::desc b_md(b_dims, bf16, memory::format_tag::any);
  memory::desc dst_md = plain(d_dims);
  memory::desc bias_md = bias ? plain(Dims{1, N}) : memory::desc();
  Epilogue e = epilogue(name, activation, alpha, beta, residual_mode, residual, dst_md);
  CreationThreads creation(threads, (double)rows * K * N);
  dnnl::matmul::primitive_desc pd(cpu_engine(), a_md, b_md, bias_md, dst_md, e.attr);
  auto kern = std::make_shared<Kernel>();
  kern->name = name;
  kern->prim = dnnl::matmul(pd);
  kern->bound.push_back({DNNL_ARG_SRC, a16, pd.src_desc()});
  kern->bound.push_back({DNNL_ARG_DST, dst, pd.dst_desc()});
  if (e.residual_arg) kern->bound.push_back({e.residual_arg, residual, dst_md});
  kern->fixed.emplace_back(DNNL_ARG_WEIGHTS, pack(weight, plain(b_dims), pd.weights_desc()));
  if (bias) kern->fixed.emplace_back(DNNL_ARG_BIAS, copy_bias(*bias, pd.bias_desc()));
  if (e.tail) kern->tail = make_tail(e.act, dst, e.tail_residual, d_dims);
  return finish(plan, std::move(kern), pd);
} catch (const dnnl::error& err) {  // at plan-build time: name the step
  throw dnnl_failure(name, err);
}

}  // namespace rtinfer
