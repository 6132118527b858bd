// The one multi-tensor launcher: a block per chunk of every tensor in a table.
// It knows nothing of optimizers; a functor gets (entry, begin, end) and does
// the math for elements [begin, end) of that entry's tensors.
#pragma once

#include <cuda_runtime.h>

#include "cuda/table.h"
#include "cuda/vec.cuh"

namespace pytrainer::cuda {

template <class Functor>
__global__ void __launch_bounds__(kThreads) multi_tensor_kernel(DeviceTable table, Functor functor) {
  const int64_t chunk = blockIdx.x;
  const TableEntry& entry = table.entries[table.chunk_entry[chunk]];
  const ChunkRange range = chunk_range(entry, chunk);
  functor(entry, range.begin, range.end);
}

template <class Functor>
cudaError_t launch_multi_tensor(const DeviceTable& table, const Functor& functor,
                                cudaStream_t stream) {
  if (table.num_chunks == 0) return cudaSuccess;
  multi_tensor_kernel<<<static_cast<unsigned>(table.num_chunks), kThreads, 0, stream>>>(table,
                                                                                     functor);
  return cudaGetLastError();
}

// Walks [begin, end) of a chunk: packs of N elements with ILP packs in flight
// per thread (16-byte accesses when the tensors are aligned, element accesses
// otherwise: the pack functions get the flag), then element by element for the
// last partial pack. `pack(base, stride, vec_end)` handles the packs at
// base + k*stride (k < ILP) below vec_end; `one(i)` handles element i.
// Chunks start at multiples of kChunkSize, so alignment holds chunk by chunk.
template <int N, int ILP, class PackFn, class OneFn>
PT_DEVICE void for_each_in_chunk(int64_t begin, int64_t end, PackFn&& pack, OneFn&& one) {
  const int64_t vec_end = begin + (end - begin) / N * N;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * N;
  for (int64_t base = begin + static_cast<int64_t>(threadIdx.x) * N; base < vec_end;
       base += stride * ILP) {
    pack(base, stride, vec_end);
  }
  for (int64_t i = vec_end + threadIdx.x; i < end; i += blockDim.x) one(i);
}

}  // namespace pytrainer::cuda
