// CPU any-precision AdamW over one element range of one tensor, for the ISA
// whose simd.h was included before this file (inside that ISA's namespace).

#include "common/anyprecision_math.h"

// A state tensor of a dtype known at compile time: loads and rounded stores
// without a dtype test per vector.
template <class S>
struct StateOf {
  using type = S;
  S* base;
  template <class IO>
  typename IO::V load(const IO& io, int64_t i) const { return io.load(base + i); }
  // Stores x rounded to the dtype; returns the stored value.
  template <class IO>
  typename IO::V store(const IO& io, int64_t i, typename IO::V x) const {
    return io.store_round(base + i, x);
  }
  // store, leaving NaN to mend_nans (vstore_round2_number).
  template <class IO>
  typename IO::V store_number(const IO& io, int64_t i, typename IO::V x) const {
    return io.store_round_number(base + i, x);
  }
  void mend_nans(int64_t i, int64_t n) const { mend_stored_nans(base + i, n); }
};
// A state tensor whose dtype is known only at run time (uncommon combinations).
struct StateAny {
  using type = void;
  void* base;
  Dt dt;
  template <class IO>
  typename IO::V load(const IO& io, int64_t i) const { return io.load_any(base, dt, i); }
  template <class IO>
  typename IO::V store(const IO& io, int64_t i, typename IO::V x) const {
    return io.store_round_any(base, dt, i, x);
  }
};

// Rounds the new momentum and variance to their dtypes by storing them (the
// update reads them as stored, as torchdistx does). NUMBERS: by the stores that
// leave NaN to be mended.
template <bool NUMBERS, class IO, class MS, class VS>
struct StoringRounding {
  using V = typename IO::V;
  const IO& io;
  const MS& m_state;
  const VS& v_state;
  int64_t i;
  V m(V x) const { return store(m_state, x); }
  V v(V x) const { return store(v_state, x); }
  template <class S>
  V store(const S& state, V x) const {
    if constexpr (NUMBERS) {
      return state.store_number(io, i, x);
    } else {
      return state.store(io, i, x);
    }
  }
};

template <class T, class MS, class VS, class CS>
struct AnyPrecisionTensors {
  T *p, *g;
  MS m;
  VS v;
  CS comp;
};

// Loads elements [i, i + io.n) with `io`, writes the unscaled grad back when
// asked, decays the param and stores the new momentum and variance; returns the
// update u for the param pv.
template <bool NUMBERS = false, class IO, class X, class V = typename IO::V>
inline V anyprecision_compute(const IO& io, const AnyPrecisionTask& t,
                              const AnyPrecisionCoeffs& c, const X& x, int64_t i, V& pv) {
  pv = io.load(x.p + i);
  V gv = io.load(x.g + i) * V(c.grad_mult);
  V mv = x.m.load(io, i);
  V vv = x.v.load(io, i);
  if (t.write_back_grad) io.store(x.g + i, gv);
  return anyprecision_update(pv, gv, mv, vv, c,
                             StoringRounding<NUMBERS, IO, decltype(x.m), decltype(x.v)>{
                                 io, x.m, x.v, i});
}

// What is added to the param: the update u, with Kahan plus the compensation.
template <int ROUNDING, class IO, class X, class V = typename IO::V>
inline V anyprecision_addend(const IO& io, const X& x, int64_t i, V u) {
  if constexpr (ROUNDING == kRoundKahan) {
    return x.comp.load(io, i) + u;
  } else {
    return u;
  }
}

// Stores the param pv + a (a: anyprecision_addend), rounded as ROUNDING says,
// and with Kahan the new compensation. NUMBERS: pv + a is finite.
template <int ROUNDING, bool NUMBERS = false, class IO, class X, class V = typename IO::V>
inline void anyprecision_apply(const IO& io, const AnyPrecisionTask& t, const X& x, int64_t i,
                               V pv, V a) {
  using T = std::remove_pointer_t<decltype(x.p)>;
  constexpr Dt param_dt = std::is_same_v<T, float> ? kF32
                          : std::is_same_v<T, c10::BFloat16> ? kBF16 : kF16;
  if constexpr (ROUNDING == kRoundKahan && NUMBERS) {
    // a param that overflows rounds to inf, and its compensation to -inf: no NaN
    const V rounded = io.store_round_number(x.p + i, pv + a);
    x.comp.store_number(io, i, a + (pv - rounded));
  } else if constexpr (ROUNDING == kRoundKahan) {
    const V rounded = io.store_round(x.p + i, pv + a);
    x.comp.store(io, i, a + (pv - rounded));
  } else if constexpr (ROUNDING == kRoundStochastic) {
    io.store(x.p + i, io.round_stochastic(pv + a, param_dt, t.rounding_key, i));
  } else if constexpr (NUMBERS) {
    io.store_number(x.p + i, pv + a);
  } else {
    io.store(x.p + i, pv + a);
  }
}

template <int ROUNDING, class IO, class X>
inline void anyprecision_elements(const IO& io, const AnyPrecisionTask& t,
                                  const AnyPrecisionCoeffs& c, const X& x, int64_t i) {
  typename IO::V pv;
  const typename IO::V u = anyprecision_compute(io, t, c, x, i, pv);
  anyprecision_apply<ROUNDING>(io, t, x, i, pv, anyprecision_addend<ROUNDING>(io, x, i, u));
}

// kBlock elements in two passes (vector_io.h): the moments, the update and the
// addend, then the param (and with Kahan the compensation). Where the layout
// rounds faster without the NaN case, both passes round so, unless the first
// finds a param or addend that is not finite (a NaN in a new moment makes the
// update NaN): that block's moments have their NaNs mended and its params are
// stored with the NaN case (AVX2 bfloat16 with Kahan: 10.1 -> 9.7 instructions
// per element; llvm-mca for Zen 3, the second pass 13.6 -> 9.6 cycles per pair;
// no wall-time difference measurable on a noisy Zen 4 VM).
template <int ROUNDING, class L, class X>
inline void anyprecision_block(const PairIO<L>& io, const AnyPrecisionTask& t,
                               const AnyPrecisionCoeffs& c, const X& x, int64_t i) {
  constexpr bool numbers = kRoundsNumbersFaster<L> && ROUNDING != kRoundStochastic;
  Staged p_decayed, addend;
  NonFiniteSeen non_finite;
  for (int k = 0; k < kBlock; k += io.n) {
    VecF2 pv;
    const VecF2 u = anyprecision_compute<numbers>(io, t, c, x, i + k, pv);
    const VecF2 a = anyprecision_addend<ROUNDING>(io, x, i + k, u);
    if constexpr (numbers) non_finite.add(pv + a);
    addend.put(k, a);
    p_decayed.put(k, pv);
  }
  if constexpr (numbers) {
    if (!non_finite.any()) {
      for (int k = 0; k < kBlock; k += io.n) {
        anyprecision_apply<ROUNDING, true>(io, t, x, i + k, p_decayed.get(k), addend.get(k));
      }
      return;
    }
    x.m.mend_nans(i, kBlock);
    x.v.mend_nans(i, kBlock);
  }
  for (int k = 0; k < kBlock; k += io.n) {
    anyprecision_apply<ROUNDING>(io, t, x, i + k, p_decayed.get(k), addend.get(k));
  }
}

// WRITE_BACK: whether grads are written back, as a constant (a test per vector
// cuts the loop apart: 1.2x slower). UNSCALED: no grad scale or clipping
// divisor, so no multiply by grad_mult (one register and two multiplies per pair
// fewer in a loop that spills constants on AVX2).
template <class T, int ROUNDING, bool WRITE_BACK, bool UNSCALED, class MS, class VS, class CS>
PT_FLATTEN void anyprecision_loop(AnyPrecisionTask t, const MS& ms, const VS& vs, const CS& cs,
                       int64_t begin, int64_t end) {
  t.write_back_grad = WRITE_BACK;
  AnyPrecisionCoeffs c = *static_cast<const AnyPrecisionCoeffs*>(t.coeffs);
  if constexpr (UNSCALED) c.grad_mult = 1;
  const AnyPrecisionTensors<T, MS, VS, CS> x{static_cast<T*>(t.param), static_cast<T*>(t.grad),
                                             ms, vs, cs};
  int64_t i = begin;
  if constexpr (VecF::width > 1) {
    // the stochastic rounding bits follow the element order
    using L = std::conditional_t<ROUNDING == kRoundStochastic, InOrder,
                                 PairLayout<T, typename MS::type, typename VS::type,
                                            typename CS::type>>;
    const PairIO<L> pairs;
    // all in float32 (no conversions in the chain), it is slower in two passes
    constexpr bool all_float32 =
        (std::is_same_v<T, float> && std::is_same_v<typename MS::type, float> &&
         std::is_same_v<typename VS::type, float> && std::is_same_v<typename CS::type, float>);
    if constexpr (kTwoPasses && !all_float32) {
      for (; i + kBlock <= end; i += kBlock) anyprecision_block<ROUNDING>(pairs, t, c, x, i);
    }
    for (; i + pairs.n <= end; i += pairs.n) anyprecision_elements<ROUNDING>(pairs, t, c, x, i);
    const VecIO vec;
    for (; i + vec.n <= end; i += vec.n) anyprecision_elements<ROUNDING>(vec, t, c, x, i);
  }
  const ScalarIO<float> one;
  for (; i < end; ++i) anyprecision_elements<ROUNDING>(one, t, c, x, i);
}

template <class T, int ROUNDING, class MS, class VS, class CS>
void anyprecision_run(const AnyPrecisionTask& t, const MS& ms, const VS& vs, const CS& cs,
                      int64_t begin, int64_t end) {
  // a grad written back is a scaled one
  if (t.write_back_grad) {
    anyprecision_loop<T, ROUNDING, true, false>(t, ms, vs, cs, begin, end);
  } else if (static_cast<const AnyPrecisionCoeffs*>(t.coeffs)->grad_mult == 1) {
    anyprecision_loop<T, ROUNDING, false, true>(t, ms, vs, cs, begin, end);
  } else {
    anyprecision_loop<T, ROUNDING, false, false>(t, ms, vs, cs, begin, end);
  }
}

// Picks a loop compiled for the state dtypes: all states in the parameter's
// dtype, or (bfloat16 parameters) torchdistx's default of float32 momentum with
// bfloat16 variance and compensation; any other combination tests the dtypes
// per vector.
template <class T, int ROUNDING>
void anyprecision_range(const void* task_ptr, int64_t begin, int64_t end) {
  // A copy, not a reference: the stores go through pointers that may alias
  // anything, which would make the compiler reload every field per vector.
  const AnyPrecisionTask t = *static_cast<const AnyPrecisionTask*>(task_ptr);
  constexpr Dt param_dt = std::is_same_v<T, float> ? kF32
                          : std::is_same_v<T, c10::BFloat16> ? kBF16 : kF16;
  const bool comp_ok = ROUNDING != kRoundKahan || t.compensation_dt == param_dt;
  if (t.momentum_dt == param_dt && t.variance_dt == param_dt && comp_ok) {
    const StateOf<T> m{static_cast<T*>(t.exp_avg)}, v{static_cast<T*>(t.exp_avg_sq)},
        comp{static_cast<T*>(t.compensation)};
    return anyprecision_run<T, ROUNDING>(t, m, v, comp, begin, end);
  }
  if constexpr (param_dt == kBF16) {
    if (t.momentum_dt == kF32 && t.variance_dt == kBF16 && comp_ok) {
      const StateOf<float> m{static_cast<float*>(t.exp_avg)};
      const StateOf<T> v{static_cast<T*>(t.exp_avg_sq)}, comp{static_cast<T*>(t.compensation)};
      return anyprecision_run<T, ROUNDING>(t, m, v, comp, begin, end);
    }
  }
  const StateAny m{t.exp_avg, t.momentum_dt}, v{t.exp_avg_sq, t.variance_dt},
      comp{t.compensation, t.compensation_dt};
  anyprecision_run<T, ROUNDING>(t, m, v, comp, begin, end);
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
