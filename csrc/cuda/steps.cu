// Advancing the per-tensor step counts after an optimizer launch. A separate,
// tiny launch: inside the main kernel, blocks of one tensor would race between
// reading the step and advancing it.
#include "cuda/launch.h"

namespace pytrainer::cuda {
namespace {

__global__ void increment_steps_kernel(DeviceTable table, const float* found_inf) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= table.num_entries) return;
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  *table.entries[i].step += 1.0f;
}

}  // namespace

cudaError_t launch_increment_steps(const DeviceTable& table, const float* found_inf,
                                   cudaStream_t stream) {
  if (table.num_entries == 0) return cudaSuccess;
  constexpr int threads = 256;
  const auto blocks = static_cast<unsigned>((table.num_entries + threads - 1) / threads);
  increment_steps_kernel<<<blocks, threads, 0, stream>>>(table, found_inf);
  return cudaGetLastError();
}

}  // namespace pytrainer::cuda
