// Per-tensor scalars of one AdamW step, computed once per tensor (CPU) or per
// block (CUDA) from the hyperparameters and the tensor's step count.
//
// They reproduce the scalars torch.optim.AdamW's single-tensor path hands to
// its tensor ops: bias corrections in double, then each scalar rounded once to
// the math type, so the elementwise update can follow the same float ops.
#pragma once

#include <math.h>

#include "divisor.h"
#include "macros.h"

namespace pytrainer {

struct AdamWHyper {
  double beta1;
  double beta2;
  double weight_decay;
  double eps;
  bool maximize;
};

template <class S>
struct AdamWCoeffs {
  S grad_mult;        // 1 / grad_scale (1 when grads are not scaled)
  S decay;            // 1 - lr * weight_decay; exactly 1 without weight decay
  S lerp_w;           // 1 - beta1: the weight torch hands to exp_avg.lerp_
  S lerp_w_minus_1;   // lerp_w - 1, torch's large-weight lerp branch
  S beta2;
  S one_minus_beta2;
  ConstDivisor<S> bc2_sqrt;  // sqrt(1 - beta2^t)
  S eps;
  S neg_step_size;    // -lr / (1 - beta1^t)
  bool lerp_small;    // |lerp_w| < 0.5 picks torch's first lerp formula
  bool maximize;
};

// The param's factor of decoupled weight decay, 1 - lr * weight_decay (AdamW's
// and AnyPrecisionAdamW's): exactly 1 without weight decay, not 1 - lr * 0, which
// an infinite lr would make NaN.
template <class S>
PT_HOST_DEVICE S decay_factor(double lr, double weight_decay) {
  return weight_decay != 0.0 ? static_cast<S>(1.0 - lr * weight_decay) : static_cast<S>(1);
}

// `step` is the step count including the step being taken (t >= 1).
template <class S>
PT_HOST_DEVICE AdamWCoeffs<S> make_adamw_coeffs(const AdamWHyper& h, double lr,
                                                 double step, double grad_mult) {
  AdamWCoeffs<S> c;
  c.grad_mult = static_cast<S>(grad_mult);
  c.decay = decay_factor<S>(lr, h.weight_decay);
  c.lerp_w = static_cast<S>(1.0 - h.beta1);
  c.lerp_w_minus_1 = c.lerp_w - static_cast<S>(1);
  c.lerp_small = (c.lerp_w < static_cast<S>(0.5)) && (c.lerp_w > static_cast<S>(-0.5));
  c.beta2 = static_cast<S>(h.beta2);
  c.one_minus_beta2 = static_cast<S>(1.0 - h.beta2);
  const double bc1 = 1.0 - pow(h.beta1, step);
  const double bc2 = 1.0 - pow(h.beta2, step);
  c.bc2_sqrt = make_divisor(static_cast<S>(sqrt(bc2)));
  c.eps = static_cast<S>(h.eps);
  c.neg_step_size = static_cast<S>(-(lr / bc1));
  c.maximize = h.maximize;
  return c;
}

}  // namespace pytrainer
