// Choosing the CPU instruction set and running range kernels over many tensors
// in one parallel region.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/kernel_table.h"

namespace pytrainer::cpu {

// The kernels for the best instruction set this CPU and torch allow (torch's
// ATEN_CPU_CAPABILITY can lower it), or the one the environment variable
// PYTRAINER_CPU_ISA names; set_isa overrides either.
const IsaKernels& kernels();

// The instruction sets this CPU can run, best first, from
// "AVX512_BF16", "AVX512", "AVX2", "DEFAULT".
std::vector<std::string> supported_isas();

// Forces one of them, for testing and measuring each build on one machine; ""
// restores the automatic choice (PYTRAINER_CPU_ISA included). Returns the name
// in use.
std::string set_isa(const std::string& name);

// One tensor's worth of work: fn(task, begin, end) over [0, numel).
struct RangeJob {
  RangeFn fn;
  const void* task;
  int64_t numel;
};

// Splits all jobs into fixed-size chunks and runs them with at::parallel_for,
// so thousands of small tensors cost one parallel region, not one each.
void run_jobs(const std::vector<RangeJob>& jobs);

}  // namespace pytrainer::cpu
