// pytrainer::memory_pass_ on the CPU: the memory reference of the benchmarks.
//
// One pass that reads `input` and reads and writes every tensor of `outputs`
// (out += input), over the same threads, chunks and vectors as the optimizer
// kernels (run_jobs; the loop: memory_pass_kernel.h). With three outputs it
// moves the streams of a float32 AdamW step (four read, three written), so it
// reads what the memory delivers to that access pattern: a plain copy reads less
// (its destination is read before it is written, a transfer it does not count),
// and so does a single stream.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/dispatch.h"

namespace pytrainer::cpu {
namespace {

void memory_pass_cpu(at::TensorList outputs, const at::Tensor& input) {
  auto check = [&](const at::Tensor& x) {
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() &&
                    x.numel() == input.numel(),
                "pytrainer.memory_pass_: the input and outputs must be contiguous float32 CPU "
                "tensors of ", input.numel(), " elements (the input's), got ", x.scalar_type(),
                " ", x.device(), x.is_contiguous() ? "" : " non-contiguous", " of ", x.numel());
  };
  TORCH_CHECK(!outputs.empty() && outputs.size() <= 4,
              "pytrainer.memory_pass_: takes 1 to 4 outputs, got ", outputs.size());
  check(input);
  MemoryPassTask task{};
  task.input = input.data_ptr<float>();
  for (size_t k = 0; k < outputs.size(); ++k) {
    check(outputs[k]);
    task.outputs[k] = outputs[k].data_ptr<float>();
  }
  run_jobs({RangeJob{kernels().memory_pass[outputs.size() - 1], &task, input.numel()}});
}

}  // namespace

// Not an optimizer op (define_op): CPU only, and no Python entry of its own.
TORCH_LIBRARY_FRAGMENT(pytrainer, m) {
  m.def("memory_pass_(Tensor(a!)[] outputs, Tensor input) -> ()");
  m.impl("memory_pass_", torch::dispatch(c10::DispatchKey::CPU, &memory_pass_cpu));
}

}  // namespace pytrainer::cpu
