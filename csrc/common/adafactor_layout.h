// How an Adafactor step cuts its tensors into work units, shared by the CPU and
// CUDA kernels so both index the partial sums the same way (and the CPU tests
// check the indexing the GPU uses).
//
// A parameter with 2 or more dims is factored: viewed as `batches` matrices of
// `rows` x `cols` (leading dims batched), cut into tiles of tile_rows x tile_cols
// (the CPU's tiles below; CUDA's taller ones, their threads and their partial
// sums: common/adafactor_cuda_layout.h).
// A vector or scalar is one 1 x numel row cut into chunks of tile_cols.
// Each tile is one unit (a CUDA block, a CPU task). Per step, over three passes:
//   pass 1 (reads g, p): per tile, row sums and column sums of g^2 and the sum
//          of p^2; vectors update v and sum U^2 here already
//   finalize 1:  row/column states from the partial sums, the mean of each
//          batch's row state (factored only)
//   pass 2 (reads g): per tile, the sum of U^2 (factored only)
//   finalize 2:  per tensor, alpha and the clipping divisor; the step advances
//   pass 3 (reads g, p, [m]; writes p, [m]): the update
#pragma once

#include <math.h>
#include <stdint.h>

#include "macros.h"

namespace pytrainer {

struct AdafactorEntry {
  void* param;
  void* grad;
  float* exp_avg;      // first moment, null without beta1
  float* state_row;    // factored: row state [batches, rows]; else the full state [numel]
  float* state_col;    // factored: column state [batches, cols]; else null
  float* step;
  int64_t numel;
  int64_t batches, rows, cols;
  int64_t tile_rows, tile_cols;
  int64_t row_tiles, col_tiles;
  int64_t first_unit;   // this tensor's first unit in the launch
  int64_t units;
  int64_t first_batch;  // this tensor's first batch among all factored batches
  int64_t row_partials; // offset of its [batches * rows * col_tiles] row partial sums
  int64_t col_partials; // offset of its [batches * row_tiles * cols] column partial sums
  // CUDA only (common/adafactor_cuda_layout.h; zero in a CPU plan): the threads of
  // a factored tile, the offset of its row-state sums, its finalize 1 blocks
  int64_t pack;              // values per 16-byte access
  int64_t threads_per_row, packs_per_thread, rows_per_step;
  int64_t row_sums;          // offset of its [batches * row_tiles] sums of the new row state
  int64_t col_chunks;        // column blocks of finalize 1 per batch
  int64_t first_fin_block, fin_blocks;
  int64_t tile_matrices;     // > 0: a thread per matrix, this many matrices per tile
  int32_t factored;
  int32_t index;        // position in the call (its alpha and divisor live at 2*index)
};

// The step's scratch memory, one float array cut into these pieces.
struct AdafactorWork {
  float* row_partials;
  float* col_partials;
  float* p_sq;       // per unit: sum of p^2
  float* u_sq;       // per unit: sum of U^2
  float* mean_row;   // per factored batch: mean of its row state
  float* scalars;    // per tensor: alpha, clipping divisor
  float* row_sums;   // CUDA: per (batch, row tile), the sum of the new row state
};

// Elements per tile: large enough to amortise a unit's setup, small enough to
// spread a tensor over many units.
constexpr int64_t kAdafactorTileElems = 32768;
// Columns per factored tile: CUDA runs a block of 256 threads across one tile
// row with 16-byte packs (4 float32 or 8 16-bit values per thread).
constexpr int64_t kAdafactorTileCols32 = 1024;
constexpr int64_t kAdafactorTileCols16 = 2048;
constexpr int64_t kAdafactorMaxTileRows = 32;

struct Tile {
  int64_t batch, row_tile, col_tile;
  int64_t row_begin, row_end, col_begin, col_end;
};

// Fills the geometry of `e` for a tensor with the given shape (dims >= 0).
inline void adafactor_geometry(AdafactorEntry& e, const int64_t* sizes, int64_t dim,
                               int64_t element_size) {
  int64_t numel = 1;
  for (int64_t d = 0; d < dim; ++d) numel *= sizes[d];
  e.numel = numel;
  e.factored = dim >= 2;
  if (e.factored) {
    e.rows = sizes[dim - 2];
    e.cols = sizes[dim - 1];
    e.batches = e.rows * e.cols == 0 ? 0 : numel / (e.rows * e.cols);
    const int64_t max_cols = element_size == 4 ? kAdafactorTileCols32 : kAdafactorTileCols16;
    e.tile_cols = e.cols < max_cols ? (e.cols > 0 ? e.cols : 1) : max_cols;
    int64_t tile_rows = kAdafactorTileElems / e.tile_cols;
    if (tile_rows > kAdafactorMaxTileRows) tile_rows = kAdafactorMaxTileRows;
    e.tile_rows = tile_rows < 1 ? 1 : tile_rows;
  } else {
    e.batches = 1;
    e.rows = 1;
    e.cols = numel;
    e.tile_rows = 1;
    e.tile_cols = kAdafactorTileElems;
  }
  e.row_tiles = (e.rows + e.tile_rows - 1) / e.tile_rows;
  e.col_tiles = (e.cols + e.tile_cols - 1) / e.tile_cols;
  e.units = numel == 0 ? 0 : e.batches * e.row_tiles * e.col_tiles;
}

PT_HOST_DEVICE Tile adafactor_tile(const AdafactorEntry& e, int64_t unit) {
  Tile t;
  const int64_t per_batch = e.row_tiles * e.col_tiles;
  t.batch = unit / per_batch;
  const int64_t rest = unit - t.batch * per_batch;
  t.row_tile = rest / e.col_tiles;
  t.col_tile = rest - t.row_tile * e.col_tiles;
  t.row_begin = t.row_tile * e.tile_rows;
  t.row_end = t.row_begin + e.tile_rows < e.rows ? t.row_begin + e.tile_rows : e.rows;
  t.col_begin = t.col_tile * e.tile_cols;
  t.col_end = t.col_begin + e.tile_cols < e.cols ? t.col_begin + e.tile_cols : e.cols;
  return t;
}

// Slots of the partial sums.
PT_HOST_DEVICE int64_t row_partial_slot(const AdafactorEntry& e, int64_t batch, int64_t row,
                                        int64_t col_tile) {
  return e.row_partials + (batch * e.rows + row) * e.col_tiles + col_tile;
}
PT_HOST_DEVICE int64_t col_partial_slot(const AdafactorEntry& e, int64_t batch, int64_t row_tile,
                                        int64_t col) {
  return e.col_partials + (batch * e.row_tiles + row_tile) * e.cols + col;
}

struct AdafactorHyper {
  double lr;            // used when relative_step is false
  double eps1, eps2;
  double clip_threshold;
  double decay_rate;
  double beta1;         // < 0: no first moment
  double weight_decay;
  bool scale_parameter, relative_step, warmup_init;
};

// beta2 of step t (t counts this step).
PT_HOST_DEVICE double adafactor_beta2(const AdafactorHyper& h, double t) {
  return 1.0 - pow(t, h.decay_rate);
}

// The relative step size rho of step t, or lr.
PT_HOST_DEVICE double adafactor_rho(const AdafactorHyper& h, double lr, double t) {
  if (!h.relative_step) return lr;
  const double min_step = h.warmup_init ? 1e-6 * t : 1e-2;
  const double inv_sqrt = 1.0 / sqrt(t);
  return min_step < inv_sqrt ? min_step : inv_sqrt;
}

// Finalize 2 for one tensor: alpha = rho * max(eps2, RMS(p)) (or rho), and the
// clipping divisor max(1, RMS(U) / clip_threshold).
PT_HOST_DEVICE void adafactor_scalars(const AdafactorHyper& h, double lr, double t,
                                      int64_t numel, double sum_p_sq, double sum_u_sq,
                                      float* alpha, float* divisor) {
  const double n = numel > 0 ? static_cast<double>(numel) : 1.0;
  const double rho = adafactor_rho(h, lr, t);
  const double rms_p = sqrt(sum_p_sq / n);
  *alpha = static_cast<float>(h.scale_parameter ? rho * (h.eps2 > rms_p ? h.eps2 : rms_p) : rho);
  const double clip = sqrt(sum_u_sq / n) / h.clip_threshold;
  *divisor = static_cast<float>(clip > 1.0 ? clip : 1.0);
}

}  // namespace pytrainer
