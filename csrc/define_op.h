// Defining an op of the pytrainer library in one call: its schema, the rules
// every op shares, and its Python entry. Each op's file (csrc/<op>.cpp) calls
// define_op in a TORCH_LIBRARY_FRAGMENT and registers its CPU and CUDA kernels.
#pragma once

#include <torch/library.h>

#include <string>

#include "python_entry.h"

namespace pytrainer {

// The kernel of every op for sparse tensors (see define_op): names the first
// sparse argument.
void reject_sparse(const c10::OperatorHandle& op, torch::jit::Stack* stack);

// Defines torch.ops.pytrainer.<name> by its `schema` ("<name>(...) -> ()") and
// pytrainer._C.<name>; Signature is the C++ type of its kernels.
template <class Signature>
void define_op(torch::Library& library, const char* schema) {
  const std::string text(schema);
  const std::string name = text.substr(0, text.find('('));
  library.def(schema);
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
