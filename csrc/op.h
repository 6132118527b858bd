// What the file of each op (csrc/<op>.cpp) builds on: the input checks, the
// CPU and CUDA step helpers, and define_op, which registers the op in one call.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "common/checks.h"
#include "common/step_args.h"
#include "cpu/dispatch.h"
#include "cpu/dtypes.h"
#include "cpu/op_step.h"
#include "python_entry.h"
#if defined(PYTRAINER_WITH_CUDA)
#include "cuda/launch.h"
#include "cuda/tensor_table.h"
#endif

namespace pytrainer {

using OptTensor = std::optional<at::Tensor>;

// The kernel of every op for sparse tensors (see define_op): names the first
// sparse argument.
void reject_sparse(const c10::OperatorHandle& op, torch::jit::Stack* stack);

// Defines torch.ops.pytrainer.<name> by its `schema` ("<name>(...) -> ()") with
// `kernel` for the CPU and CUDA (the dispatcher picks it by the tensors'
// device), and pytrainer._C.<name>.
template <class Signature>
void define_op(torch::Library& library, const char* schema, Signature* kernel) {
  const std::string text(schema);
  const std::string name = text.substr(0, text.find('('));
  library.def(schema);
  library.impl(name.c_str(), torch::dispatch(c10::DispatchKey::CPU, kernel));
#if defined(PYTRAINER_WITH_CUDA)
  library.impl(name.c_str(), torch::dispatch(c10::DispatchKey::CUDA, kernel));
#endif
  // The ops update optimizer state under torch.no_grad(): autograd has nothing
  // to record, and its boxed fallback would copy every tensor list on every call.
  library.impl(name.c_str(), torch::dispatch(c10::DispatchKey::Autograd,
                                             torch::CppFunction::makeFallthrough()));
  // A sparse tensor routes the call to the Sparse* keys instead of CPU or CUDA:
  // a message naming it there, instead of "no kernel for backend".
  for (const c10::DispatchKey key : {c10::DispatchKey::SparseCPU, c10::DispatchKey::SparseCUDA}) {
    library.impl(name.c_str(), torch::dispatch(
                                   key, torch::CppFunction::makeFromBoxedFunction<&reject_sparse>()));
  }
  add_python_entry(
      [name](pybind11::module_& module) { TypedEntry<Signature>::define(module, name); });
}

}  // namespace pytrainer
