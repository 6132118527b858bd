// The operator schemas of pytrainer (one TORCH_LIBRARY block) and the Python
// module pytrainer._C. Importing the module registers the ops; each device
// registers its kernels in its own files (cpu/*.cpp, cuda/register.cpp).
#include <torch/extension.h>

#include "cpu/dispatch.h"

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
  m.def("cpu_isa", []() { return std::string(pytrainer::cpu::kernels().name); },
        "The CPU instruction set the kernels use.");
  m.def("set_cpu_isa", &pytrainer::cpu::set_isa, pybind11::arg("name"),
        "Force 'AVX512', 'AVX2' or 'DEFAULT' (testing); '' restores the automatic choice.");
}
