// Float vectors for one instruction set, with loads and stores that convert
// the storage dtypes (float, float16, bfloat16) to float32 lanes and back.
//
// Included inside namespace pytrainer::cpu::<isa> by isa_*.cpp after the
// target pragma and one of PT_ISA_AVX512 / PT_ISA_AVX2 (neither: plain C++).
// Conversions to 16-bit round to nearest even, as torch does.

// ---------------------------------------------------------------- scalars
// Used by every ISA for loop tails and float64.
inline float sload(const float* p) { return *p; }
inline double sload(const double* p) { return *p; }
inline float sload(const c10::Half* p) { return static_cast<float>(*p); }
inline float sload(const c10::BFloat16* p) { return static_cast<float>(*p); }
inline void sstore(float* p, float x) { *p = x; }
inline void sstore(double* p, double x) { *p = x; }
inline void sstore(c10::Half* p, float x) { *p = c10::Half(x); }
inline void sstore(c10::BFloat16* p, float x) { *p = c10::BFloat16(x); }

// Scalar float rounded to a storage dtype (as float), loads and stores by dtype.
inline float sround(float x, Dt dt) {
  if (dt == kBF16) return bf16_round_nearest(x);
  if (dt == kF16) return static_cast<float>(c10::Half(x));
  return x;
}
inline float sload_any(const void* base, Dt dt, int64_t i) {
  if (dt == kBF16) return sload(static_cast<const c10::BFloat16*>(base) + i);
  if (dt == kF16) return sload(static_cast<const c10::Half*>(base) + i);
  return sload(static_cast<const float*>(base) + i);
}
inline void sstore_any(void* base, Dt dt, int64_t i, float x) {
  if (dt == kBF16) return sstore(static_cast<c10::BFloat16*>(base) + i, x);
  if (dt == kF16) return sstore(static_cast<c10::Half*>(base) + i, x);
  sstore(static_cast<float*>(base) + i, x);
}
inline float sround_stochastic(float x, Dt dt, uint32_t random) {
  if (dt == kBF16) return bf16_round_stochastic(x, random);
  if (dt == kF16) return f16_round_stochastic(x, random);
  return x;
}

#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
constexpr bool kFusedMultiplyAdd = true;
inline float vfma(float a, float b, float c) { return std::fma(a, b, c); }
inline double vfma(double a, double b, double c) { return std::fma(a, b, c); }
inline float vfms(float a, float b, float c) { return std::fma(a, b, -c); }
inline double vfms(double a, double b, double c) { return std::fma(a, b, -c); }
#else
// Without FMA hardware std::fma is a slow library call; torch's scalar lerp
// does not fuse either.
constexpr bool kFusedMultiplyAdd = false;
inline float vfma(float a, float b, float c) { return a * b + c; }
inline double vfma(double a, double b, double c) { return a * b + c; }
inline float vfms(float a, float b, float c) { return a * b - c; }
inline double vfms(double a, double b, double c) { return a * b - c; }
#endif
inline float vsqrt(float a) { return std::sqrt(a); }
inline double vsqrt(double a) { return std::sqrt(a); }
// torch.maximum: NaN if either input is NaN.
template <class S>
inline S vmax_nan(S a, S b) {
  if (a != a || b != b) return a + b;
  return a > b ? a : b;
}
// The smaller of a and b; b where either is NaN, as x86's min instructions.
template <class S>
inline S vmin_b(S a, S b) {
  return a < b ? a : b;
}

// ---------------------------------------------------------------- AVX-512
#if defined(PT_ISA_AVX512)
struct VecF {
  static constexpr int width = 16;
  __m512 v;
  VecF() = default;
  VecF(__m512 x) : v(x) {}
  explicit VecF(float s) : v(_mm512_set1_ps(s)) {}
};
inline VecF operator+(VecF a, VecF b) { return _mm512_add_ps(a.v, b.v); }
inline VecF operator-(VecF a, VecF b) { return _mm512_sub_ps(a.v, b.v); }
inline VecF operator*(VecF a, VecF b) { return _mm512_mul_ps(a.v, b.v); }
inline VecF operator/(VecF a, VecF b) { return _mm512_div_ps(a.v, b.v); }
inline VecF operator-(VecF a) {
  return _mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN)));
}
inline VecF vfma(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }
inline VecF vfms(VecF a, VecF b, VecF c) { return _mm512_fmsub_ps(a.v, b.v, c.v); }
inline VecF vsqrt(VecF a) { return _mm512_sqrt_ps(a.v); }
inline VecF vmax_nan(VecF a, VecF b) {
  const __mmask16 unordered = _mm512_cmp_ps_mask(a.v, b.v, _CMP_UNORD_Q);
  return _mm512_mask_blend_ps(unordered, _mm512_max_ps(a.v, b.v), _mm512_add_ps(a.v, b.v));
}
inline VecF vmin_b(VecF a, VecF b) { return _mm512_min_ps(a.v, b.v); }

inline VecF vload(const float* p) { return _mm512_loadu_ps(p); }
inline VecF vload(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline VecF vload(const c10::BFloat16* p) {
  const __m512i wide =
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline void vstore(float* p, VecF x) { _mm512_storeu_ps(p, x.v); }
inline void vstore(c10::Half* p, VecF x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// x rounded to bfloat16 to nearest even, as float32 lanes whose top 16 bits are
// the bfloat16 and whose low 16 bits are left over (NaN: 0x7fc0, as torch),
// with integer operations: adds 0x7fff, plus one where the kept part is odd.
inline __m512i bf16_round_high_number(__m512 x) {  // x has no NaN
  const __m512i u = _mm512_castps_si512(x);
  const __mmask16 odd = _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x10000));
  const __m512i up = _mm512_add_epi32(u, _mm512_set1_epi32(0x7fff));
  return _mm512_mask_add_epi32(up, odd, up, _mm512_set1_epi32(1));
}
inline __m512i bf16_round_high(__m512 x) {
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(bf16_round_high_number(x), nan, _mm512_set1_epi32(0x7fc00000));
}
inline __m256i bf16_bits_integer(__m512 x) {
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_round_high(x), 16));
}
#if defined(PT_ISA_AVX512_BF16)
// vcvtneps2bf16 rounds to nearest even as well, but treats subnormal inputs as
// zero and keeps NaN payloads: vectors holding either (rare) take the integer
// path, so that every instruction set stores the same bits.
inline __mmask16 bf16_nan_or_subnormal(__m512 x) {
  constexpr int kNaNOrSubnormal = 0x01 | 0x20 | 0x80;  // quiet NaN | subnormal | signalling NaN
  return _mm512_fpclass_ps_mask(x, kNaNOrSubnormal);
}
inline __m256i bf16_bits(__m512 x) {
  if (__builtin_expect(bf16_nan_or_subnormal(x) == 0, 1)) {
    return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
  }
  return bf16_bits_integer(x);
}
#else
inline __m256i bf16_bits(__m512 x) { return bf16_bits_integer(x); }
#endif
inline void vstore(c10::BFloat16* p, VecF x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_bits(x.v));
}

// Sum of the lanes, always in the same order.
inline float hsum(VecF x) { return _mm512_reduce_add_ps(x.v); }

// Stores x rounded to the dtype and returns what was stored, as float32.
inline VecF vstore_round(float* p, VecF x) {
  vstore(p, x);
  return x;
}
inline VecF vstore_round(c10::Half* p, VecF x) {
  const __m256i h = _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  return _mm512_cvtph_ps(h);
}
inline VecF vstore_round(c10::BFloat16* p, VecF x) {
  const __m256i h = bf16_bits(x.v);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// 32 random bits per lane: rounding_bits(key, i + lane) of anyprecision_coeffs.h.
inline __m512i vhash32(__m512i x) {
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb352d));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(static_cast<int>(0x846ca68bU)));
  return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}
// i is a multiple of the width, so all lanes share the index's high half.
inline __m512i vrounding_bits(uint32_t key, int64_t i) {
  const __m512i lanes = _mm512_add_epi32(
      _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(i))),
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i h = vhash32(_mm512_xor_si512(lanes, _mm512_set1_epi32(static_cast<int>(key))));
  return vhash32(_mm512_xor_si512(
      h, _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(i >> 32)))));
}
inline VecF vround_stochastic_bf16(VecF x, __m512i random) {
  const __m512i u = _mm512_add_epi32(_mm512_castps_si512(x.v),
                                     _mm512_and_si512(random, _mm512_set1_epi32(0xffff)));
  const __m512i r = _mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0xffff0000U)));
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  return _mm512_mask_blend_ps(nan, _mm512_castsi512_ps(r), x.v);
}
using VecU = __m512i;
inline uint32_t lane_bits(const VecU& r, int k) {
  alignas(64) uint32_t tmp[16];
  _mm512_store_si512(reinterpret_cast<__m512i*>(tmp), r);
  return tmp[k];
}

// ---------------------------------------------------------------- AVX2
#elif defined(PT_ISA_AVX2)
struct VecF {
  static constexpr int width = 8;
  __m256 v;
  VecF() = default;
  VecF(__m256 x) : v(x) {}
  explicit VecF(float s) : v(_mm256_set1_ps(s)) {}
};
inline VecF operator+(VecF a, VecF b) { return _mm256_add_ps(a.v, b.v); }
inline VecF operator-(VecF a, VecF b) { return _mm256_sub_ps(a.v, b.v); }
inline VecF operator*(VecF a, VecF b) { return _mm256_mul_ps(a.v, b.v); }
inline VecF operator/(VecF a, VecF b) { return _mm256_div_ps(a.v, b.v); }
inline VecF operator-(VecF a) { return _mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f)); }
inline VecF vfma(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }
inline VecF vfms(VecF a, VecF b, VecF c) { return _mm256_fmsub_ps(a.v, b.v, c.v); }
inline VecF vsqrt(VecF a) { return _mm256_sqrt_ps(a.v); }
inline VecF vmax_nan(VecF a, VecF b) {
  const __m256 unordered = _mm256_cmp_ps(a.v, b.v, _CMP_UNORD_Q);
  return _mm256_blendv_ps(_mm256_max_ps(a.v, b.v), _mm256_add_ps(a.v, b.v), unordered);
}
inline VecF vmin_b(VecF a, VecF b) { return _mm256_min_ps(a.v, b.v); }

inline VecF vload(const float* p) { return _mm256_loadu_ps(p); }
inline VecF vload(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
// bfloat16 to float32 is a move of the 16 bits to the top of the lane: the 8
// values, loaded into both 128-bit halves at once, are spread by one shuffle
// (the load-and-broadcast costs no arithmetic; widening and shifting cost two).
inline VecF vload(const c10::BFloat16* p) {
  const __m256i both =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i spread = _mm256_setr_epi8(
      -1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
      -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
  return _mm256_castsi256_ps(_mm256_shuffle_epi8(both, spread));
}
inline void vstore(float* p, VecF x) { _mm256_storeu_ps(p, x.v); }
inline void vstore(c10::Half* p, VecF x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// x rounded to bfloat16 to nearest even, as float32 lanes whose top 16 bits are
// the bfloat16 and whose low 16 bits are left over (NaN: 0x7fc0, as torch).
// The rounding adds 0x7fff, plus one when the kept part is odd, with integer
// operations only (compare and subtract instead of shifting out the odd bit).
inline __m256i bf16_round_high_number(__m256 x) {  // x has no NaN
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lowest_kept = _mm256_set1_epi32(0x10000);
  const __m256i odd = _mm256_cmpeq_epi32(_mm256_and_si256(u, lowest_kept), lowest_kept);
  return _mm256_sub_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd);
}
inline __m256i bf16_round_high(__m256 x) {
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bf16_round_high_number(x)),
                                              _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)),
                                              nan));
}
// The top 16 bits of the 8 lanes of r, in order: one shuffle gathers them in
// each 128-bit half, one permute joins the halves.
inline __m128i bf16_pack(__m256i r) {
  const __m256i gather = _mm256_setr_epi8(
      2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
      2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(r, gather), 0x08);
  return _mm256_castsi256_si128(packed);
}
inline void vstore(c10::BFloat16* p, VecF x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bf16_pack(bf16_round_high(x.v)));
}

inline float hsum(VecF x) {
  const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(x.v), _mm256_extractf128_ps(x.v, 1));
  const __m128 pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}

// Stores x rounded to the dtype and returns what was stored, as float32.
inline VecF vstore_round(float* p, VecF x) {
  vstore(p, x);
  return x;
}
inline VecF vstore_round(c10::Half* p, VecF x) {
  const __m128i h = _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  return _mm256_cvtph_ps(h);
}
inline VecF vstore_round(c10::BFloat16* p, VecF x) {
  const __m256i r = bf16_round_high(x.v);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bf16_pack(r));
  return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xffff0000U))));
}

inline __m256i vhash32(__m256i x) {
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7feb352d));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(static_cast<int>(0x846ca68bU)));
  return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}
inline __m256i vrounding_bits(uint32_t key, int64_t i) {
  const __m256i lanes =
      _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(i))),
                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i h = vhash32(_mm256_xor_si256(lanes, _mm256_set1_epi32(static_cast<int>(key))));
  return vhash32(_mm256_xor_si256(
      h, _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(i >> 32)))));
}
inline VecF vround_stochastic_bf16(VecF x, __m256i random) {
  const __m256i u = _mm256_add_epi32(_mm256_castps_si256(x.v),
                                     _mm256_and_si256(random, _mm256_set1_epi32(0xffff)));
  const __m256i r = _mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(0xffff0000U)));
  const __m256 nan = _mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q);
  return _mm256_blendv_ps(_mm256_castsi256_ps(r), x.v, nan);
}
using VecU = __m256i;
inline uint32_t lane_bits(const VecU& r, int k) {
  alignas(32) uint32_t tmp[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), r);
  return tmp[k];
}

// ---------------------------------------------------------------- portable
#else
// Four lanes as the compiler's generic vectors (GCC and clang vector
// extensions): plain elementwise operations that become packed instructions of
// the baseline instruction set (SSE2 on x86-64), as at::vec's generic
// Vectorized<T> does for torch's default build; one lane per element lost
// nothing but the vectors (torch's default-capability fused AdamW was up to
// 1.7x faster). Rounding, NaN and subnormals as in every other build: the
// 16-bit conversions are c10's bit-exact software ones, lane by lane in parallel.
using F4 = float __attribute__((vector_size(16)));
using I4 = int32_t __attribute__((vector_size(16)));
using U4 = uint32_t __attribute__((vector_size(16)));
using U16x4 = uint16_t __attribute__((vector_size(8)));

struct VecF {
  static constexpr int width = 4;
  F4 v;
  VecF() = default;
  VecF(F4 x) : v(x) {}
  explicit VecF(float s) : v(F4{s, s, s, s}) {}
};
inline F4 as_f4(U4 x) { return reinterpret_cast<F4>(x); }
inline U4 as_u4(F4 x) { return reinterpret_cast<U4>(x); }
// Lanes of a where mask (all ones or all zeros per lane) is set, else of b.
inline U4 select(I4 mask, U4 a, U4 b) {
  const U4 m = reinterpret_cast<U4>(mask);
  return (m & a) | (~m & b);
}
inline F4 select(I4 mask, F4 a, F4 b) { return as_f4(select(mask, as_u4(a), as_u4(b))); }

inline VecF operator+(VecF a, VecF b) { return a.v + b.v; }
inline VecF operator-(VecF a, VecF b) { return a.v - b.v; }
inline VecF operator*(VecF a, VecF b) { return a.v * b.v; }
inline VecF operator/(VecF a, VecF b) { return a.v / b.v; }
inline VecF operator-(VecF a) { return as_f4(as_u4(a.v) ^ 0x80000000U); }
// Not fused, as the scalar vfma above and torch's scalar lerp.
inline VecF vfma(VecF a, VecF b, VecF c) { return a.v * b.v + c.v; }
inline VecF vfms(VecF a, VecF b, VecF c) { return a.v * b.v - c.v; }
inline VecF vsqrt(VecF a) {
#if defined(__SSE2__)
  return _mm_sqrt_ps(a.v);
#else
  return F4{std::sqrt(a.v[0]), std::sqrt(a.v[1]), std::sqrt(a.v[2]), std::sqrt(a.v[3])};
#endif
}
inline VecF vmax_nan(VecF a, VecF b) {
  const I4 unordered = (a.v != a.v) | (b.v != b.v);
  return select(unordered, a.v + b.v, select(a.v > b.v, a.v, b.v));
}
inline VecF vmin_b(VecF a, VecF b) { return select(a.v < b.v, a.v, b.v); }

template <class V, class T>
inline V load_bytes(const T* p) {
  V x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
template <class V, class T>
inline void store_bytes(T* p, V x) {
  std::memcpy(p, &x, sizeof(x));
}

// c10's float16 to float32 (fp16_ieee_to_fp32_value): normal values rescaled
// from the shifted bits, subnormals by a subtraction, exact both ways.
inline F4 f16_to_f32(U16x4 h) {
  const U4 w = __builtin_convertvector(h, U4) << 16;
  const U4 sign = w & 0x80000000U;
  const U4 two_w = w + w;
  const F4 normalized = as_f4((two_w >> 4) + (0xE0U << 23)) * f32_from_bits(15U << 23);
  const F4 denormalized = as_f4((two_w >> 17) | (126U << 23)) - 0.5f;
  return as_f4(sign | select(two_w < (1U << 27), as_u4(denormalized), as_u4(normalized)));
}
// c10's float32 to float16 rounded to nearest even (fp16_ieee_from_fp32_value):
// the float addition rounds the mantissa; NaN becomes 0x7e00 with its sign.
inline U16x4 f32_to_f16(F4 f) {
  const U4 w = as_u4(f);
  const F4 base = as_f4(w & 0x7fffffffU) * f32_from_bits(239U << 23) * f32_from_bits(17U << 23);
  const U4 shl1_w = w + w;
  const U4 sign = w & 0x80000000U;
  U4 bias = shl1_w & 0xFF000000U;
  bias = select(bias < 0x71000000U, U4{} + 0x71000000U, bias);
  const U4 bits = as_u4(as_f4((bias >> 1) + 0x07800000U) + base);
  const U4 nonsign = ((bits >> 13) & 0x7C00U) + (bits & 0x0FFFU);
  return __builtin_convertvector((sign >> 16) | select(shl1_w > 0xFF000000U, U4{} + 0x7E00U,
                                                        nonsign), U16x4);
}
// float32 bits rounded to bfloat16 to nearest even, in the top 16 bits (NaN:
// 0x7fc0, as torch); bf16_round_nearest of rounding.h per lane.
inline U4 bf16_round_high(F4 x) {
  const U4 u = as_u4(x);
  return select(x != x, U4{} + 0x7fc00000U, (u + 0x7fffU + ((u >> 16) & 1U)) & 0xffff0000U);
}

inline VecF vload(const float* p) { return load_bytes<F4>(p); }
inline VecF vload(const c10::Half* p) { return f16_to_f32(load_bytes<U16x4>(p)); }
inline VecF vload(const c10::BFloat16* p) {
  return as_f4(__builtin_convertvector(load_bytes<U16x4>(p), U4) << 16);
}
inline void vstore(float* p, VecF x) { store_bytes(p, x.v); }
inline void vstore(c10::Half* p, VecF x) { store_bytes(p, f32_to_f16(x.v)); }
inline void vstore(c10::BFloat16* p, VecF x) {
  store_bytes(p, __builtin_convertvector(bf16_round_high(x.v) >> 16, U16x4));
}
inline float hsum(VecF x) { return (x.v[0] + x.v[1]) + (x.v[2] + x.v[3]); }

// Stores x rounded to the dtype and returns what was stored, as float32.
inline VecF vstore_round(float* p, VecF x) {
  vstore(p, x);
  return x;
}
inline VecF vstore_round(c10::Half* p, VecF x) {
  const U16x4 h = f32_to_f16(x.v);
  store_bytes(p, h);
  return f16_to_f32(h);
}
inline VecF vstore_round(c10::BFloat16* p, VecF x) {
  const U4 r = bf16_round_high(x.v);
  store_bytes(p, __builtin_convertvector(r >> 16, U16x4));
  return as_f4(r);
}

using VecU = U4;
inline U4 vhash32(U4 x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  return x ^ (x >> 16);
}
// rounding_bits(key, i + lane); i is a multiple of the width, so all lanes
// share the index's high half.
inline VecU vrounding_bits(uint32_t key, int64_t i) {
  const U4 lanes = U4{0, 1, 2, 3} + static_cast<uint32_t>(i);
  return vhash32(vhash32(lanes ^ key) ^ static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32));
}
inline VecF vround_stochastic_bf16(VecF x, VecU random) {
  const U4 r = (as_u4(x.v) + (random & 0xffffU)) & 0xffff0000U;
  return select(x.v != x.v, x.v, as_f4(r));
}
inline uint32_t lane_bits(const VecU& r, int k) { return r[k]; }
#endif

// ---------------------------------------------------------------- any dtype
// Vectors of a storage dtype known only at run time (the any-precision states).
inline VecF vload_any(const void* base, Dt dt, int64_t i) {
  if (dt == kBF16) return vload(static_cast<const c10::BFloat16*>(base) + i);
  if (dt == kF16) return vload(static_cast<const c10::Half*>(base) + i);
  return vload(static_cast<const float*>(base) + i);
}
// Stores x rounded to the dtype; returns the stored value.
inline VecF vstore_round_any(void* base, Dt dt, int64_t i, VecF x) {
  if (dt == kBF16) return vstore_round(static_cast<c10::BFloat16*>(base) + i, x);
  if (dt == kF16) return vstore_round(static_cast<c10::Half*>(base) + i, x);
  return vstore_round(static_cast<float*>(base) + i, x);
}
// Stochastic rounding of a vector whose lanes are elements i.. of a tensor.
inline VecF vround_stochastic(VecF x, Dt dt, uint32_t key, int64_t i) {
  if (dt == kF32) return x;
  const VecU random = vrounding_bits(key, i);
  if (dt == kBF16) return vround_stochastic_bf16(x, random);
  // float16: lane by lane (rare; the bfloat16 path is the vectorised one)
  alignas(64) float lanes[VecF::width];
  std::memcpy(lanes, &x, sizeof(lanes));
  for (int k = 0; k < VecF::width; ++k) {
    lanes[k] = f16_round_stochastic(lanes[k], lane_bits(random, k));
  }
  VecF out;
  std::memcpy(&out, lanes, sizeof(lanes));
  return out;
}

// ---------------------------------------------------------------- pairs
// The elementwise kernels take two vectors at a time (2 * width elements), so
// that a 16-bit load or store converts a whole register. Which element sits in
// which lane only has to agree between the loads and the stores of one pass,
// and the layout tag says how: InOrder everywhere, EvenOdd for bfloat16 on x86.
struct VecF2 {
  VecF a, b;
  VecF2() = default;
  VecF2(VecF x, VecF y) : a(x), b(y) {}
  explicit VecF2(float s) : a(s), b(s) {}
};
inline VecF2 operator+(VecF2 x, VecF2 y) { return {x.a + y.a, x.b + y.b}; }
inline VecF2 operator-(VecF2 x, VecF2 y) { return {x.a - y.a, x.b - y.b}; }
inline VecF2 operator*(VecF2 x, VecF2 y) { return {x.a * y.a, x.b * y.b}; }
inline VecF2 operator/(VecF2 x, VecF2 y) { return {x.a / y.a, x.b / y.b}; }
inline VecF2 operator-(VecF2 x) { return {-x.a, -x.b}; }
inline VecF2 vfma(VecF2 x, VecF2 y, VecF2 z) { return {vfma(x.a, y.a, z.a), vfma(x.b, y.b, z.b)}; }
inline VecF2 vfms(VecF2 x, VecF2 y, VecF2 z) { return {vfms(x.a, y.a, z.a), vfms(x.b, y.b, z.b)}; }
inline VecF2 vsqrt(VecF2 x) { return {vsqrt(x.a), vsqrt(x.b)}; }
inline VecF2 vmax_nan(VecF2 x, VecF2 y) { return {vmax_nan(x.a, y.a), vmax_nan(x.b, y.b)}; }
inline VecF2 vmin_b(VecF2 x, VecF2 y) { return {vmin_b(x.a, y.a), vmin_b(x.b, y.b)}; }

// a: elements [i, i + width), b: the next width.
struct InOrder {};
template <class T>
inline VecF2 vload2(InOrder, const T* p) {
  return {vload(p), vload(p + VecF::width)};
}
template <class T>
inline void vstore2(InOrder, T* p, VecF2 x) {
  vstore(p, x.a);
  vstore(p + VecF::width, x.b);
}
template <class T>
inline VecF2 vstore_round2(InOrder, T* p, VecF2 x) {
  return {vstore_round(p, x.a), vstore_round(p + VecF::width, x.b)};
}
// vstore2 of x known to hold no NaN, which a layout may store faster.
template <class L, class T>
inline void vstore2_number(L, T* p, VecF2 x) {
  vstore2(L{}, p, x);
}
// vstore_round2 for a pass that cannot know yet whether x holds a NaN, and
// mends what it stored (mend_stored_nans) when it later finds one. A layout whose
// rounding is faster without its NaN case (kRoundsNumbersFaster) stores a NaN as
// a NaN of the same sign and payload, not as torch's 0x7fc0, provided its low
// 16 bits are clear: true of every NaN computed from bfloat16 values and
// coefficients whose NaNs are the default one (make_anyprecision_coeffs), since
// x86 arithmetic returns either an input NaN, quieted, or the default 0xffc00000.
template <class L, class T>
inline VecF2 vstore_round2_number(L, T* p, VecF2 x) {
  return vstore_round2(L{}, p, x);
}
template <class L>
constexpr bool kRoundsNumbersFaster = false;
// Every bfloat16 NaN of [p, p + n) as torch stores one (the other dtypes'
// number stores are their stores).
template <class T>
inline void mend_stored_nans(T* p, int64_t n) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    for (int64_t j = 0; j < n; ++j) {
      if ((p[j].x & 0x7fff) > 0x7f80) p[j].x = 0x7fc0;
    }
  }
}
// Where element j of n goes in a float32 array that pairs read as two plain
// vectors, to meet loads and stores of this layout (for arrays a kernel fills).
inline int64_t pair_slot(InOrder, int64_t j, int64_t /*n*/) { return j; }

#if defined(PT_ISA_AVX2) || defined(PT_ISA_AVX512)
// a: the even elements i, i + 2, ..., b: the odd ones. Two bfloat16 share a
// 32-bit lane of memory, so the even one is that lane shifted up and the odd
// one that lane masked: no widening or narrowing shuffles, which run on fewer
// ports and with a longer latency (bfloat16 AdamW in cache 1.3x faster on AVX2
// than with in-order pairs, 1.2x on AVX512 on a Zen 4 EPYC; with AVX512_BF16,
// whose stores convert and interleave a pair in two instructions, 1.1x).
struct EvenOdd {};
#if defined(PT_ISA_AVX2)
inline VecF2 vload2(EvenOdd, const c10::BFloat16* p) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {VecF(_mm256_castsi256_ps(_mm256_slli_epi32(x, 16))),
          VecF(_mm256_castsi256_ps(
              _mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000U)))))};
}
// Stores the bfloat16 of the even lanes' top halves and of the odd ones' in place.
inline void bf16_store_even_odd(c10::BFloat16* p, __m256i even, __m256i odd) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm256_blend_epi16(_mm256_srli_epi32(even, 16), odd, 0xAA));
}
// The float32 of a rounded lane: its top half.
inline VecF bf16_high_half(__m256i r) {
  return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xffff0000U))));
}
#else
inline VecF2 vload2(EvenOdd, const c10::BFloat16* p) {
  const __m512i x = _mm512_loadu_si512(p);
  return {VecF(_mm512_castsi512_ps(_mm512_slli_epi32(x, 16))),
          VecF(_mm512_castsi512_ps(
              _mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000U)))))};
}
inline void bf16_store_even_odd(c10::BFloat16* p, __m512i even, __m512i odd) {
  _mm512_storeu_si512(p, _mm512_mask_blend_epi16(0xAAAAAAAAU, _mm512_srli_epi32(even, 16), odd));
}
inline VecF bf16_high_half(__m512i r) {
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000U))));
}
#endif
#if defined(PT_ISA_AVX512_BF16)
// One conversion for the pair (the even elements' bfloat16 in the low half, the
// odd ones' in the high half) and one permute that interleaves them; vectors
// with NaN or subnormals take the integer rounding (see bf16_bits). Returns the
// stored vector.
inline __m512i bf16_store_pair(c10::BFloat16* p, VecF2 x) {
  __m512i out;
  if (__builtin_expect((bf16_nan_or_subnormal(x.a.v) | bf16_nan_or_subnormal(x.b.v)) == 0, 1)) {
    const __m512i halves = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(x.b.v, x.a.v));
    const __m512i interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
        23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    out = _mm512_permutexvar_epi16(interleave, halves);
  } else {
    out = _mm512_mask_blend_epi16(0xAAAAAAAAU, _mm512_srli_epi32(bf16_round_high(x.a.v), 16),
                                  bf16_round_high(x.b.v));
  }
  _mm512_storeu_si512(p, out);
  return out;
}
inline void vstore2(EvenOdd, c10::BFloat16* p, VecF2 x) { bf16_store_pair(p, x); }
inline void vstore2_number(EvenOdd, c10::BFloat16* p, VecF2 x) { bf16_store_pair(p, x); }
inline VecF2 vstore_round2(EvenOdd, c10::BFloat16* p, VecF2 x) {
  const __m512i stored = bf16_store_pair(p, x);
  return {VecF(_mm512_castsi512_ps(_mm512_slli_epi32(stored, 16))), bf16_high_half(stored)};
}
#else
inline void vstore2(EvenOdd, c10::BFloat16* p, VecF2 x) {
  bf16_store_even_odd(p, bf16_round_high(x.a.v), bf16_round_high(x.b.v));
}
// Rounding a number needs no NaN case: fewer integer operations per vector.
inline void vstore2_number(EvenOdd, c10::BFloat16* p, VecF2 x) {
  bf16_store_even_odd(p, bf16_round_high_number(x.a.v), bf16_round_high_number(x.b.v));
}
inline VecF2 vstore_round2(EvenOdd, c10::BFloat16* p, VecF2 x) {
  const auto even = bf16_round_high(x.a.v), odd = bf16_round_high(x.b.v);
  bf16_store_even_odd(p, even, odd);
  return {bf16_high_half(even), bf16_high_half(odd)};
}
template <>
constexpr bool kRoundsNumbersFaster<EvenOdd> = true;
inline VecF2 vstore_round2_number(EvenOdd, c10::BFloat16* p, VecF2 x) {
  const auto even = bf16_round_high_number(x.a.v), odd = bf16_round_high_number(x.b.v);
  bf16_store_even_odd(p, even, odd);
  return {bf16_high_half(even), bf16_high_half(odd)};
}
#endif
// Whole pairs even/odd, the rest (read by single vectors and scalars) in order.
inline int64_t pair_slot(EvenOdd, int64_t j, int64_t n) {
  constexpr int64_t kPair = 2 * VecF::width;
  if (j >= n / kPair * kPair) return j;
  const int64_t k = j % kPair;
  return j - k + (k % 2) * VecF::width + k / 2;
}
// The layout of a pass whose pairs are stored in the dtypes Ts.
template <class... Ts>
using PairLayout =
    std::conditional_t<(std::is_same_v<Ts, c10::BFloat16> && ...), EvenOdd, InOrder>;
#else
template <class... Ts>
using PairLayout = InOrder;
#endif
