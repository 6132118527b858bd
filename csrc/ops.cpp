// The Python module pytrainer._C, and what every op of the pytrainer library
// shares. Importing the module registers the ops: each is defined in its own
// file (csrc/<op>.cpp) by define_op, with its kernels.
#include <torch/extension.h>

#include <functional>
#include <string>
#include <vector>

#include "common/checks.h"
#include "cpu/dispatch.h"
#include "op.h"

// The namespace is ours; its ops are defined in fragments (define_op).
TORCH_LIBRARY(pytrainer, m) {}

namespace pytrainer {
namespace {

std::vector<std::function<void(pybind11::module_&)>>& python_entries() {
  static std::vector<std::function<void(pybind11::module_&)>> entries;
  return entries;
}

}  // namespace

void add_python_entry(std::function<void(pybind11::module_&)> define) {
  python_entries().push_back(std::move(define));
}

void reject_sparse(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const std::string name = op.schema().name();
  const std::vector<c10::Argument>& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  for (size_t a = 0; a < args.size(); ++a) {
    const c10::IValue& value = (*stack)[first + a];
    if (value.isTensorList()) {
      check_not_sparse(name.c_str(), value.toTensorVector(), args[a].name().c_str());
    } else if (value.isTensor()) {
      TORCH_CHECK(!value.toTensor().is_sparse(), name, ": ", args[a].name(),
                  " is sparse; this optimizer needs dense tensors");
    }
  }
  TORCH_CHECK(false, name, ": sparse tensors are not supported");
}

}  // namespace pytrainer

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pytrainer's compiled optimizer kernels (registered as torch.ops.pytrainer.*)";
  m.def("cuda_built", []() {
#if defined(PYTRAINER_WITH_CUDA)
    return true;
#else
    return false;
#endif
  }, "Whether this build contains the CUDA kernels.");
  for (const auto& define : pytrainer::python_entries()) define(m);
  m.def("cpu_isa", []() { return std::string(pytrainer::cpu::kernels().name); },
        "The CPU instruction set the kernels use.");
  m.def("cpu_isas", &pytrainer::cpu::supported_isas,
        "The CPU instruction sets this CPU can run, best first.");
  m.def("set_cpu_isa", &pytrainer::cpu::set_isa, pybind11::arg("name"),
        "Force one of cpu_isas() (testing); '' restores the automatic choice.");
}
