// e^x for float: 2^n e^r, |r| <= ln2/2 (Cephes expf, ~1 ulp). Inputs below -87 give 0 (instead
// of a denormal), above ln(FLT_MAX) +inf; NaN stays NaN. Shared by the CPU kernels
// (cpu_common.h) and the generated elementwise code (kernels/codegen.py pastes this file into
// its prelude), so both round alike; plain C++ without torch headers.
#ifndef RTINFER_RT_EXP_H
#define RTINFER_RT_EXP_H
#include <cmath>
#include <cstdint>
#include <cstring>

namespace rt {

static inline __attribute__((always_inline)) float exp(float x) {
  float xc = x < -87.0f ? -87.0f : x;
  xc = xc > 88.72283935546875f ? 88.72283935546875f : xc;
  float fn = std::nearbyint(xc * 1.44269504088896341f);
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t bits = (uint32_t)((int32_t)fn + 126) << 23;  // 2^(n-1): n - 1 fits a normal exponent
  float s;
  std::memcpy(&s, &bits, 4);
  float y = (p * 2.0f) * s;
  y = x < -87.0f ? 0.0f : y;
  return x > 88.72283935546875f ? __builtin_inff() : y;
}

}  // namespace rt

#endif  // RTINFER_RT_EXP_H
