// The CPU kernels one instruction set provides, as plain function pointers.
//
// Each ISA translation unit (isa_*.cpp) compiles the same kernel templates for
// its vector width and fills one IsaKernels; ops pick the table once per call.
#pragma once

#include <cstdint>

#include "common/adafactor_layout.h"

namespace pytrainer::cpu {

// Storage dtypes the kernels are instantiated for, in table order.
enum Dt : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3, kNumDt = 4 };

// Processes elements [begin, end) of one tensor (or tensor set) described by `task`.
using RangeFn = void (*)(const void* task, int64_t begin, int64_t end);

struct AdamWTask {
  void* param;
  void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;    // null unless amsgrad
  const void* coeffs;      // AdamWCoeffs<float> (AdamWCoeffs<double> for float64)
  bool write_back_grad;    // store the unscaled grad (GradScaler parity with torch)
};

struct AnyPrecisionTask {
  void* param;
  void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* compensation;      // null unless Kahan
  const void* coeffs;      // AnyPrecisionCoeffs
  Dt momentum_dt, variance_dt, compensation_dt;
  uint32_t rounding_key;   // stochastic rounding: this tensor at this step
  bool write_back_grad;
};

// One Adafactor step as the CPU passes see it.
struct AdafactorCpuStep {
  AdafactorWork work;
  const float* beta2;     // per tensor: this step's beta2 and 1 - beta2 (at 2*index)
  float grad_mult;
  float eps1;
  float beta1;            // with first_moment
  float one_minus_beta1;  // 1 - beta1, computed in double
  float weight_decay;
  bool first_moment;
  bool write_back_grad;
};

// Tiles of a factored tensor side by side that one CPU task takes at once.
constexpr int64_t kAdafactorCpuRunTiles = 8;

// Params and grads (bytes) per thread of the tensors whose three passes run
// before the next tensors': two runs of full-width float32 tiles (2 x 8 x 32768
// elements x 8 bytes), so that every thread has work in every pass, and with few
// threads small enough that passes 2 and 3 find them in the last-level cache.
// Measured with 2 threads (groups of 8 MB) on an AMD EPYC (AVX2), 50.7 M-param
// Llama-like set: fp32 1.20x faster than one group for the whole call, 1.14-1.28x
// for groups of 4 to 16 MB. With many threads the groups outgrow the cache and the
// step is as it was without them.
constexpr int64_t kAdafactorCpuGroupBytesPerThread = int64_t{4} << 20;

// Processes units [unit, unit + count) (counted within the tensor) of tensor `e`
// in one pass: tiles side by side in one row band (count <= kAdafactorCpuRunTiles)
// of a factored tensor, or one chunk (count 1) of a vector.
using AdafactorUnitFn = void (*)(const AdafactorEntry& e, const AdafactorCpuStep& s,
                                 int64_t unit, int64_t count);

struct AdafactorKernels {
  AdafactorUnitFn tile_sums;     // pass 1, factored: row/column sums of g^2, sum of p^2
  AdafactorUnitFn vector_sums;   // pass 1, not factored: state update, sums of U^2 and p^2
  AdafactorUnitFn tile_norm;     // pass 2, factored: sum of U^2
  AdafactorUnitFn update;        // pass 3, either kind
};

// The benchmarks' memory reference: outputs[k] += input for the 1 to 4 outputs
// of the kernel it is passed to (IsaKernels::memory_pass).
struct MemoryPassTask {
  float* outputs[4];
  const float* input;
};

struct IsaKernels {
  const char* name;
  int width;               // float lanes per vector
  RangeFn adamw[kNumDt][2];  // [param dtype][amsgrad]
  RangeFn anyprecision[kNumDt][3];  // [param dtype (not float64)][AnyPrecisionRounding]
  AdafactorKernels adafactor[kNumDt];  // [param dtype (not float64)]
  RangeFn memory_pass[4];  // [outputs - 1]
};

const IsaKernels& isa_default();
#if defined(__x86_64__) || defined(_M_X64)
const IsaKernels& isa_avx2();
const IsaKernels& isa_avx512();
// The AVX512-BF16 intrinsics need GCC 10 or clang 9; older compilers build the rest.
#if (defined(__clang__) && __clang_major__ >= 9) || \
    (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10)
#define PT_CPU_AVX512_BF16 1
const IsaKernels& isa_avx512bf16();
#endif
#endif

}  // namespace pytrainer::cpu
