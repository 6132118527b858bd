// The CPU kernels for any CPU: plain C++ that the compiler vectorises for the
// baseline instruction set. Also the reference the SIMD builds are tested against.
#include "cpu/prelude.h"

namespace pytrainer::cpu::portable {
#include "cpu/simd.h"
#include "cpu/adamw_kernel.h"
#include "cpu/anyprecision_kernel.h"
#include "cpu/adafactor_kernel.h"

static IsaKernels make_table() {
  IsaKernels k{};
  k.name = "DEFAULT";
  k.width = VecF::width;
  fill_adamw_table(k);
  fill_anyprecision_table(k);
  fill_adafactor_table(k);
  return k;
}
}  // namespace pytrainer::cpu::portable

const pytrainer::cpu::IsaKernels& pytrainer::cpu::isa_default() {
  static const IsaKernels table = portable::make_table();
  return table;
}
