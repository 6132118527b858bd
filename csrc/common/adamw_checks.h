// The input contract of pytrainer::adamw_, checked identically on every device.
#pragma once

#include "common/checks.h"

namespace pytrainer {

void check_adamw_args(TensorList params, TensorList grads, TensorList exp_avgs,
                      TensorList exp_avg_sqs, TensorList max_exp_avg_sqs,
                      TensorList state_steps, bool amsgrad,
                      const std::optional<at::Tensor>& lr_tensor,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf);

}  // namespace pytrainer
