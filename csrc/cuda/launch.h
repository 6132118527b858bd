// Host-side declarations of the kernel launchers defined in the .cu files.
// Plain arguments only: the .cu files include no ATen headers, which keeps
// nvcc fast; each launcher returns the CUDA launch error for the caller to check.
#pragma once

#include <cuda_runtime_api.h>

#include "common/adamw_coeffs.h"
#include "common/anyprecision_coeffs.h"
#include "cuda/table.h"

namespace pytrainer::cuda {

// Scalars every optimizer launch reads on the device (null when absent).
struct StepScalars {
  const float* lr;          // overrides the host lr when set
  const float* grad_scale;  // grads are divided by it
  const float* found_inf;   // nonzero: the whole step is skipped
};

cudaError_t launch_adamw(Dtype dtype, bool amsgrad, const DeviceTable& table,
                         const AdamWHyper& hyper, double lr, const StepScalars& scalars,
                         bool write_back_grads, cudaStream_t stream);

struct AnyPrecisionLaunch {
  DeviceTable table;  // entries: param, grad, exp_avg, exp_avg_sq, compensation; tag: rounding id
  AnyPrecisionHyper hyper;
  double lr;
  StepScalars scalars;
  bool write_back_grads;
  Dtype m_dt, v_dt, c_dt;
  int rounding;  // AnyPrecisionRounding
  uint64_t seed;
};

cudaError_t launch_anyprecision(Dtype param_dtype, const AnyPrecisionLaunch& args,
                                cudaStream_t stream);

// step += 1 for every entry of the table, unless found_inf is set.
cudaError_t launch_increment_steps(const DeviceTable& table, const float* found_inf,
                                   cudaStream_t stream);

}  // namespace pytrainer::cuda
