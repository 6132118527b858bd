#include "common/anyprecision_checks.h"

#include <c10/util/Exception.h>

namespace pytrainer {

void check_anyprecision_args(TensorList params, TensorList grads, TensorList exp_avgs,
                             TensorList exp_avg_sqs, TensorList compensations,
                             TensorList state_steps, c10::ArrayRef<int64_t> rounding_ids,
                             int64_t rounding, const std::optional<at::Tensor>& lr_tensor,
                             const std::optional<at::Tensor>& grad_scale,
                             const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "pytrainer::anyprecision_adamw_";
  TORCH_CHECK(rounding >= 0 && rounding < kNumRoundings, op, ": rounding=", rounding,
              " is not valid; 0 (nearest), 1 (Kahan compensation) or 2 (stochastic)");
  check_16_or_32_bit_params(op, params);
  check_grads(op, params, grads);
  check_state_list(op, params, exp_avgs, "exp_avgs");
  check_state_list(op, params, exp_avg_sqs, "exp_avg_sqs");
  if (rounding == kRoundKahan) {
    check_state_list(op, params, compensations, "compensations");
  } else {
    check_same_length(op, params, compensations, "compensations (no Kahan summation)", 0);
  }
  if (rounding == kRoundStochastic) {
    TORCH_CHECK(rounding_ids.size() == params.size(), op, ": rounding_ids has ",
                rounding_ids.size(), " values but params has ", params.size(),
                "; stochastic rounding needs one id per tensor");
  }
  check_steps(op, params, state_steps);
  const at::Device device = params[0].device();
  check_scalar_tensor(op, lr_tensor, "lr", device, /*cpu_ok=*/true);
  check_scalar_tensor(op, grad_scale, "grad_scale", device, /*cpu_ok=*/false);
  check_scalar_tensor(op, found_inf, "found_inf", device, /*cpu_ok=*/false);
}

}  // namespace pytrainer
