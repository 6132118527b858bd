// CPU Adafactor passes over one unit (a tile of a factored tensor, a chunk of a
// vector), for the ISA whose simd.h was included before this file. The tile
// geometry and the slots of the partial sums are those of the CUDA kernels
// (common/adafactor_layout.h).

#include "common/adafactor_math.h"

inline AdafactorApply adafactor_apply_args(const AdafactorEntry& e, const AdafactorCpuStep& s) {
  AdafactorApply a;
  a.alpha = s.work.scalars[2 * e.index];
  a.divisor = s.work.scalars[2 * e.index + 1];
  a.first_moment = s.first_moment;
  a.beta1 = s.beta1;
  a.one_minus_beta1 = s.one_minus_beta1;
  a.decay = s.weight_decay != 0.0f;
  a.neg_wd_alpha = -s.weight_decay * a.alpha;
  return a;
}

// The factored passes take a run of up to kAdafactorCpuRunTiles tiles side by
// side (same batch and row tile) and walk it row by row, so that memory is read
// in long sequential stretches instead of one tile-width at a time (1.6x faster
// on one core); each partial sum still covers one tile and adds in the same
// order as a tile at a time would.
struct TileRun {
  Tile first;
  int64_t count;
  int64_t col_end;  // of the last tile
};
inline TileRun tile_run(const AdafactorEntry& e, int64_t unit, int64_t count) {
  const Tile first = adafactor_tile(e, unit);
  const int64_t col_end = std::min(first.col_begin + count * e.tile_cols, e.cols);
  return TileRun{first, count, col_end};
}
inline int64_t tile_col_end(const AdafactorEntry& e, const TileRun& r, int64_t k) {
  return std::min(r.first.col_begin + (k + 1) * e.tile_cols, e.cols);
}

// Pass 1, factored, one tile row: adds g^2 to the column sums; returns the sums
// of g^2 and of p^2 over [j, end).
template <class T>
std::array<float, 2> row_sums(const T* g, const T* p, float* cols, int64_t j, int64_t end,
                              float grad_mult, bool first_row) {
  return sum_elements<2>(j, end, [&](const auto& io, int64_t k, auto& sums) {
    using V = typename std::decay_t<decltype(io)>::V;
    const V gv = io.load(g + k) * V(grad_mult);
    const V g2 = gv * gv;
    sums[0] = sums[0] + g2;
    io.store(cols + k, first_row ? g2 : io.load(cols + k) + g2);
    const V pv = io.load(p + k);
    sums[1] = sums[1] + pv * pv;
  });
}

// Pass 1, factored: per tile, sums of g^2 per row and per column, sum of p^2.
template <class T>
void adafactor_tile_sums(const AdafactorEntry& e, const AdafactorCpuStep& s, int64_t unit,
                         int64_t count) {
  const TileRun r = tile_run(e, unit, count);
  const Tile& t = r.first;
  const T* g = static_cast<const T*>(e.grad);
  const T* p = static_cast<const T*>(e.param);
  float* cols = s.work.col_partials + col_partial_slot(e, t.batch, t.row_tile, 0);
  float* row_partials = s.work.row_partials;
  const float grad_mult = s.grad_mult;
  double p_sq[kAdafactorCpuRunTiles] = {};
  for (int64_t i = t.row_begin; i < t.row_end; ++i) {
    const int64_t base = (t.batch * e.rows + i) * e.cols;
    for (int64_t k = 0; k < count; ++k) {
      const auto [g_sq_row, p_sq_row] =
          row_sums(g + base, p + base, cols, t.col_begin + k * e.tile_cols,
                   tile_col_end(e, r, k), grad_mult, i == t.row_begin);
      row_partials[row_partial_slot(e, t.batch, i, t.col_tile + k)] = g_sq_row;
      p_sq[k] += static_cast<double>(p_sq_row);
    }
  }
  for (int64_t k = 0; k < count; ++k) {
    s.work.p_sq[e.first_unit + unit + k] = static_cast<float>(p_sq[k]);
  }
}

// Pass 1, not factored (one chunk): the full second moment, sums of U^2 and p^2.
template <class T>
void adafactor_vector_sums(const AdafactorEntry& e, const AdafactorCpuStep& s, int64_t unit,
                           int64_t /*count: 1*/) {
  const Tile t = adafactor_tile(e, unit);
  const T* g = static_cast<const T*>(e.grad);
  const T* p = static_cast<const T*>(e.param);
  float* v = e.state_row;
  const float beta2 = s.beta2[2 * e.index], one_minus_beta2 = s.beta2[2 * e.index + 1];
  const float grad_mult = s.grad_mult, eps1 = s.eps1;
  VecF usq(0.0f), psq(0.0f);
  float usq_tail = 0.0f, psq_tail = 0.0f;
  int64_t j = t.col_begin;
  if constexpr (VecF::width > 1) {
    const VecF gm(grad_mult);
    for (; j + VecF::width <= t.col_end; j += VecF::width) {
      prefetch_stream(g + j, VecF::width);
      prefetch_stream(p + j, VecF::width);
      const VecF gv = vload(g + j) * gm;
      const VecF vv = adafactor_full_state(vload(v + j), gv, beta2, one_minus_beta2, eps1);
      vstore(v + j, vv);
      const VecF U = adafactor_inv_sqrt(vv) * gv;
      usq = usq + U * U;
      const VecF pv = vload(p + j);
      psq = psq + pv * pv;
    }
  }
  for (; j < t.col_end; ++j) {
    const float gv = sload(g + j) * grad_mult;
    const float vv = adafactor_full_state(v[j], gv, beta2, one_minus_beta2, eps1);
    v[j] = vv;
    const float U = adafactor_inv_sqrt(vv) * gv;
    usq_tail += U * U;
    const float pv = sload(p + j);
    psq_tail += pv * pv;
  }
  s.work.u_sq[e.first_unit + unit] = hsum(usq) + usq_tail;
  s.work.p_sq[e.first_unit + unit] = hsum(psq) + psq_tail;
}

// 1/sqrt of the column states of the run's columns, computed once per run, in
// the order in which pairs of layout L read them (pair_slot). In vectors: one
// scalar square root and division per column cost as much as a pass's whole
// arithmetic on the 16 rows of a bfloat16 tile under that column.
template <class L = InOrder>
inline void run_col_factors(const AdafactorEntry& e, const TileRun& r, float* out) {
  const float* c = e.state_col + r.first.batch * e.cols + r.first.col_begin;
  const int64_t n = r.col_end - r.first.col_begin;
  int64_t j = 0;
  if constexpr (VecF::width > 1) {
    constexpr int kPair = 2 * VecF::width;
    for (; j + kPair <= n; j += kPair) {
      if constexpr (std::is_same_v<L, InOrder>) {
        vstore(out + j, adafactor_inv_sqrt(vload(c + j)));
        vstore(out + j + VecF::width, adafactor_inv_sqrt(vload(c + j + VecF::width)));
      } else {
        // EvenOdd: each pair's factors are reordered within the pair
        alignas(64) float f[kPair];
        vstore(f, adafactor_inv_sqrt(vload(c + j)));
        vstore(f + VecF::width, adafactor_inv_sqrt(vload(c + j + VecF::width)));
        for (int k = 0; k < kPair; ++k) out[j + pair_slot(L{}, k, kPair)] = f[k];
      }
    }
  }
  for (; j < n; ++j) out[pair_slot(L{}, j, n)] = adafactor_inv_sqrt(c[j]);
}

inline float row_factor(const AdafactorEntry& e, const AdafactorCpuStep& s, const Tile& t,
                        int64_t i) {
  const float mean = s.work.mean_row[e.first_batch + t.batch];
  return adafactor_inv_sqrt(e.state_row[t.batch * e.rows + i] / mean);
}

// Pass 2, factored, one tile row: the sum of U^2 over columns [j, end);
// col_factor[j - col0] is the factor of column j.
template <class T>
float row_norm(const T* g, const float* col_factor, int64_t col0, int64_t j, int64_t end,
               float r, float grad_mult) {
  return sum_elements<1>(j, end, [&](const auto& io, int64_t k, auto& sums) {
    using V = typename std::decay_t<decltype(io)>::V;
    const V U = (V(r) * io.load(col_factor + (k - col0))) * (io.load(g + k) * V(grad_mult));
    sums[0] = sums[0] + U * U;
  })[0];
}

// Pass 2, factored: per tile, the sum of U^2.
template <class T>
void adafactor_tile_norm(const AdafactorEntry& e, const AdafactorCpuStep& s, int64_t unit,
                         int64_t count) {
  const TileRun r = tile_run(e, unit, count);
  const Tile& t = r.first;
  const T* g = static_cast<const T*>(e.grad);
  float col_factor[kAdafactorCpuRunTiles * kAdafactorTileCols16];
  run_col_factors(e, r, col_factor);
  const float grad_mult = s.grad_mult;
  double u_sq[kAdafactorCpuRunTiles] = {};
  for (int64_t i = t.row_begin; i < t.row_end; ++i) {
    const int64_t base = (t.batch * e.rows + i) * e.cols;
    const float rf = row_factor(e, s, t, i);
    for (int64_t k = 0; k < count; ++k) {
      u_sq[k] += static_cast<double>(row_norm(g + base, col_factor, t.col_begin,
                                              t.col_begin + k * e.tile_cols,
                                              tile_col_end(e, r, k), rf, grad_mult));
    }
  }
  for (int64_t k = 0; k < count; ++k) {
    s.work.u_sq[e.first_unit + unit + k] = static_cast<float>(u_sq[k]);
  }
}

// What pass 3 reads per element, copied out of the entry and the step: the
// stores go through pointers that may alias anything, so fields read through
// references would be loaded again for every pair.
template <class T>
struct AdafactorUpdateArgs {
  T *p, *g;
  float *exp_avg, *state;
  float grad_mult;
  bool write_back_grad;
};

// Pass 3 over elements [k, k + io.n) of one tile row; col_factor[j]: their
// column factors (arranged for io), rf their row factor.
template <bool FACTORED, bool USUAL, class IO, class T>
inline void adafactor_update_elements(const IO& io, const AdafactorUpdateArgs<T>& x,
                                      const AdafactorApply& a, const float* col_factor,
                                      float rf, int64_t k, int64_t j) {
  using V = typename IO::V;
  const V gv = io.load(x.g + k) * V(x.grad_mult);
  V U;
  if constexpr (FACTORED) {
    U = (V(rf) * io.load_arranged(col_factor + j)) * gv;
  } else {
    U = adafactor_inv_sqrt(io.load(x.state + k)) * gv;
  }
  if constexpr (USUAL) {
    V unused(0.0f);
    io.store(x.p + k, adafactor_apply(io.load(x.p + k), U, unused, a));
  } else {
    if (x.write_back_grad) io.store(x.g + k, gv);
    V mv = a.first_moment ? io.load(x.exp_avg + k) : V(0.0f);
    io.store(x.p + k, adafactor_apply(io.load(x.p + k), U, mv, a));
    if (a.first_moment) io.store(x.exp_avg + k, mv);
  }
}

// Pass 3 over the rows of a run. DECAY: whether there is weight decay, as a
// constant: a test per pair kept the loop from being unswitched.
template <class T, bool FACTORED, bool USUAL, bool DECAY, class L>
inline void adafactor_update_rows(const AdafactorEntry& e, const AdafactorCpuStep& s,
                                  const TileRun& r, AdafactorApply a, const float* col_factor) {
  a.decay = DECAY;
  const AdafactorUpdateArgs<T> x{static_cast<T*>(e.param), static_cast<T*>(e.grad), e.exp_avg,
                                 e.state_row, s.grad_mult, s.write_back_grad};
  const Tile& t = r.first;
  for (int64_t i = t.row_begin; i < t.row_end; ++i) {
    const int64_t base = (t.batch * e.rows + i) * e.cols;
    const float rf = FACTORED ? row_factor(e, s, t, i) : 0.0f;
    const int64_t k0 = base + t.col_begin;  // col_factor[k - k0]: the factor of element k
    const int64_t end = base + r.col_end;
    int64_t k = k0;
    if constexpr (VecF::width > 1) {
      const PairIO<L> pairs;
      for (; k + pairs.n <= end; k += pairs.n) {
        adafactor_update_elements<FACTORED, USUAL>(pairs, x, a, col_factor, rf, k, k - k0);
      }
      const VecIO vec;
      for (; k + vec.n <= end; k += vec.n) {
        adafactor_update_elements<FACTORED, USUAL>(vec, x, a, col_factor, rf, k, k - k0);
      }
    }
    const ScalarIO<float> one;
    for (; k < end; ++k) {
      adafactor_update_elements<FACTORED, USUAL>(one, x, a, col_factor, rf, k, k - k0);
    }
  }
}

// Pass 3: the update, for a run of tiles of a factored tensor or a chunk of a
// vector (elementwise, so a run is one stretch per row). FACTORED, and USUAL (no
// first moment, no grads to write back: the defaults) as constants, which the
// compiler folds: a loop without branches that cut it apart (2x faster in
// cache). Only then is every stream of the pairs in the param's dtype (the
// column factors are arranged to match), so only then may they be even/odd.
template <class T, bool FACTORED, bool USUAL>
PT_FLATTEN void adafactor_update_loop(const AdafactorEntry& e, const AdafactorCpuStep& s,
                                      int64_t unit, int64_t count) {
  using L = std::conditional_t<FACTORED && USUAL, PairLayout<T>, InOrder>;
  const TileRun r = tile_run(e, unit, count);
  AdafactorApply a = adafactor_apply_args(e, s);
  if constexpr (USUAL) a.first_moment = false;
  float col_factor[kAdafactorCpuRunTiles * kAdafactorTileCols16];
  if constexpr (FACTORED) run_col_factors<L>(e, r, col_factor);
  if (a.decay) {
    adafactor_update_rows<T, FACTORED, USUAL, true, L>(e, s, r, a, col_factor);
  } else {
    adafactor_update_rows<T, FACTORED, USUAL, false, L>(e, s, r, a, col_factor);
  }
}

template <class T>
void adafactor_update(const AdafactorEntry& e, const AdafactorCpuStep& s, int64_t unit,
                      int64_t count) {
  const bool usual = !s.first_moment && !s.write_back_grad;
  if (e.factored) {
    (usual ? adafactor_update_loop<T, true, true> : adafactor_update_loop<T, true, false>)(
        e, s, unit, count);
  } else {
    (usual ? adafactor_update_loop<T, false, true> : adafactor_update_loop<T, false, false>)(
        e, s, unit, count);
  }
}

template <class T>
AdafactorKernels adafactor_kernels() {
  return AdafactorKernels{&adafactor_tile_sums<T>, &adafactor_vector_sums<T>,
                          &adafactor_tile_norm<T>, &adafactor_update<T>};
}

inline void fill_adafactor_table(IsaKernels& k) {
  k.adafactor[kF32] = adafactor_kernels<float>();
  k.adafactor[kBF16] = adafactor_kernels<c10::BFloat16>();
  k.adafactor[kF16] = adafactor_kernels<c10::Half>();
}
