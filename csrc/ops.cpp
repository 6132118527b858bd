// The operator schemas of pytrainer (one TORCH_LIBRARY block) and the Python
// module pytrainer._C. Importing the module registers the ops; each device
// registers its kernels in its own files (cpu/<op>.cpp, cuda/<op>_cuda.cpp).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include "cpu/dispatch.h"
#include "python_args.h"

TORCH_LIBRARY(pytrainer, m) {
  // AdamW (torch.optim.AdamW's math) over lists of tensors of one device.
  // grads are written back unscaled only when grad_scale is given and
  // write_back_grads is set (what torch's fused AdamW does under GradScaler).
  m.def(
      "adamw_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, *, "
      "float lr, Tensor? lr_tensor, float beta1, float beta2, float weight_decay, float eps, "
      "bool amsgrad, bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "bool write_back_grads=False) -> ()");
  // torchdistx's AnyPrecisionAdamW: momentum, variance and the Kahan compensation
  // each in its own dtype (one per list), float32 math. rounding: 0 nearest,
  // 1 Kahan compensation, 2 stochastic (seeded by seed and rounding_ids).
  m.def(
      "anyprecision_adamw_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] compensations, Tensor(f!)[] state_steps, "
      "int[] rounding_ids, *, float lr, Tensor? lr_tensor, float beta1, float beta2, "
      "float weight_decay, float eps, int rounding, int seed, Tensor? grad_scale=None, "
      "Tensor? found_inf=None, bool write_back_grads=False) -> ()");
  // transformers' Adafactor: a parameter with 2+ dims keeps row and column
  // states of its last two dims (row_states[i]: shape[:-1], col_states[i]:
  // shape[:-2] + shape[-1:]); others keep a full state in row_states[i] and an
  // empty col_states[i]. exp_avgs is empty without beta1. States are float32.
  m.def(
      "adafactor_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] row_states, Tensor(e!)[] col_states, Tensor(f!)[] state_steps, *, "
      "float lr, Tensor? lr_tensor, float eps1, float eps2, float clip_threshold, "
      "float decay_rate, float? beta1, float weight_decay, bool scale_parameter, "
      "bool relative_step, bool warmup_init, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "bool write_back_grads=False) -> ()");
  // The benchmarks' memory reference (CPU): out += input for every output, in one
  // pass over the kernels' threads.
  m.def("memory_pass_(Tensor(a!)[] outputs, Tensor input) -> ()");
}

namespace {

using OptTensor = std::optional<at::Tensor>;

// Python calls the ops through these typed entries rather than torch.ops: the
// dispatcher still picks the CPU or CUDA kernel by the tensors' device, but
// without torch.ops' boxing of every tensor list (about 1 us per 8 tensors),
// and the GIL is released while the kernels run.
template <class Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

void adamw_entry(pybind11::handle params, pybind11::handle grads, pybind11::handle exp_avgs,
                 pybind11::handle exp_avg_sqs, pybind11::handle max_exp_avg_sqs,
                 pybind11::handle state_steps, double lr, const OptTensor& lr_tensor,
                 double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                 bool maximize, const OptTensor& grad_scale, const OptTensor& found_inf,
                 bool write_back_grads) {
  static const auto op =
      typed_op<void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                    at::TensorList, at::TensorList, double, const OptTensor&, double, double,
                    double, double, bool, bool, const OptTensor&, const OptTensor&, bool)>(
          "pytrainer::adamw_");
  const pytrainer::BorrowedTensorList p(params, "params"), g(grads, "grads"),
      m(exp_avgs, "exp_avgs"), v(exp_avg_sqs, "exp_avg_sqs"),
      x(max_exp_avg_sqs, "max_exp_avg_sqs"), s(state_steps, "state_steps");
  pybind11::gil_scoped_release no_gil;
  op.call(p.list(), g.list(), m.list(), v.list(), x.list(), s.list(), lr, lr_tensor, beta1,
          beta2, weight_decay, eps, amsgrad, maximize, grad_scale, found_inf, write_back_grads);
}

void anyprecision_adamw_entry(pybind11::handle params, pybind11::handle grads,
                              pybind11::handle exp_avgs, pybind11::handle exp_avg_sqs,
                              pybind11::handle compensations, pybind11::handle state_steps,
                              const std::vector<int64_t>& rounding_ids, double lr,
                              const OptTensor& lr_tensor, double beta1, double beta2,
                              double weight_decay, double eps, int64_t rounding, int64_t seed,
                              const OptTensor& grad_scale, const OptTensor& found_inf,
                              bool write_back_grads) {
  static const auto op =
      typed_op<void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                    at::TensorList, at::TensorList, at::IntArrayRef, double, const OptTensor&,
                    double, double, double, double, int64_t, int64_t, const OptTensor&,
                    const OptTensor&, bool)>("pytrainer::anyprecision_adamw_");
  const pytrainer::BorrowedTensorList p(params, "params"), g(grads, "grads"),
      m(exp_avgs, "exp_avgs"), v(exp_avg_sqs, "exp_avg_sqs"),
      c(compensations, "compensations"), s(state_steps, "state_steps");
  pybind11::gil_scoped_release no_gil;
  op.call(p.list(), g.list(), m.list(), v.list(), c.list(), s.list(), rounding_ids, lr,
          lr_tensor, beta1, beta2, weight_decay, eps, rounding, seed, grad_scale, found_inf,
          write_back_grads);
}

void adafactor_entry(pybind11::handle params, pybind11::handle grads, pybind11::handle exp_avgs,
                     pybind11::handle row_states, pybind11::handle col_states,
                     pybind11::handle state_steps, double lr, const OptTensor& lr_tensor,
                     double eps1, double eps2, double clip_threshold, double decay_rate,
                     std::optional<double> beta1, double weight_decay, bool scale_parameter,
                     bool relative_step, bool warmup_init, const OptTensor& grad_scale,
                     const OptTensor& found_inf, bool write_back_grads) {
  static const auto op =
      typed_op<void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                    at::TensorList, at::TensorList, double, const OptTensor&, double, double,
                    double, double, std::optional<double>, double, bool, bool, bool,
                    const OptTensor&, const OptTensor&, bool)>("pytrainer::adafactor_");
  const pytrainer::BorrowedTensorList p(params, "params"), g(grads, "grads"),
      m(exp_avgs, "exp_avgs"), r(row_states, "row_states"), c(col_states, "col_states"),
      s(state_steps, "state_steps");
  pybind11::gil_scoped_release no_gil;
  op.call(p.list(), g.list(), m.list(), r.list(), c.list(), s.list(), lr, lr_tensor, eps1, eps2,
          clip_threshold, decay_rate, beta1, weight_decay, scale_parameter, relative_step,
          warmup_init, grad_scale, found_inf, write_back_grads);
}

}  // namespace

// The ops update optimizer state under torch.no_grad(): autograd has nothing to
// record, and its boxed fallback would copy every tensor list on every call.
TORCH_LIBRARY_IMPL(pytrainer, Autograd, m) {
  m.impl("adamw_", torch::CppFunction::makeFallthrough());
  m.impl("anyprecision_adamw_", torch::CppFunction::makeFallthrough());
  m.impl("adafactor_", torch::CppFunction::makeFallthrough());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pytrainer's compiled optimizer kernels (registered as torch.ops.pytrainer.*)";
  m.def("cuda_built", []() {
#if defined(PYTRAINER_WITH_CUDA)
    return true;
#else
    return false;
#endif
  }, "Whether this build contains the CUDA kernels.");
  m.def("adamw_", &adamw_entry, "torch.ops.pytrainer.adamw_ (positional arguments)");
  m.def("anyprecision_adamw_", &anyprecision_adamw_entry,
        "torch.ops.pytrainer.anyprecision_adamw_ (positional arguments)");
  m.def("adafactor_", &adafactor_entry, "torch.ops.pytrainer.adafactor_ (positional arguments)");
  m.def("cpu_isa", []() { return std::string(pytrainer::cpu::kernels().name); },
        "The CPU instruction set the kernels use.");
  m.def("cpu_isas", &pytrainer::cpu::supported_isas,
        "The CPU instruction sets this CPU can run, best first.");
  m.def("set_cpu_isa", &pytrainer::cpu::set_isa, pybind11::arg("name"),
        "Force one of cpu_isas() (testing); '' restores the automatic choice.");
}

