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
  S recip;  // 1 / value, rounded to nearest
};

template <class S>
PT_HOST_DEVICE ConstDivisor<S> make_divisor(S value) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "float or double");
  return {value, static_cast<S>(1) / value};
}

// The largest finite S.
template <class S>
PT_HOST_DEVICE constexpr S max_finite() {
  if constexpr (std::is_same_v<S, float>) {
    return FLT_MAX;
  } else {
    return DBL_MAX;
  }
}

}  // namespace pytrainer
