// Tensor lists from Python without reference-count traffic.
//
// An optimizer step hands over a few tensors per parameter; converting each to
// an owning at::Tensor costs an atomic increment and a decrement that checks
// for a Python object, most of a step's overhead with thousands of small
// tensors. Instead the list is frozen into a tuple (which keeps every tensor
// alive, even if the caller's list changes while the GIL is released) and the
// tensors are borrowed from it.
#pragma once

#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <vector>

namespace pytrainer {
// Hidden like the pybind11 types it holds (this header is for ops.cpp only).
namespace {

class BorrowedTensorList {
 public:
  BorrowedTensorList(pybind11::handle seq, const char* name) {
    PyObject* tuple = PySequence_Tuple(seq.ptr());
    if (tuple == nullptr) throw pybind11::error_already_set();
    owner_ = pybind11::reinterpret_steal<pybind11::tuple>(tuple);
    const Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    tensors_.reserve(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* item = PyTuple_GET_ITEM(tuple, i);
      if (!THPVariable_Check(item)) {
        release();
        throw pybind11::type_error(std::string(name) + "[" + std::to_string(i) + "] is a " +
                                   Py_TYPE(item)->tp_name + ", not a torch.Tensor");
      }
      tensors_.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(THPVariable_Unpack(item)));
    }
  }
  ~BorrowedTensorList() { release(); }
  BorrowedTensorList(const BorrowedTensorList&) = delete;
  BorrowedTensorList& operator=(const BorrowedTensorList&) = delete;

  at::TensorList list() const { return tensors_; }

 private:
  void release() {
    for (at::Tensor& t : tensors_) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
    tensors_.clear();
  }

  pybind11::tuple owner_;
  std::vector<at::Tensor> tensors_;
};

}  // namespace
}  // namespace pytrainer
