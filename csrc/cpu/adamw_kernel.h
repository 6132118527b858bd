// CPU AdamW over one element range of one tensor, for the ISA whose simd.h was
// included before this file (inside that ISA's namespace).

#include "common/adamw_math.h"

template <class T>
using MathT = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T, bool AMSGRAD>
void adamw_range(const void* task_ptr, int64_t begin, int64_t end) {
  // Copies, not references: the stores below go through pointers that may alias
  // anything, which would make the compiler reload every field per vector.
  const AdamWTask t = *static_cast<const AdamWTask*>(task_ptr);
  using M = MathT<T>;
  const AdamWCoeffs<M> c = *static_cast<const AdamWCoeffs<M>*>(t.coeffs);
  T* p = static_cast<T*>(t.param);
  T* g = static_cast<T*>(t.grad);
  T* m = static_cast<T*>(t.exp_avg);
  T* v = static_cast<T*>(t.exp_avg_sq);
  T* vmax = static_cast<T*>(t.max_exp_avg_sq);
  int64_t i = begin;
  if constexpr (std::is_same_v<M, float> && VecF::width > 1) {
    constexpr int W = VecF::width;
    const VecF grad_mult(c.grad_mult);
    for (; i + W <= end; i += W) {
      VecF pv = vload(p + i);
      VecF gv = vload(g + i) * grad_mult;
      VecF mv = vload(m + i);
      VecF vv = vload(v + i);
      VecF xv;
      if constexpr (AMSGRAD) xv = vload(vmax + i);
      if (t.write_back_grad) vstore(g + i, gv);
      adamw_update<AMSGRAD>(pv, gv, mv, vv, xv, c);
      vstore(p + i, pv);
      vstore(m + i, mv);
      vstore(v + i, vv);
      if constexpr (AMSGRAD) vstore(vmax + i, xv);
    }
  }
  for (; i < end; ++i) {
    M pv = sload(p + i);
    M gv = sload(g + i) * c.grad_mult;
    M mv = sload(m + i);
    M vv = sload(v + i);
    M xv = AMSGRAD ? sload(vmax + i) : M(0);
    if (t.write_back_grad) sstore(g + i, gv);
    adamw_update<AMSGRAD>(pv, gv, mv, vv, xv, c);
    sstore(p + i, pv);
    sstore(m + i, mv);
    sstore(v + i, vv);
    if constexpr (AMSGRAD) sstore(vmax + i, xv);
  }
}


inline void fill_adamw_table(IsaKernels& k) {
  k.adamw[kF32][0] = &adamw_range<float, false>;
  k.adamw[kF32][1] = &adamw_range<float, true>;
  k.adamw[kF64][0] = &adamw_range<double, false>;
  k.adamw[kF64][1] = &adamw_range<double, true>;
  k.adamw[kF16][0] = &adamw_range<c10::Half, false>;
  k.adamw[kF16][1] = &adamw_range<c10::Half, true>;
  k.adamw[kBF16][0] = &adamw_range<c10::BFloat16, false>;
  k.adamw[kBF16][1] = &adamw_range<c10::BFloat16, true>;
}
