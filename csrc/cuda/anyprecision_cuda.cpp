// pytrainer::anyprecision_adamw_ on CUDA: checks, one table and launch per param dtype.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "common/anyprecision_checks.h"
#include "cuda/launch.h"
#include "cuda/step_scalars.h"
#include "cuda/tensor_table.h"

namespace pytrainer::cuda {
namespace {

void anyprecision_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                       at::TensorList exp_avg_sqs, at::TensorList compensations,
                       at::TensorList state_steps, at::IntArrayRef rounding_ids, double lr,
                       const std::optional<at::Tensor>& lr_tensor, double beta1, double beta2,
                       double weight_decay, double eps, int64_t rounding, int64_t seed,
                       const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, bool write_back_grads) {
  check_anyprecision_args(params, grads, exp_avgs, exp_avg_sqs, compensations, state_steps,
                          rounding_ids, rounding, lr_tensor, grad_scale, found_inf);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());

  const DeviceScalars ds = device_scalars(lr, lr_tensor, grad_scale, found_inf, device);
  AnyPrecisionLaunch launch{};
  launch.hyper = AnyPrecisionHyper{beta1, beta2, weight_decay, eps};
  launch.lr = ds.lr;
  launch.scalars = ds.scalars;
  launch.write_back_grads = write_back_grads;
  launch.m_dt = dtype_of(exp_avgs[0].scalar_type());
  launch.v_dt = dtype_of(exp_avg_sqs[0].scalar_type());
  const bool kahan = rounding == kRoundKahan;
  launch.c_dt = kahan ? dtype_of(compensations[0].scalar_type()) : Dtype::F32;
  launch.rounding = static_cast<int>(rounding);
  launch.seed = static_cast<uint64_t>(seed);

  for (const at::ScalarType dtype : {at::kBFloat16, at::kFloat, at::kHalf}) {
    std::vector<TableEntry> entries;
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].scalar_type() != dtype) continue;
      TableEntry e{};
      e.ptr[0] = params[i].data_ptr();
      e.ptr[1] = grads[i].data_ptr();
      e.ptr[2] = exp_avgs[i].data_ptr();
      e.ptr[3] = exp_avg_sqs[i].data_ptr();
      e.ptr[4] = kahan ? compensations[i].data_ptr() : nullptr;
      e.step = state_steps[i].data_ptr<float>();
      e.numel = params[i].numel();
      e.tag = rounding == kRoundStochastic ? rounding_ids[i] : 0;
      entries.push_back(e);
    }
    if (entries.empty()) continue;
    const TableHandle table = device_table(entries, device);
    launch.table = table.table;
    C10_CUDA_CHECK(launch_anyprecision(dtype_of(dtype), launch, stream));
    C10_CUDA_CHECK(launch_increment_steps(launch.table, launch.scalars.found_inf, stream));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pytrainer, CUDA, m) { m.impl("anyprecision_adamw_", &anyprecision_cuda); }

}  // namespace pytrainer::cuda
