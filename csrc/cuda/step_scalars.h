// What every CUDA op call sets up first: the device, its guard and current
// stream, and the device scalars of the step (lr, grad_scale, found_inf) taken
// from the op's optional tensors. The CPU counterpart is cpu/op_step.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/step_args.h"
#include "cuda/launch.h"

namespace pytrainer::cuda {

struct DeviceScalars {
  StepScalars scalars;
  double lr;        // the host lr (replaced by a CPU lr tensor's value)
  // the tensors the pointers refer to, alive until the launches are queued
  at::Tensor lr_tensor, grad_scale, found_inf;
};

// Whether `stream` is capturing a CUDA graph.
bool stream_is_capturing(cudaStream_t stream);

// A CPU lr tensor is a host value (refused under capture, where the graph would
// freeze it); a device one is read by the kernels (no sync). grad_scale and
// found_inf are float32 on the device (converted if not).
DeviceScalars device_scalars(const StepArgs& args, const at::Device& device,
                             cudaStream_t stream);

// One op call on the device of params[0] (the checks put every tensor there).
struct CudaCall {
  CudaCall(at::TensorList params, const StepArgs& args)
      : device(params[0].device()),
        guard(device),
        stream(c10::cuda::getCurrentCUDAStream(device.index())),
        ds(device_scalars(args, device, stream)),
        write_back_grads(args.write_back_grads),
        table_slot(args.table_slot) {}

  const at::Device device;
  const c10::cuda::CUDAGuard guard;
  const cudaStream_t stream;
  const DeviceScalars ds;
  const bool write_back_grads;
  const int64_t table_slot;
};

}  // namespace pytrainer::cuda
