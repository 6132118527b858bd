// The input contract of pytrainer::anyprecision_adamw_, checked identically on every device.
#pragma once

#include "common/anyprecision_coeffs.h"
#include "common/checks.h"

namespace pytrainer {

void check_anyprecision_args(TensorList params, TensorList grads, TensorList exp_avgs,
                             TensorList exp_avg_sqs, TensorList compensations,
                             TensorList state_steps, c10::ArrayRef<int64_t> rounding_ids,
                             int64_t rounding, const std::optional<at::Tensor>& lr_tensor,
                             const std::optional<at::Tensor>& grad_scale,
                             const std::optional<at::Tensor>& found_inf);

}  // namespace pytrainer
