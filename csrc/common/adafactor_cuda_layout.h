// The CUDA geometry of an Adafactor step (the CPU keeps adafactor_geometry):
// which rows, columns and partial sums each block and thread of the kernels in
// cuda/adafactor.cu owns. The kernels and the host emulation of the tests
// (launch_plan.cpp) index through these functions only.
//
// A factored tile spans every column (or, past kAdafactorCudaThreadElems values
// per thread, an even share of them) and ~kAdafactorCudaTileRows rows. Its 256
// threads are laid out as rows_per_step (R) rows of threads_per_row (T) lanes: T
// is a power of two no larger than the tile's 16-byte packs per row, so every
// lane owns a pack; lane j owns packs j, j + T, ... (packs_per_thread of them).
// A block walks its tile R rows at a time. Partial sums:
//   - a tile spanning every column (col_tiles == 1) writes its row states itself,
//     else one row partial per (row, column tile);
//   - a tile spanning every row (row_tiles == 1) writes its column states itself,
//     else one column partial per (row tile, column);
//   - whoever writes a row tile's row states sums them: the row mean itself
//     when the tile spans every row, else one sum per (batch, row tile).
// Finalize 1 then runs one block per (batch, chunk of kAdafactorCudaFinCols
// columns) where columns have partials and one per (batch, row tile) where rows
// do; a last small kernel sums each batch's row tiles into its row mean.
// Matrices of one 16-byte pack per row and at most kAdafactorCudaMatrixRows
// rows (conv kernels [O, I, 3, 3], [O, I, 1, 1]) go a thread per matrix instead,
// kAdafactorCudaThreads matrices per tile (tile_matrices): the thread sums,
// writes and applies its matrix's states by itself, with no partials.
#pragma once

#include "common/adafactor_layout.h"

namespace pytrainer {

constexpr int64_t kAdafactorCudaThreads = 256;
// Values a thread keeps per row (packs_per_thread x pack): its column sums and
// factors stay in registers.
constexpr int64_t kAdafactorCudaThreadElems = 16;
// Rows per factored tile, at least (up to twice as many): with a tile spanning
// every column, the column partials are 4 / (tile_rows * element size) of the
// parameter's bytes (bf16: at most 1/192).
constexpr int64_t kAdafactorCudaTileRows = 384;
// Columns per finalize block: one per thread.
constexpr int64_t kAdafactorCudaFinCols = kAdafactorCudaThreads;
// The most rows of a matrix a thread takes whole.
constexpr int64_t kAdafactorCudaMatrixRows = 16;
// Shared floats pass 1 keeps per tile row when a row spans several warps
// (T >= 64, so tiles of less than 2 x kAdafactorCudaTileRows rows): at most 8 per row.
constexpr int64_t kAdafactorCudaRowSlots = 2 * kAdafactorCudaTileRows * 8;

// Fills e's geometry for CUDA (dims >= 0; element_size 2 or 4). Vectors keep
// the CPU's chunks.
inline void adafactor_cuda_geometry(AdafactorEntry& e, const int64_t* sizes, int64_t dim,
                                    int64_t element_size) {
  adafactor_geometry(e, sizes, dim, element_size);
  e.pack = 16 / element_size;
  e.threads_per_row = kAdafactorCudaThreads;
  e.packs_per_thread = 1;
  e.rows_per_step = 1;
  if (!e.factored || e.numel == 0) return;
  const int64_t packs = (e.cols + e.pack - 1) / e.pack;
  if (packs == 1 && e.rows <= kAdafactorCudaMatrixRows) {  // a thread per matrix
    e.tile_matrices = kAdafactorCudaThreads;
    e.threads_per_row = 1;
    e.tile_rows = e.rows;
    e.tile_cols = e.cols;
    e.row_tiles = e.col_tiles = 1;
    e.units = (e.batches + e.tile_matrices - 1) / e.tile_matrices;
    return;
  }
  const int64_t max_slots = kAdafactorCudaThreadElems / e.pack;
  int64_t width = packs;  // packs per column tile
  if (packs <= kAdafactorCudaThreads) {
    int64_t t = 1;
    while (2 * t <= packs) t *= 2;
    e.threads_per_row = t;  // packs < 2t: at most 2 packs per lane
  } else {
    const int64_t per_lane = (packs + kAdafactorCudaThreads - 1) / kAdafactorCudaThreads;
    const int64_t slots = per_lane < max_slots ? per_lane : max_slots;
    const int64_t tiles = (packs + kAdafactorCudaThreads * slots - 1) / (kAdafactorCudaThreads * slots);
    width = (packs + tiles - 1) / tiles;  // even tiles: the last has nearly as many packs
  }
  e.packs_per_thread = (width + e.threads_per_row - 1) / e.threads_per_row;
  e.rows_per_step = kAdafactorCudaThreads / e.threads_per_row;
  e.tile_cols = width * e.pack;
  // narrow tiles take more rows: at least kAdafactorTileElems values per tile
  const int64_t target = kAdafactorTileElems / e.tile_cols > kAdafactorCudaTileRows
                             ? kAdafactorTileElems / e.tile_cols
                             : kAdafactorCudaTileRows;
  // even row tiles of target to 2 x target rows (the last one too has rows for
  // every thread; the column partials stay below 2 / target of the values)
  const int64_t row_tiles = e.rows / target > 1 ? e.rows / target : 1;
  const int64_t rows = (e.rows + row_tiles - 1) / row_tiles;
  e.tile_rows = (rows + e.rows_per_step - 1) / e.rows_per_step * e.rows_per_step;
  e.row_tiles = (e.rows + e.tile_rows - 1) / e.tile_rows;
  e.col_tiles = (e.cols + e.tile_cols - 1) / e.tile_cols;
  e.units = e.batches * e.row_tiles * e.col_tiles;
  e.col_chunks = e.row_tiles > 1 ? (e.cols + kAdafactorCudaFinCols - 1) / kAdafactorCudaFinCols : 0;
  e.fin_blocks = e.batches * (e.col_chunks + (e.col_tiles > 1 ? e.row_tiles : 0));
}

// Partial floats of a factored entry in the CUDA layout: row, column, row-state sums.
inline int64_t adafactor_cuda_row_partials(const AdafactorEntry& e) {
  return e.col_tiles > 1 ? e.batches * e.rows * e.col_tiles : 0;
}
inline int64_t adafactor_cuda_col_partials(const AdafactorEntry& e) {
  return e.row_tiles > 1 ? e.batches * e.row_tiles * e.cols : 0;
}
inline int64_t adafactor_cuda_row_sums(const AdafactorEntry& e) {
  return e.row_tiles > 1 ? e.batches * e.row_tiles : 0;
}

// A tile of a thread per matrix (tile_matrices > 0): the matrix of `thread`
// (none when >= batches). adafactor_tile numbers these tiles in t.batch.
PT_HOST_DEVICE int64_t thread_matrix(const AdafactorEntry& e, const Tile& t, int64_t thread) {
  return t.batch * e.tile_matrices + thread;
}

// A thread's place in a factored tile.
struct AdafactorLane {
  int64_t row_off;  // its row among the R of a step
  int64_t lane;     // its lane among the T of a row
};
PT_HOST_DEVICE AdafactorLane adafactor_lane(const AdafactorEntry& e, int64_t thread) {
  return AdafactorLane{thread / e.threads_per_row, thread % e.threads_per_row};
}
// The first column of the lane's pack `slot` (none when >= the tile's col_end).
PT_HOST_DEVICE int64_t lane_col(const AdafactorEntry& e, const Tile& t, int64_t lane,
                                int64_t slot) {
  return t.col_begin + (lane + slot * e.threads_per_row) * e.pack;
}
// Steps of R rows over the tile; the row of step s (none when >= row_end).
PT_HOST_DEVICE int64_t tile_steps(const AdafactorEntry& e, const Tile& t) {
  return (t.row_end - t.row_begin + e.rows_per_step - 1) / e.rows_per_step;
}
PT_HOST_DEVICE int64_t step_row(const AdafactorEntry& e, const Tile& t, const AdafactorLane& l,
                                int64_t s) {
  return t.row_begin + l.row_off + s * e.rows_per_step;
}
// Lanes that sum a row together with shuffles (a warp at most), and the shared
// slots per tile row (one per such group).
PT_HOST_DEVICE int64_t row_group(const AdafactorEntry& e) {
  return e.threads_per_row < 32 ? e.threads_per_row : 32;
}
PT_HOST_DEVICE int64_t row_groups(const AdafactorEntry& e) {
  return e.threads_per_row / row_group(e);
}
// The shared slot where a row group's first lane leaves its part of row i's sum.
PT_HOST_DEVICE int64_t row_part_slot(const AdafactorEntry& e, const Tile& t, int64_t i,
                                     int64_t lane) {
  return (i - t.row_begin) * row_groups(e) + lane / row_group(e);
}

// The slot of the sum of the new row state over one row tile of a batch.
PT_HOST_DEVICE int64_t row_sum_slot(const AdafactorEntry& e, int64_t batch, int64_t row_tile) {
  return e.row_sums + batch * e.row_tiles + row_tile;
}

// A finalize 1 block: a chunk of columns of one batch (folds the column
// partials of every row tile) or one row tile (folds the row partials of every
// column tile, and sums the new row states).
struct AdafactorFinBlock {
  int64_t batch;
  bool cols;
  int64_t begin, end;  // columns or rows
  int64_t row_tile;    // row blocks
};
PT_HOST_DEVICE AdafactorFinBlock adafactor_fin_block(const AdafactorEntry& e, int64_t local) {
  const int64_t per_batch = e.fin_blocks / e.batches;
  AdafactorFinBlock f;
  f.batch = local / per_batch;
  const int64_t rest = local - f.batch * per_batch;
  f.cols = rest < e.col_chunks;
  if (f.cols) {
    f.row_tile = 0;
    f.begin = rest * kAdafactorCudaFinCols;
    f.end = f.begin + kAdafactorCudaFinCols < e.cols ? f.begin + kAdafactorCudaFinCols : e.cols;
  } else {
    f.row_tile = rest - e.col_chunks;
    f.begin = f.row_tile * e.tile_rows;
    f.end = f.begin + e.tile_rows < e.rows ? f.begin + e.tile_rows : e.rows;
  }
  return f;
}

}  // namespace pytrainer
