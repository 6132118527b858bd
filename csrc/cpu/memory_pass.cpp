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
#include <cstring>
#include <vector>

#include "cpu/dispatch.h"

namespace pytrainer::cpu {
namespace {

struct MemoryPassTask {
  std::vector<float*> outputs;
  const float* input;
};

// Every output advances with every element, as an optimizer's streams do (in
// turns of a few KB per stream instead, the prefetchers follow fewer streams at
// a time and the pass reads a third less). In blocks of 64 elements, all loads
// before all stores, as the kernels do: a store followed by a load of another
// buffer at the same offset modulo 4 KB (separately allocated buffers of the same
// size) waits for the store, and a per-element loop measures that, not the memory.
template <int K>
void add_to_outputs(const MemoryPassTask& t, int64_t begin, int64_t end) {
  constexpr int64_t kBlock = 64;
  alignas(64) float sums[K][kBlock];
  const float* input = t.input;
  for (int64_t i = begin; i < end; i += kBlock) {
    const int64_t n = std::min(kBlock, end - i);
    for (int k = 0; k < K; ++k) {
      const float* out = t.outputs[k] + i;
      for (int64_t j = 0; j < n; ++j) sums[k][j] = out[j] + input[i + j];
    }
    for (int k = 0; k < K; ++k) std::memcpy(t.outputs[k] + i, sums[k], n * sizeof(float));
  }
}

void memory_pass_range(const void* task_ptr, int64_t begin, int64_t end) {
  const MemoryPassTask& t = *static_cast<const MemoryPassTask*>(task_ptr);
  switch (t.outputs.size()) {
    case 1: return add_to_outputs<1>(t, begin, end);
    case 2: return add_to_outputs<2>(t, begin, end);
    case 3: return add_to_outputs<3>(t, begin, end);
    default: return add_to_outputs<4>(t, begin, end);
  }
}

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
  MemoryPassTask task{{}, input.data_ptr<float>()};
  for (const at::Tensor& out : outputs) {
    check(out);
    task.outputs.push_back(out.data_ptr<float>());
  }
  run_jobs({RangeJob{&memory_pass_range, &task, input.numel()}});
}

}  // namespace

// Not an optimizer op (define_op): CPU only, and no Python entry of its own.
TORCH_LIBRARY_FRAGMENT(pytrainer, m) {
  m.def("memory_pass_(Tensor(a!)[] outputs, Tensor input) -> ()");
  m.impl("memory_pass_", torch::dispatch(c10::DispatchKey::CPU, &memory_pass_cpu));
}

}  // namespace pytrainer::cpu
