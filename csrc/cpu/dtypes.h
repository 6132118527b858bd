#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "cpu/kernel_table.h"

namespace pytrainer::cpu {

// Row of a kernel table for a dtype the op checks have already accepted.
inline Dt dt_of(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat: return kF32;
    case c10::kDouble: return kF64;
    case c10::kHalf: return kF16;
    case c10::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "pytrainer: no CPU kernel for dtype ", t);
  }
}

}  // namespace pytrainer::cpu
