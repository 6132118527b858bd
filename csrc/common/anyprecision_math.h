// The elementwise any-precision AdamW update, written once for every vector
// type (CPU SIMD vectors, float on CPU tails and CUDA). Included inside an
// ISA namespace on the CPU and by the CUDA kernel; the caller provides vsqrt,
// what divide_math.h needs and the rounding functions `round_m`, `round_v`,
// `round_c` (round to the state dtypes) as callables.
//
// Math in float32, each stored value rounded once to its dtype; the update
// reads the momentum and variance as stored (rounded), as torchdistx does:
//   p = p*(1 - lr*wd)                        (times 1 without weight decay: the
//                                            same bits, and no branch per vector)
//   m = beta1*m + (1-beta1)*g;  v = beta2*v + (1-beta2)*g*g
//   u = -(lr/(1-beta1^t)) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
//   plain:  p = p + u
//   Kahan:  c = c + u;  y = p;  p = p + c;  c = c + (y - p)
// anyprecision_update decays p, updates m and v and returns u; the kernels then
// round p + u (nearest or stochastic) or run the Kahan steps.

#include "common/divide_math.h"

template <class V, class Round>
PT_DEVICE V anyprecision_update(V& p, V g, V& m, V& v, const AnyPrecisionCoeffs& c,
                                const Round& round) {
  p = p * V(c.decay);
  m = round.m(V(c.beta1) * m + V(c.one_minus_beta1) * g);
  v = round.v(V(c.beta2) * v + (V(c.one_minus_beta2) * g) * g);
  const V denom = div_by(vsqrt(v), c.bc2_sqrt) + V(c.eps);
  return (V(c.neg_step_size) * m) / denom;
}
