// 16-byte packs of any storage dtype, converted to and from the math type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/macros.h"

namespace pytrainer::cuda {

template <class T>
using MathT = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Elements per 16-byte vector access: 4 float, 2 double, 8 half/bfloat16.
template <class T>
constexpr int kPack = 16 / sizeof(T);

PT_DEVICE float to_math(float x) { return x; }
PT_DEVICE double to_math(double x) { return x; }
PT_DEVICE float to_math(__half x) { return __half2float(x); }
PT_DEVICE float to_math(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
PT_DEVICE T from_math(MathT<T> x);
template <>
PT_DEVICE float from_math<float>(float x) { return x; }
template <>
PT_DEVICE double from_math<double>(double x) { return x; }
template <>
PT_DEVICE __half from_math<__half>(float x) { return __float2half_rn(x); }
template <>
PT_DEVICE __nv_bfloat16 from_math<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// One aligned 16-byte load, widened to the math type.
template <class T>
PT_DEVICE void load_pack(const T* src, MathT<T> (&out)[kPack<T>]) {
  union {
    uint4 raw;
    T elem[kPack<T>];
  } u;
  u.raw = *reinterpret_cast<const uint4*>(src);
#pragma unroll
  for (int k = 0; k < kPack<T>; ++k) out[k] = to_math(u.elem[k]);
}

template <class T>
PT_DEVICE void store_pack(T* dst, const MathT<T> (&in)[kPack<T>]) {
  union {
    uint4 raw;
    T elem[kPack<T>];
  } u;
#pragma unroll
  for (int k = 0; k < kPack<T>; ++k) u.elem[k] = from_math<T>(in[k]);
  *reinterpret_cast<uint4*>(dst) = u.raw;
}

PT_DEVICE bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

PT_DEVICE float vfma(float a, float b, float c) { return fmaf(a, b, c); }
PT_DEVICE double vfma(double a, double b, double c) { return fma(a, b, c); }
PT_DEVICE float vsqrt(float a) { return sqrtf(a); }
PT_DEVICE double vsqrt(double a) { return sqrt(a); }
// torch.maximum: NaN if either input is NaN.
template <class S>
PT_DEVICE S vmax_nan(S a, S b) {
  if (a != a || b != b) return a + b;
  return a > b ? a : b;
}

}  // namespace pytrainer::cuda
