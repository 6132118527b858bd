// The layout of one Adafactor call: its tensors as AdafactorEntry records (tile
// geometry, offsets of their partial sums) and the size of the scratch memory.
// Built on the host for the CPU and CUDA kernels alike, after the input checks.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "common/adafactor_cuda_layout.h"
#include "common/checks.h"

namespace pytrainer {

// The CPU and the CUDA kernels cut factored tensors differently
// (common/adafactor_layout.h, common/adafactor_cuda_layout.h).
enum class AdafactorTarget { kCpu, kCuda };

struct AdafactorPlan {
  std::vector<AdafactorEntry> entries;
  int64_t units = 0;
  int64_t batches = 0;
  int64_t row_partials = 0;
  int64_t col_partials = 0;
  int64_t row_sums = 0;    // CUDA
  int64_t fin_blocks = 0;  // CUDA: blocks of finalize 1

  int64_t work_floats() const {
    return row_partials + col_partials + 2 * units + batches +
           2 * static_cast<int64_t>(entries.size()) + row_sums;
  }
  // The pieces of one float buffer of work_floats() values.
  AdafactorWork carve(float* base) const;
};

void check_adafactor_args(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList row_states, TensorList col_states, TensorList state_steps,
                          bool first_moment, const StepArgs& args);

// The plan of parameters of these shapes and element sizes, without pointers
// (what the launch plans and their tests need).
AdafactorPlan plan_adafactor_shapes(const std::vector<std::vector<int64_t>>& shapes,
                                    const std::vector<int64_t>& element_sizes,
                                    AdafactorTarget target);

AdafactorPlan plan_adafactor(TensorList params, TensorList grads, TensorList exp_avgs,
                             TensorList row_states, TensorList col_states, TensorList state_steps,
                             AdafactorTarget target);

}  // namespace pytrainer
