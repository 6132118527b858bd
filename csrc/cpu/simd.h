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

#if defined(PT_ISA_AVX512) || defined(PT_ISA_AVX2)
inline float vfma(float a, float b, float c) { return std::fma(a, b, c); }
inline double vfma(double a, double b, double c) { return std::fma(a, b, c); }
#else
// Without FMA hardware std::fma is a slow library call; torch's scalar lerp
// does not fuse either.
inline float vfma(float a, float b, float c) { return a * b + c; }
inline double vfma(double a, double b, double c) { return a * b + c; }
#endif
inline float vsqrt(float a) { return std::sqrt(a); }
inline double vsqrt(double a) { return std::sqrt(a); }
// torch.maximum: NaN if either input is NaN.
template <class S>
inline S vmax_nan(S a, S b) {
  if (a != a || b != b) return a + b;
  return a > b ? a : b;
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
inline VecF vsqrt(VecF a) { return _mm512_sqrt_ps(a.v); }
inline VecF vmax_nan(VecF a, VecF b) {
  const __mmask16 unordered = _mm512_cmp_ps_mask(a.v, b.v, _CMP_UNORD_Q);
  return _mm512_mask_blend_ps(unordered, _mm512_max_ps(a.v, b.v), _mm512_add_ps(a.v, b.v));
}

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
inline void vstore(c10::BFloat16* p, VecF x) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
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
inline VecF vsqrt(VecF a) { return _mm256_sqrt_ps(a.v); }
inline VecF vmax_nan(VecF a, VecF b) {
  const __m256 unordered = _mm256_cmp_ps(a.v, b.v, _CMP_UNORD_Q);
  return _mm256_blendv_ps(_mm256_max_ps(a.v, b.v), _mm256_add_ps(a.v, b.v), unordered);
}

inline VecF vload(const float* p) { return _mm256_loadu_ps(p); }
inline VecF vload(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline VecF vload(const c10::BFloat16* p) {
  const __m256i wide =
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
inline void vstore(float* p, VecF x) { _mm256_storeu_ps(p, x.v); }
inline void vstore(c10::Half* p, VecF x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void vstore(c10::BFloat16* p, VecF x) {
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(
      _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  // packus works per 128-bit lane; the permute gathers the two useful quarters.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

// ---------------------------------------------------------------- portable
#else
// One lane: the loops below become the scalar loop the compiler may vectorise
// for the baseline instruction set.
struct VecF {
  static constexpr int width = 1;
  float v;
  VecF() = default;
  explicit VecF(float s) : v(s) {}
};
inline VecF operator+(VecF a, VecF b) { return VecF(a.v + b.v); }
inline VecF operator-(VecF a, VecF b) { return VecF(a.v - b.v); }
inline VecF operator*(VecF a, VecF b) { return VecF(a.v * b.v); }
inline VecF operator/(VecF a, VecF b) { return VecF(a.v / b.v); }
inline VecF operator-(VecF a) { return VecF(-a.v); }
inline VecF vfma(VecF a, VecF b, VecF c) { return VecF(a.v * b.v + c.v); }
inline VecF vsqrt(VecF a) { return VecF(std::sqrt(a.v)); }
inline VecF vmax_nan(VecF a, VecF b) { return VecF(vmax_nan(a.v, b.v)); }
template <class T>
inline VecF vload(const T* p) { return VecF(sload(p)); }
template <class T>
inline void vstore(T* p, VecF x) { sstore(p, x.v); }
#endif
