#include "common/checks.h"

#include <c10/util/Exception.h>

#include <cstring>

namespace pytrainer {
namespace {

bool supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Same element order in memory: strides agree on every dimension longer than 1
// (the stride of a size-1 dimension is meaningless, and so are all of an empty tensor's).
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return true;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

}  // namespace

void check_same_length(const char* op, TensorList params, TensorList other, const char* name,
                       size_t expected) {
  TORCH_CHECK(other.size() == expected, op, ": ", name, " has ", other.size(),
              " tensors but params has ", params.size(), "; expected ", expected);
}

void check_params(const char* op, TensorList params) {
  TORCH_CHECK(!params.empty(), op, ": params is empty");
  const at::Device device = params[0].device();
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), op, ": params[", i, "] is undefined");
    TORCH_CHECK(p.layout() == at::kStrided, op, ": params[", i, "] has layout ", p.layout(),
                "; only dense (strided) parameters are supported");
    TORCH_CHECK(!p.is_complex(), op, ": params[", i, "] is complex (", p.scalar_type(),
                "); supported dtypes are float32, float64, float16 and bfloat16 "
                "(view a complex parameter as real with torch.view_as_real)");
    TORCH_CHECK(supported_float(p.scalar_type()), op, ": params[", i, "] has dtype ",
                p.scalar_type(), "; supported dtypes are float32, float64, float16 and bfloat16");
    TORCH_CHECK(p.device() == device, op, ": params[0] is on ", device, " but params[", i,
                "] is on ", p.device(),
                "; one call steps tensors on one device (put parameters of different devices "
                "in different param groups)");
    TORCH_CHECK(p.is_non_overlapping_and_dense(), op, ": params[", i, "] (shape ", p.sizes(),
                ", strides ", p.strides(),
                ") is not dense: the kernels update the storage in place and need a tensor "
                "without gaps or overlaps (e.g. make the parameter contiguous)");
  }
}

void check_like_params(const char* op, TensorList params, TensorList others, const char* name,
                       std::optional<at::ScalarType> dtype) {
  check_same_length(op, params, others, name, params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& o = others[i];
    TORCH_CHECK(o.defined(), op, ": ", name, "[", i, "] is undefined");
    TORCH_CHECK(o.layout() == at::kStrided, op, ": ", name, "[", i, "] has layout ", o.layout(),
                "; only dense (strided) tensors are supported");
    TORCH_CHECK(o.device() == p.device(), op, ": params[", i, "] is on ", p.device(), " but ",
                name, "[", i, "] is on ", o.device(), "; they must be on the same device");
    const at::ScalarType want = dtype.value_or(p.scalar_type());
    TORCH_CHECK(o.scalar_type() == want, op, ": ", name, "[", i, "] has dtype ", o.scalar_type(),
                " but ", want, " is expected",
                dtype ? "" : " (the dtype of params[i])");
    TORCH_CHECK(o.sizes() == p.sizes(), op, ": ", name, "[", i, "] has shape ", o.sizes(),
                " but params[", i, "] has shape ", p.sizes());
    TORCH_CHECK(same_layout(p, o), op, ": ", name, "[", i,
                "] has strides ", o.strides(), " but params[", i, "] has strides ", p.strides(),
                "; the kernels walk both storages in the same order, so the layouts must match "
                "(create states with torch.zeros_like(param, memory_format=torch.preserve_format))");
  }
}

namespace {

bool state_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

void check_16_or_32_bit_params(const char* op, TensorList params) {
  check_params(op, params);
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(state_dtype(params[i].scalar_type()), op, ": params[", i, "] has dtype ",
                params[i].scalar_type(), "; supported dtypes are float32, bfloat16 and float16");
  }
}

void check_state_list(const char* op, TensorList params, TensorList states, const char* name) {
  check_same_length(op, params, states, name, params.size());
  if (states.empty()) return;
  const at::ScalarType dtype = states[0].scalar_type();
  TORCH_CHECK(state_dtype(dtype), op, ": ", name, " have dtype ", dtype,
              "; supported state dtypes are float32, bfloat16 and float16");
  check_like_params(op, params, states, name, dtype);
}

void check_not_sparse(const char* op, TensorList list, const char* name) {
  const bool grads = std::strcmp(name, "grads") == 0;
  for (size_t i = 0; i < list.size(); ++i) {
    TORCH_CHECK(!list[i].defined() || !list[i].is_sparse(), op, ": ", name, "[", i,
                "] is sparse; this optimizer needs dense ",
                grads ? "gradients (torch.optim.SparseAdam handles sparse ones)" : "tensors");
  }
}

void check_grads(const char* op, TensorList params, TensorList grads) {
  check_same_length(op, params, grads, "grads", params.size());
  check_not_sparse(op, grads, "grads");
  check_like_params(op, params, grads, "grads");
}

namespace {

// Optional 1-element float32 tensor (grad_scale, found_inf, lr) on `device`,
// or on the CPU too when `cpu_ok`.
void check_scalar_tensor(const char* op, const std::optional<at::Tensor>& t, const char* name,
                         const at::Device& device, bool cpu_ok) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->numel() == 1, op, ": ", name, " must have one element, got ", t->numel());
  TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t->scalar_type());
  TORCH_CHECK(t->device() == device || (cpu_ok && t->device().is_cpu()), op, ": ", name,
              " is on ", t->device(), " but the parameters are on ", device,
              cpu_ok ? " (a CPU tensor is also accepted)" : "");
}

void check_steps(const char* op, TensorList params, TensorList steps) {
  check_same_length(op, params, steps, "state_steps", params.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const at::Tensor& s = steps[i];
    TORCH_CHECK(s.defined() && s.numel() == 1 && s.scalar_type() == at::kFloat, op,
                ": state_steps[", i, "] must be a one-element float32 tensor, got ",
                s.defined() ? toString(s.scalar_type()) : "undefined", " with ",
                s.defined() ? s.numel() : 0, " elements");
    TORCH_CHECK(s.device() == params[i].device(), op, ": state_steps[", i, "] is on ",
                s.device(), " but params[", i, "] is on ", params[i].device(),
                "; steps live on the parameter's device");
  }
}

}  // namespace

void check_steps_and_scalars(const char* op, TensorList params, TensorList steps,
                             const StepArgs& args) {
  check_steps(op, params, steps);
  const at::Device device = params[0].device();
  check_scalar_tensor(op, args.lr_tensor, "lr", device, /*cpu_ok=*/true);
  check_scalar_tensor(op, args.grad_scale, "grad_scale", device, /*cpu_ok=*/false);
  check_scalar_tensor(op, args.found_inf, "found_inf", device, /*cpu_ok=*/false);
}

}  // namespace pytrainer
