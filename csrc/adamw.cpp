// pytrainer::adamw_: AdamW (torch.optim.AdamW's math) over lists of tensors of
// one device. Its schema, its input checks (the same on every device), and its
// steps on the CPU (every tensor of the call in one parallel region) and on
// CUDA (one table and launch per dtype present).
#include <vector>

#include "common/adamw_coeffs.h"
#include "op.h"

namespace pytrainer {
namespace {

constexpr const char* kOp = "pytrainer::adamw_";

// The tensor lists of one call.
struct Lists {
  at::TensorList params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps;
};

void check_args(const Lists& t, bool amsgrad, const StepArgs& args) {
  check_params(kOp, t.params);
  check_grads(kOp, t.params, t.grads);
  check_like_params(kOp, t.params, t.exp_avgs, "exp_avgs");
  check_like_params(kOp, t.params, t.exp_avg_sqs, "exp_avg_sqs");
  if (amsgrad) {
    check_like_params(kOp, t.params, t.max_exp_avg_sqs, "max_exp_avg_sqs");
  } else {
    check_same_length(kOp, t.params, t.max_exp_avg_sqs, "max_exp_avg_sqs (amsgrad=False)", 0);
  }
  check_steps_and_scalars(kOp, t.params, t.state_steps, args);
}

void step_cpu(const Lists& t, const AdamWHyper& hyper, bool amsgrad, const cpu::HostScalars& s) {
  if (s.skip) return;
  cpu::StepCoeffs<AdamWCoeffs<float>> coeffs_f(t.params.size());
  cpu::StepCoeffs<AdamWCoeffs<double>> coeffs_d(t.params.size());
  cpu::step_every_tensor<cpu::AdamWTask>(
      t.params, t.state_steps,
      [&](const cpu::IsaKernels& isa, size_t i, float step, cpu::AdamWTask& task) {
        const cpu::Dt dt = cpu::dt_of(t.params[i].scalar_type());
        const void* coeffs;
        if (dt == cpu::kF64) {
          coeffs = coeffs_d.at(step, [&](float at) {
            return make_adamw_coeffs<double>(hyper, s.lr, at, s.grad_mult);
          });
        } else {
          coeffs = coeffs_f.at(step, [&](float at) {
            return make_adamw_coeffs<float>(hyper, s.lr, at, s.grad_mult);
          });
        }
        task = cpu::AdamWTask{t.params[i].data_ptr(), t.grads[i].data_ptr(),
                              t.exp_avgs[i].data_ptr(), t.exp_avg_sqs[i].data_ptr(),
                              amsgrad ? t.max_exp_avg_sqs[i].data_ptr() : nullptr, coeffs,
                              s.write_back};
        return isa.adamw[dt][amsgrad ? 1 : 0];
      });
}

#if defined(PYTRAINER_WITH_CUDA)
void step_cuda(const Lists& t, const AdamWHyper& hyper, bool amsgrad,
               const cuda::CudaCall& call) {
  cuda::launch_per_dtype(
      call, {t.params, t.grads, t.exp_avgs, t.exp_avg_sqs, t.max_exp_avg_sqs}, t.state_steps,
      /*tags=*/{}, {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble},
      [&](cuda::Dtype dtype, const cuda::DeviceTable& table) {
        return cuda::launch_adamw(dtype, amsgrad, table, hyper, call.ds.lr, call.ds.scalars,
                                  call.write_back_grads, call.stream);
      });
}
#endif

void adamw(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
           at::TensorList state_steps, double lr, const OptTensor& lr_tensor, double beta1,
           double beta2, double weight_decay, double eps, bool amsgrad, bool maximize,
           const OptTensor& grad_scale, const OptTensor& found_inf, bool write_back_grads) {
  const Lists t{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps};
  const StepArgs args{lr, lr_tensor, grad_scale, found_inf, write_back_grads};
  check_args(t, amsgrad, args);
  const AdamWHyper hyper{beta1, beta2, weight_decay, eps, maximize};
#if defined(PYTRAINER_WITH_CUDA)
  if (params[0].is_cuda()) return step_cuda(t, hyper, amsgrad, cuda::CudaCall(params, args));
#endif
  step_cpu(t, hyper, amsgrad, cpu::host_scalars(args));
}

}  // namespace

// grads are written back unscaled only when grad_scale is given and
// write_back_grads is set (what torch's fused AdamW does under GradScaler).
TORCH_LIBRARY_FRAGMENT(pytrainer, m) {
  define_op(m,
            "adamw_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
            "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, "
            "Tensor(f!)[] state_steps, *, float lr, Tensor? lr_tensor, float beta1, "
            "float beta2, float weight_decay, float eps, bool amsgrad, bool maximize, "
            "Tensor? grad_scale=None, Tensor? found_inf=None, bool write_back_grads=False) -> ()",
            &adamw);
}

}  // namespace pytrainer
