// Any-precision AdamW on CUDA: the functor handed to the multi-tensor launcher.
// The state dtypes are template parameters: fixed at compile time for the
// configurations most runs use (see launch_anyprecision), so the loads, stores
// and roundings of those kernels have no dtype branches; a run-time dtype for
// every other combination.
#include "common/anyprecision_coeffs.h"
#include "common/rounding.h"
#include "cuda/launch.h"
#include "cuda/multi_tensor.cuh"
#include "cuda/vec.cuh"

namespace pytrainer::cuda {

#include "common/anyprecision_math.h"

namespace {

// A state dtype fixed at compile time...
template <Dtype D>
struct FixedDtype {
  static FixedDtype from(Dtype) { return {}; }
  PT_DEVICE Dtype get() const { return D; }
};
// ...or read at run time (the fallback kernels).
struct RuntimeDtype {
  Dtype dt;
  static RuntimeDtype from(Dtype d) { return {d}; }
  PT_DEVICE Dtype get() const { return dt; }
};

template <class MD, class VD>
struct StateRounding {
  MD m_dt;
  VD v_dt;
  PT_DEVICE float m(float x) const { return round_to(x, m_dt.get()); }
  PT_DEVICE float v(float x) const { return round_to(x, v_dt.get()); }
};

template <class T>
PT_DEVICE float round_stochastic(float x, uint32_t random) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return bf16_round_stochastic(x, random);
  if constexpr (std::is_same_v<T, __half>) return f16_round_stochastic(x, random);
  return x;
}

template <class T, int ROUNDING, class MD, class VD, class CD>
struct AnyPrecisionFunctor {
  AnyPrecisionHyper hyper;
  double lr;
  StepScalars scalars;
  bool write_back_grads;
  MD m_dt;
  VD v_dt;
  CD c_dt;
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
    const StateRounding<MD, VD> round{m_dt, v_dt};
    const Dtype m_dtype = m_dt.get(), v_dtype = v_dt.get(), c_dtype = c_dt.get();

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
      load8(m, m_dtype, base, aligned, mr);
      load8(v, v_dtype, base, aligned, vr);
      if constexpr (ROUNDING == kRoundKahan) load8(comp, c_dtype, base, aligned, cr);
#pragma unroll
      for (int j = 0; j < N; ++j) gr[j] *= c.grad_mult;
      if (write_back) store8(g, kParamDtype, base, aligned, gr);
#pragma unroll
      for (int j = 0; j < N; ++j) update(pr[j], gr[j], mr[j], vr[j], cr[j], base + j);
      store8(p, kParamDtype, base, aligned, pr);
      store8(m, m_dtype, base, aligned, mr);
      store8(v, v_dtype, base, aligned, vr);
      if constexpr (ROUNDING == kRoundKahan) store8(comp, c_dtype, base, aligned, cr);
    };
    auto one = [&](int64_t i) {
      float pv = to_math(p[i]);
      float gv = to_math(g[i]) * c.grad_mult;
      float mv = load_one(m, m_dtype, i);
      float vv = load_one(v, v_dtype, i);
      float cv = ROUNDING == kRoundKahan ? load_one(comp, c_dtype, i) : 0.0f;
      if (write_back) g[i] = from_math<T>(gv);
      update(pv, gv, mv, vv, cv, i);
      p[i] = from_math<T>(pv);
      store_one(m, m_dtype, i, mv);
      store_one(v, v_dtype, i, vv);
      if constexpr (ROUNDING == kRoundKahan) store_one(comp, c_dtype, i, cv);
    };
    for_each_in_chunk<N, ILP>(begin, end, packs, one);
  }
};

template <class T, int kRounding, class MD = RuntimeDtype, class VD = RuntimeDtype,
          class CD = RuntimeDtype>
cudaError_t launch_typed(const AnyPrecisionLaunch& a, cudaStream_t stream) {
  return launch_multi_tensor(
      a.table,
      AnyPrecisionFunctor<T, kRounding, MD, VD, CD>{a.hyper, a.lr, a.scalars, a.write_back_grads,
                                                    MD::from(a.m_dt), VD::from(a.v_dt),
                                                    CD::from(a.c_dt), a.seed},
      stream);
}

using F32 = FixedDtype<Dtype::F32>;
using BF16 = FixedDtype<Dtype::BF16>;

}  // namespace

cudaError_t launch_anyprecision(Dtype param_dtype, const AnyPrecisionLaunch& args,
                                cudaStream_t stream) {
  // The configurations compiled with fixed state dtypes: bfloat16 parameters
  // with all-bfloat16 states and Kahan summation, bfloat16 parameters with
  // float32 states (the registry's default), and all-float32. (The compensation
  // dtype is not read without Kahan summation.)
  const bool f32_states = args.m_dt == Dtype::F32 && args.v_dt == Dtype::F32;
  if (param_dtype == Dtype::BF16 && args.rounding == kRoundKahan && args.m_dt == Dtype::BF16 &&
      args.v_dt == Dtype::BF16 && args.c_dt == Dtype::BF16) {
    return launch_typed<__nv_bfloat16, kRoundKahan, BF16, BF16, BF16>(args, stream);
  }
  if (param_dtype == Dtype::BF16 && args.rounding == kRoundNearest && f32_states) {
    return launch_typed<__nv_bfloat16, kRoundNearest, F32, F32, F32>(args, stream);
  }
  if (param_dtype == Dtype::F32 && args.rounding == kRoundNearest && f32_states) {
    return launch_typed<float, kRoundNearest, F32, F32, F32>(args, stream);
  }
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
