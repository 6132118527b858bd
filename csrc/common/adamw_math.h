// The elementwise AdamW update, written once for every vector type: CPU SIMD
// vectors, plain float/double (CPU tails, float64) and float on CUDA.
//
// Included inside an ISA-specific namespace on the CPU (so each instruction set
// gets its own instantiations) and directly by the CUDA kernels. The caller
// provides vfma, vsqrt and vmax_nan for its vector type, and what
// divide_math.h needs.
//
// The float ops follow torch.optim.AdamW(foreach=False) op by op:
//   param.mul_(1 - lr*wd); exp_avg.lerp_(grad, 1-beta1);
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2);
//   denom = exp_avg_sq.sqrt() / bc2_sqrt + eps (the division without the divider,
//           same bits: divide_math.h);  param.addcdiv_(exp_avg, denom, value=-step_size)
// (lerp as ATen's vectorised lerp, addcmul as (value*t1)*t2, addcdiv as (value*t1)/t2).
// Without weight decay torch skips the param's multiply; here it multiplies by 1,
// the same bits (a signalling NaN is quieted, as the update's add would), and the
// CPU loops have no branch per vector.

#include "common/divide_math.h"

template <bool AMSGRAD, class V, class S>
PT_DEVICE void adamw_update(V& p, V g, V& m, V& v, V& vmax, const AdamWCoeffs<S>& c) {
  if (c.maximize) g = -g;
  p = p * V(c.decay);
  const V diff = g - m;
  m = c.lerp_small ? vfma(V(c.lerp_w), diff, m) : vfma(V(c.lerp_w_minus_1), diff, g);
  v = v * V(c.beta2);
  v = v + (V(c.one_minus_beta2) * g) * g;
  V second = v;
  if constexpr (AMSGRAD) {
    vmax = vmax_nan(vmax, v);
    second = vmax;
  }
  const V denom = div_by(vsqrt(second), c.bc2_sqrt) + V(c.eps);
  p = p + (V(c.neg_step_size) * m) / denom;
}
