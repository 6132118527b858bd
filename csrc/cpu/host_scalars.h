// The scalars of one CPU op call, read from the op's optional tensors: on the
// CPU these reads are plain memory loads, not a device synchronisation. The
// CUDA counterpart, which keeps them on the device, is cuda/step_scalars.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace pytrainer::cpu {

struct HostScalars {
  bool skip;         // found_inf is set: the step changes nothing
  double lr;         // the lr tensor's value if given, else the float lr
  double grad_mult;  // 1 / grad_scale (1 without one)
  bool write_back;   // store the unscaled grads (only with a grad_scale)
};

inline HostScalars host_scalars(double lr, const std::optional<at::Tensor>& lr_tensor,
                                const std::optional<at::Tensor>& grad_scale,
                                const std::optional<at::Tensor>& found_inf,
                                bool write_back_grads) {
  HostScalars s{};
  s.skip = found_inf && found_inf->item<double>() != 0.0;
  s.lr = lr_tensor ? lr_tensor->item<double>() : lr;
  s.grad_mult = grad_scale ? 1.0 / grad_scale->item<double>() : 1.0;
  s.write_back = grad_scale.has_value() && write_back_grads;
  return s;
}

// step += 1 for every param of the call (float32, as the kernels read it).
inline void advance_steps(at::TensorList state_steps) {
  for (const at::Tensor& s : state_steps) s.data_ptr<float>()[0] += 1.0f;
}

}  // namespace pytrainer::cpu
