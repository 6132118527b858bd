// The layout of one Adafactor call: its tensors as AdafactorEntry records (tile
// geometry, offsets of their partial sums) and the size of the scratch memory.
// Built on the host for the CPU and CUDA kernels alike, after the input checks.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "common/adafactor_layout.h"
#include "common/checks.h"

namespace pytrainer {

struct AdafactorPlan {
  std::vector<AdafactorEntry> entries;
  int64_t units = 0;
  int64_t batches = 0;
  int64_t row_partials = 0;
  int64_t col_partials = 0;

  int64_t work_floats() const {
    return row_partials + col_partials + 2 * units + batches +
           2 * static_cast<int64_t>(entries.size());
  }
  // The pieces of one float buffer of work_floats() values.
  AdafactorWork carve(float* base) const;
};

void check_adafactor_args(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList row_states, TensorList col_states, TensorList state_steps,
                          bool first_moment, const StepArgs& args);

AdafactorPlan plan_adafactor(TensorList params, TensorList grads, TensorList exp_avgs,
                             TensorList row_states, TensorList col_states, TensorList state_steps);

}  // namespace pytrainer
