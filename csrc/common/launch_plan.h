// The launch configurations of the CUDA kernels (grid and block sizes, shared
// memory, chunk boundaries), computed on the host by plain code that the CPU
// build has too, so the CPU tests check what the first GPU run will launch
// (pytrainer._C.plan_elementwise, pytrainer._C.plan_adafactor). The kernels
// take their work from these plans only. No ATen here: the .cu files include it.
#pragma once

#include <cstdint>
#include <vector>

#include "common/adafactor_cuda_layout.h"

namespace pytrainer {

struct AdafactorPlan;

// CUDA's limits on one launch, for compute capability 9.0 (the H200).
constexpr int64_t kCudaMaxGridX = 2147483647;  // 2^31 - 1
constexpr int64_t kCudaMaxGridYZ = 65535;
constexpr int64_t kCudaMaxThreadsPerBlock = 1024;
constexpr int64_t kCudaMaxBlockZ = 64;
constexpr int64_t kCudaMaxStaticSharedBytes = 48 * 1024;
constexpr int64_t kCudaMaxOptInSharedBytesSm90 = 227 * 1024;

// One kernel launch; grid[0] == 0: the kernel is not launched.
struct LaunchDims {
  int64_t grid[3] = {0, 1, 1};
  int64_t block[3] = {1, 1, 1};
  int64_t shared_bytes = 0;  // static shared memory the kernel declares
};

// A clear error naming the op and the kernel if `d` is beyond CUDA's limits.
void check_launch(const char* op, const char* kernel, const LaunchDims& d);

// The multi-tensor launch of an elementwise op (AdamW, AnyPrecisionAdamW) over
// tensors of `numels` elements: a block per chunk of cuda::kChunkSize elements,
// then the step increments (one thread per tensor).
struct ElementwisePlan {
  std::vector<int64_t> first_chunk;  // per tensor
  int64_t chunks = 0;
  LaunchDims update, steps;
};
ElementwisePlan plan_elementwise(const char* op, const std::vector<int64_t>& numels);

// The six launches of an Adafactor step on CUDA (common/adafactor_cuda_layout.h):
// pass 1, finalize 1 (its grid and the row means), pass 2, finalize 2, pass 3.
struct AdafactorLaunches {
  LaunchDims sums, factors, means, norm, scalars, update;
};
AdafactorLaunches adafactor_launches(const AdafactorPlan& plan);

// Static shared memory of the Adafactor kernels (asserted in cuda/adafactor.cu).
constexpr int64_t kAdafactorWarps = kAdafactorCudaThreads / 32;
constexpr int64_t kAdafactorReduceShared = kAdafactorWarps * 8;  // a double per warp
// pass 1: the row slots, a float per thread and 16-bit pack value (the column
// sums of one pack slot at a time), the block sums
constexpr int64_t kAdafactorSumsShared =
    kAdafactorCudaRowSlots * 4 + kAdafactorCudaThreads * 8 * 4 + kAdafactorReduceShared;
constexpr int64_t kAdafactorNormShared = kAdafactorWarps * 4;  // a float per warp

}  // namespace pytrainer
