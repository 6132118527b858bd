// Adafactor on CUDA: three passes over memory plus small finalize kernels, each
// one launch over every tensor of the call (common/adafactor_layout.h; the
// CUDA geometry of factored tensors: common/adafactor_cuda_layout.h).
// All sums run in a fixed order, so results do not vary from run to run.
#include "common/adafactor_cuda_layout.h"
#include "cuda/launch.h"
#include "cuda/multi_tensor.cuh"
#include "cuda/vec.cuh"

namespace pytrainer::cuda {

#include "common/adafactor_math.h"

namespace {

constexpr int kWarps = kThreads / 32;

PT_DEVICE bool skipped(const StepScalars& s) {
  return s.found_inf != nullptr && *s.found_inf != 0.0f;
}

PT_DEVICE float grad_multiplier(const StepScalars& s) {
  return s.grad_scale != nullptr ? static_cast<float>(1.0 / static_cast<double>(*s.grad_scale))
                                 : 1.0f;
}

template <class S>
PT_DEVICE S warp_sum(S v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;  // in lane 0
}

// The block's sum, in thread 0. `smem` holds kWarps values.
template <class S>
PT_DEVICE S block_sum(S v, S* smem) {
  v = warp_sum(v);
  __syncthreads();  // smem may still be read from a previous call
  if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = v;
  __syncthreads();
  S total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += smem[w];
  }
  return total;
}

// N values of a row from column c0 on (zeros past c_end): one 16-byte access per
// 4 float32 or 8 16-bit values when `packed`, else element by element.
template <int N, class T>
PT_DEVICE void load_cols(const T* row, int64_t c0, int64_t c_end, bool packed, float (&out)[N]) {
  if (packed && c0 + N <= c_end) {
    if constexpr (kPack<T> == N) {
      load_pack(row + c0, out);
    } else {  // float32 values, 4 per access
#pragma unroll
      for (int q = 0; q < N; q += 4) load_pack(row + c0 + q, reinterpret_cast<float(&)[4]>(out[q]));
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = c0 + k < c_end ? to_math(row[c0 + k]) : 0.0f;
}

template <int N, class T>
PT_DEVICE void store_cols(T* row, int64_t c0, int64_t c_end, bool packed, const float (&in)[N]) {
  if (packed && c0 + N <= c_end) {
    if constexpr (kPack<T> == N) {
      store_pack(row + c0, in);
    } else {
#pragma unroll
      for (int q = 0; q < N; q += 4) {
        store_pack(row + c0 + q, reinterpret_cast<const float(&)[4]>(in[q]));
      }
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) {
    if (c0 + k < c_end) row[c0 + k] = from_math<T>(in[k]);
  }
}

PT_DEVICE const AdafactorEntry& unit_entry(const AdafactorLaunch& a, int64_t* local) {
  const AdafactorEntry& e = a.entries[a.unit_entry[blockIdx.x]];
  *local = static_cast<int64_t>(blockIdx.x) - e.first_unit;
  return e;
}

PT_DEVICE void step_beta2(const AdafactorLaunch& a, const AdafactorEntry& e, float* beta2,
                          float* one_minus_beta2) {
  const double b2 = adafactor_beta2(a.hyper, static_cast<double>(*e.step) + 1.0);
  *beta2 = static_cast<float>(b2);
  *one_minus_beta2 = static_cast<float>(1.0 - b2);
}

// The new row or column state from the sum of g^2 over n values.
PT_DEVICE float factor_state(float old, float sum, int64_t n, float beta2, float one_minus_beta2,
                             float eps1) {
  return beta2 * old + one_minus_beta2 * (sum / static_cast<float>(n) + eps1);
}

// The sum of n floats `stride` apart, in a fixed order with four independent
// accumulators (the loads of a long fold overlap).
PT_DEVICE float fold(const float* x, int64_t n, int64_t stride) {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += x[k * stride];
    s1 += x[(k + 1) * stride];
    s2 += x[(k + 2) * stride];
    s3 += x[(k + 3) * stride];
  }
  for (; k < n; ++k) s0 += x[k * stride];
  return (s0 + s1) + (s2 + s3);
}

// The sum of a row tile's new row states: the row mean itself when the tile
// is the whole matrix's rows, else its slot for means_kernel.
PT_DEVICE void store_row_total(const AdafactorLaunch& a, const AdafactorEntry& e, int64_t batch,
                               int64_t row_tile, double total) {
  if (e.row_tiles == 1) {
    a.work.mean_row[e.first_batch + batch] =
        static_cast<float>(total / static_cast<double>(e.rows));
  } else {
    a.work.row_sums[row_sum_slot(e, batch, row_tile)] = static_cast<float>(total);
  }
}

// The sum over a row's group of `width` lanes (a power of two, at most 32), in
// the group's first lane; every lane of the warp takes part.
PT_DEVICE float group_sum(float v, int64_t width) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    if (offset < width) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// ------------------------------------------------------------------ pass 1
// Factored (common/adafactor_cuda_layout.h): each thread sums g^2 over its
// columns in registers and each row's lanes sum it over the row; the block then
// writes row states (a tile spanning every column) or row partials, and column
// states (a tile spanning every row) or column partials.
template <class T>
PT_DEVICE void factored_sums(const AdafactorLaunch& a, const AdafactorEntry& e, const Tile& t,
                             const T* g, const T* p, float gm, float* p_sq, float* row_part,
                             float* col_part, double* reduce) {
  constexpr int N = kPack<T>;
  constexpr int M = kAdafactorCudaThreadElems / N;
  const AdafactorLane l = adafactor_lane(e, threadIdx.x);
  const int64_t slots = e.packs_per_thread;
  const int64_t group = row_group(e), groups = row_groups(e);
  const bool packed = e.cols % N == 0 && aligned16(g) && aligned16(p);
  float beta2, one_minus_beta2;
  step_beta2(a, e, &beta2, &one_minus_beta2);
  const float eps1 = static_cast<float>(a.hyper.eps1);
  const bool row_states = e.col_tiles == 1;
  double row_state_sum = 0.0;
  // A whole row's sum of g^2: the new row state, or the row partial.
  auto finish_row = [&](int64_t i, float sum) {
    if (row_states) {
      float* state = e.state_row + t.batch * e.rows + i;
      const float v = factor_state(*state, sum, e.cols, beta2, one_minus_beta2, eps1);
      *state = v;
      row_state_sum += v;
    } else {
      a.work.row_partials[row_partial_slot(e, t.batch, i, t.col_tile)] = sum;
    }
  };

  float col_acc[M][N] = {};
  const int64_t steps = tile_steps(e, t);
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t i = step_row(e, t, l, s);
    const int64_t base = (t.batch * e.rows + i) * e.cols;
    float row = 0.0f;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int64_t c0 = lane_col(e, t, l.lane, m);
      if (m < slots && i < t.row_end && c0 < t.col_end) {
        float gv[N], pv[N];
        load_cols<N>(g + base, c0, t.col_end, packed, gv);
        load_cols<N>(p + base, c0, t.col_end, packed, pv);
#pragma unroll
        for (int k = 0; k < N; ++k) {
          const float x = gv[k] * gm;
          const float x2 = x * x;
          col_acc[m][k] += x2;
          row += x2;
          *p_sq += pv[k] * pv[k];
        }
      }
    }
    row = group_sum(row, group);
    if (i < t.row_end && l.lane % group == 0) {
      if (groups == 1) {
        finish_row(i, row);  // the row is one group: its sum is complete
      } else {
        row_part[row_part_slot(e, t, i, l.lane)] = row;
      }
    }
  }
  if (groups > 1) {  // block-uniform: the groups' sums of each row, in order
    __syncthreads();
    for (int64_t r = threadIdx.x; r < t.row_end - t.row_begin; r += kThreads) {
      float sum = 0.0f;
      for (int64_t q = 0; q < groups; ++q) sum += row_part[r * groups + q];
      finish_row(t.row_begin + r, sum);
    }
  }
  if (row_states) {  // block-uniform
    const double total = block_sum(row_state_sum, reduce);
    if (threadIdx.x == 0) store_row_total(a, e, t.batch, t.row_tile, total);
  }
  // columns, one pack slot at a time: the R row lanes' sums in order
  const bool col_states = e.row_tiles == 1;
  const int64_t lanes = e.threads_per_row, R = e.rows_per_step;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    if (m < slots) {  // block-uniform
      __syncthreads();  // the previous slot's sums are read
#pragma unroll
      for (int k = 0; k < N; ++k) col_part[threadIdx.x * N + k] = col_acc[m][k];
      __syncthreads();
      for (int64_t q = threadIdx.x; q < lanes * N; q += kThreads) {
        const int64_t lane = q / N, k = q - lane * N;
        const int64_t c = lane_col(e, t, lane, m) + k;
        if (c >= t.col_end) continue;
        const float sum = fold(col_part + lane * N + k, R, lanes * N);
        if (col_states) {
          float* state = e.state_col + t.batch * e.cols + c;
          *state = factor_state(*state, sum, e.rows, beta2, one_minus_beta2, eps1);
        } else {
          a.work.col_partials[col_partial_slot(e, t.batch, t.row_tile, c)] = sum;
        }
      }
    }
  }
}

// A thread per matrix of one pack per row: its row and column sums in
// registers, its states and row mean written at once (no partials).
template <class T>
PT_DEVICE void matrix_sums(const AdafactorLaunch& a, const AdafactorEntry& e, const Tile& t,
                           const T* g, const T* p, float gm, float* p_sq) {
  constexpr int N = kPack<T>;
  const int64_t b = thread_matrix(e, t, threadIdx.x);
  if (b >= e.batches) return;
  float beta2, one_minus_beta2;
  step_beta2(a, e, &beta2, &one_minus_beta2);
  const float eps1 = static_cast<float>(a.hyper.eps1);
  float col[N] = {};
  double row_total = 0.0;
  for (int64_t i = 0; i < e.rows; ++i) {
    const int64_t base = (b * e.rows + i) * e.cols;
    float gv[N], pv[N];
    load_cols<N>(g + base, 0, e.cols, false, gv);
    load_cols<N>(p + base, 0, e.cols, false, pv);
    float row = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float x = gv[k] * gm;
      col[k] += x * x;
      row += x * x;
      *p_sq += pv[k] * pv[k];
    }
    float* state = e.state_row + b * e.rows + i;
    *state = factor_state(*state, row, e.cols, beta2, one_minus_beta2, eps1);
    row_total += *state;
  }
  a.work.mean_row[e.first_batch + b] = static_cast<float>(row_total / static_cast<double>(e.rows));
#pragma unroll
  for (int k = 0; k < N; ++k) {
    if (k < e.cols) {
      float* state = e.state_col + b * e.cols + k;
      *state = factor_state(*state, col[k], e.rows, beta2, one_minus_beta2, eps1);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) sums_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  constexpr int N = kPack<T>;
  __shared__ float row_part[kAdafactorCudaRowSlots];
  __shared__ float col_part[kThreads * 8];
  __shared__ double reduce[kWarps];
  static_assert(sizeof(row_part) + sizeof(col_part) + sizeof(reduce) == kAdafactorSumsShared,
                "see launch_plan.h");
  static_assert(kThreads * N <= kThreads * 8, "a float per thread and pack value");
  int64_t local;
  const AdafactorEntry& e = unit_entry(a, &local);
  const Tile t = adafactor_tile(e, local);
  const T* g = static_cast<const T*>(e.grad);
  const T* p = static_cast<const T*>(e.param);
  const float gm = grad_multiplier(a.scalars);
  float p_sq = 0.0f;

  if (e.tile_matrices > 0) {  // block-uniform
    matrix_sums<T>(a, e, t, g, p, gm, &p_sq);
  } else if (e.factored) {
    factored_sums<T>(a, e, t, g, p, gm, &p_sq, row_part, col_part, reduce);
  } else {
    // not factored: the full state v and the sum of U^2 right away
    float beta2, one_minus_beta2;
    step_beta2(a, e, &beta2, &one_minus_beta2);
    const float eps1 = static_cast<float>(a.hyper.eps1);
    float* v = e.state_row;
    const bool packed = aligned16(g) && aligned16(p) && aligned16(v);
    float u_sq = 0.0f;
    for (int64_t j = t.col_begin + static_cast<int64_t>(threadIdx.x) * N; j < t.col_end;
         j += static_cast<int64_t>(kThreads) * N) {
      float gv[N], pv[N], vv[N];
      load_cols<N>(g, j, t.col_end, packed, gv);
      load_cols<N>(p, j, t.col_end, packed, pv);
      load_cols<N>(v, j, t.col_end, packed, vv);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        if (j + k < t.col_end) {
          const float x = gv[k] * gm;
          vv[k] = adafactor_full_state(vv[k], x, beta2, one_minus_beta2, eps1);
          const float U = adafactor_inv_sqrt(vv[k]) * x;
          u_sq += U * U;
          p_sq += pv[k] * pv[k];
        }
      }
      store_cols<N>(v, j, t.col_end, packed, vv);
    }
    const double total_u = block_sum<double>(u_sq, reduce);
    if (threadIdx.x == 0) a.work.u_sq[e.first_unit + local] = static_cast<float>(total_u);
  }
  const double total_p = block_sum<double>(p_sq, reduce);
  if (threadIdx.x == 0) a.work.p_sq[e.first_unit + local] = static_cast<float>(total_p);
}

// ------------------------------------------------------------------ finalize 1
// A block per (batch, column chunk) folds the column partials of every row
// tile, one column per thread; a block per (batch, row tile) folds the row
// partials of every column tile and sums the new row states.
__global__ void __launch_bounds__(kThreads) factors_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  __shared__ double reduce[kWarps];
  static_assert(sizeof(reduce) == kAdafactorReduceShared, "see launch_plan.h");
  static_assert(kAdafactorCudaFinCols == kThreads, "a column per thread");
  const AdafactorEntry& e = a.entries[a.fin_entry[blockIdx.x]];
  const AdafactorFinBlock f = adafactor_fin_block(e, blockIdx.x - e.first_fin_block);
  float beta2, one_minus_beta2;
  step_beta2(a, e, &beta2, &one_minus_beta2);
  const float eps1 = static_cast<float>(a.hyper.eps1);
  if (f.cols) {
    const int64_t j = f.begin + threadIdx.x;
    if (j < f.end) {
      const float sum = fold(a.work.col_partials + col_partial_slot(e, f.batch, 0, j),
                             e.row_tiles, e.cols);
      float* state = e.state_col + f.batch * e.cols + j;
      *state = factor_state(*state, sum, e.rows, beta2, one_minus_beta2, eps1);
    }
    return;
  }
  double row_sum = 0.0;
  for (int64_t i = f.begin + threadIdx.x; i < f.end; i += kThreads) {
    const float sum = fold(a.work.row_partials + row_partial_slot(e, f.batch, i, 0),
                           e.col_tiles, 1);
    float* state = e.state_row + f.batch * e.rows + i;
    const float v = factor_state(*state, sum, e.cols, beta2, one_minus_beta2, eps1);
    *state = v;
    row_sum += v;
  }
  const double total = block_sum(row_sum, reduce);
  if (threadIdx.x == 0) store_row_total(a, e, f.batch, f.row_tile, total);
}

// The row mean of every factored batch of several row tiles, a thread each:
// its row tiles' sums in order.
__global__ void __launch_bounds__(kThreads) means_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  const int64_t batch = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (batch >= a.batches) return;
  const AdafactorEntry& e = a.entries[a.batch_entry[batch]];
  if (e.row_tiles == 1) return;  // its one row tile wrote the mean
  const float* sums = a.work.row_sums + row_sum_slot(e, batch - e.first_batch, 0);
  double total = 0.0;
  for (int64_t rt = 0; rt < e.row_tiles; ++rt) total += sums[rt];
  a.work.mean_row[batch] = static_cast<float>(total / static_cast<double>(e.rows));
}

// The 1/sqrt factors of a thread's pack slots (zeros past the tile).
template <int N, int M>
PT_DEVICE void col_factors(const AdafactorEntry& e, const Tile& t, int64_t lane,
                           float (&out)[M][N]) {
  const float* c = e.state_col + t.batch * e.cols;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const int64_t c0 = lane_col(e, t, lane, m);
    const bool mine = m < e.packs_per_thread;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      out[m][k] = mine && c0 + k < t.col_end ? adafactor_inv_sqrt(c[c0 + k]) : 0.0f;
    }
  }
}

PT_DEVICE float matrix_row_factor(const AdafactorLaunch& a, const AdafactorEntry& e,
                                  int64_t batch, int64_t i) {
  return adafactor_inv_sqrt(e.state_row[batch * e.rows + i] /
                            a.work.mean_row[e.first_batch + batch]);
}
PT_DEVICE float row_factor(const AdafactorLaunch& a, const AdafactorEntry& e, const Tile& t,
                           int64_t i) {
  return matrix_row_factor(a, e, t.batch, i);
}
// The column factors of matrix b (one pack per row; zeros past its columns).
template <int N>
PT_DEVICE void matrix_col_factors(const AdafactorEntry& e, int64_t b, float (&out)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) {
    out[k] = k < e.cols ? adafactor_inv_sqrt(e.state_col[b * e.cols + k]) : 0.0f;
  }
}

// ------------------------------------------------------------------ pass 2
template <class T>
__global__ void __launch_bounds__(kThreads) norm_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  constexpr int N = kPack<T>;
  constexpr int M = kAdafactorCudaThreadElems / N;
  __shared__ float reduce[kWarps];
  static_assert(sizeof(reduce) == kAdafactorNormShared, "see launch_plan.h");
  int64_t local;
  const AdafactorEntry& e = unit_entry(a, &local);
  if (!e.factored) return;  // block-uniform: vectors summed U^2 in pass 1
  const Tile t = adafactor_tile(e, local);
  const T* g = static_cast<const T*>(e.grad);
  const float gm = grad_multiplier(a.scalars);
  const bool packed = e.cols % N == 0 && aligned16(g);
  float u_sq = 0.0f;
  if (e.tile_matrices > 0) {  // block-uniform: a thread per matrix
    const int64_t b = thread_matrix(e, t, threadIdx.x);
    if (b < e.batches) {
      float cf[N];
      matrix_col_factors(e, b, cf);
      for (int64_t i = 0; i < e.rows; ++i) {
        const float r = matrix_row_factor(a, e, b, i);
        float gv[N];
        load_cols<N>(g + (b * e.rows + i) * e.cols, 0, e.cols, false, gv);
#pragma unroll
        for (int k = 0; k < N; ++k) {
          const float U = (r * cf[k]) * (gv[k] * gm);
          u_sq += U * U;
        }
      }
    }
    const float total = block_sum(u_sq, reduce);
    if (threadIdx.x == 0) a.work.u_sq[e.first_unit + local] = total;
    return;
  }
  const AdafactorLane l = adafactor_lane(e, threadIdx.x);
  float cf[M][N];
  col_factors(e, t, l.lane, cf);
  const int64_t steps = tile_steps(e, t);
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t i = step_row(e, t, l, s);
    if (i >= t.row_end) break;  // the thread's last rows; no barrier in the loop
    const float r = row_factor(a, e, t, i);
    const int64_t base = (t.batch * e.rows + i) * e.cols;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int64_t c0 = lane_col(e, t, l.lane, m);
      if (m < e.packs_per_thread && c0 < t.col_end) {
        float gv[N];
        load_cols<N>(g + base, c0, t.col_end, packed, gv);
#pragma unroll
        for (int k = 0; k < N; ++k) {
          const float U = (r * cf[m][k]) * (gv[k] * gm);
          u_sq += U * U;
        }
      }
    }
  }
  const float total = block_sum(u_sq, reduce);
  if (threadIdx.x == 0) a.work.u_sq[e.first_unit + local] = total;
}

// ------------------------------------------------------------------ finalize 2
__global__ void __launch_bounds__(kThreads) scalars_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  __shared__ double reduce[kWarps];
  static_assert(sizeof(reduce) == kAdafactorReduceShared, "see launch_plan.h");
  const AdafactorEntry& e = a.entries[blockIdx.x];
  double p_sq = 0.0, u_sq = 0.0;
  for (int64_t u = threadIdx.x; u < e.units; u += kThreads) {
    p_sq += a.work.p_sq[e.first_unit + u];
    u_sq += a.work.u_sq[e.first_unit + u];
  }
  p_sq = block_sum(p_sq, reduce);
  u_sq = block_sum(u_sq, reduce);
  if (threadIdx.x == 0) {
    const double lr = lr_value(a.scalars, a.hyper.lr);
    const float step = *e.step + 1.0f;
    adafactor_scalars(a.hyper, lr, step, e.numel, p_sq, u_sq, &a.work.scalars[2 * e.index],
                      &a.work.scalars[2 * e.index + 1]);
    *e.step = step;  // the last reader of the step this launch sequence
  }
}

// ------------------------------------------------------------------ pass 3
template <class T>
__global__ void __launch_bounds__(kThreads) update_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  constexpr int N = kPack<T>;
  int64_t local;
  const AdafactorEntry& e = unit_entry(a, &local);
  const Tile t = adafactor_tile(e, local);
  T* g = static_cast<T*>(e.grad);
  T* p = static_cast<T*>(e.param);
  float* m = e.exp_avg;
  const float gm = grad_multiplier(a.scalars);
  const bool write_back = a.write_back_grads && a.scalars.grad_scale != nullptr;
  AdafactorApply ap;
  ap.alpha = a.work.scalars[2 * e.index];
  ap.divisor = a.work.scalars[2 * e.index + 1];
  ap.first_moment = m != nullptr;
  ap.beta1 = static_cast<float>(a.hyper.beta1);
  ap.one_minus_beta1 = static_cast<float>(1.0 - a.hyper.beta1);
  ap.decay = a.hyper.weight_decay != 0.0;
  ap.neg_wd_alpha = -static_cast<float>(a.hyper.weight_decay) * ap.alpha;
  const bool packed = (!e.factored || e.cols % N == 0) && aligned16(g) && aligned16(p) &&
                      (m == nullptr || aligned16(m)) && (e.factored || aligned16(e.state_row));

  // Updates N elements of one row from column c0 (factors already known).
  auto update_cols = [&](int64_t base, int64_t c0, int64_t c_end, float r, const float* cf) {
    float gv[N], pv[N], mv[N], U[N];
    load_cols<N>(g + base, c0, c_end, packed, gv);
    load_cols<N>(p + base, c0, c_end, packed, pv);
    if (m != nullptr) load_cols<N>(m + base, c0, c_end, packed, mv);
    if (!e.factored) {
      float vv[N];
      load_cols<N>(e.state_row + base, c0, c_end, packed, vv);
#pragma unroll
      for (int k = 0; k < N; ++k) U[k] = c0 + k < c_end ? adafactor_inv_sqrt(vv[k]) * (gv[k] * gm) : 0.0f;
    } else {
#pragma unroll
      for (int k = 0; k < N; ++k) U[k] = (r * cf[k]) * (gv[k] * gm);
    }
#pragma unroll
    for (int k = 0; k < N; ++k) {
      gv[k] *= gm;
      float mk = m != nullptr ? mv[k] : 0.0f;
      pv[k] = adafactor_apply(pv[k], U[k], mk, ap);
      mv[k] = mk;
    }
    store_cols<N>(p + base, c0, c_end, packed, pv);
    if (m != nullptr) store_cols<N>(m + base, c0, c_end, packed, mv);
    if (write_back) store_cols<N>(g + base, c0, c_end, packed, gv);
  };

  if (e.tile_matrices > 0) {  // a thread per matrix
    const int64_t b = thread_matrix(e, t, threadIdx.x);
    if (b >= e.batches) return;
    float cf[N];
    matrix_col_factors(e, b, cf);
    for (int64_t i = 0; i < e.rows; ++i) {
      update_cols((b * e.rows + i) * e.cols, 0, e.cols, matrix_row_factor(a, e, b, i), cf);
    }
  } else if (e.factored) {
    constexpr int M = kAdafactorCudaThreadElems / N;
    const AdafactorLane l = adafactor_lane(e, threadIdx.x);
    float cf[M][N];
    col_factors(e, t, l.lane, cf);
    const int64_t steps = tile_steps(e, t);
    for (int64_t s = 0; s < steps; ++s) {  // no barrier below: threads may leave
      const int64_t i = step_row(e, t, l, s);
      if (i >= t.row_end) break;
      const float r = row_factor(a, e, t, i);
      const int64_t base = (t.batch * e.rows + i) * e.cols;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const int64_t c0 = lane_col(e, t, l.lane, m);
        if (m < e.packs_per_thread && c0 < t.col_end) update_cols(base, c0, t.col_end, r, cf[m]);
      }
    }
  } else {
    for (int64_t j = t.col_begin + static_cast<int64_t>(threadIdx.x) * N; j < t.col_end;
         j += static_cast<int64_t>(kThreads) * N) {
      update_cols(0, j, t.col_end, 0.0f, nullptr);
    }
  }
}

dim3 grid_of(const LaunchDims& d) {
  return dim3(static_cast<unsigned>(d.grid[0]), static_cast<unsigned>(d.grid[1]),
              static_cast<unsigned>(d.grid[2]));
}
dim3 block_of(const LaunchDims& d) {
  return dim3(static_cast<unsigned>(d.block[0]), static_cast<unsigned>(d.block[1]),
              static_cast<unsigned>(d.block[2]));
}

// Each kernel as the plan says (launch_plan.cpp; no launch for an empty grid).
template <class T>
cudaError_t launch_typed(const AdafactorLaunch& a, const AdafactorLaunches& l,
                         cudaStream_t stream) {
  if (l.sums.grid[0] > 0) sums_kernel<T><<<grid_of(l.sums), block_of(l.sums), 0, stream>>>(a);
  if (l.factors.grid[0] > 0) {
    factors_kernel<<<grid_of(l.factors), block_of(l.factors), 0, stream>>>(a);
  }
  if (l.means.grid[0] > 0) means_kernel<<<grid_of(l.means), block_of(l.means), 0, stream>>>(a);
  if (l.norm.grid[0] > 0) norm_kernel<T><<<grid_of(l.norm), block_of(l.norm), 0, stream>>>(a);
  if (l.scalars.grid[0] > 0) {
    scalars_kernel<<<grid_of(l.scalars), block_of(l.scalars), 0, stream>>>(a);
  }
  if (l.update.grid[0] > 0) {
    update_kernel<T><<<grid_of(l.update), block_of(l.update), 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_adafactor(Dtype param_dtype, const AdafactorLaunch& args,
                             const AdafactorLaunches& launches, cudaStream_t stream) {
  return launch_for</*kWithF64=*/false>(param_dtype, [&](auto type) {
    return launch_typed<typename decltype(type)::type>(args, launches, stream);
  });
}

}  // namespace pytrainer::cuda
