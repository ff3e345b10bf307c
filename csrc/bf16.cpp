// bfloat16 rounding of whole arrays (see bf16.h).
#include "bf16.h"

namespace fastconv {

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "f32"; }

bool precision_from_name(const std::string& name, Precision* p) {
  if (name == "f32") *p = Precision::f32;
  else if (name == "bf16") *p = Precision::bf16;
  else return false;
  return true;
}

void round_to_bf16(const float* src, index_t n, float* dst) {
  // Blocks of 16 Ki values (64 KiB): big enough to spread over the threads, each a plain
  // loop the compiler vectorises.
  constexpr index_t kBlock = index_t(1) << 14;
#pragma omp parallel for schedule(static) if (n > 4 * kBlock)
  for (index_t b = 0; b < n; b += kBlock) {
    const index_t e = b + kBlock < n ? b + kBlock : n;
    for (index_t i = b; i < e; ++i) dst[i] = round_to_bf16(src[i]);
  }
}

}  // namespace fastconv
