// pytrainer::adamw_ on CUDA: checks, one table and launch per dtype present.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "common/adamw_checks.h"
#include "cuda/launch.h"
#include "cuda/step_scalars.h"
#include "cuda/tensor_table.h"

namespace pytrainer::cuda {
namespace {

void adamw_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                at::TensorList state_steps, double lr, const std::optional<at::Tensor>& lr_tensor,
                double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                bool maximize, const std::optional<at::Tensor>& grad_scale,
                const std::optional<at::Tensor>& found_inf, bool write_back_grads) {
  check_adamw_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad,
                   lr_tensor, grad_scale, found_inf);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());

  const DeviceScalars ds = device_scalars(lr, lr_tensor, grad_scale, found_inf, device);
  const AdamWHyper hyper{beta1, beta2, weight_decay, eps, maximize};

  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    std::vector<TableEntry> entries;
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].scalar_type() != dtype) continue;
      TableEntry e{};
      e.ptr[0] = params[i].data_ptr();
      e.ptr[1] = grads[i].data_ptr();
      e.ptr[2] = exp_avgs[i].data_ptr();
      e.ptr[3] = exp_avg_sqs[i].data_ptr();
      e.ptr[4] = amsgrad ? max_exp_avg_sqs[i].data_ptr() : nullptr;
      e.step = state_steps[i].data_ptr<float>();
      e.numel = params[i].numel();
      entries.push_back(e);
    }
    if (entries.empty()) continue;
    const TableHandle table = device_table(entries, device);
    C10_CUDA_CHECK(launch_adamw(dtype_of(dtype), amsgrad, table.table, hyper, ds.lr, ds.scalars,
                                write_back_grads, stream));
    C10_CUDA_CHECK(launch_increment_steps(table.table, ds.scalars.found_inf, stream));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pytrainer, CUDA, m) { m.impl("adamw_", &adamw_cuda); }

}  // namespace pytrainer::cuda
