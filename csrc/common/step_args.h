// The arguments every op takes after its own hyperparameters.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace pytrainer {

struct StepArgs {
  double lr;                                    // the lr, unless lr_tensor is given
  const std::optional<at::Tensor>& lr_tensor;   // one element, on the CPU or the params' device
  const std::optional<at::Tensor>& grad_scale;  // the grads are divided by it
  const std::optional<at::Tensor>& found_inf;   // nonzero: the whole step is skipped
  bool write_back_grads;                        // with grad_scale: store the unscaled grads
};

}  // namespace pytrainer
