// Tables in device memory, cached by content: an optimizer's launches read
// their tensors' pointers and sizes from a table instead of kernel arguments,
// so one launch covers any number of tensors. Steps usually pass the same
// tensors every time, so a table is rebuilt (one asynchronous copy from pinned
// memory) only when a param, grad or state tensor moved or changed size.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cuda/table.h"

namespace pytrainer::cuda {

// Device bytes and the tensor that owns them: hold `owner` until the kernels that
// read `data` are launched, so that another thread evicting the table from the
// cache cannot free it in between (after the launch, stream order protects it).
struct DeviceBytes {
  const uint8_t* data;
  at::Tensor owner;
};

// Device memory holding the bytes `build()` writes, for a table whose identity
// is `key` (the entries' bytes): `build` runs only when no cached table has this
// key on this device and stream. Refuses to run under CUDA graph capture (a
// captured launch would keep reading a buffer the cache may free).
DeviceBytes upload_cached(const std::string& key, int64_t bytes,
                          const std::function<void(uint8_t*)>& build, const at::Device& device);

struct TableHandle {
  DeviceTable table;
  at::Tensor owner;
};

// The multi-tensor table of `entries` (first_chunk is filled in here), with one
// chunk of kChunkSize elements per CUDA block.
TableHandle device_table(std::vector<TableEntry>& entries, const at::Device& device);

Dtype dtype_of(at::ScalarType t);

}  // namespace pytrainer::cuda
