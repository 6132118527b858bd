#include "cuda/step_scalars.h"

#include <c10/cuda/CUDAException.h>

namespace pytrainer::cuda {
namespace {

at::Tensor float_on(const std::optional<at::Tensor>& t, const at::Device& device) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(device, at::kFloat).reshape({1});
}

}  // namespace

bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

DeviceScalars device_scalars(const StepArgs& args, const at::Device& device,
                             cudaStream_t stream) {
  const std::optional<at::Tensor>& lr_tensor = args.lr_tensor;
  DeviceScalars out{};
  out.lr = args.lr;
  if (lr_tensor.has_value() && lr_tensor->defined()) {
    if (lr_tensor->is_cpu()) {
      TORCH_CHECK(!stream_is_capturing(stream),
                  "pytrainer: lr is a CPU tensor, whose value a captured CUDA graph would "
                  "freeze; under capture give lr as a tensor on the parameters' device (read at "
                  "every replay) or as a float (fixed in the graph)");
      out.lr = lr_tensor->item<double>();
    } else {
      // checks allow float32 and float64 on the device; read either as it is
      out.lr_tensor = lr_tensor->reshape({1});
      out.scalars.lr = out.lr_tensor.data_ptr();
      out.scalars.lr_double = out.lr_tensor.scalar_type() == at::kDouble;
    }
  }
  out.grad_scale = float_on(args.grad_scale, device);
  out.found_inf = float_on(args.found_inf, device);
  out.scalars.grad_scale = out.grad_scale.defined() ? out.grad_scale.data_ptr<float>() : nullptr;
  out.scalars.found_inf = out.found_inf.defined() ? out.found_inf.data_ptr<float>() : nullptr;
  return out;
}

}  // namespace pytrainer::cuda
