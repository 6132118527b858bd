// The CPU kernels for any CPU: plain C++ that the compiler vectorises for the
// baseline instruction set. Also the reference the SIMD builds are tested against.
#include "cpu/prelude.h"

namespace pytrainer::cpu::portable {
#include "cpu/isa_kernels.h"
}  // namespace pytrainer::cpu::portable

const pytrainer::cpu::IsaKernels& pytrainer::cpu::isa_default() {
  static const IsaKernels table = portable::make_table("DEFAULT");
  return table;
}
