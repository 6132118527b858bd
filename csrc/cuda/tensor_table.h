// Building tensor tables in device memory, cached by content.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "cuda/table.h"

namespace pytrainer::cuda {

// A device copy of `entries` (first_chunk is filled in here) plus the chunk map.
// Steps usually pass the same tensors (same pointers and sizes) every time, so
// tables are cached by content and only rebuilt when a param, grad or state
// tensor moves or changes; a rebuild is one asynchronous copy from pinned memory.
DeviceTable device_table(std::vector<TableEntry>& entries, const at::Device& device);

Dtype dtype_of(at::ScalarType t);

// A 1-element float32 view of an optional scalar tensor on `device` (a float64
// one is converted on the device); undefined when absent.
at::Tensor float_scalar_on(const std::optional<at::Tensor>& t, const at::Device& device);

}  // namespace pytrainer::cuda
