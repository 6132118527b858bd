#include "common/adamw_checks.h"

namespace pytrainer {

void check_adamw_args(TensorList params, TensorList grads, TensorList exp_avgs,
                      TensorList exp_avg_sqs, TensorList max_exp_avg_sqs,
                      TensorList state_steps, bool amsgrad,
                      const std::optional<at::Tensor>& lr_tensor,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "pytrainer::adamw_";
  check_params(op, params);
  check_grads(op, params, grads);
  check_like_params(op, params, exp_avgs, "exp_avgs");
  check_like_params(op, params, exp_avg_sqs, "exp_avg_sqs");
  if (amsgrad) {
    check_like_params(op, params, max_exp_avg_sqs, "max_exp_avg_sqs");
  } else {
    check_same_length(op, params, max_exp_avg_sqs, "max_exp_avg_sqs (amsgrad=False)", 0);
  }
  check_steps(op, params, state_steps);
  const at::Device device = params[0].device();
  check_scalar_tensor(op, lr_tensor, "lr", device, /*cpu_ok=*/true);
  check_scalar_tensor(op, grad_scale, "grad_scale", device, /*cpu_ok=*/false);
  check_scalar_tensor(op, found_inf, "found_inf", device, /*cpu_ok=*/false);
}

}  // namespace pytrainer
