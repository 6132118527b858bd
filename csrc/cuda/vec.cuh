// 16-byte packs of any storage dtype, converted to and from the math type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/macros.h"
#include "cuda/table.h"

namespace pytrainer::cuda {

template <class T>
using MathT = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T>
struct StorageType {
  using type = T;
};

// launch(StorageType<T>{}) for the storage type T of `dtype`: the one switch
// from a launcher's dtype to its kernels. float64 only where the op has float64
// kernels (kWithF64).
template <bool kWithF64, class Launch>
cudaError_t launch_for(Dtype dtype, Launch&& launch) {
  switch (dtype) {
    case Dtype::F32: return launch(StorageType<float>{});
    case Dtype::F16: return launch(StorageType<__half>{});
    case Dtype::BF16: return launch(StorageType<__nv_bfloat16>{});
    case Dtype::F64:
      if constexpr (kWithF64) return launch(StorageType<double>{});
      break;
  }
  return cudaErrorInvalidValue;
}

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

PT_DEVICE bool aligned16(const void* p);

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

// ------------------------------------------------ storage dtype known at run time
// Eight elements of a tensor whose dtype is a launch argument (the any-precision
// states): one 16-byte access for 16-bit types, two for float32 (element
// accesses when the tensors are not 16-byte aligned).
PT_DEVICE float round_to(float x, Dtype dt) {
  if (dt == Dtype::BF16) return __bfloat162float(__float2bfloat16_rn(x));
  if (dt == Dtype::F16) return __half2float(__float2half_rn(x));
  return x;
}

PT_DEVICE float load_one(const void* base, Dtype dt, int64_t i) {
  if (dt == Dtype::BF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  if (dt == Dtype::F16) return __half2float(static_cast<const __half*>(base)[i]);
  return static_cast<const float*>(base)[i];
}

PT_DEVICE void store_one(void* base, Dtype dt, int64_t i, float x) {
  if (dt == Dtype::BF16) {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(x);
  } else if (dt == Dtype::F16) {
    static_cast<__half*>(base)[i] = __float2half_rn(x);
  } else {
    static_cast<float*>(base)[i] = x;
  }
}

// A pack from memory that may not be 16-byte aligned: one vector access when it
// is, element by element otherwise (same registers, same memory parallelism).
template <class T>
PT_DEVICE void load_pack_any(const T* src, bool aligned, MathT<T> (&out)[kPack<T>]) {
  if (aligned) {
    load_pack(src, out);
    return;
  }
#pragma unroll
  for (int k = 0; k < kPack<T>; ++k) out[k] = to_math(src[k]);
}

template <class T>
PT_DEVICE void store_pack_any(T* dst, bool aligned, const MathT<T> (&in)[kPack<T>]) {
  if (aligned) {
    store_pack(dst, in);
    return;
  }
#pragma unroll
  for (int k = 0; k < kPack<T>; ++k) dst[k] = from_math<T>(in[k]);
}

PT_DEVICE void load8(const void* base, Dtype dt, int64_t i, bool aligned, float (&out)[8]) {
  if (!aligned) {
#pragma unroll
    for (int k = 0; k < 8; ++k) out[k] = load_one(base, dt, i + k);
    return;
  }
  if (dt == Dtype::BF16) {
    load_pack(static_cast<const __nv_bfloat16*>(base) + i, out);
  } else if (dt == Dtype::F16) {
    load_pack(static_cast<const __half*>(base) + i, out);
  } else {
    const float* f = static_cast<const float*>(base) + i;
    load_pack(f, reinterpret_cast<float(&)[4]>(out[0]));
    load_pack(f + 4, reinterpret_cast<float(&)[4]>(out[4]));
  }
}

PT_DEVICE void store8(void* base, Dtype dt, int64_t i, bool aligned, const float (&in)[8]) {
  if (!aligned) {
#pragma unroll
    for (int k = 0; k < 8; ++k) store_one(base, dt, i + k, in[k]);
    return;
  }
  if (dt == Dtype::BF16) {
    store_pack(static_cast<__nv_bfloat16*>(base) + i, in);
  } else if (dt == Dtype::F16) {
    store_pack(static_cast<__half*>(base) + i, in);
  } else {
    float* f = static_cast<float*>(base) + i;
    store_pack(f, reinterpret_cast<const float(&)[4]>(in[0]));
    store_pack(f + 4, reinterpret_cast<const float(&)[4]>(in[4]));
  }
}

PT_DEVICE bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

constexpr bool kFusedMultiplyAdd = true;
PT_DEVICE float vfma(float a, float b, float c) { return fmaf(a, b, c); }
PT_DEVICE double vfma(double a, double b, double c) { return fma(a, b, c); }
PT_DEVICE float vfms(float a, float b, float c) { return fmaf(a, b, -c); }
PT_DEVICE double vfms(double a, double b, double c) { return fma(a, b, -c); }
PT_DEVICE float vsqrt(float a) { return sqrtf(a); }
PT_DEVICE double vsqrt(double a) { return sqrt(a); }
// torch.maximum: NaN if either input is NaN.
template <class S>
PT_DEVICE S vmax_nan(S a, S b) {
  if (a != a || b != b) return a + b;
  return a > b ? a : b;
}
// The smaller of a and b; b where either is NaN.
template <class S>
PT_DEVICE S vmin_b(S a, S b) {
  return a < b ? a : b;
}

}  // namespace pytrainer::cuda
