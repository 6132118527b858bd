// pytrainer::adafactor_ on CUDA: the plan of the call (tiles and partial-sum
// slots), its tables in device memory, and the five launches per param dtype.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "common/adafactor_plan.h"
#include "cuda/launch.h"
#include "cuda/step_scalars.h"
#include "cuda/tensor_table.h"

namespace pytrainer::cuda {
namespace {

int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }

// The tensors of `list` at `indices` (one dtype's share of the call).
std::vector<at::Tensor> pick(at::TensorList list, const std::vector<size_t>& indices) {
  std::vector<at::Tensor> out;
  if (list.empty()) return out;
  out.reserve(indices.size());
  for (size_t i : indices) out.push_back(list[i]);
  return out;
}

void adafactor_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList row_states, at::TensorList col_states,
                    at::TensorList state_steps, double lr,
                    const std::optional<at::Tensor>& lr_tensor, double eps1, double eps2,
                    double clip_threshold, double decay_rate, std::optional<double> beta1,
                    double weight_decay, bool scale_parameter, bool relative_step,
                    bool warmup_init, const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf, bool write_back_grads) {
  check_adafactor_args(params, grads, exp_avgs, row_states, col_states, state_steps,
                       beta1.has_value(), lr_tensor, grad_scale, found_inf);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  const DeviceScalars ds = device_scalars(lr, lr_tensor, grad_scale, found_inf, device);

  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    std::vector<size_t> indices;
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].scalar_type() == dtype) indices.push_back(i);
    }
    if (indices.empty()) continue;
    const std::vector<at::Tensor> p = pick(params, indices), g = pick(grads, indices),
                                  m = pick(exp_avgs, indices), r = pick(row_states, indices),
                                  c = pick(col_states, indices), s = pick(state_steps, indices);
    const AdafactorPlan plan = plan_adafactor(p, g, m, r, c, s);

    // The table: entries, then the unit and batch maps.
    const int64_t entry_bytes = static_cast<int64_t>(plan.entries.size() * sizeof(AdafactorEntry));
    const int64_t units_at = align16(entry_bytes);
    const int64_t batches_at = align16(units_at + plan.units * 4);
    const std::string key(reinterpret_cast<const char*>(plan.entries.data()), entry_bytes);
    const DeviceBytes table = upload_cached(
        key, batches_at + plan.batches * 4,
        [&](uint8_t* h) {
          std::memcpy(h, plan.entries.data(), entry_bytes);
          auto* units = reinterpret_cast<int32_t*>(h + units_at);
          auto* batches = reinterpret_cast<int32_t*>(h + batches_at);
          for (size_t i = 0; i < plan.entries.size(); ++i) {
            const AdafactorEntry& e = plan.entries[i];
            for (int64_t u = 0; u < e.units; ++u) *units++ = static_cast<int32_t>(i);
            if (e.factored && e.units > 0) {
              for (int64_t b = 0; b < e.batches; ++b) *batches++ = static_cast<int32_t>(i);
            }
          }
        },
        device);
    TORCH_CHECK(plan.units < INT32_MAX && plan.batches < INT32_MAX,
                "pytrainer::adafactor_: too many work units in one call");

    const at::Tensor work = at::empty({std::max<int64_t>(plan.work_floats(), 1)},
                                      at::TensorOptions().dtype(at::kFloat).device(device));
    AdafactorLaunch launch{};
    launch.entries = reinterpret_cast<const AdafactorEntry*>(table.data);
    launch.unit_entry = reinterpret_cast<const int32_t*>(table.data + units_at);
    launch.batch_entry = reinterpret_cast<const int32_t*>(table.data + batches_at);
    launch.num_entries = static_cast<int64_t>(plan.entries.size());
    launch.units = plan.units;
    launch.batches = plan.batches;
    launch.work = plan.carve(work.data_ptr<float>());
    launch.hyper = AdafactorHyper{ds.lr, eps1, eps2, clip_threshold, decay_rate,
                                  beta1.value_or(-1.0), weight_decay, scale_parameter,
                                  relative_step, warmup_init};
    launch.scalars = ds.scalars;
    launch.write_back_grads = write_back_grads;
    C10_CUDA_CHECK(launch_adafactor(dtype_of(dtype), launch, stream));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pytrainer, CUDA, m) { m.impl("adafactor_", &adafactor_cuda); }

}  // namespace pytrainer::cuda
