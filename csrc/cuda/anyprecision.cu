// Any-precision AdamW on CUDA: the functor handed to the multi-tensor launcher.
#include "common/anyprecision_coeffs.h"
#include "common/rounding.h"
#include "cuda/launch.h"
#include "cuda/multi_tensor.cuh"
#include "cuda/vec.cuh"

namespace pytrainer::cuda {

#include "common/anyprecision_math.h"

namespace {

struct StateRounding {
  Dtype m_dt, v_dt;
  PT_DEVICE float m(float x) const { return round_to(x, m_dt); }
  PT_DEVICE float v(float x) const { return round_to(x, v_dt); }
};

template <class T>
PT_DEVICE float round_stochastic(float x, uint32_t random) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return bf16_round_stochastic(x, random);
  if constexpr (std::is_same_v<T, __half>) return f16_round_stochastic(x, random);
  return x;
}

template <class T, int ROUNDING>
struct AnyPrecisionFunctor {
  AnyPrecisionHyper hyper;
  double lr;
  StepScalars scalars;
  bool write_back_grads;
  Dtype m_dt, v_dt, c_dt;
  uint64_t seed;

  PT_DEVICE void operator()(const TableEntry& e, int64_t begin, int64_t end) const {
    if (scalars.found_inf != nullptr && *scalars.found_inf != 0.0f) return;
    __shared__ AnyPrecisionCoeffs shared;
    __shared__ uint32_t key;
    if (threadIdx.x == 0) {
      const double grad_mult =
          scalars.grad_scale != nullptr ? 1.0 / static_cast<double>(*scalars.grad_scale) : 1.0;
      const float step = *e.step + 1.0f;
      shared = make_anyprecision_coeffs(hyper, lr_value(scalars, lr), step, grad_mult);
      key = rounding_key(seed, static_cast<uint32_t>(e.tag), static_cast<uint32_t>(step));
    }
    __syncthreads();
    const AnyPrecisionCoeffs c = shared;
    const uint32_t rounding_key_ = key;
    const bool write_back = write_back_grads && scalars.grad_scale != nullptr;
    const StateRounding round{m_dt, v_dt};

    T* p = static_cast<T*>(e.ptr[0]);
    T* g = static_cast<T*>(e.ptr[1]);
    void* m = e.ptr[2];
    void* v = e.ptr[3];
    void* comp = e.ptr[4];
    const bool aligned = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v) &&
                         (ROUNDING != kRoundKahan || aligned16(comp));
    constexpr int N = 8;
    constexpr Dtype kParamDtype = std::is_same_v<T, float>           ? Dtype::F32
                                  : std::is_same_v<T, __nv_bfloat16> ? Dtype::BF16
                                                                     : Dtype::F16;
    constexpr int ILP = 1;

    // The update of one element whose values are already loaded; returns the
    // new parameter value (rounding to T is left to the store, or done here).
    auto update = [&](float& pv, float gv, float& mv, float& vv, float& cv, int64_t i) {
      const float u = anyprecision_update(pv, gv, mv, vv, c, round);
      if constexpr (ROUNDING == kRoundKahan) {
        const float sum = cv + u;
        const float rounded = to_math(from_math<T>(pv + sum));
        cv = sum + (pv - rounded);
        pv = rounded;
      } else if constexpr (ROUNDING == kRoundStochastic) {
        pv = round_stochastic<T>(pv + u, rounding_bits(rounding_key_, static_cast<uint64_t>(i)));
      } else {
        pv = pv + u;
      }
    };

    auto packs = [&](int64_t base, int64_t, int64_t) {
      float pr[N], gr[N], mr[N], vr[N], cr[N];
      load8(p, kParamDtype, base, aligned, pr);
      load8(g, kParamDtype, base, aligned, gr);
      load8(m, m_dt, base, aligned, mr);
      load8(v, v_dt, base, aligned, vr);
      if constexpr (ROUNDING == kRoundKahan) load8(comp, c_dt, base, aligned, cr);
#pragma unroll
      for (int j = 0; j < N; ++j) gr[j] *= c.grad_mult;
      if (write_back) store8(g, kParamDtype, base, aligned, gr);
#pragma unroll
      for (int j = 0; j < N; ++j) update(pr[j], gr[j], mr[j], vr[j], cr[j], base + j);
      store8(p, kParamDtype, base, aligned, pr);
      store8(m, m_dt, base, aligned, mr);
      store8(v, v_dt, base, aligned, vr);
      if constexpr (ROUNDING == kRoundKahan) store8(comp, c_dt, base, aligned, cr);
    };
    auto one = [&](int64_t i) {
      float pv = to_math(p[i]);
      float gv = to_math(g[i]) * c.grad_mult;
      float mv = load_one(m, m_dt, i);
      float vv = load_one(v, v_dt, i);
      float cv = ROUNDING == kRoundKahan ? load_one(comp, c_dt, i) : 0.0f;
      if (write_back) g[i] = from_math<T>(gv);
      update(pv, gv, mv, vv, cv, i);
      p[i] = from_math<T>(pv);
      store_one(m, m_dt, i, mv);
      store_one(v, v_dt, i, vv);
      if constexpr (ROUNDING == kRoundKahan) store_one(comp, c_dt, i, cv);
    };
    for_each_in_chunk<N, ILP>(begin, end, packs, one);
  }
};

template <class T, int kRounding>
cudaError_t launch_typed(const AnyPrecisionLaunch& a, cudaStream_t stream) {
  return launch_multi_tensor(
      a.table, AnyPrecisionFunctor<T, kRounding>{a.hyper, a.lr, a.scalars, a.write_back_grads,
                                                 a.m_dt, a.v_dt, a.c_dt, a.seed},
      stream);
}

}  // namespace

cudaError_t launch_anyprecision(Dtype param_dtype, const AnyPrecisionLaunch& args,
                                cudaStream_t stream) {
  return launch_for</*kWithF64=*/false>(param_dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    switch (args.rounding) {
      case kRoundKahan: return launch_typed<T, kRoundKahan>(args, stream);
      case kRoundStochastic: return launch_typed<T, kRoundStochastic>(args, stream);
      default: return launch_typed<T, kRoundNearest>(args, stream);
    }
  });
}

}  // namespace pytrainer::cuda
