// Validation of optimizer op inputs, shared by the CPU and CUDA implementations
// so each rule and its message exist once. Every failure names the op, the
// list and index, what is wrong and what is accepted.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include "common/step_args.h"

namespace pytrainer {

using TensorList = c10::ArrayRef<at::Tensor>;

// params: non-empty, floating dtype among those the kernels support, dense
// (no gaps or overlaps), all on one device.
void check_params(const char* op, TensorList params);

// Each others[i] has params[i]'s shape, strides and device, is dense, and has
// params[i]'s dtype (dtype == nullopt) or the given one (any dtype if `any_dtype`).
void check_like_params(const char* op, TensorList params, TensorList others, const char* name,
                       std::optional<at::ScalarType> dtype = std::nullopt);

// A state list of the any-precision optimizers: like params except the dtype,
// which is one of float32, bfloat16 and float16 and the same for all tensors.
void check_state_list(const char* op, TensorList params, TensorList states, const char* name);

// params restricted to float32, bfloat16 and float16 (no float64).
void check_16_or_32_bit_params(const char* op, TensorList params);

// grads: like params, and not sparse (with a clear message for sparse grads).
void check_grads(const char* op, TensorList params, TensorList grads);

// No tensor of `list` (the op's argument `name`) is sparse.
void check_not_sparse(const char* op, TensorList list, const char* name);

// What every op takes besides its own lists and hyperparameters: one float32
// step count per param (a 0-d or 1-element tensor on the param's device), and
// the optional scalar tensors lr (on the params' device or the CPU),
// grad_scale and found_inf.
void check_steps_and_scalars(const char* op, TensorList params, TensorList steps,
                             const StepArgs& args);

void check_same_length(const char* op, TensorList params, TensorList other, const char* name,
                       size_t expected);

}  // namespace pytrainer
