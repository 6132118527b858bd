// pytrainer::adamw_ on the CPU: every tensor of the call in one parallel region.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "common/adamw_checks.h"
#include "common/adamw_coeffs.h"
#include "cpu/dispatch.h"
#include "cpu/dtypes.h"

namespace pytrainer::cpu {
namespace {

void adamw_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
               at::TensorList state_steps, double lr, const std::optional<at::Tensor>& lr_tensor,
               double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
               bool maximize, const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf, bool write_back_grads) {
  check_adamw_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad,
                   lr_tensor, grad_scale, found_inf);
  // On the CPU these reads are plain memory loads, not a device synchronisation.
  if (found_inf && found_inf->item<double>() != 0.0) return;
  if (lr_tensor) lr = lr_tensor->item<double>();
  const double grad_mult = grad_scale ? 1.0 / grad_scale->item<double>() : 1.0;
  const bool write_back = grad_scale.has_value() && write_back_grads;

  const AdamWHyper hyper{beta1, beta2, weight_decay, eps, maximize};
  const IsaKernels& isa = kernels();
  const size_t n = params.size();
  // Coefficients depend on the step only; neighbouring params almost always share it.
  std::vector<AdamWCoeffs<float>> coeffs_f;
  std::vector<AdamWCoeffs<double>> coeffs_d;
  coeffs_f.reserve(n);
  coeffs_d.reserve(n);
  std::vector<AdamWTask> tasks(n);
  std::vector<RangeJob> jobs(n);
  float last_step = -1.0f;
  for (size_t i = 0; i < n; ++i) {
    const float step = state_steps[i].data_ptr<float>()[0] + 1.0f;
    const Dt dt = dt_of(params[i].scalar_type());
    const void* coeffs;
    if (dt == kF64) {
      coeffs_d.push_back(make_adamw_coeffs<double>(hyper, lr, step, grad_mult));
      coeffs = &coeffs_d.back();
    } else {
      if (coeffs_f.empty() || step != last_step) {
        coeffs_f.push_back(make_adamw_coeffs<float>(hyper, lr, step, grad_mult));
        last_step = step;
      }
      coeffs = &coeffs_f.back();
    }
    tasks[i] = AdamWTask{params[i].data_ptr(), grads[i].data_ptr(), exp_avgs[i].data_ptr(),
                         exp_avg_sqs[i].data_ptr(),
                         amsgrad ? max_exp_avg_sqs[i].data_ptr() : nullptr, coeffs, write_back};
    jobs[i] = RangeJob{isa.adamw[dt][amsgrad ? 1 : 0], &tasks[i], params[i].numel()};
  }
  run_jobs(jobs);
  for (const at::Tensor& s : state_steps) s.data_ptr<float>()[0] += 1.0f;
}

}  // namespace

TORCH_LIBRARY_IMPL(pytrainer, CPU, m) { m.impl("adamw_", &adamw_cpu); }

}  // namespace pytrainer::cpu
