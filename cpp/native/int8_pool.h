// rtinfer's own int8 pooling (int8_pool.cpp), called by dnnl_int8.cpp's add_pool_int8.
#pragma once

#include "plan.h"

#include <string>
#include <vector>

namespace rtinfer {

// Max pooling of u8 (`is_u8`) or i8 codes [N, C, H, W] (stored NHWC when `nhwc`) into `dst`
// (the end padding is implied by dst's size); returns the implementation's name.
std::string add_qmax_pool(Plan& plan, const std::string& name, int x, int y, bool is_u8,
                          const std::vector<int64_t>& src, const std::vector<int64_t>& dst,
                          const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                          const std::vector<int64_t>& pad_begin,
                          const std::vector<int64_t>& dilation, bool nhwc);

}  // namespace rtinfer
