// CPU AdamW over one element range of one tensor, for the ISA whose simd.h was
// included before this file (inside that ISA's namespace).

#include "common/adamw_math.h"

template <class T>
using MathT = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T>
struct AdamWTensors {
  T *p, *g, *m, *v, *vmax;
};

// Loads elements [i, i + io.n) with `io`, writes the unscaled grad back when
// asked and computes the new param and states.
template <bool AMSGRAD, class IO, class T, class M, class V = typename IO::V>
inline void adamw_compute(const IO& io, const AdamWTask& t, const AdamWCoeffs<M>& c,
                          const AdamWTensors<T>& x, int64_t i, V& pv, V& mv, V& vv, V& xv) {
  pv = io.load(x.p + i);
  V gv = io.load(x.g + i) * V(c.grad_mult);
  mv = io.load(x.m + i);
  vv = io.load(x.v + i);
  xv = AMSGRAD ? io.load(x.vmax + i) : V(0);
  if (t.write_back_grad) io.store(x.g + i, gv);
  adamw_update<AMSGRAD>(pv, gv, mv, vv, xv, c);
}

template <bool AMSGRAD, class IO, class T, class M>
inline void adamw_elements(const IO& io, const AdamWTask& t, const AdamWCoeffs<M>& c,
                           const AdamWTensors<T>& x, int64_t i) {
  typename IO::V pv, mv, vv, xv;
  adamw_compute<AMSGRAD>(io, t, c, x, i, pv, mv, vv, xv);
  io.store(x.p + i, pv);
  io.store(x.m + i, mv);
  io.store(x.v + i, vv);
  if constexpr (AMSGRAD) io.store(x.vmax + i, xv);
}

// A block's new values between the passes (vmax: with amsgrad only).
struct AdamWStaged {
  Staged p, m, v, vmax;
};

// The second pass of a block: the stores. NUMBERS: the values hold no NaN.
template <bool NUMBERS, bool AMSGRAD, class L, class T>
inline void adamw_block_stores(const PairIO<L>& io, const AdamWStaged& s,
                               const AdamWTensors<T>& x, int64_t i) {
  const auto store = [&](T* p, VecF2 v) {
    if constexpr (NUMBERS) {
      io.store_number(p, v);
    } else {
      io.store(p, v);
    }
  };
  for (int k = 0; k < kBlock; k += io.n) {
    store(x.p + i + k, s.p.get(k));
    store(x.m + i + k, s.m.get(k));
    store(x.v + i + k, s.v.get(k));
    if constexpr (AMSGRAD) store(x.vmax + i + k, s.vmax.get(k));
  }
}

// kBlock elements in two passes (vector_io.h): the math, then the stores.
template <bool AMSGRAD, class L, class T>
inline void adamw_block(const PairIO<L>& io, const AdamWTask& t, const AdamWCoeffs<float>& c,
                        const AdamWTensors<T>& x, int64_t i) {
  AdamWStaged s;
  NonFiniteSeen non_finite;
  for (int k = 0; k < kBlock; k += io.n) {
    VecF2 pv, mv, vv, xv;
    adamw_compute<AMSGRAD>(io, t, c, x, i + k, pv, mv, vv, xv);
    s.p.put(k, pv);
    s.m.put(k, mv);
    s.v.put(k, vv);
    if constexpr (AMSGRAD) s.vmax.put(k, xv);
    non_finite.add(pv);
  }
  // A NaN in a new moment (or maximum) makes the new param NaN (adamw_update
  // divides the momentum by the root of the second moment), so finite params
  // mean states without NaN.
  if (non_finite.any()) {
    adamw_block_stores<false, AMSGRAD>(io, s, x, i);
  } else {
    adamw_block_stores<true, AMSGRAD>(io, s, x, i);
  }
}

// USUAL: the settings of almost every run (torch's lerp for beta1 > 0.5, not
// maximizing, no grads to write back) as constants, which the compiler folds:
// the loop has no branches that cut it apart and spills fewer registers (AVX2
// bfloat16 1.06x faster in cache). UNSCALED: no grad scale or clipping divisor,
// so no multiply by grad_mult (a grad times 1 is the same bits; a signalling NaN
// is quieted by the next operation instead).
template <class T, bool AMSGRAD, bool USUAL, bool UNSCALED = false>
PT_FLATTEN void adamw_loop(AdamWTask t, AdamWCoeffs<MathT<T>> c, int64_t begin, int64_t end) {
  if constexpr (USUAL) {
    c.lerp_small = true;
    c.maximize = false;
    t.write_back_grad = false;
  }
  if constexpr (UNSCALED) c.grad_mult = 1;
  const AdamWTensors<T> x{static_cast<T*>(t.param), static_cast<T*>(t.grad),
                          static_cast<T*>(t.exp_avg), static_cast<T*>(t.exp_avg_sq),
                          static_cast<T*>(t.max_exp_avg_sq)};
  int64_t i = begin;
  if constexpr (std::is_same_v<MathT<T>, float> && VecF::width > 1) {
    using L = PairLayout<T>;
    const PairIO<L> pairs;
    // float16's hardware conversions are short: in two passes it is slower
    if constexpr (kTwoPasses && std::is_same_v<T, c10::BFloat16>) {
      for (; i + kBlock <= end; i += kBlock) adamw_block<AMSGRAD>(pairs, t, c, x, i);
    }
    for (; i + pairs.n <= end; i += pairs.n) adamw_elements<AMSGRAD>(pairs, t, c, x, i);
    const VecIO vec;
    for (; i + vec.n <= end; i += vec.n) adamw_elements<AMSGRAD>(vec, t, c, x, i);
  }
  const ScalarIO<MathT<T>> one;
  for (; i < end; ++i) adamw_elements<AMSGRAD>(one, t, c, x, i);
}

template <class T, bool AMSGRAD>
void adamw_range(const void* task_ptr, int64_t begin, int64_t end) {
  // Copies, not references: the stores go through pointers that may alias
  // anything, which would make the compiler reload every field per vector.
  const AdamWTask t = *static_cast<const AdamWTask*>(task_ptr);
  const AdamWCoeffs<MathT<T>> c = *static_cast<const AdamWCoeffs<MathT<T>>*>(t.coeffs);
  if (c.lerp_small && !c.maximize && !t.write_back_grad) {
    // the Trainer's clipping passes a divisor on the steps that clip
    if (c.grad_mult == 1) {
      adamw_loop<T, AMSGRAD, true, true>(t, c, begin, end);
    } else {
      adamw_loop<T, AMSGRAD, true>(t, c, begin, end);
    }
  } else {
    adamw_loop<T, AMSGRAD, false>(t, c, begin, end);
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
