#include "cuda/tensor_table.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cuda_runtime_api.h>

#include <cstring>
#include <list>
#include <mutex>

namespace pytrainer::cuda {
namespace {

struct CachedTable {
  size_t hash;
  std::string key;
  at::Tensor buffer;  // keeps the device memory alive
};

// Enough for a few optimizers with a few dtype groups each.
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

DeviceBytes upload_cached(const std::string& key, int64_t bytes,
                          const std::function<void(uint8_t*)>& build, const at::Device& device) {
  const auto stream = c10::cuda::getCurrentCUDAStream(device.index());
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream.stream(), &capture));
  TORCH_CHECK(capture == cudaStreamCaptureStatusNone,
              "pytrainer: optimizer steps cannot be captured in a CUDA graph (their tensor "
              "tables live in a cache the graph would outlive); run step() outside the capture");
  // A table is only read on the stream it was copied on: keying by stream keeps
  // its lifetime ordered with the kernels that read it.
  std::string full_key = key;
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
  const int64_t size = bytes > 0 ? bytes : 1;
  at::Tensor host = at::empty({size}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  build(host.data_ptr<uint8_t>());
  at::Tensor buffer = at::empty({size}, at::TensorOptions().dtype(at::kByte).device(device));
  // Asynchronous, on the current stream: the pinned block is not reused before
  // the copy completes.
  buffer.copy_(host, /*non_blocking=*/true);
  g_cache->push_front(CachedTable{hash, std::move(full_key), buffer});
  if (g_cache->size() > kMaxCached) g_cache->pop_back();
  return DeviceBytes{buffer.data_ptr<uint8_t>(), buffer};
}

TableHandle device_table(std::vector<TableEntry>& entries, const at::Device& device) {
  int64_t chunks = 0;
  for (TableEntry& e : entries) {
    e.first_chunk = chunks;
    chunks += (e.numel + kChunkSize - 1) / kChunkSize;
  }
  TORCH_CHECK(chunks < INT32_MAX, "pytrainer: too many chunks in one launch (", chunks, ")");
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
      device);
  const uint8_t* d = bytes.data;
  return TableHandle{DeviceTable{reinterpret_cast<const TableEntry*>(d),
                                 reinterpret_cast<const int32_t*>(d + map_offset),
                                 static_cast<int64_t>(entries.size()), chunks},
                     bytes.owner};
}

}  // namespace pytrainer::cuda
