// Host-side declarations of the kernel launchers defined in the .cu files.
// Plain arguments only: the .cu files include no ATen headers, which keeps
// nvcc fast; each launcher returns the CUDA launch error for the caller to check.
#pragma once

#include <cuda_runtime_api.h>

#include "common/adafactor_layout.h"
#include "common/adamw_coeffs.h"
#include "common/anyprecision_coeffs.h"
#include "common/launch_plan.h"
#include "cuda/table.h"

namespace pytrainer::cuda {

// Scalars every optimizer launch reads on the device (null when absent).
struct StepScalars {
  const void* lr;           // overrides the host lr when set (float32, or float64 if lr_double)
  bool lr_double;
  const float* grad_scale;  // grads are divided by it
  const float* found_inf;   // nonzero: the whole step is skipped
};

PT_DEVICE double lr_value(const StepScalars& s, double host_lr) {
  if (s.lr == nullptr) return host_lr;
  return s.lr_double ? *static_cast<const double*>(s.lr)
                     : static_cast<double>(*static_cast<const float*>(s.lr));
}

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

struct AdafactorLaunch {
  const AdafactorEntry* entries;  // device copies of the plan's entries
  const int32_t* unit_entry;      // the entry of each unit
  const int32_t* batch_entry;     // the entry of each factored batch
  const int32_t* fin_entry;       // the entry of each finalize 1 block
  int64_t num_entries, units, batches;
  AdafactorWork work;             // device scratch memory
  AdafactorHyper hyper;
  StepScalars scalars;
  bool write_back_grads;
};

// The six launches of one Adafactor step (common/adafactor_layout.h); the last
// but one advances the steps.
cudaError_t launch_adafactor(Dtype param_dtype, const AdafactorLaunch& args,
                             const AdafactorLaunches& launches, cudaStream_t stream);

// step += 1 for every entry of the table, unless found_inf is set.
cudaError_t launch_increment_steps(const DeviceTable& table, const float* found_inf,
                                   cudaStream_t stream);

}  // namespace pytrainer::cuda
