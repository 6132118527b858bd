// Float32 to 16-bit rounding on bit patterns, identical on the host and the
// device: round-to-nearest-even views of bfloat16 and float16, and stochastic
// rounding (a value rounds up with probability equal to its distance from the
// value below, so rounding errors average out instead of losing small updates).
#pragma once

#include <stdint.h>
#include <string.h>

#include "macros.h"

namespace pytrainer {

PT_HOST_DEVICE uint32_t f32_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
}

PT_HOST_DEVICE float f32_from_bits(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof(x));
  return x;
}

PT_HOST_DEVICE bool is_nan_bits(uint32_t u) { return (u & 0x7fffffffU) > 0x7f800000U; }

// ------------------------------------------------------------------- bfloat16
PT_HOST_DEVICE float bf16_round_nearest(float x) {
  const uint32_t u = f32_bits(x);
  if (is_nan_bits(u)) return x;
  return f32_from_bits((u + 0x7fffU + ((u >> 16) & 1U)) & 0xffff0000U);
}

// Adds 16 random bits below the bfloat16 mantissa, then truncates.
PT_HOST_DEVICE float bf16_round_stochastic(float x, uint32_t random) {
  const uint32_t u = f32_bits(x);
  if (is_nan_bits(u)) return x;
  return f32_from_bits((u + (random & 0xffffU)) & 0xffff0000U);
}

// -------------------------------------------------------------------- float16
// float16 bits of x rounded toward zero (overflow saturates to the largest finite).
PT_HOST_DEVICE uint16_t f16_bits_toward_zero(float x) {
  const uint32_t u = f32_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000U);
  const uint32_t a = u & 0x7fffffffU;
  if (a > 0x7f800000U) return static_cast<uint16_t>(sign | 0x7e00U);  // NaN
  if (a == 0x7f800000U) return static_cast<uint16_t>(sign | 0x7c00U);  // inf
  const int32_t exponent = static_cast<int32_t>(a >> 23) - 127;
  if (exponent > 15) return static_cast<uint16_t>(sign | 0x7bffU);
  if (exponent >= -14) {  // normal in float16
    return static_cast<uint16_t>(sign | ((exponent + 15) << 10) | ((a >> 13) & 0x3ffU));
  }
  if (exponent < -25) return sign;  // below half the smallest subnormal
  // subnormal: value = mantissa * 2^-24
  const uint32_t mantissa = (a & 0x7fffffU) | 0x800000U;
  return static_cast<uint16_t>(sign | (mantissa >> (-exponent - 1)));
}

PT_HOST_DEVICE float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000U) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fU;
  const uint32_t mantissa = h & 0x3ffU;
  if (exponent == 0x1fU) return f32_from_bits(sign | 0x7f800000U | (mantissa << 13));
  if (exponent != 0) return f32_from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // subnormal (or zero): mantissa * 2^-24, exact in float32
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

// Rounds up (away from zero) to the next float16 with probability equal to
// the fraction of the gap between the two neighbours of x.
PT_HOST_DEVICE float f16_round_stochastic(float x, uint32_t random) {
  if (x != x) return x;
  const uint16_t low = f16_bits_toward_zero(x);
  const float low_value = f16_bits_to_float(low);
  if (low_value == x) return x;
  if ((low & 0x7fffU) >= 0x7bffU) return low_value;  // no finite float16 beyond
  const float high_value = f16_bits_to_float(static_cast<uint16_t>(low + 1));
  const float fraction = (x - low_value) / (high_value - low_value);
  const float uniform = static_cast<float>(random >> 8) * 5.9604644775390625e-8f;  // [0, 1)
  return uniform < fraction ? high_value : low_value;
}

}  // namespace pytrainer
