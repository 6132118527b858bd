// Sparse tensors route the ops to the Sparse* dispatch keys instead of CPU or
// CUDA. Register the input checks there, so a sparse grad gets the same clear
// message on every device instead of a "no kernel for backend" error.
#include <torch/library.h>

#include "common/adafactor_plan.h"
#include "common/adamw_checks.h"
#include "common/anyprecision_checks.h"

namespace pytrainer {
namespace {

void adamw_sparse(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                  at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                  at::TensorList state_steps, double, const std::optional<at::Tensor>& lr_tensor,
                  double, double, double, double, bool amsgrad, bool,
                  const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf, bool) {
  check_adamw_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad,
                   lr_tensor, grad_scale, found_inf);
  TORCH_CHECK(false, "pytrainer::adamw_: sparse tensors are not supported");
}

void anyprecision_sparse(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList compensations,
                         at::TensorList state_steps, at::IntArrayRef rounding_ids, double,
                         const std::optional<at::Tensor>& lr_tensor, double, double, double,
                         double, int64_t rounding, int64_t,
                         const std::optional<at::Tensor>& grad_scale,
                         const std::optional<at::Tensor>& found_inf, bool) {
  check_anyprecision_args(params, grads, exp_avgs, exp_avg_sqs, compensations, state_steps,
                          rounding_ids, rounding, lr_tensor, grad_scale, found_inf);
  TORCH_CHECK(false, "pytrainer::anyprecision_adamw_: sparse tensors are not supported");
}

void adafactor_sparse(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList row_states, at::TensorList col_states,
                      at::TensorList state_steps, double,
                      const std::optional<at::Tensor>& lr_tensor, double, double, double, double,
                      std::optional<double> beta1, double, bool, bool, bool,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, bool) {
  check_adafactor_args(params, grads, exp_avgs, row_states, col_states, state_steps,
                       beta1.has_value(), lr_tensor, grad_scale, found_inf);
  TORCH_CHECK(false, "pytrainer::adafactor_: sparse tensors are not supported");
}

}  // namespace

TORCH_LIBRARY_IMPL(pytrainer, SparseCPU, m) {
  m.impl("adamw_", &adamw_sparse);
  m.impl("anyprecision_adamw_", &anyprecision_sparse);
  m.impl("adafactor_", &adafactor_sparse);
}
TORCH_LIBRARY_IMPL(pytrainer, SparseCUDA, m) {
  m.impl("adamw_", &adamw_sparse);
  m.impl("anyprecision_adamw_", &anyprecision_sparse);
  m.impl("adafactor_", &adafactor_sparse);
}

}  // namespace pytrainer
