// pytrainer::memory_pass_ on the CPU: the memory reference of the benchmarks.
//
// One pass that reads `input` and reads and writes every tensor of `outputs`
// (out += input), over the same threads and chunks as the optimizer kernels
// (run_jobs). With three outputs it moves the streams of a float32 AdamW step
// (four read, three written), so it reads what the memory delivers to that
// access pattern: a plain copy reads less (its destination is read before it
// is written, a transfer it does not count), and so does a single stream.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/dispatch.h"

namespace pytrainer::cpu {
namespace {

struct MemoryPassTask {
  std::vector<float*> outputs;
  const float* input;
};

void memory_pass_range(const void* task_ptr, int64_t begin, int64_t end) {
  const MemoryPassTask& t = *static_cast<const MemoryPassTask*>(task_ptr);
  // Blocks of 4 KB per output, in turn: every stream stays active, and each
  // loop is a plain one the compiler vectorises.
  constexpr int64_t kBlock = 1024;
  for (int64_t j = begin; j < end; j += kBlock) {
    const int64_t stop = std::min(j + kBlock, end);
    for (float* out : t.outputs) {
      for (int64_t i = j; i < stop; ++i) out[i] += t.input[i];
    }
  }
}

void memory_pass_cpu(at::TensorList outputs, const at::Tensor& input) {
  auto check = [&](const at::Tensor& x, const char* what) {
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() &&
                    x.numel() == input.numel(),
                "pytrainer.memory_pass_: ", what, " must be contiguous float32 CPU tensors of ",
                input.numel(), " elements (the input's), got ", x.scalar_type(), " ",
                x.device(), x.is_contiguous() ? "" : " non-contiguous", " of ", x.numel());
  };
  check(input, "the input and outputs");
  MemoryPassTask task{{}, input.data_ptr<float>()};
  for (const at::Tensor& out : outputs) {
    check(out, "the input and outputs");
    task.outputs.push_back(out.data_ptr<float>());
  }
  run_jobs({RangeJob{&memory_pass_range, &task, input.numel()}});
}

}  // namespace

TORCH_LIBRARY_IMPL(pytrainer, CPU, m) { m.impl("memory_pass_", &memory_pass_cpu); }

}  // namespace pytrainer::cpu
