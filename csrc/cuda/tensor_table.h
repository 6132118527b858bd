// Tables in device memory, cached by content: an optimizer's launches read
// their tensors' pointers and sizes from a table instead of kernel arguments,
// so one launch covers any number of tensors. Steps usually pass the same
// tensors every time, so a table is rebuilt (one asynchronous copy from pinned
// memory) only when a param, grad or state tensor moved or changed size.
#pragma once

#include <ATen/core/Tensor.h>

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "cuda/step_scalars.h"
#include "cuda/table.h"

namespace pytrainer::cuda {

// Device bytes and the tensor that owns them: hold `owner` until the kernels that
// read `data` are launched, so that another thread evicting the table from the
// cache cannot free it in between (after the launch, stream order protects it).
struct DeviceBytes {
  const uint8_t* data;
  at::Tensor owner;
};

// Where a call keeps a table: the call's table slot (csrc/table_slots.h) and
// the launch's position in the call (one table per launch).
struct TablePlace {
  int64_t slot;
  size_t launch;
};

// Device memory holding the bytes `build()` writes, for a table whose identity
// is `key` (the entries' bytes): `build` runs only when the place's slot holds
// no table with this key on this device (without a slot: when the shared cache
// has none on this device and stream). Under CUDA graph capture only a slot of
// a capturable group is accepted, and its table must have been built before
// (table_slots.h says how it then outlives the graph's replays).
DeviceBytes upload_cached(const std::string& key, int64_t bytes,
                          const std::function<void(uint8_t*)>& build, const at::Device& device,
                          const TablePlace& place);

struct TableHandle {
  DeviceTable table;
  at::Tensor owner;
};

// The multi-tensor table of `entries` (first_chunk is filled in here), with one
// chunk of kChunkSize elements per CUDA block.
TableHandle device_table(std::vector<TableEntry>& entries, const at::Device& device,
                         const TablePlace& place);

Dtype dtype_of(at::ScalarType t);

// The params of each of `dtypes` that the call has, as (dtype, their indices),
// in the order of `dtypes`: one launch covers the tensors of one dtype.
std::vector<std::pair<at::ScalarType, std::vector<size_t>>> split_by_dtype(
    at::TensorList params, std::initializer_list<at::ScalarType> dtypes);

// The launches of an elementwise op: per dtype present, a table whose entry i
// points at tensor i of each of `lists` (params first; an empty list leaves its
// slot null) with tag tags[i] (0 without tags), then launch(dtype, table) and
// the step increments.
template <class Launch>
void launch_per_dtype(const CudaCall& call, std::initializer_list<at::TensorList> lists,
                      at::TensorList state_steps, at::IntArrayRef tags,
                      std::initializer_list<at::ScalarType> dtypes, Launch launch) {
  TORCH_CHECK(lists.size() <= kMaxTensorsPerEntry, "pytrainer: too many lists per entry");
  const at::TensorList params = *lists.begin();
  size_t launch_index = 0;
  for (const auto& [dtype, indices] : split_by_dtype(params, dtypes)) {
    std::vector<TableEntry> entries;
    entries.reserve(indices.size());
    for (const size_t i : indices) {
      TableEntry e{};
      int slot = 0;
      for (const at::TensorList& list : lists) {
        e.ptr[slot++] = list.empty() ? nullptr : list[i].data_ptr();
      }
      e.step = state_steps[i].data_ptr<float>();
      e.numel = params[i].numel();
      e.tag = tags.empty() ? 0 : tags[i];
      entries.push_back(e);
    }
    const TableHandle table =
        device_table(entries, call.device, TablePlace{call.table_slot, launch_index++});
    C10_CUDA_CHECK(launch(dtype_of(dtype), table.table));
    C10_CUDA_CHECK(launch_increment_steps(table.table, call.ds.scalars.found_inf, call.stream));
  }
}

}  // namespace pytrainer::cuda
