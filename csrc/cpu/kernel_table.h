// The CPU kernels one instruction set provides, as plain function pointers.
//
// Each ISA translation unit (isa_*.cpp) compiles the same kernel templates for
// its vector width and fills one IsaKernels; ops pick the table once per call.
#pragma once

#include <cstdint>

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

struct IsaKernels {
  const char* name;
  int width;               // float lanes per vector
  RangeFn adamw[kNumDt][2];  // [param dtype][amsgrad]
  RangeFn anyprecision[kNumDt][3];  // [param dtype (not float64)][AnyPrecisionRounding]
};

const IsaKernels& isa_default();
#if defined(__x86_64__) || defined(_M_X64)
const IsaKernels& isa_avx2();
const IsaKernels& isa_avx512();
#endif

}  // namespace pytrainer::cpu
