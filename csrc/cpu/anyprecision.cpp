// pytrainer::anyprecision_adamw_ on the CPU: every tensor of the call in one parallel region.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "common/anyprecision_checks.h"
#include "common/anyprecision_coeffs.h"
#include "cpu/dispatch.h"
#include "cpu/dtypes.h"

namespace pytrainer::cpu {
namespace {

void anyprecision_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList compensations,
                      at::TensorList state_steps, at::IntArrayRef rounding_ids, double lr,
                      const std::optional<at::Tensor>& lr_tensor, double beta1, double beta2,
                      double weight_decay, double eps, int64_t rounding, int64_t seed,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, bool write_back_grads) {
  check_anyprecision_args(params, grads, exp_avgs, exp_avg_sqs, compensations, state_steps,
                          rounding_ids, rounding, lr_tensor, grad_scale, found_inf);
  if (found_inf && found_inf->item<double>() != 0.0) return;
  if (lr_tensor) lr = lr_tensor->item<double>();
  const double grad_mult = grad_scale ? 1.0 / grad_scale->item<double>() : 1.0;
  const bool write_back = grad_scale.has_value() && write_back_grads;
  const bool kahan = rounding == kRoundKahan;
  const bool stochastic = rounding == kRoundStochastic;

  const AnyPrecisionHyper hyper{beta1, beta2, weight_decay, eps};
  const IsaKernels& isa = kernels();
  const size_t n = params.size();
  const Dt m_dt = dt_of(exp_avgs[0].scalar_type());
  const Dt v_dt = dt_of(exp_avg_sqs[0].scalar_type());
  const Dt c_dt = kahan ? dt_of(compensations[0].scalar_type()) : kF32;
  std::vector<AnyPrecisionCoeffs> coeffs;
  coeffs.reserve(n);
  std::vector<AnyPrecisionTask> tasks(n);
  std::vector<RangeJob> jobs(n);
  float last_step = -1.0f;
  for (size_t i = 0; i < n; ++i) {
    const float step = state_steps[i].data_ptr<float>()[0] + 1.0f;
    if (coeffs.empty() || step != last_step) {
      coeffs.push_back(make_anyprecision_coeffs(hyper, lr, step, grad_mult));
      last_step = step;
    }
    AnyPrecisionTask& t = tasks[i];
    t = AnyPrecisionTask{params[i].data_ptr(), grads[i].data_ptr(), exp_avgs[i].data_ptr(),
                         exp_avg_sqs[i].data_ptr(),
                         kahan ? compensations[i].data_ptr() : nullptr, &coeffs.back(),
                         m_dt, v_dt, c_dt, 0u, write_back};
    if (stochastic) {
      t.rounding_key = rounding_key(static_cast<uint64_t>(seed),
                                    static_cast<uint32_t>(rounding_ids[i]),
                                    static_cast<uint32_t>(step));
    }
    jobs[i] = RangeJob{isa.anyprecision[dt_of(params[i].scalar_type())][rounding], &tasks[i],
                       params[i].numel()};
  }
  run_jobs(jobs);
  for (const at::Tensor& s : state_steps) s.data_ptr<float>()[0] += 1.0f;
}

}  // namespace

TORCH_LIBRARY_IMPL(pytrainer, CPU, m) { m.impl("anyprecision_adamw_", &anyprecision_cpu); }

}  // namespace pytrainer::cpu
