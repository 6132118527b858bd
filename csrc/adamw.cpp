// pytrainer::adamw_: AdamW (torch.optim.AdamW's math) over lists of tensors of
// one device. Its schema, its input checks (the same on every device), and its
// steps on the CPU (every tensor of the call in one parallel region) and on
// CUDA (one table and launch per dtype present).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "common/adamw_coeffs.h"
#include "common/checks.h"
#include "cpu/dispatch.h"
#include "cpu/dtypes.h"
#include "cpu/host_scalars.h"
#include "define_op.h"
#if defined(PYTRAINER_WITH_CUDA)
#include "cuda/launch.h"
#include "cuda/tensor_table.h"
#endif

namespace pytrainer {
namespace {

using OptTensor = std::optional<at::Tensor>;
constexpr const char* kOp = "pytrainer::adamw_";

// The tensor lists of one call.
struct Lists {
  at::TensorList params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps;
};

void check_args(const Lists& t, bool amsgrad, const OptTensor& lr_tensor,
                const OptTensor& grad_scale, const OptTensor& found_inf) {
  check_params(kOp, t.params);
  check_grads(kOp, t.params, t.grads);
  check_like_params(kOp, t.params, t.exp_avgs, "exp_avgs");
  check_like_params(kOp, t.params, t.exp_avg_sqs, "exp_avg_sqs");
  if (amsgrad) {
    check_like_params(kOp, t.params, t.max_exp_avg_sqs, "max_exp_avg_sqs");
  } else {
    check_same_length(kOp, t.params, t.max_exp_avg_sqs, "max_exp_avg_sqs (amsgrad=False)", 0);
  }
  check_steps_and_scalars(kOp, t.params, t.state_steps, lr_tensor, grad_scale, found_inf);
}

void step_cpu(const Lists& t, const AdamWHyper& hyper, bool amsgrad, const cpu::HostScalars& s) {
  if (s.skip) return;
  const cpu::IsaKernels& isa = cpu::kernels();
  const size_t n = t.params.size();
  // Coefficients depend on the step only; neighbouring params almost always share it.
  std::vector<AdamWCoeffs<float>> coeffs_f;
  std::vector<AdamWCoeffs<double>> coeffs_d;
  coeffs_f.reserve(n);
  coeffs_d.reserve(n);
  std::vector<cpu::AdamWTask> tasks(n);
  std::vector<cpu::RangeJob> jobs(n);
  float last_step = -1.0f;
  for (size_t i = 0; i < n; ++i) {
    const float step = t.state_steps[i].data_ptr<float>()[0] + 1.0f;
    const cpu::Dt dt = cpu::dt_of(t.params[i].scalar_type());
    const void* coeffs;
    if (dt == cpu::kF64) {
      coeffs_d.push_back(make_adamw_coeffs<double>(hyper, s.lr, step, s.grad_mult));
      coeffs = &coeffs_d.back();
    } else {
      if (coeffs_f.empty() || step != last_step) {
        coeffs_f.push_back(make_adamw_coeffs<float>(hyper, s.lr, step, s.grad_mult));
        last_step = step;
      }
      coeffs = &coeffs_f.back();
    }
    tasks[i] = cpu::AdamWTask{t.params[i].data_ptr(), t.grads[i].data_ptr(),
                              t.exp_avgs[i].data_ptr(), t.exp_avg_sqs[i].data_ptr(),
                              amsgrad ? t.max_exp_avg_sqs[i].data_ptr() : nullptr, coeffs,
                              s.write_back};
    jobs[i] = cpu::RangeJob{isa.adamw[dt][amsgrad ? 1 : 0], &tasks[i], t.params[i].numel()};
  }
  cpu::run_jobs(jobs);
  cpu::advance_steps(t.state_steps);
}

#if defined(PYTRAINER_WITH_CUDA)
void step_cuda(const Lists& t, const AdamWHyper& hyper, bool amsgrad, const cuda::CudaCall& call,
               bool write_back_grads) {
  cuda::launch_per_dtype(
      call, t.params, t.state_steps, {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble},
      [&](size_t i, cuda::TableEntry& e) {
        e.ptr[0] = t.params[i].data_ptr();
        e.ptr[1] = t.grads[i].data_ptr();
        e.ptr[2] = t.exp_avgs[i].data_ptr();
        e.ptr[3] = t.exp_avg_sqs[i].data_ptr();
        e.ptr[4] = amsgrad ? t.max_exp_avg_sqs[i].data_ptr() : nullptr;
      },
      [&](cuda::Dtype dtype, const cuda::DeviceTable& table) {
        return cuda::launch_adamw(dtype, amsgrad, table, hyper, call.ds.lr, call.ds.scalars,
                                  write_back_grads, call.stream);
      });
}
#endif

// The kernel of both devices (the dispatcher picks it by the tensors' device).
void adamw(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
           at::TensorList state_steps, double lr, const OptTensor& lr_tensor, double beta1,
           double beta2, double weight_decay, double eps, bool amsgrad, bool maximize,
           const OptTensor& grad_scale, const OptTensor& found_inf, bool write_back_grads) {
  const Lists t{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps};
  check_args(t, amsgrad, lr_tensor, grad_scale, found_inf);
  const AdamWHyper hyper{beta1, beta2, weight_decay, eps, maximize};
#if defined(PYTRAINER_WITH_CUDA)
  if (params[0].is_cuda()) {
    step_cuda(t, hyper, amsgrad, cuda::CudaCall(params, lr, lr_tensor, grad_scale, found_inf),
              write_back_grads);
    return;
  }
#endif
  step_cpu(t, hyper, amsgrad,
           cpu::host_scalars(lr, lr_tensor, grad_scale, found_inf, write_back_grads));
}

}  // namespace

// grads are written back unscaled only when grad_scale is given and
// write_back_grads is set (what torch's fused AdamW does under GradScaler).
TORCH_LIBRARY_FRAGMENT(pytrainer, m) {
  define_op<decltype(adamw)>(
      m,
      "adamw_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, *, "
      "float lr, Tensor? lr_tensor, float beta1, float beta2, float weight_decay, float eps, "
      "bool amsgrad, bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "bool write_back_grads=False) -> ()");
}
TORCH_LIBRARY_IMPL(pytrainer, CPU, m) { m.impl("adamw_", &adamw); }
#if defined(PYTRAINER_WITH_CUDA)
TORCH_LIBRARY_IMPL(pytrainer, CUDA, m) { m.impl("adamw_", &adamw); }
#endif

}  // namespace pytrainer
