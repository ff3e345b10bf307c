// Elementwise math that compilers vectorise: no libm calls and no branches, only arithmetic
// and integer bit operations, so a loop over these functions becomes SIMD code in every ISA
// clone (FASTCONV_CLONED). Choices between two values are made with bit masks
// (select_by_mask), not `c ? a : b`: GCC moves an operand used by one arm into a branch and,
// as a floating-point operation may trap, will not turn that branch back into a blend, which
// left whole loops scalar (a clamp `y < lo ? lo : y` too, once lo is folded into what follows).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "activation/normal_cdf_coefficients.h"

namespace fastconv {

template <typename T>
struct FloatBits;
template <>
struct FloatBits<float> {
  using Int = std::int32_t;
  static constexpr int mantissa = 23;
  static constexpr Int bias = 127;
  static constexpr Int low_half_mask = (Int(1) << 12) - 1;  // leaves a 12-bit significand
  static constexpr float lowest_exp_arg = -104.0f;  // f exp(y) rounds to 0 here, f <= 1
};
template <>
struct FloatBits<double> {
  using Int = std::int64_t;
  static constexpr int mantissa = 52;
  static constexpr Int bias = 1023;
  static constexpr Int low_half_mask = (Int(1) << 27) - 1;  // leaves a 26-bit significand
  static constexpr double lowest_exp_arg = -746.0;
};

template <typename T>
__attribute__((always_inline)) inline typename FloatBits<T>::Int bits_of(T v) {
  typename FloatBits<T>::Int i;
  std::memcpy(&i, &v, sizeof v);
  return i;
}

template <typename T>
__attribute__((always_inline)) inline T from_bits(typename FloatBits<T>::Int i) {
  T v;
  std::memcpy(&v, &i, sizeof v);
  return v;
}

// All ones where v's sign bit is set (negative numbers, -0, NaNs with the sign), else 0.
template <typename T>
__attribute__((always_inline)) inline typename FloatBits<T>::Int sign_mask(T v) {
  using Int = typename FloatBits<T>::Int;
  using UInt = std::make_unsigned_t<Int>;
  return -Int(UInt(bits_of(v)) >> (8 * sizeof(T) - 1));  // (logical shifts exist in SSE2)
}

// mask ? if_set : if_clear, for a mask of all ones or all zeros (see the top of this file).
template <typename T>
__attribute__((always_inline)) inline T select_by_mask(typename FloatBits<T>::Int mask,
                                                       T if_set, T if_clear) {
  return from_bits<T>((bits_of(if_set) & mask) | (bits_of(if_clear) & ~mask));
}

// 2^n for n in the normal exponent range.
template <typename T>
__attribute__((always_inline)) inline T pow2(typename FloatBits<T>::Int n) {
  return from_bits<T>((n + FloatBits<T>::bias) << FloatBits<T>::mantissa);
}

// c[0] + c[1] u + ... + c[N-1] u^(N-1), Horner's rule (unrolled: N is known).
template <typename T, int N>
__attribute__((always_inline)) inline T horner(const T (&c)[N], T u) {
  T p = c[N - 1];
#pragma GCC unroll 32
  for (int i = N - 2; i >= 0; --i) p = p * u + c[i];
  return p;
}

// 1/k!, k = 0, 1, ...: exp's Taylor series, enough terms for |r| <= 0.41 (remainder below
// 0.2 eps: 0.41^8/8! for float, 0.41^14/14! for double).
template <typename T>
struct ExpTaylor;
template <>
struct ExpTaylor<float> {
  static constexpr float coef[8] = {1.0f, 1.0f, 1.0f / 2, 1.0f / 6, 1.0f / 24, 1.0f / 120,
                                    1.0f / 720, 1.0f / 5040};
};
template <>
struct ExpTaylor<double> {
  static constexpr double coef[14] = {
      1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
      1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
};

// exp(y + z) = m * 2^n1 * 2^n2, each factor a normal number: times(f) = f exp(y + z) rounds
// once into the subnormal range (gradual underflow) instead of flushing or rounding twice.
template <typename T>
struct ScaledExp {
  T m, s1, s2;
  __attribute__((always_inline)) T times(T factor) const { return factor * m * s1 * s2; }
};

// exp(y + z) for y <= 0 given exactly (-inf and NaN give 0: callers' NaNs propagate through
// their other terms), and z a small correction (|z| <= 0.06). Cody-Waite reduction y + z = n ln2 + r: ln2_hi has few significant bits, so
// y - n ln2_hi is exact and a large |y| loses nothing; then exp(r) by its Taylor series.
// y below lowest_exp_arg is raised to it, where times(f) for f <= 1 rounds to 0 (exp(-104)
// is under half the smallest float subnormal, exp(-746) under half the smallest double); the
// comparison is on the bits of -|y|, which as signed integers grow as the number falls.
template <typename T>
__attribute__((always_inline)) inline ScaledExp<T> scaled_exp(T y, T z) {
  using B = FloatBits<T>;
  constexpr T log2e = T(1.4426950408889634074);
  constexpr T ln2_hi = T(0.693145751953125);            // 16 significant bits
  constexpr T ln2_lo = T(1.42860682030941723212e-06);   // ln 2 - ln2_hi
  constexpr T shifter = T(1.5) * T(typename B::Int(1) << B::mantissa);  // + shifter rounds
  using Int = typename B::Int;
  constexpr Int sign = Int(typename std::make_unsigned_t<Int>(1) << (8 * sizeof(T) - 1));
  const Int y_bits = bits_of(y) | sign;  // -|y|, that is y (or -0 for +0)
  y = select_by_mask(-Int(y_bits > bits_of(B::lowest_exp_arg)), B::lowest_exp_arg,
                     from_bits<T>(y_bits));
  const T k = y * log2e + shifter;  // shifter + n, n = round(y / ln 2)
  const T n = k - shifter;
  const T r = ((y - n * ln2_hi) + z) - n * ln2_lo;
  const T m = horner(ExpTaylor<T>::coef, r);
  const Int ni = bits_of(k) - bits_of(shifter);
  const Int n1 = ni >> 1;  // halves in the normal range down to n = -2 * 126
  return {m, pow2<T>(n1), pow2<T>(ni - n1)};
}

// sigmoid(v) = 1 / (1 + exp(-v)) and 1 - sigmoid(v), neither overflowing nor cancelling: with
// e = exp(-|v|) <= 1 they are 1/(1+e) and e/(1+e), swapped for v < 0.
template <typename T>
struct SigmoidPair {
  T s, one_minus_s;
};

template <typename T>
__attribute__((always_inline)) inline SigmoidPair<T> sigmoid_pair(T v) {
  const T e = scaled_exp(-std::fabs(v), T(0)).times(T(1));
  const T d = T(1) / (T(1) + e);
  const T ed = e * d;
  const auto negative = sign_mask(v);  // (-0 gives the same either way)
  return {select_by_mask(negative, ed, d), select_by_mask(negative, d, ed)};
}

// The standard normal distribution at x: cdf = Phi(x), density = exp(-x^2/2) / sqrt(2 pi).
template <typename T>
struct NormalAt {
  T cdf, density;
};

// Phi(-a) for a = |x| is exp(-a^2/2) t P(u), t = c/(c + a), P fitted by
// tools/fit_normal_cdf.py; Phi(x) = 1 - Phi(-a) for x >= 0, so the lower tail keeps its
// relative accuracy (no 1 + erf cancellation). exp(-a^2/2) takes a^2 = ah^2 + (2 ah + al) al
// with ah the high half of a's significand: ah^2 is exact, the rest a small correction.
template <typename T>
__attribute__((always_inline)) inline NormalAt<T> normal_at(T x) {
  using C = NormalTail<T>;
  using B = FloatBits<T>;
  constexpr T inv_sqrt_2pi = T(0.39894228040143267794);
  const T a = std::fabs(x);
  const T t = C::c / (C::c + a);
  const T p = horner(C::coef, (t - C::mid) * C::inv_half);
  // Beyond `cap` exp(-a^2/2) rounds to 0 anyway; capping keeps (2 ah + al) al finite for huge
  // or infinite a (a NaN is capped too: it reaches the result through t).
  constexpr T cap = sizeof(T) == sizeof(float) ? T(16) : T(40);
  const T a_capped = select_by_mask(-typename B::Int(bits_of(a) > bits_of(cap)), cap, a);
  const T ah = from_bits<T>(bits_of(a_capped) & ~B::low_half_mask);
  const T al = a_capped - ah;
  const ScaledExp<T> e = scaled_exp(T(-0.5) * (ah * ah), T(-0.5) * ((ah + ah + al) * al));
  const T tail = e.times(t * p);
  return {select_by_mask(sign_mask(x), tail, T(1) - tail), e.times(inv_sqrt_2pi)};
}

}  // namespace fastconv
