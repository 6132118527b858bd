// The tensor table: what one multi-tensor launch reads to find its work.
// Plain data shared by the host code that builds it (tensor_table.cpp) and the
// kernels that read it (.cu); it lives in device memory, so a launch covers any
// number of tensors.
#pragma once

#include <cstdint>

namespace pytrainer::cuda {

constexpr int kMaxTensorsPerEntry = 6;

// Elements one CUDA block processes: 32K keeps the grid fine-grained (little
// tail imbalance at the end of a step) while a block's setup stays negligible.
constexpr int64_t kChunkSize = 32768;
// Every chunk starts 16-byte aligned for every pack width (up to 8 elements).
static_assert(kChunkSize % 8 == 0, "chunks must start on a pack boundary");

struct TableEntry {
  void* ptr[kMaxTensorsPerEntry];  // the tensors updated together (param, grad, states...)
  float* step;                     // the param's step count (float32 on the device)
  int64_t numel;
  int64_t first_chunk;             // index of this tensor's first chunk in the launch
  int64_t tag;                     // per-optimizer value (e.g. state dtypes, a seed offset)
};

struct DeviceTable {
  const TableEntry* entries;
  const int32_t* chunk_entry;  // the entry each chunk (CUDA block) belongs to
  int64_t num_entries;
  int64_t num_chunks;
};

// n rounded up to a multiple of 16 (table sections start 16-byte aligned).
constexpr int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }

// Storage dtypes of the CUDA kernels, independent of ATen's enum so the .cu
// files need no ATen headers.
enum class Dtype : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

}  // namespace pytrainer::cuda
