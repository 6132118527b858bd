// The AVX512 kernels again, with AVX512-BF16's one-instruction conversion to
// bfloat16 (Zen 4, Sapphire Rapids and later): the bfloat16 stores and
// roundings are most of the integer work of the 16-bit kernels. Chosen at run
// time when the CPU has it (see dispatch.cpp).
#include "cpu/prelude.h"

#if defined(PT_CPU_AVX512_BF16)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,avx2")
// GCC 12 reports its own AVX-512 intrinsics (conversions, reductions) as
// (maybe-)uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#define PT_ISA_AVX512 1
#define PT_ISA_AVX512_BF16 1

namespace pytrainer::cpu::avx512bf16 {
#include "cpu/isa_kernels.h"
}  // namespace pytrainer::cpu::avx512bf16

#undef PT_ISA_AVX512_BF16
#undef PT_ISA_AVX512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const pytrainer::cpu::IsaKernels& pytrainer::cpu::isa_avx512bf16() {
  static const IsaKernels table = avx512bf16::make_table("AVX512_BF16");
  return table;
}

#endif  // PT_CPU_AVX512_BF16
