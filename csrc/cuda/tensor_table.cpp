#include "cuda/tensor_table.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <list>
#include <mutex>
#include <string>

namespace pytrainer::cuda {
namespace {

struct CachedTable {
  std::string key;
  at::Tensor buffer;  // keeps the device memory alive
  DeviceTable table;
};

// Enough for a few optimizers with a few dtype groups each.
constexpr size_t kMaxCached = 64;
std::mutex g_mutex;
std::list<CachedTable> g_cache;  // most recently used first

int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }

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

at::Tensor float_scalar_on(const std::optional<at::Tensor>& t, const at::Device& device) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(device, at::kFloat).reshape({1});
}

DeviceTable device_table(std::vector<TableEntry>& entries, const at::Device& device) {
  int64_t chunks = 0;
  for (TableEntry& e : entries) {
    e.first_chunk = chunks;
    chunks += (e.numel + kChunkSize - 1) / kChunkSize;
  }
  TORCH_CHECK(chunks < INT32_MAX, "pytrainer: too many chunks in one launch (", chunks, ")");
  const auto stream = c10::cuda::getCurrentCUDAStream(device.index());

  // The key: the entries' bytes, the device and the stream (a table is only
  // ever read on the stream it was copied on, which keeps freeing it safe).
  const size_t entry_bytes = entries.size() * sizeof(TableEntry);
  std::string key(entry_bytes + 2 * sizeof(int64_t), '\0');
  std::memcpy(key.data(), entries.data(), entry_bytes);
  const int64_t where[2] = {device.index(), static_cast<int64_t>(stream.id())};
  std::memcpy(key.data() + entry_bytes, where, sizeof(where));

  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto it = g_cache.begin(); it != g_cache.end(); ++it) {
    if (it->key == key) {
      g_cache.splice(g_cache.begin(), g_cache, it);
      return it->table;
    }
  }

  const int64_t map_offset = align16(static_cast<int64_t>(entry_bytes));
  const int64_t total = map_offset + chunks * static_cast<int64_t>(sizeof(int32_t));
  at::Tensor host = at::empty({total}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = host.data_ptr<uint8_t>();
  std::memcpy(h, entries.data(), entry_bytes);
  int32_t* map = reinterpret_cast<int32_t*>(h + map_offset);
  for (size_t i = 0; i < entries.size(); ++i) {
    const int64_t n = (entries[i].numel + kChunkSize - 1) / kChunkSize;
    for (int64_t c = 0; c < n; ++c) *map++ = static_cast<int32_t>(i);
  }
  at::Tensor buffer = at::empty({total}, at::TensorOptions().dtype(at::kByte).device(device));
  {
    const c10::cuda::CUDAStreamGuard guard(stream);
    // Asynchronous: the pinned block is not reused before the copy completes.
    buffer.copy_(host, /*non_blocking=*/true);
  }
  uint8_t* d = buffer.data_ptr<uint8_t>();
  DeviceTable table{reinterpret_cast<const TableEntry*>(d),
                    reinterpret_cast<const int32_t*>(d + map_offset),
                    static_cast<int64_t>(entries.size()), chunks};
  g_cache.push_front(CachedTable{std::move(key), std::move(buffer), table});
  if (g_cache.size() > kMaxCached) g_cache.pop_back();
  return table;
}

}  // namespace pytrainer::cuda
