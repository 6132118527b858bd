// A divisor that stays the same over a whole tensor (AdamW's sqrt(1 - beta2^t)),
// with what dividing by it without the divider needs (divide_math.h).
//
// The divider is the slowest unit on the path of the elementwise update: a
// vector division has a throughput of one per several cycles on every CPU we
// measured, where a fused multiply-add issues twice per cycle.
#pragma once

#include <float.h>

#include <type_traits>

#include "macros.h"

namespace pytrainer {

template <class S>
struct ConstDivisor {
  S value;
  S recip;       // 1 / value, rounded to nearest
  S neg_recip;   // -recip
  S max_finite;  // the largest finite S: stands in for the residual of an infinite dividend
};

template <class S>
PT_HOST_DEVICE ConstDivisor<S> make_divisor(S value) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "float or double");
  ConstDivisor<S> d;
  d.value = value;
  d.recip = static_cast<S>(1) / value;
  d.neg_recip = -d.recip;
  if constexpr (std::is_same_v<S, float>) {
    d.max_finite = FLT_MAX;
  } else {
    d.max_finite = DBL_MAX;
  }
  return d;
}

}  // namespace pytrainer
