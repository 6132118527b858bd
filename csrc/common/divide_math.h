// a / d for a ConstDivisor d, with the bits of the IEEE division, for every
// vector type (CPU SIMD vectors, float and double on CPU tails and CUDA). The
// caller provides vfma, vfms (a * b - c, one rounding), vmin_b and
// kFusedMultiplyAdd.
//
// Markstein's correction: q = a * (1/d) is within an ulp of a/d; the fused
// multiply-subtract gives its residual q*d - a exactly, and one more fused step
// q - residual * (1/d) rounds to the correctly rounded quotient (Markstein's
// theorem, in the Handbook of Floating-Point Arithmetic's chapter on division
// with an FMA), as long as the residual neither underflows nor overflows. Here
// the dividend is a square root (at least 2^-75 when not zero) and d is in
// (0, 1], so the residual stays normal. Checked against division for every
// float32 significand in [1, 2) and the 7,806 float32 divisors of nine beta2
// from 0.9 to 0.99999 over 1,125 steps (no difference in 65.5 G quotients,
// where a * (1/d) alone is off in 29%), and in tests/test_cpu_isas.py over
// every exponent. An infinite dividend gives a NaN residual; vmin_b (the second
// operand where either is NaN) turns it into the largest finite value, so that
// inf / d stays inf and a NaN dividend stays NaN. Without hardware fused
// multiply-add (the portable build) this divides.
#pragma once

template <class V, class S>
PT_DEVICE V div_by(V a, const ConstDivisor<S>& d) {
  if constexpr (kFusedMultiplyAdd) {
    const V q = a * V(d.recip);
    const V residual = vmin_b(vfms(q, V(d.value), a), V(max_finite<S>()));
    return vfma(residual, V(-d.recip), q);
  } else {
    return a / V(d.value);
  }
}
