// bfloat16: the upper half of a float32 (sign, the 8 exponent bits, 7 of the 23 mantissa
// bits), so the same range as float32 with ~3 significant digits. In bf16 mode the GEMM
// operands of convolutions and linear layers are rounded to it (round to nearest, ties to
// even); products are exact in float32 (8 x 8 significant bits) and sums accumulate in
// float32 (gemm_bf16.h).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "common.h"

namespace fastconv {

// The precision of the operands of the GEMM-like ops (convolutions, linear layers): float32
// as given, or rounded to bfloat16 (accumulating in float32 either way).
enum class Precision : int { f32 = 0, bf16 = 1 };

// "f32", "bf16".
const char* precision_name(Precision p);
// The precision of that name; false for an unknown name.
bool precision_from_name(const std::string& name, Precision* p);

// The bfloat16 bits of x rounded to nearest even: add 0x7fff plus the lowest kept bit, then
// drop the low 16 bits (a carry into the exponent is the correct rounding, up to inf). A NaN
// is truncated with its quiet bit set, so it stays a NaN even when its payload sat only in
// the dropped bits.
inline std::uint16_t bf16_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

// The float32 value of bfloat16 bits (exact).
inline float bf16_value(std::uint16_t b) {
  const std::uint32_t u = std::uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// x rounded to the nearest bfloat16, as a float32.
inline float round_to_bf16(float x) { return bf16_value(bf16_bits(x)); }

// dst[i] = round_to_bf16(src[i]) for i < n, split over the OpenMP threads (dst may be src).
void round_to_bf16(const float* src, index_t n, float* dst);

}  // namespace fastconv
