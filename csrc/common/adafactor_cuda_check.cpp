// pytrainer._C.emulate_adafactor_cuda(shapes, element_sizes): the CUDA Adafactor
// kernels' indexing walked on the host (testing). Every block and thread of
// pass 1 and finalize 1 is run through the index functions the kernels use
// (common/adafactor_cuda_layout.h), counting which elements each thread owns
// and which partial sums and states each kernel writes and reads, so the CPU
// tests check the GPU's indexing: every element once, every partial written
// once and read once, every state written once.
#include <c10/util/Exception.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <vector>

#include "common/adafactor_plan.h"
#include "python_entry.h"

namespace pytrainer {
namespace {

// Counts per slot; `errors` counts slots not hit exactly once.
struct Counts {
  std::vector<int32_t> n;
  explicit Counts(int64_t size) : n(static_cast<size_t>(size), 0) {}
  void hit(int64_t slot, int64_t& out_of_range) {
    if (slot < 0 || slot >= static_cast<int64_t>(n.size())) {
      ++out_of_range;
      return;
    }
    ++n[static_cast<size_t>(slot)];
  }
  int64_t errors() const {
    int64_t bad = 0;
    for (const int32_t c : n) bad += c != 1;
    return bad;
  }
};

pybind11::dict emulate(const std::vector<std::vector<int64_t>>& shapes,
                       const std::vector<int64_t>& element_sizes) {
  TORCH_CHECK(shapes.size() == element_sizes.size(), "emulate_adafactor_cuda: ", shapes.size(),
              " shapes but ", element_sizes.size(), " element sizes");
  const AdafactorPlan plan = plan_adafactor_shapes(shapes, element_sizes, AdafactorTarget::kCuda);
  const int64_t threads = kAdafactorCudaThreads;
  int64_t out_of_range = 0, element_errors = 0, max_row_slot = -1, max_fin_span = 0;
  Counts row_part_w(plan.row_partials), row_part_r(plan.row_partials);
  Counts col_part_w(plan.col_partials), col_part_r(plan.col_partials);
  Counts sums_w(plan.row_sums), sums_r(plan.row_sums), means_w(plan.batches);
  pybind11::list active_per_entry, row_state_errors, col_state_errors;

  for (const AdafactorEntry& e : plan.entries) {
    pybind11::list active;  // per unit: threads owning a (row, pack) slot in the first step
    if (!e.factored || e.units == 0) {
      active_per_entry.append(active);
      row_state_errors.append(0);
      col_state_errors.append(0);
      continue;
    }
    std::vector<uint8_t> seen(static_cast<size_t>(e.numel), 0);
    // The kernels keep kAdafactorCudaThreadElems values per thread in registers
    // and take no pack slot past them: a geometry that gave a thread more packs
    // would leave columns unowned, which the element count then shows.
    const int64_t register_slots = kAdafactorCudaThreadElems / e.pack;
    Counts row_states(e.batches * e.rows), col_states(e.batches * e.cols);
    // the sum of a row tile's new row states: the mean itself for a single row tile
    auto row_total = [&](int64_t batch, int64_t row_tile) {
      if (e.row_tiles == 1) {
        means_w.hit(e.first_batch + batch, out_of_range);
      } else {
        sums_w.hit(row_sum_slot(e, batch, row_tile), out_of_range);
      }
    };
    // pass 1 (passes 2 and 3 walk the same slots)
    for (int64_t u = 0; u < e.units && e.tile_matrices > 0; ++u) {  // a thread per matrix
      const Tile t = adafactor_tile(e, u);
      int64_t busy = 0;
      for (int64_t th = 0; th < threads; ++th) {
        const int64_t b = thread_matrix(e, t, th);
        if (b >= e.batches) continue;
        ++busy;
        for (int64_t at = b * e.rows * e.cols; at < (b + 1) * e.rows * e.cols; ++at) {
          if (at < 0 || at >= e.numel) {
            ++out_of_range;
          } else {
            ++seen[static_cast<size_t>(at)];
          }
        }
        for (int64_t i = 0; i < e.rows; ++i) row_states.hit(b * e.rows + i, out_of_range);
        for (int64_t c = 0; c < e.cols; ++c) col_states.hit(b * e.cols + c, out_of_range);
        means_w.hit(e.first_batch + b, out_of_range);
      }
      active.append(busy);
    }
    for (int64_t u = 0; u < e.units && e.tile_matrices == 0; ++u) {
      const Tile t = adafactor_tile(e, u);
      int64_t busy = 0;
      for (int64_t th = 0; th < threads; ++th) {
        const AdafactorLane l = adafactor_lane(e, th);
        busy += step_row(e, t, l, 0) < t.row_end && lane_col(e, t, l.lane, 0) < t.col_end;
        for (int64_t s = 0; s < tile_steps(e, t); ++s) {
          const int64_t i = step_row(e, t, l, s);
          if (i >= t.row_end) continue;
          if (row_groups(e) > 1 && l.lane % row_group(e) == 0) {
            const int64_t slot = row_part_slot(e, t, i, l.lane);
            if (slot > max_row_slot) max_row_slot = slot;
          }
          for (int64_t m = 0; m < std::min(e.packs_per_thread, register_slots); ++m) {
            const int64_t c0 = lane_col(e, t, l.lane, m);
            for (int64_t c = c0; c < c0 + e.pack && c < t.col_end; ++c) {
              const int64_t at = (t.batch * e.rows + i) * e.cols + c;
              if (at < 0 || at >= e.numel) {
                ++out_of_range;
              } else {
                ++seen[static_cast<size_t>(at)];
              }
            }
          }
        }
      }
      active.append(busy);
      for (int64_t i = t.row_begin; i < t.row_end; ++i) {
        if (e.col_tiles == 1) {
          row_states.hit(t.batch * e.rows + i, out_of_range);
        } else {
          row_part_w.hit(row_partial_slot(e, t.batch, i, t.col_tile), out_of_range);
        }
      }
      if (e.col_tiles == 1) row_total(t.batch, t.row_tile);
      for (int64_t m = 0; m < std::min(e.packs_per_thread, register_slots); ++m) {
        for (int64_t q = 0; q < e.threads_per_row * e.pack; ++q) {
          const int64_t c = lane_col(e, t, q / e.pack, m) + q % e.pack;
          if (c >= t.col_end) continue;
          if (e.row_tiles == 1) {
            col_states.hit(t.batch * e.cols + c, out_of_range);
          } else {
            col_part_w.hit(col_partial_slot(e, t.batch, t.row_tile, c), out_of_range);
          }
        }
      }
    }
    for (const uint8_t n : seen) element_errors += n != 1;
    // finalize 1
    for (int64_t local = 0; local < e.fin_blocks; ++local) {
      const AdafactorFinBlock f = adafactor_fin_block(e, local);
      if (f.end - f.begin > max_fin_span && f.cols) max_fin_span = f.end - f.begin;
      for (int64_t x = f.begin; x < f.end; ++x) {
        if (f.cols) {
          for (int64_t rt = 0; rt < e.row_tiles; ++rt) {
            col_part_r.hit(col_partial_slot(e, f.batch, 0, x) + rt * e.cols, out_of_range);
          }
          col_states.hit(f.batch * e.cols + x, out_of_range);
        } else {
          for (int64_t ct = 0; ct < e.col_tiles; ++ct) {
            row_part_r.hit(row_partial_slot(e, f.batch, x, 0) + ct, out_of_range);
          }
          row_states.hit(f.batch * e.rows + x, out_of_range);
        }
      }
      if (!f.cols) row_total(f.batch, f.row_tile);
    }
    // the row means of matrices of several row tiles
    for (int64_t b = 0; b < e.batches && e.row_tiles > 1; ++b) {
      for (int64_t rt = 0; rt < e.row_tiles; ++rt) {
        sums_r.hit(row_sum_slot(e, b, 0) + rt, out_of_range);
      }
      means_w.hit(e.first_batch + b, out_of_range);
    }
    active_per_entry.append(active);
    row_state_errors.append(row_states.errors());
    col_state_errors.append(col_states.errors());
  }

  pybind11::dict out;
  out["element_errors"] = element_errors;  // elements not owned by exactly one thread
  out["out_of_range"] = out_of_range;
  out["row_partial_errors"] = row_part_w.errors() + row_part_r.errors();
  out["col_partial_errors"] = col_part_w.errors() + col_part_r.errors();
  out["row_sum_errors"] = sums_w.errors() + sums_r.errors();
  out["mean_errors"] = means_w.errors();
  out["row_state_errors"] = row_state_errors;  // per entry
  out["col_state_errors"] = col_state_errors;
  out["active_threads"] = active_per_entry;  // per entry, per unit
  out["max_row_slot"] = max_row_slot;
  out["row_slots"] = kAdafactorCudaRowSlots;
  out["max_fin_cols"] = max_fin_span;  // columns of the widest finalize column block
  out["block_threads"] = threads;
  return out;
}

const bool registered = (add_python_entry([](pybind11::module_& m) {
                           m.def("emulate_adafactor_cuda", &emulate, pybind11::arg("shapes"),
                                 pybind11::arg("element_sizes"),
                                 "The CUDA Adafactor kernels' indexing walked on the host "
                                 "(testing).");
                         }),
                         true);

}  // namespace
}  // namespace pytrainer
