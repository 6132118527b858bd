// CPU any-precision AdamW over one element range of one tensor, for the ISA
// whose simd.h was included before this file (inside that ISA's namespace).

#include "common/anyprecision_math.h"

// Rounds the new momentum and variance to their dtypes (for the update to read
// them as stored, as torchdistx does), storing them as it goes.
struct StoringStateRounding {
  void* m_base;
  void* v_base;
  Dt m_dt, v_dt;
  int64_t i;
  VecF m(VecF x) const { return vstore_round_any(m_base, m_dt, i, x); }
  VecF v(VecF x) const { return vstore_round_any(v_base, v_dt, i, x); }
};
struct ScalarStateRounding {
  Dt m_dt, v_dt;
  float m(float x) const { return sround(x, m_dt); }
  float v(float x) const { return sround(x, v_dt); }
};

template <class T, int ROUNDING>
void anyprecision_range(const void* task_ptr, int64_t begin, int64_t end) {
  // Copies, not references: the stores below go through pointers that may alias
  // anything, which would make the compiler reload every field per vector.
  const AnyPrecisionTask t = *static_cast<const AnyPrecisionTask*>(task_ptr);
  const AnyPrecisionCoeffs c = *static_cast<const AnyPrecisionCoeffs*>(t.coeffs);
  constexpr Dt param_dt = std::is_same_v<T, float> ? kF32
                          : std::is_same_v<T, c10::BFloat16> ? kBF16 : kF16;
  T* p = static_cast<T*>(t.param);
  T* g = static_cast<T*>(t.grad);
  void* m = t.exp_avg;
  void* v = t.exp_avg_sq;
  void* comp = t.compensation;
  int64_t i = begin;
  if constexpr (VecF::width > 1) {
    constexpr int W = VecF::width;
    const VecF grad_mult(c.grad_mult);
    for (; i + W <= end; i += W) {
      VecF pv = vload(p + i);
      VecF gv = vload(g + i) * grad_mult;
      VecF mv = vload_any(m, t.momentum_dt, i);
      VecF vv = vload_any(v, t.variance_dt, i);
      if (t.write_back_grad) vstore(g + i, gv);
      const StoringStateRounding round{m, v, t.momentum_dt, t.variance_dt, i};
      const VecF u = anyprecision_update(pv, gv, mv, vv, c, round);
      if constexpr (ROUNDING == kRoundKahan) {
        const VecF cv = vload_any(comp, t.compensation_dt, i) + u;
        const VecF rounded = vstore_round(p + i, pv + cv);
        vstore_round_any(comp, t.compensation_dt, i, cv + (pv - rounded));
      } else if constexpr (ROUNDING == kRoundStochastic) {
        vstore(p + i, vround_stochastic(pv + u, param_dt, t.rounding_key, i));
      } else {
        vstore(p + i, pv + u);
      }
    }
  }
  const ScalarStateRounding round{t.momentum_dt, t.variance_dt};
  for (; i < end; ++i) {
    float pv = sload(p + i);
    float gv = sload(g + i) * c.grad_mult;
    float mv = sload_any(m, t.momentum_dt, i);
    float vv = sload_any(v, t.variance_dt, i);
    if (t.write_back_grad) sstore(g + i, gv);
    const float u = anyprecision_update(pv, gv, mv, vv, c, round);
    sstore_any(m, t.momentum_dt, i, mv);
    sstore_any(v, t.variance_dt, i, vv);
    if constexpr (ROUNDING == kRoundKahan) {
      const float cv = sload_any(comp, t.compensation_dt, i) + u;
      const float rounded = sround(pv + cv, param_dt);
      sstore(p + i, rounded);
      sstore_any(comp, t.compensation_dt, i, cv + (pv - rounded));
    } else if constexpr (ROUNDING == kRoundStochastic) {
      sstore(p + i, sround_stochastic(pv + u, param_dt, rounding_bits(t.rounding_key, i)));
    } else {
      sstore(p + i, pv + u);
    }
  }
}

inline void fill_anyprecision_table(IsaKernels& k) {
  k.anyprecision[kF32][kRoundNearest] = &anyprecision_range<float, kRoundNearest>;
  k.anyprecision[kF32][kRoundKahan] = &anyprecision_range<float, kRoundKahan>;
  k.anyprecision[kF32][kRoundStochastic] = &anyprecision_range<float, kRoundNearest>;  // nothing to round
  k.anyprecision[kBF16][kRoundNearest] = &anyprecision_range<c10::BFloat16, kRoundNearest>;
  k.anyprecision[kBF16][kRoundKahan] = &anyprecision_range<c10::BFloat16, kRoundKahan>;
  k.anyprecision[kBF16][kRoundStochastic] = &anyprecision_range<c10::BFloat16, kRoundStochastic>;
  k.anyprecision[kF16][kRoundNearest] = &anyprecision_range<c10::Half, kRoundNearest>;
  k.anyprecision[kF16][kRoundKahan] = &anyprecision_range<c10::Half, kRoundKahan>;
  k.anyprecision[kF16][kRoundStochastic] = &anyprecision_range<c10::Half, kRoundStochastic>;
}
