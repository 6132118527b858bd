// The device scalars of one optimizer call (lr, grad_scale, found_inf), taken
// from the op's optional tensors, shared by every CUDA op.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "cuda/launch.h"

namespace pytrainer::cuda {

struct DeviceScalars {
  StepScalars scalars;
  double lr;        // the host lr (replaced by a CPU lr tensor's value)
  // the tensors the pointers refer to, alive until the launches are queued
  at::Tensor lr_tensor, grad_scale, found_inf;
};

// A CPU lr tensor is a host value; a device one is read by the kernels (no
// sync). grad_scale and found_inf are float32 on the device (converted if not).
DeviceScalars device_scalars(double lr, const std::optional<at::Tensor>& lr_tensor,
                             const std::optional<at::Tensor>& grad_scale,
                             const std::optional<at::Tensor>& found_inf,
                             const at::Device& device);

}  // namespace pytrainer::cuda
