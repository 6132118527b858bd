// AdamW on CUDA: the functor handed to the multi-tensor launcher.
#include "common/adamw_coeffs.h"
#include "cuda/launch.h"
#include "cuda/multi_tensor.cuh"
#include "cuda/vec.cuh"

namespace pytrainer::cuda {

#include "common/adamw_math.h"

namespace {

template <class T, bool AMSGRAD>
struct AdamWFunctor {
  AdamWHyper hyper;
  double lr;
  StepScalars scalars;
  bool write_back_grads;

  PT_DEVICE void operator()(const TableEntry& e, int64_t begin, int64_t end) const {
    // A step GradScaler found inf/NaN in is skipped on the device: no host sync.
    if (scalars.found_inf != nullptr && *scalars.found_inf != 0.0f) return;
    using M = MathT<T>;
    __shared__ AdamWCoeffs<M> shared;
    if (threadIdx.x == 0) {
      const double grad_mult =
          scalars.grad_scale != nullptr ? 1.0 / static_cast<double>(*scalars.grad_scale) : 1.0;
      const float step = *e.step + 1.0f;  // float, as the CPU adds it
      shared = make_adamw_coeffs<M>(hyper, lr_value(scalars, lr), step, grad_mult);
    }
    __syncthreads();
    const AdamWCoeffs<M> c = shared;
    const bool write_back = write_back_grads && scalars.grad_scale != nullptr;

    T* p = static_cast<T*>(e.ptr[0]);
    T* g = static_cast<T*>(e.ptr[1]);
    T* m = static_cast<T*>(e.ptr[2]);
    T* v = static_cast<T*>(e.ptr[3]);
    T* vmax = static_cast<T*>(e.ptr[4]);
    const bool aligned = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v) &&
                         (!AMSGRAD || aligned16(vmax));
    constexpr int N = kPack<T>;
    // One 16-byte access per tensor and thread in flight: about 56 registers, so
    // 4 blocks of 256 threads fit an SM, with 64 KB of loads in flight per SM
    // (H200 needs about 36 KB to cover its latency). float64: 2 packs.
    constexpr int ILP = N >= 4 ? 1 : 2;

    auto packs = [&](int64_t base, int64_t stride, int64_t vec_end) {
      M pr[ILP][N], gr[ILP][N], mr[ILP][N], vr[ILP][N], xr[ILP][N];
#pragma unroll
      for (int k = 0; k < ILP; ++k) {
        const int64_t i = base + k * stride;
        if (i < vec_end) {
          load_pack_any(p + i, aligned, pr[k]);
          load_pack_any(g + i, aligned, gr[k]);
          load_pack_any(m + i, aligned, mr[k]);
          load_pack_any(v + i, aligned, vr[k]);
          if constexpr (AMSGRAD) load_pack_any(vmax + i, aligned, xr[k]);
        }
      }
#pragma unroll
      for (int k = 0; k < ILP; ++k) {
        const int64_t i = base + k * stride;
        if (i < vec_end) {
#pragma unroll
          for (int j = 0; j < N; ++j) gr[k][j] *= c.grad_mult;
          // The unscaled grad, as torch's fused AdamW leaves it under GradScaler.
          if (write_back) store_pack_any(g + i, aligned, gr[k]);
#pragma unroll
          for (int j = 0; j < N; ++j) {
            adamw_update<AMSGRAD>(pr[k][j], gr[k][j], mr[k][j], vr[k][j], xr[k][j], c);
          }
          store_pack_any(p + i, aligned, pr[k]);
          store_pack_any(m + i, aligned, mr[k]);
          store_pack_any(v + i, aligned, vr[k]);
          if constexpr (AMSGRAD) store_pack_any(vmax + i, aligned, xr[k]);
        }
      }
    };
    auto one = [&](int64_t i) {
      M pv = to_math(p[i]), gv = to_math(g[i]) * c.grad_mult, mv = to_math(m[i]),
        vv = to_math(v[i]), xv = AMSGRAD ? to_math(vmax[i]) : M(0);
      if (write_back) g[i] = from_math<T>(gv);
      adamw_update<AMSGRAD>(pv, gv, mv, vv, xv, c);
      p[i] = from_math<T>(pv);
      m[i] = from_math<T>(mv);
      v[i] = from_math<T>(vv);
      if constexpr (AMSGRAD) vmax[i] = from_math<T>(xv);
    };
    for_each_in_chunk<N, ILP>(begin, end, packs, one);
  }
};

template <class T>
cudaError_t launch_typed(bool amsgrad, const DeviceTable& table, const AdamWHyper& hyper,
                         double lr, const StepScalars& scalars, bool write_back,
                         cudaStream_t stream) {
  if (amsgrad) {
    return launch_multi_tensor(table, AdamWFunctor<T, true>{hyper, lr, scalars, write_back},
                               stream);
  }
  return launch_multi_tensor(table, AdamWFunctor<T, false>{hyper, lr, scalars, write_back},
                             stream);
}

}  // namespace

cudaError_t launch_adamw(Dtype dtype, bool amsgrad, const DeviceTable& table,
                         const AdamWHyper& hyper, double lr, const StepScalars& scalars,
                         bool write_back_grads, cudaStream_t stream) {
  return launch_for</*kWithF64=*/true>(dtype, [&](auto type) {
    return launch_typed<typename decltype(type)::type>(amsgrad, table, hyper, lr, scalars,
                                                       write_back_grads, stream);
  });
}

}  // namespace pytrainer::cuda
