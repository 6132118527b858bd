// The Python entry of an op: pytrainer._C.<op>(tensor lists..., *, name=value...).
//
// Python calls the ops through these typed entries rather than torch.ops: the
// dispatcher still picks the CPU or CUDA kernel by the tensors' device, but
// without torch.ops' boxing of every tensor list (about 1 us per 8 tensors),
// and the GIL is released while the kernels run. Every argument after the
// leading tensor lists is keyword-only, named as in the op's schema, so a call
// cannot swap two hyperparameters of the same type unnoticed.
//
// Tensor lists come without reference-count traffic: converting each tensor to
// an owning at::Tensor costs an atomic increment and a decrement that checks
// for a Python object, most of a step's overhead with thousands of small
// tensors. Instead each list is frozen into a tuple (which keeps every tensor
// alive, even if the caller's list changes while the GIL is released) and the
// tensors are borrowed from it.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace pytrainer {

// Adds pytrainer._C.<name> when the module is imported (ops.cpp); `define`
// runs then, after every op's schema is registered.
void add_python_entry(std::function<void(pybind11::module_&)> define);

// Hidden like the pybind11 types they hold.
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
  BorrowedTensorList(BorrowedTensorList&& other) noexcept
      : owner_(std::move(other.owner_)), tensors_(std::move(other.tensors_)) {
    other.tensors_.clear();
  }

  at::TensorList list() const { return tensors_; }

 private:
  void release() {
    for (at::Tensor& t : tensors_) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
    tensors_.clear();
  }

  pybind11::tuple owner_;
  std::vector<at::Tensor> tensors_;
};

// What Python passes for an op argument of type T.
template <class T>
struct FromPython {
  using type = std::decay_t<T>;
};
template <>
struct FromPython<at::TensorList> {
  using type = pybind11::handle;
};
template <>
struct FromPython<at::IntArrayRef> {
  using type = std::vector<int64_t>;
};
template <class T>
using FromPythonT = typename FromPython<T>::type;

// An argument for the duration of the call: tensor lists borrowed, the rest as converted.
template <class T>
struct Held {
  Held(const FromPythonT<T>& v, const char*) : value(v) {}
  const FromPythonT<T>& get() const { return value; }
  const FromPythonT<T>& value;
};
template <>
struct Held<at::TensorList> {
  Held(pybind11::handle seq, const char* name) : borrowed(seq, name) {}
  at::TensorList get() const { return borrowed.list(); }
  BorrowedTensorList borrowed;
};

template <class... Args>
constexpr size_t leading_tensor_lists() {
  size_t n = 0;
  bool leading = true;
  ((leading = leading && std::is_same_v<Args, at::TensorList>, n += leading ? 1 : 0), ...);
  return n;
}

template <class Signature>
struct TypedEntry;

template <class... Args>
struct TypedEntry<void(Args...)> {
  static constexpr size_t kArgs = sizeof...(Args);
  static constexpr size_t kLists = leading_tensor_lists<Args...>();

  // pytrainer._C.<name> for torch.ops.pytrainer.<name>, whose C++ signature is
  // void(Args...): the schema must name kArgs arguments, the first kLists of
  // them tensor lists, every later one keyword-only.
  static void define(pybind11::module_& module, const std::string& name) {
    const c10::OperatorHandle handle =
        c10::Dispatcher::singleton().findSchemaOrThrow(("pytrainer::" + name).c_str(), "");
    const std::vector<c10::Argument>& args = handle.schema().arguments();
    TORCH_CHECK(args.size() == kArgs, "pytrainer::", name, ": the schema has ", args.size(),
                " arguments, its kernels ", kArgs);
    for (size_t i = 0; i < kArgs; ++i) {
      TORCH_CHECK(args[i].kwarg_only() == (i >= kLists), "pytrainer::", name, ": argument ",
                  args[i].name(), (i >= kLists ? " must be" : " must not be"),
                  " keyword-only (keyword-only: everything after the leading tensor lists)");
    }
    // The schema lives as long as the process: its names outlive the module.
    std::vector<const char*> names;
    for (const c10::Argument& a : args) names.push_back(a.name().c_str());
    const auto op = handle.typed<void(Args...)>();
    const std::string doc = c10::str("torch.ops.pytrainer.", name, " through its typed entry: ",
                                      handle.schema());
    with_names(module, name.c_str(), doc.c_str(), op, names,
               std::make_index_sequence<kLists>(), std::make_index_sequence<kArgs - kLists>(),
               std::make_index_sequence<kArgs>());
  }

 private:
  template <size_t... Lead, size_t... Tail, size_t... All>
  static void with_names(pybind11::module_& module, const char* name, const char* doc,
                         c10::TypedOperatorHandle<void(Args...)> op,
                         const std::vector<const char*>& names, std::index_sequence<Lead...>,
                         std::index_sequence<Tail...>, std::index_sequence<All...>) {
    module.def(
        name,
        [op, names](const FromPythonT<Args>&... values) {
          const std::tuple<Held<Args>...> held(Held<Args>(values, names[All])...);
          pybind11::gil_scoped_release no_gil;
          std::apply([&](const auto&... h) { op.call(h.get()...); }, held);
        },
        pybind11::arg(names[Lead])..., pybind11::kw_only(), pybind11::arg(names[kLists + Tail])...,
        doc);
  }
};

}  // namespace
}  // namespace pytrainer
