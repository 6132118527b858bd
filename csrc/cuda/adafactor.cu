// Adafactor on CUDA: three passes over memory plus two small finalize kernels,
// each one launch over every tensor of the call (common/adafactor_layout.h).
// All sums run in a fixed order, so results do not vary from run to run.
#include "common/adafactor_layout.h"
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

// ------------------------------------------------------------------ pass 1
template <class T>
__global__ void __launch_bounds__(kThreads) sums_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  constexpr int N = kPack<T>;
  __shared__ float row_part[kAdafactorMaxTileRows][kWarps];
  __shared__ float reduce[kWarps];
  int64_t local;
  const AdafactorEntry& e = unit_entry(a, &local);
  const Tile t = adafactor_tile(e, local);
  const T* g = static_cast<const T*>(e.grad);
  const T* p = static_cast<const T*>(e.param);
  const float gm = grad_multiplier(a.scalars);
  float p_sq = 0.0f;

  if (e.factored) {
    const bool packed = e.cols % N == 0 && aligned16(g) && aligned16(p);
    const int64_t c0 = t.col_begin + static_cast<int64_t>(threadIdx.x) * N;
    float col_acc[N] = {};
#pragma unroll 4
    for (int64_t i = t.row_begin; i < t.row_end; ++i) {
      const int64_t base = (t.batch * e.rows + i) * e.cols;
      float gv[N], pv[N];
      load_cols<N>(g + base, c0, t.col_end, packed, gv);
      load_cols<N>(p + base, c0, t.col_end, packed, pv);
      float row = 0.0f;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float x = gv[k] * gm;
        const float x2 = x * x;
        col_acc[k] += x2;
        row += x2;
        p_sq += pv[k] * pv[k];
      }
      row = warp_sum(row);
      if (threadIdx.x % 32 == 0) row_part[i - t.row_begin][threadIdx.x / 32] = row;
    }
    __syncthreads();
    if (threadIdx.x < t.row_end - t.row_begin) {
      float s = 0.0f;
      for (int w = 0; w < kWarps; ++w) s += row_part[threadIdx.x][w];
      a.work.row_partials[row_partial_slot(e, t.batch, t.row_begin + threadIdx.x, t.col_tile)] = s;
    }
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (c0 + k < t.col_end) {
        a.work.col_partials[col_partial_slot(e, t.batch, t.row_tile, c0 + k)] = col_acc[k];
      }
    }
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
    const float total_u = block_sum(u_sq, reduce);
    if (threadIdx.x == 0) a.work.u_sq[e.first_unit + local] = total_u;
  }
  const float total_p = block_sum(p_sq, reduce);
  if (threadIdx.x == 0) a.work.p_sq[e.first_unit + local] = total_p;
}

// ------------------------------------------------------------------ finalize 1
__global__ void __launch_bounds__(kThreads) factors_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  __shared__ double reduce[kWarps];
  const AdafactorEntry& e = a.entries[a.batch_entry[blockIdx.x]];
  const int64_t b = static_cast<int64_t>(blockIdx.x) - e.first_batch;
  float beta2, one_minus_beta2;
  step_beta2(a, e, &beta2, &one_minus_beta2);
  const float eps1 = static_cast<float>(a.hyper.eps1);
  float* row = e.state_row + b * e.rows;
  double row_sum = 0.0;
  for (int64_t i = threadIdx.x; i < e.rows; i += kThreads) {
    float s = 0.0f;
    for (int64_t ct = 0; ct < e.col_tiles; ++ct) s += a.work.row_partials[row_partial_slot(e, b, i, ct)];
    row[i] = beta2 * row[i] + one_minus_beta2 * (s / static_cast<float>(e.cols) + eps1);
    row_sum += row[i];
  }
  const double total = block_sum(row_sum, reduce);
  if (threadIdx.x == 0) {
    a.work.mean_row[e.first_batch + b] = static_cast<float>(total / static_cast<double>(e.rows));
  }
  float* col = e.state_col + b * e.cols;
  for (int64_t j = threadIdx.x; j < e.cols; j += kThreads) {
    float s = 0.0f;
    for (int64_t rt = 0; rt < e.row_tiles; ++rt) s += a.work.col_partials[col_partial_slot(e, b, rt, j)];
    col[j] = beta2 * col[j] + one_minus_beta2 * (s / static_cast<float>(e.rows) + eps1);
  }
}

// The 1/sqrt factors of a thread's columns and of a row.
template <int N>
PT_DEVICE void col_factors(const AdafactorEntry& e, const Tile& t, int64_t c0, float (&out)[N]) {
  const float* c = e.state_col + t.batch * e.cols;
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = c0 + k < t.col_end ? adafactor_inv_sqrt(c[c0 + k]) : 0.0f;
}

PT_DEVICE float row_factor(const AdafactorLaunch& a, const AdafactorEntry& e, const Tile& t,
                           int64_t i) {
  return adafactor_inv_sqrt(e.state_row[t.batch * e.rows + i] /
                            a.work.mean_row[e.first_batch + t.batch]);
}

// ------------------------------------------------------------------ pass 2
template <class T>
__global__ void __launch_bounds__(kThreads) norm_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  constexpr int N = kPack<T>;
  __shared__ float reduce[kWarps];
  int64_t local;
  const AdafactorEntry& e = unit_entry(a, &local);
  if (!e.factored) return;  // block-uniform: vectors summed U^2 in pass 1
  const Tile t = adafactor_tile(e, local);
  const T* g = static_cast<const T*>(e.grad);
  const float gm = grad_multiplier(a.scalars);
  const bool packed = e.cols % N == 0 && aligned16(g);
  const int64_t c0 = t.col_begin + static_cast<int64_t>(threadIdx.x) * N;
  float cf[N];
  col_factors(e, t, c0, cf);
  float u_sq = 0.0f;
#pragma unroll 4
  for (int64_t i = t.row_begin; i < t.row_end; ++i) {
    const float r = row_factor(a, e, t, i);
    float gv[N];
    load_cols<N>(g + (t.batch * e.rows + i) * e.cols, c0, t.col_end, packed, gv);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float U = (r * cf[k]) * (gv[k] * gm);
      u_sq += U * U;
    }
  }
  const float total = block_sum(u_sq, reduce);
  if (threadIdx.x == 0) a.work.u_sq[e.first_unit + local] = total;
}

// ------------------------------------------------------------------ finalize 2
__global__ void __launch_bounds__(kThreads) scalars_kernel(AdafactorLaunch a) {
  if (skipped(a.scalars)) return;
  __shared__ double reduce[kWarps];
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

  if (e.factored) {
    const int64_t c0 = t.col_begin + static_cast<int64_t>(threadIdx.x) * N;
    if (c0 >= t.col_end) return;  // no barrier below: idle threads may leave
    float cf[N];
    col_factors(e, t, c0, cf);
#pragma unroll 2
    for (int64_t i = t.row_begin; i < t.row_end; ++i) {
      update_cols((t.batch * e.rows + i) * e.cols, c0, t.col_end, row_factor(a, e, t, i), cf);
    }
  } else {
    for (int64_t j = t.col_begin + static_cast<int64_t>(threadIdx.x) * N; j < t.col_end;
         j += static_cast<int64_t>(kThreads) * N) {
      update_cols(0, j, t.col_end, 0.0f, nullptr);
    }
  }
}

template <class T>
cudaError_t launch_typed(const AdafactorLaunch& a, cudaStream_t stream) {
  const auto grid = [](int64_t n) { return static_cast<unsigned>(n); };
  if (a.units > 0) sums_kernel<T><<<grid(a.units), kThreads, 0, stream>>>(a);
  if (a.batches > 0) factors_kernel<<<grid(a.batches), kThreads, 0, stream>>>(a);
  if (a.units > 0) norm_kernel<T><<<grid(a.units), kThreads, 0, stream>>>(a);
  if (a.num_entries > 0) scalars_kernel<<<grid(a.num_entries), kThreads, 0, stream>>>(a);
  if (a.units > 0) update_kernel<T><<<grid(a.units), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_adafactor(Dtype param_dtype, const AdafactorLaunch& args,
                             cudaStream_t stream) {
  return launch_for</*kWithF64=*/false>(param_dtype, [&](auto type) {
    return launch_typed<typename decltype(type)::type>(args, stream);
  });
}

}  // namespace pytrainer::cuda
