// The kernel table of one instruction set. Included by each isa_*.cpp inside a
// namespace of its own, after its target pragma and PT_ISA_* macros, so that
// every instruction set compiles the same kernels.
#include "cpu/simd.h"
#include "cpu/vector_io.h"
#include "cpu/adamw_kernel.h"
#include "cpu/anyprecision_kernel.h"
#include "cpu/adafactor_kernel.h"
#include "cpu/memory_pass_kernel.h"

static IsaKernels make_table(const char* name) {
  IsaKernels k{};
  k.name = name;
  k.width = VecF::width;
  fill_adamw_table(k);
  fill_anyprecision_table(k);
  fill_adafactor_table(k);
  fill_memory_pass_table(k);
  return k;
}
