// The CPU kernels built for AVX2; chosen at run time when the CPU has it
// (see dispatch.cpp), so the extension still loads on older CPUs.
#include "cpu/prelude.h"

#if defined(__x86_64__) || defined(_M_X64)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// GCC 12 reports its own AVX-512 intrinsics (conversions, reductions) as
// (maybe-)uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#define PT_ISA_AVX2 1

namespace pytrainer::cpu::avx2 {
#include "cpu/isa_kernels.h"
}  // namespace pytrainer::cpu::avx2

#undef PT_ISA_AVX2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const pytrainer::cpu::IsaKernels& pytrainer::cpu::isa_avx2() {
  static const IsaKernels table = avx2::make_table("AVX2");
  return table;
}

#endif  // x86-64
