// How the elementwise kernels load and store: a pair of vectors in one of
// simd.h's layouts, one vector (the rest below a pair) or one scalar (loop
// tails, float64). A kernel body is written once as a template over these.
//
// Included by isa_kernels.h after simd.h, inside the ISA's namespace.

// ---------------------------------------------------------------- prefetch
// Out of cache, the hardware prefetchers alone keep too few lines in flight for
// the four to six streams of a 16-bit step, whose arithmetic per byte is twice
// float32's: the loads wait for memory, then the arithmetic waits for the loads,
// and the two take turns instead of overlapping (bfloat16 AdamW spent about the
// sum of its in-cache time and the memory's). Each loop asks for the line
// kPrefetchBytes ahead of what it loads from a 16-bit stream (bfloat16 AdamW
// 1.7x faster on a 2-core Xeon with AVX512-BF16; 2 and 4 KB ahead measured the
// same). Float32 streams are left to the hardware: prefetching them too made
// float32 AdamW 5-10% slower on an AMD EPYC (Zen 4) and gained a few percent
// at most on the Xeon.
constexpr int64_t kPrefetchBytes = 1024;
// Prefetches the cache lines of [p, p + bytes) + kPrefetchBytes. The address is
// computed as an integer: it may lie past the end of the array (a prefetch never
// faults, but pointer arithmetic past the end is undefined).
inline void prefetch_ahead(const void* p, int64_t bytes) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(p) + kPrefetchBytes;
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(ahead + offset));
  }
}
// The prefetch of a load of n elements at p, for the streams that take one.
template <class T>
inline void prefetch_stream(const T* p, int64_t n) {
  if constexpr (sizeof(T) == 2) prefetch_ahead(p, n * sizeof(T));
}

template <class L>
struct PairIO {
  using V = VecF2;
  static constexpr int n = 2 * VecF::width;
  template <class T>
  V load(const T* p) const {
    prefetch_stream(p, n);
    return vload2(L{}, p);
  }
  // A float32 array the kernel filled in this layout's order (pair_slot).
  V load_arranged(const float* p) const { return {vload(p), vload(p + VecF::width)}; }
  template <class T>
  void store(T* p, V x) const { vstore2(L{}, p, x); }
  // store, for x known to hold no NaN.
  template <class T>
  void store_number(T* p, V x) const { vstore2_number(L{}, p, x); }
  // Stores x rounded to the dtype; returns the stored value.
  template <class T>
  V store_round(T* p, V x) const { return vstore_round2(L{}, p, x); }
  // store_round for a pass that mends its NaNs later (vstore_round2_number).
  template <class T>
  V store_round_number(T* p, V x) const { return vstore_round2_number(L{}, p, x); }
  V load_any(const void* base, Dt dt, int64_t i) const {
    static_assert(std::is_same_v<L, InOrder>, "states of run-time dtypes load in order");
    if (dt != kF32) prefetch_stream(static_cast<const uint16_t*>(base) + i, n);
    return {vload_any(base, dt, i), vload_any(base, dt, i + VecF::width)};
  }
  V store_round_any(void* base, Dt dt, int64_t i, V x) const {
    static_assert(std::is_same_v<L, InOrder>, "states of run-time dtypes store in order");
    return {vstore_round_any(base, dt, i, x.a), vstore_round_any(base, dt, i + VecF::width, x.b)};
  }
  V round_stochastic(V x, Dt dt, uint32_t key, int64_t i) const {
    static_assert(std::is_same_v<L, InOrder>, "the rounding bits follow the element order");
    return {vround_stochastic(x.a, dt, key, i), vround_stochastic(x.b, dt, key, i + VecF::width)};
  }
};
struct VecIO {
  using V = VecF;
  static constexpr int n = VecF::width;
  template <class T>
  V load(const T* p) const { return vload(p); }
  V load_arranged(const float* p) const { return vload(p); }
  template <class T>
  void store(T* p, V x) const { vstore(p, x); }
  template <class T>
  V store_round(T* p, V x) const { return vstore_round(p, x); }
  V load_any(const void* base, Dt dt, int64_t i) const { return vload_any(base, dt, i); }
  V store_round_any(void* base, Dt dt, int64_t i, V x) const {
    return vstore_round_any(base, dt, i, x);
  }
  V round_stochastic(V x, Dt dt, uint32_t key, int64_t i) const {
    return vround_stochastic(x, dt, key, i);
  }
};
// M: the math type (float, or double for float64 tensors).
template <class M>
struct ScalarIO {
  using V = M;
  static constexpr int n = 1;
  template <class T>
  V load(const T* p) const { return sload(p); }
  V load_arranged(const float* p) const { return *p; }
  template <class T>
  void store(T* p, V x) const { sstore(p, x); }
  template <class T>
  V store_round(T* p, V x) const {
    sstore(p, x);
    return sload(p);
  }
  V load_any(const void* base, Dt dt, int64_t i) const { return sload_any(base, dt, i); }
  V store_round_any(void* base, Dt dt, int64_t i, V x) const {
    sstore_any(base, dt, i, x);
    return sload_any(base, dt, i);
  }
  V round_stochastic(V x, Dt dt, uint32_t key, int64_t i) const {
    return sround_stochastic(x, dt, rounding_bits(key, i));
  }
};

// ---------------------------------------------------------------- sums
// N sums over elements [j, end): body(io, k, sums) adds the values of elements
// [k, k + io.n) into sums, a std::array of N io::V. Pairs first (two chains of
// additions per sum, half the loop's own instructions per element), then one
// vector, then scalars; the order of the additions is fixed by the vector width.
template <int N, class Body>
inline std::array<float, N> sum_elements(int64_t j, int64_t end, Body&& body) {
  std::array<VecF, N> vec_sums;
  vec_sums.fill(VecF(0.0f));
  if constexpr (VecF::width > 1) {
    const PairIO<InOrder> pairs;
    std::array<VecF2, N> pair_sums;
    pair_sums.fill(VecF2(0.0f));
    for (; j + pairs.n <= end; j += pairs.n) body(pairs, j, pair_sums);
    for (int s = 0; s < N; ++s) vec_sums[s] = pair_sums[s].a + pair_sums[s].b;
    const VecIO vec;
    for (; j + vec.n <= end; j += vec.n) body(vec, j, vec_sums);
  }
  std::array<float, N> tail{};
  const ScalarIO<float> one;
  for (; j < end; ++j) body(one, j, tail);
  for (int s = 0; s < N; ++s) tail[s] += hsum(vec_sums[s]);
  return tail;
}

// ---------------------------------------------------------------- two passes
// In cache, the AVX2 steps with 16-bit dtypes are bound by the length of their
// dependency chains (loads, conversions, the divider, roundings), not by their
// number of operations: the out-of-order window fills with work that waits.
// Cut in two passes over a block, with the values in between kept in float32
// arrays that stay in L1, each half fills the window with its own independent
// work (bfloat16 AdamW 1.15x, AnyPrecisionAdamW with Kahan 1.3x to 2.7x
// faster). Each kernel says where it cuts, and for which dtypes it pays.
#if defined(PT_ISA_AVX2)
constexpr bool kTwoPasses = true;
#else
constexpr bool kTwoPasses = false;
#endif
constexpr int kBlock = 256;

// A block's float32 values between the passes; a pair at offset k.
struct Staged {
  alignas(64) float v[kBlock];
  void put(int k, VecF2 x) {
    vstore(v + k, x.a);
    vstore(v + k + VecF::width, x.b);
  }
  VecF2 get(int k) const { return {vload(v + k), vload(v + k + VecF::width)}; }
};

// Whether a block's values held a NaN or an infinity (x * 0 is NaN for both),
// for a second pass that stores numbers (PairIO::store_number) only when they
// did not: an infinite value is rare, and sends its block to the stores that
// handle NaN too. A pair's two vectors are added first (inf - inf is NaN; an
// overflow to inf only sends the block to those stores), so that the flag holds
// one register of the loop's sixteen on AVX2, not two.
struct NonFiniteSeen {
  VecF seen{0.0f};
  void add(VecF2 x) { seen = vfma(x.a + x.b, VecF(0.0f), seen); }
  bool any() const {
    const float s = hsum(seen);
    return s != s;
  }
};
