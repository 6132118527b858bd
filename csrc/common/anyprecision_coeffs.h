// Per-tensor scalars of one any-precision AdamW step (torchdistx's
// AnyPrecisionAdamW), computed once per tensor (CPU) or per block (CUDA).
#pragma once

#include <math.h>
#include <stdint.h>

#include "adamw_coeffs.h"
#include "divisor.h"
#include "macros.h"

namespace pytrainer {

// How the new parameter is stored; the values are the op's `rounding` argument.
enum AnyPrecisionRounding : int { kRoundNearest = 0, kRoundKahan = 1, kRoundStochastic = 2 };
constexpr int kNumRoundings = 3;

struct AnyPrecisionHyper {
  double beta1;
  double beta2;
  double weight_decay;
  double eps;
};

struct AnyPrecisionCoeffs {
  float grad_mult;        // 1 / grad_scale
  float decay;            // 1 - lr * weight_decay; exactly 1 without weight decay
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  ConstDivisor<float> bc2_sqrt;  // sqrt(1 - beta2^t)
  float eps;
  float neg_step_size;    // -lr / (1 - beta1^t)
};

// x as float, a NaN as the default quiet NaN (0x7fc00000): for the coefficients
// of the new moments, whose bfloat16 roundings on the CPU take a NaN's low 16
// bits to be clear (cpu/simd.h, vstore_round2_number). A grad scale is any
// tensor: a NaN one with its payload bits set would otherwise round to -0.0.
PT_HOST_DEVICE float float_or_quiet_nan(double x) {
  return x == x ? static_cast<float>(x) : NAN;
}

PT_HOST_DEVICE AnyPrecisionCoeffs make_anyprecision_coeffs(const AnyPrecisionHyper& h, double lr,
                                                           double step, double grad_mult) {
  AnyPrecisionCoeffs c;
  c.grad_mult = float_or_quiet_nan(grad_mult);
  c.decay = decay_factor<float>(lr, h.weight_decay);
  c.beta1 = float_or_quiet_nan(h.beta1);
  c.one_minus_beta1 = float_or_quiet_nan(1.0 - h.beta1);
  c.beta2 = float_or_quiet_nan(h.beta2);
  c.one_minus_beta2 = float_or_quiet_nan(1.0 - h.beta2);
  c.bc2_sqrt = make_divisor(static_cast<float>(sqrt(1.0 - pow(h.beta2, step))));
  c.eps = static_cast<float>(h.eps);
  c.neg_step_size = static_cast<float>(-(lr / (1.0 - pow(h.beta1, step))));
  return c;
}

// ------------------------------------------------------------ stochastic rounding
// A counter-based random stream: the same 32 bits for (seed, tensor, step,
// element) on every device and every run, so stochastic rounding is
// reproducible and a CPU run equals a CUDA run. lowbias32 is Chris Wellons'
// 32-bit integer hash (bias about 0.17 of the ideal); cheap in SIMD lanes.
PT_HOST_DEVICE uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The key of one tensor at one step.
PT_HOST_DEVICE uint32_t rounding_key(uint64_t seed, uint32_t tensor_id, uint32_t step) {
  uint32_t k = hash32(static_cast<uint32_t>(seed) ^ 0x9e3779b9U);
  k = hash32(k ^ static_cast<uint32_t>(seed >> 32));
  k = hash32(k ^ tensor_id);
  return hash32(k ^ step);
}

// The random bits of element `index` of that tensor.
PT_HOST_DEVICE uint32_t rounding_bits(uint32_t key, uint64_t index) {
  return hash32(hash32(key ^ static_cast<uint32_t>(index)) ^ static_cast<uint32_t>(index >> 32));
}

}  // namespace pytrainer
