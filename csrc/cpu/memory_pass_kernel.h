// The benchmarks' memory reference (memory_pass.cpp) for the ISA whose simd.h was
// included before this file: the reference runs with the vectors of the kernels
// it is the reference for.

// Every output advances with every element, as an optimizer's streams do (in
// turns of a few KB per stream instead, the prefetchers follow fewer streams at
// a time and the pass reads a third less). A vector pair of every stream is
// loaded before any is stored, as the AdamW kernels do: storing one output's
// element before loading the next output's at the same offset modulo 4 KB
// (separately allocated buffers of the same size) waits for the store, and a
// per-element loop measures that, not the memory. Every stream is prefetched
// as the kernels' 16-bit streams are (vector_io.h): the reference must not read
// below what any kernel moves. Blocks of 64 elements per stream in turn,
// generic SSE2 code, read 30-40% less than this on a 2-core Intel Xeon
// (AVX-512), below what float32 AdamW itself moved there.
template <int K>
PT_FLATTEN void memory_pass_loop(const void* task_ptr, int64_t begin, int64_t end) {
  const MemoryPassTask& t = *static_cast<const MemoryPassTask*>(task_ptr);
  constexpr int W = VecF::width;
  float* outputs[K];
  for (int k = 0; k < K; ++k) outputs[k] = t.outputs[k];
  const float* input = t.input;
  int64_t i = begin;
  for (; i + 2 * W <= end; i += 2 * W) {
    prefetch_ahead(input + i, 2 * W * sizeof(float));
    for (int k = 0; k < K; ++k) prefetch_ahead(outputs[k] + i, 2 * W * sizeof(float));
    const VecF in0 = vload(input + i), in1 = vload(input + i + W);
    VecF sums[K][2];
    for (int k = 0; k < K; ++k) {
      sums[k][0] = vload(outputs[k] + i) + in0;
      sums[k][1] = vload(outputs[k] + i + W) + in1;
    }
    for (int k = 0; k < K; ++k) {
      vstore(outputs[k] + i, sums[k][0]);
      vstore(outputs[k] + i + W, sums[k][1]);
    }
  }
  for (; i < end; ++i) {
    for (int k = 0; k < K; ++k) outputs[k][i] += input[i];
  }
}

inline void fill_memory_pass_table(IsaKernels& k) {
  k.memory_pass[0] = &memory_pass_loop<1>;
  k.memory_pass[1] = &memory_pass_loop<2>;
  k.memory_pass[2] = &memory_pass_loop<3>;
  k.memory_pass[3] = &memory_pass_loop<4>;
}
