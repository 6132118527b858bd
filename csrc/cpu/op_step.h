// What the CPU steps of the ops share: the step's scalars read from the op's
// optional tensors (on the CPU plain memory loads, not a device
// synchronisation; the CUDA counterpart, which keeps them on the device, is
// cuda/step_scalars.h), per-step coefficients, and one parallel region over
// every tensor of the call.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "common/step_args.h"
#include "cpu/dispatch.h"

namespace pytrainer::cpu {

struct HostScalars {
  bool skip;         // found_inf is set: the step changes nothing
  double lr;         // the lr tensor's value if given, else the float lr
  double grad_mult;  // 1 / grad_scale (1 without one)
  bool write_back;   // store the unscaled grads (only with a grad_scale)
};

inline HostScalars host_scalars(const StepArgs& args) {
  HostScalars s{};
  s.skip = args.found_inf && args.found_inf->item<double>() != 0.0;
  s.lr = args.lr_tensor ? args.lr_tensor->item<double>() : args.lr;
  s.grad_mult = args.grad_scale ? 1.0 / args.grad_scale->item<double>() : 1.0;
  s.write_back = args.grad_scale.has_value() && args.write_back_grads;
  return s;
}

// step += 1 for every param of the call (float32, as the kernels read it).
inline void advance_steps(at::TensorList state_steps) {
  for (const at::Tensor& s : state_steps) s.data_ptr<float>()[0] += 1.0f;
}

// Coefficients that depend on the step only, made once for each run of
// neighbouring params with the same step (almost always all of them).
template <class Coeffs>
class StepCoeffs {
 public:
  explicit StepCoeffs(size_t params) { coeffs_.reserve(params); }  // addresses stay valid

  template <class Make>
  const Coeffs* at(float step, Make make) {
    if (coeffs_.empty() || step != last_step_) {
      coeffs_.push_back(make(step));
      last_step_ = step;
    }
    return &coeffs_.back();
  }

 private:
  std::vector<Coeffs> coeffs_;
  float last_step_ = -1.0f;
};

// One step over every param in one parallel region: prepare(isa, i, step,
// tasks[i]) fills param i's task for its step (counting this one) and returns
// its range kernel; then the steps advance.
template <class Task, class Prepare>
void step_every_tensor(at::TensorList params, at::TensorList state_steps, Prepare prepare) {
  const IsaKernels& isa = kernels();
  const size_t n = params.size();
  std::vector<Task> tasks(n);
  std::vector<RangeJob> jobs(n);
  for (size_t i = 0; i < n; ++i) {
    const float step = state_steps[i].data_ptr<float>()[0] + 1.0f;
    jobs[i] = RangeJob{prepare(isa, i, step, tasks[i]), &tasks[i], params[i].numel()};
  }
  run_jobs(jobs);
  advance_steps(state_steps);
}

}  // namespace pytrainer::cpu
