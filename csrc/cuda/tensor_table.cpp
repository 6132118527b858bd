#include "cuda/tensor_table.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cuda_runtime_api.h>

#include <cstring>
#include <list>
#include <memory>
#include <mutex>

#include "common/launch_plan.h"
#include "table_slots.h"

namespace pytrainer::cuda {
namespace {

struct CachedTable {
  size_t hash;
  std::string key;
  at::Tensor buffer;  // keeps the device memory alive
};

// The shared cache of calls without a table slot (direct op calls): enough for
// a few optimizers with a few dtype groups each. Optimizers keep their tables in
// slots, which never evict each other.
constexpr size_t kMaxCached = 64;
std::mutex g_mutex;
// Most recently used first. Never destroyed: freeing CUDA memory during static
// destruction at exit can run after the CUDA runtime is gone.
auto* const g_cache = new std::list<CachedTable>();

}  // namespace

Dtype dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Dtype::F32;
    case at::kDouble: return Dtype::F64;
    case at::kHalf: return Dtype::F16;
    case at::kBFloat16: return Dtype::BF16;
    default: TORCH_CHECK(false, "pytrainer: no CUDA kernel for dtype ", t);
  }
}

std::vector<std::pair<at::ScalarType, std::vector<size_t>>> split_by_dtype(
    at::TensorList params, std::initializer_list<at::ScalarType> dtypes) {
  std::vector<std::pair<at::ScalarType, std::vector<size_t>>> groups;
  for (const at::ScalarType dtype : dtypes) {
    std::vector<size_t> indices;
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].scalar_type() == dtype) indices.push_back(i);
    }
    if (!indices.empty()) groups.emplace_back(dtype, std::move(indices));
  }
  return groups;
}

// A new device buffer of `bytes` (at least 1) holding what `build` writes.
at::Tensor upload(int64_t bytes, const std::function<void(uint8_t*)>& build,
                  const at::Device& device) {
  const int64_t size = bytes > 0 ? bytes : 1;
  at::Tensor host = at::empty({size}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  build(host.data_ptr<uint8_t>());
  at::Tensor buffer = at::empty({size}, at::TensorOptions().dtype(at::kByte).device(device));
  // Asynchronous, on the current stream: the pinned block is not reused before
  // the copy completes.
  buffer.copy_(host, /*non_blocking=*/true);
  return buffer;
}

namespace {

// Destroys an upload's event when the last table holding it goes.
void destroy_event(void* event) {
  // nothing to report to: an error here means the context is already gone
  (void)cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

// An event marking the end of the work queued so far on `stream`.
std::shared_ptr<void> record_upload(cudaStream_t stream) {
  cudaEvent_t event = nullptr;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  std::shared_ptr<void> owned(event, &destroy_event);
  C10_CUDA_CHECK(cudaEventRecord(event, stream));
  return owned;
}

// The slot's own table for this launch, rebuilt only when its content changed.
// Streams: a table is uploaded on the stream of the call that builds it, and
// read by later calls on any stream; a call on another stream than the last
// reader waits for the upload's event and records its stream on the buffer, so
// torch's caching allocator reuses the memory only after those reads too.
// Under capture the table must exist already (building it would copy on a
// capturing stream and allocate in the graph's pool); the graph waits for the
// upload through an external event node, so every replay, on whatever stream,
// is ordered after it, and the table is kept while the slot lives.
DeviceBytes upload_to_slot(std::string full_key, int64_t bytes,
                           const std::function<void(uint8_t*)>& build, const at::Device& device,
                           const TablePlace& place, const c10::cuda::CUDAStream& stream,
                           bool capturing) {
  std::lock_guard<std::mutex> lock(table_slots_mutex());
  TORCH_CHECK(!capturing || slot_capturable_locked(place.slot),
              "pytrainer: this optimizer was made with capturable=False, so its step cannot be "
              "captured in a CUDA graph; construct it with capturable=True (and run one eager "
              "step before the capture)");
  SlotTable& table = slot_table(place.slot, place.launch);
  if (!table.buffer.defined() || table.key != full_key) {
    TORCH_CHECK(!capturing,
                "pytrainer: a captured optimizer step needs the tables of an eager step with the "
                "same params, grads and states (a warm-up step before the capture), and ",
                table.buffer.defined()
                    ? "this param group's tensors changed since its last eager step (new params, "
                      "replaced grads, or a state reload): keep the grads of the warm-up step "
                      "(zero them in place with zero_grad(set_to_none=False) rather than setting "
                      "them to None), or run an eager step on the new tensors before the capture"
                    : "this param group has not stepped yet: run one eager step before the capture");
    // a graph may still read the old table: keep it until the slot is released
    if (table.captured) retire_slot_table(place.slot, table);
    table.buffer = upload(bytes, build, device);
    table.key = std::move(full_key);
    table.uploaded = record_upload(stream.stream());
    table.reader = stream.stream();
  } else if (capturing) {
    C10_CUDA_CHECK(cudaStreamWaitEvent(stream.stream(),
                                       static_cast<cudaEvent_t>(table.uploaded.get()),
                                       cudaEventWaitExternal));
    table.captured = true;
  } else if (table.reader != stream.stream()) {
    C10_CUDA_CHECK(cudaStreamWaitEvent(stream.stream(),
                                       static_cast<cudaEvent_t>(table.uploaded.get()), 0));
    table.buffer.record_stream(stream.unwrap());
    table.reader = stream.stream();
  }
  return DeviceBytes{table.buffer.data_ptr<uint8_t>(), table.buffer};
}

}  // namespace

DeviceBytes upload_cached(const std::string& key, int64_t bytes,
                          const std::function<void(uint8_t*)>& build, const at::Device& device,
                          const TablePlace& place) {
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(device.index());
  const bool capturing = stream_is_capturing(stream.stream());
  std::string full_key = key;
  if (place.slot != kNoTableSlot) {
    const int64_t where = device.index();
    full_key.append(reinterpret_cast<const char*>(&where), sizeof(where));
    return upload_to_slot(std::move(full_key), bytes, build, device, place, stream, capturing);
  }
  TORCH_CHECK(!capturing,
              "pytrainer: an op call without a table slot (table_slot=-1, as direct calls of the "
              "op make) cannot be captured in a CUDA graph: its table lives in a shared cache "
              "the graph would outlive; capture a step of an optimizer made with "
              "capturable=True");
  // A shared table is only read on the stream it was copied on: keying by stream
  // keeps its lifetime ordered with the kernels that read it.
  const int64_t where[2] = {device.index(), static_cast<int64_t>(stream.id())};
  full_key.append(reinterpret_cast<const char*>(where), sizeof(where));

  const size_t hash = std::hash<std::string>{}(full_key);
  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto it = g_cache->begin(); it != g_cache->end(); ++it) {
    if (it->hash == hash && it->key == full_key) {
      g_cache->splice(g_cache->begin(), *g_cache, it);
      return DeviceBytes{it->buffer.data_ptr<uint8_t>(), it->buffer};
    }
  }
  at::Tensor buffer = upload(bytes, build, device);
  g_cache->push_front(CachedTable{hash, std::move(full_key), buffer});
  if (g_cache->size() > kMaxCached) g_cache->pop_back();
  return DeviceBytes{buffer.data_ptr<uint8_t>(), buffer};
}

TableHandle device_table(std::vector<TableEntry>& entries, const at::Device& device,
                         const TablePlace& place) {
  std::vector<int64_t> numels;
  numels.reserve(entries.size());
  for (const TableEntry& e : entries) numels.push_back(e.numel);
  // checks the launch against CUDA's limits before anything is allocated
  const ElementwisePlan plan = plan_elementwise("pytrainer", numels);
  for (size_t i = 0; i < entries.size(); ++i) entries[i].first_chunk = plan.first_chunk[i];
  const int64_t chunks = plan.chunks;
  const int64_t entry_bytes = static_cast<int64_t>(entries.size() * sizeof(TableEntry));
  const int64_t map_offset = align16(entry_bytes);
  const std::string key(reinterpret_cast<const char*>(entries.data()), entry_bytes);
  const DeviceBytes bytes = upload_cached(
      key, map_offset + chunks * static_cast<int64_t>(sizeof(int32_t)),
      [&](uint8_t* h) {
        std::memcpy(h, entries.data(), entry_bytes);
        int32_t* map = reinterpret_cast<int32_t*>(h + map_offset);
        for (size_t i = 0; i < entries.size(); ++i) {
          const int64_t n = (entries[i].numel + kChunkSize - 1) / kChunkSize;
          for (int64_t c = 0; c < n; ++c) *map++ = static_cast<int32_t>(i);
        }
      },
      device, place);
  const uint8_t* d = bytes.data;
  return TableHandle{DeviceTable{reinterpret_cast<const TableEntry*>(d),
                                 reinterpret_cast<const int32_t*>(d + map_offset),
                                 static_cast<int64_t>(entries.size()), chunks},
                     bytes.owner};
}

}  // namespace pytrainer::cuda
