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

// Pass 1, factored: sums of g^2 per tile row and per tile column, sum of p^2.
template <class T>
void adafactor_tile_sums(const AdafactorEntry& e, const AdafactorCpuStep& s, int64_t unit) {
  const Tile t = adafactor_tile(e, unit);
  const T* g = static_cast<const T*>(e.grad);
  const T* p = static_cast<const T*>(e.param);
  float* cols = s.work.col_partials + col_partial_slot(e, t.batch, t.row_tile, 0);
  double p_sq = 0.0;
  for (int64_t i = t.row_begin; i < t.row_end; ++i) {
    const int64_t base = (t.batch * e.rows + i) * e.cols;
    const bool first_row = i == t.row_begin;
    VecF row(0.0f), psq(0.0f);
    float row_tail = 0.0f, psq_tail = 0.0f;
    int64_t j = t.col_begin;
    if constexpr (VecF::width > 1) {
      const VecF gm(s.grad_mult);
      for (; j + VecF::width <= t.col_end; j += VecF::width) {
        const VecF gv = vload(g + base + j) * gm;
        const VecF g2 = gv * gv;
        row = row + g2;
        vstore(cols + j, first_row ? g2 : vload(cols + j) + g2);
        const VecF pv = vload(p + base + j);
        psq = psq + pv * pv;
      }
    }
    for (; j < t.col_end; ++j) {
      const float gv = sload(g + base + j) * s.grad_mult;
      const float g2 = gv * gv;
      row_tail += g2;
      cols[j] = first_row ? g2 : cols[j] + g2;
      const float pv = sload(p + base + j);
      psq_tail += pv * pv;
    }
    s.work.row_partials[row_partial_slot(e, t.batch, i, t.col_tile)] = hsum(row) + row_tail;
    p_sq += static_cast<double>(hsum(psq) + psq_tail);
  }
  s.work.p_sq[e.first_unit + unit] = static_cast<float>(p_sq);
}

// Pass 1, not factored: the full second moment, sums of U^2 and p^2.
template <class T>
void adafactor_vector_sums(const AdafactorEntry& e, const AdafactorCpuStep& s, int64_t unit) {
  const Tile t = adafactor_tile(e, unit);
  const T* g = static_cast<const T*>(e.grad);
  const T* p = static_cast<const T*>(e.param);
  float* v = e.state_row;
  const float beta2 = s.beta2[2 * e.index], one_minus_beta2 = s.beta2[2 * e.index + 1];
  VecF usq(0.0f), psq(0.0f);
  float usq_tail = 0.0f, psq_tail = 0.0f;
  int64_t j = t.col_begin;
  if constexpr (VecF::width > 1) {
    const VecF gm(s.grad_mult);
    for (; j + VecF::width <= t.col_end; j += VecF::width) {
      const VecF gv = vload(g + j) * gm;
      const VecF vv = adafactor_full_state(vload(v + j), gv, beta2, one_minus_beta2, s.eps1);
      vstore(v + j, vv);
      const VecF U = adafactor_inv_sqrt(vv) * gv;
      usq = usq + U * U;
      const VecF pv = vload(p + j);
      psq = psq + pv * pv;
    }
  }
  for (; j < t.col_end; ++j) {
    const float gv = sload(g + j) * s.grad_mult;
    const float vv = adafactor_full_state(v[j], gv, beta2, one_minus_beta2, s.eps1);
    v[j] = vv;
    const float U = adafactor_inv_sqrt(vv) * gv;
    usq_tail += U * U;
    const float pv = sload(p + j);
    psq_tail += pv * pv;
  }
  s.work.u_sq[e.first_unit + unit] = hsum(usq) + usq_tail;
  s.work.p_sq[e.first_unit + unit] = hsum(psq) + psq_tail;
}

// 1/sqrt of the tile's column states, computed once per tile.
inline void tile_col_factors(const AdafactorEntry& e, const Tile& t, float* out) {
  const float* c = e.state_col + t.batch * e.cols;
  for (int64_t j = t.col_begin; j < t.col_end; ++j) {
    out[j - t.col_begin] = adafactor_inv_sqrt(c[j]);
  }
}

inline float row_factor(const AdafactorEntry& e, const AdafactorCpuStep& s, const Tile& t,
                        int64_t i) {
  const float mean = s.work.mean_row[e.first_batch + t.batch];
  return adafactor_inv_sqrt(e.state_row[t.batch * e.rows + i] / mean);
}

// Pass 2, factored: the sum of U^2 over the tile.
template <class T>
void adafactor_tile_norm(const AdafactorEntry& e, const AdafactorCpuStep& s, int64_t unit) {
  const Tile t = adafactor_tile(e, unit);
  const T* g = static_cast<const T*>(e.grad);
  float col_factor[kAdafactorTileCols16];
  tile_col_factors(e, t, col_factor);
  double u_sq = 0.0;
  for (int64_t i = t.row_begin; i < t.row_end; ++i) {
    const int64_t base = (t.batch * e.rows + i) * e.cols;
    const float r = row_factor(e, s, t, i);
    VecF usq(0.0f);
    float usq_tail = 0.0f;
    int64_t j = t.col_begin;
    if constexpr (VecF::width > 1) {
      const VecF gm(s.grad_mult), rv(r);
      for (; j + VecF::width <= t.col_end; j += VecF::width) {
        const VecF U = (rv * vload(col_factor + (j - t.col_begin))) * (vload(g + base + j) * gm);
        usq = usq + U * U;
      }
    }
    for (; j < t.col_end; ++j) {
      const float U = (r * col_factor[j - t.col_begin]) * (sload(g + base + j) * s.grad_mult);
      usq_tail += U * U;
    }
    u_sq += static_cast<double>(hsum(usq) + usq_tail);
  }
  s.work.u_sq[e.first_unit + unit] = static_cast<float>(u_sq);
}

// Pass 3: the update, for a tile of a factored tensor or a chunk of a vector.
template <class T>
void adafactor_update(const AdafactorEntry& e, const AdafactorCpuStep& s, int64_t unit) {
  const Tile t = adafactor_tile(e, unit);
  T* g = static_cast<T*>(e.grad);
  T* p = static_cast<T*>(e.param);
  float* m = e.exp_avg;
  const AdafactorApply a = adafactor_apply_args(e, s);
  float col_factor[kAdafactorTileCols16];
  if (e.factored) tile_col_factors(e, t, col_factor);
  for (int64_t i = t.row_begin; i < t.row_end; ++i) {
    const int64_t base = (t.batch * e.rows + i) * e.cols;
    const float r = e.factored ? row_factor(e, s, t, i) : 0.0f;
    int64_t j = t.col_begin;
    if constexpr (VecF::width > 1) {
      const VecF gm(s.grad_mult), rv(r);
      for (; j + VecF::width <= t.col_end; j += VecF::width) {
        const int64_t k = base + j;
        const VecF gv = vload(g + k) * gm;
        if (s.write_back_grad) vstore(g + k, gv);
        const VecF U = e.factored ? (rv * vload(col_factor + (j - t.col_begin))) * gv
                                  : adafactor_inv_sqrt(vload(e.state_row + k)) * gv;
        VecF mv = a.first_moment ? vload(m + k) : VecF(0.0f);
        vstore(p + k, adafactor_apply(vload(p + k), U, mv, a));
        if (a.first_moment) vstore(m + k, mv);
      }
    }
    for (; j < t.col_end; ++j) {
      const int64_t k = base + j;
      const float gv = sload(g + k) * s.grad_mult;
      if (s.write_back_grad) sstore(g + k, gv);
      const float U = e.factored ? (r * col_factor[j - t.col_begin]) * gv
                                 : adafactor_inv_sqrt(e.state_row[k]) * gv;
      float mv = a.first_moment ? m[k] : 0.0f;
      sstore(p + k, adafactor_apply(sload(p + k), U, mv, a));
      if (a.first_moment) m[k] = mv;
    }
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
