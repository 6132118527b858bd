#include "common/launch_plan.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "common/adafactor_plan.h"

#include <pybind11/stl.h>

#include "cuda/table.h"
#include "python_entry.h"

namespace pytrainer {
namespace {

constexpr int64_t kBlock = cuda::kThreads;
static_assert(kBlock == kAdafactorCudaThreads, "the Adafactor kernels run cuda::kThreads threads");

LaunchDims blocks_of(int64_t blocks, int64_t shared_bytes = 0) {
  LaunchDims d;
  d.grid[0] = blocks;
  d.block[0] = kBlock;
  d.shared_bytes = shared_bytes;
  return d;
}

}  // namespace

void check_launch(const char* op, const char* kernel, const LaunchDims& d) {
  TORCH_CHECK(d.grid[0] >= 0 && d.grid[0] <= kCudaMaxGridX && d.grid[1] >= 1 &&
                  d.grid[1] <= kCudaMaxGridYZ && d.grid[2] >= 1 && d.grid[2] <= kCudaMaxGridYZ,
              op, ": the ", kernel, " launch needs a grid of ", d.grid[0], " x ", d.grid[1], " x ",
              d.grid[2], " blocks; CUDA allows up to ", kCudaMaxGridX, " x ", kCudaMaxGridYZ,
              " x ", kCudaMaxGridYZ, ": split the parameters over several param groups");
  const int64_t threads = d.block[0] * d.block[1] * d.block[2];
  TORCH_CHECK(d.block[0] >= 1 && d.block[1] >= 1 && d.block[2] >= 1 && d.block[2] <= kCudaMaxBlockZ &&
                  threads <= kCudaMaxThreadsPerBlock,
              op, ": the ", kernel, " launch has blocks of ", threads, " threads (at most ",
              kCudaMaxThreadsPerBlock, ")");
  TORCH_CHECK(d.shared_bytes >= 0 && d.shared_bytes <= kCudaMaxStaticSharedBytes, op, ": the ",
              kernel, " kernel needs ", d.shared_bytes, " bytes of shared memory (at most ",
              kCudaMaxStaticSharedBytes, " static)");
}

ElementwisePlan plan_elementwise(const char* op, const std::vector<int64_t>& numels) {
  ElementwisePlan plan;
  plan.first_chunk.reserve(numels.size());
  for (const int64_t n : numels) {
    plan.first_chunk.push_back(plan.chunks);
    plan.chunks += (n + cuda::kChunkSize - 1) / cuda::kChunkSize;
  }
  // the chunk map holds int32 entry indices, one per block
  plan.update = blocks_of(plan.chunks);
  plan.steps = blocks_of((static_cast<int64_t>(numels.size()) + kBlock - 1) / kBlock);
  check_launch(op, "update", plan.update);
  check_launch(op, "step increment", plan.steps);
  return plan;
}

AdafactorLaunches adafactor_launches(const AdafactorPlan& plan) {
  constexpr const char* op = "pytrainer::adafactor_";
  // units, batches and finalize blocks index int32 maps, one per block or thread
  TORCH_CHECK(plan.units <= kCudaMaxGridX && plan.batches <= kCudaMaxGridX &&
                  plan.fin_blocks <= kCudaMaxGridX,
              op, ": too many work units in one call (", plan.units, " units, ", plan.batches,
              " matrices, ", plan.fin_blocks, " finalize blocks; at most ", kCudaMaxGridX,
              " each): split the parameters over several param groups");
  AdafactorLaunches l;
  l.sums = blocks_of(plan.units, kAdafactorSumsShared);
  l.factors = blocks_of(plan.fin_blocks, kAdafactorReduceShared);
  l.means = blocks_of((plan.batches + kBlock - 1) / kBlock);
  l.norm = blocks_of(plan.units, kAdafactorNormShared);
  l.scalars = blocks_of(static_cast<int64_t>(plan.entries.size()), kAdafactorReduceShared);
  l.update = blocks_of(plan.units);
  check_launch(op, "pass 1 (sums)", l.sums);
  check_launch(op, "finalize 1 (factors)", l.factors);
  check_launch(op, "finalize 1 (row means)", l.means);
  check_launch(op, "pass 2 (norm)", l.norm);
  check_launch(op, "finalize 2 (scalars)", l.scalars);
  check_launch(op, "pass 3 (update)", l.update);
  return l;
}

namespace {

pybind11::dict dims_dict(const LaunchDims& d) {
  pybind11::dict out;
  out["grid"] = pybind11::make_tuple(d.grid[0], d.grid[1], d.grid[2]);
  out["block"] = pybind11::make_tuple(d.block[0], d.block[1], d.block[2]);
  out["shared_bytes"] = d.shared_bytes;
  return out;
}

// pytrainer._C.plan_elementwise(numels): the plan, and the range of every chunk
// as the kernel computes it.
pybind11::dict elementwise_for_python(const std::vector<int64_t>& numels) {
  const ElementwisePlan plan = plan_elementwise("plan_elementwise", numels);
  pybind11::list ranges;
  for (size_t i = 0; i < numels.size(); ++i) {
    cuda::TableEntry e{};
    e.numel = numels[i];
    e.first_chunk = plan.first_chunk[i];
    const int64_t end = i + 1 < numels.size() ? plan.first_chunk[i + 1] : plan.chunks;
    for (int64_t c = e.first_chunk; c < end; ++c) {
      const cuda::ChunkRange r = cuda::chunk_range(e, c);
      ranges.append(pybind11::make_tuple(static_cast<int64_t>(i), r.begin, r.end));
    }
  }
  pybind11::dict out;
  out["chunk_size"] = cuda::kChunkSize;
  out["first_chunk"] = plan.first_chunk;
  out["chunks"] = plan.chunks;
  out["chunk_ranges"] = ranges;  // per block: (tensor, begin, end)
  out["update"] = dims_dict(plan.update);
  out["steps"] = dims_dict(plan.steps);
  return out;
}

// pytrainer._C.plan_adafactor(shapes, element_sizes): the geometry of every
// tensor, its tiles as the kernels compute them, the scratch and the launches.
pybind11::dict adafactor_for_python(const std::vector<std::vector<int64_t>>& shapes,
                                    const std::vector<int64_t>& element_sizes) {
  TORCH_CHECK(shapes.size() == element_sizes.size(), "plan_adafactor: ", shapes.size(),
              " shapes but ", element_sizes.size(), " element sizes");
  const AdafactorPlan plan = plan_adafactor_shapes(shapes, element_sizes, AdafactorTarget::kCuda);
  const AdafactorLaunches launches = adafactor_launches(plan);
  pybind11::list entries;
  for (const AdafactorEntry& e : plan.entries) {
    pybind11::dict d;
    d["numel"] = e.numel;
    d["factored"] = e.factored != 0;
    d["batches"] = e.batches;
    d["rows"] = e.rows;
    d["cols"] = e.cols;
    d["tile_rows"] = e.tile_rows;
    d["tile_cols"] = e.tile_cols;
    d["first_unit"] = e.first_unit;
    d["units"] = e.units;
    d["row_tiles"] = e.row_tiles;
    d["col_tiles"] = e.col_tiles;
    d["pack"] = e.pack;
    d["threads_per_row"] = e.threads_per_row;
    d["packs_per_thread"] = e.packs_per_thread;
    d["rows_per_step"] = e.rows_per_step;
    d["tile_matrices"] = e.tile_matrices;
    d["row_partials"] = e.row_partials;
    d["col_partials"] = e.col_partials;
    d["fin_blocks"] = e.fin_blocks;
    // per unit: (batch_begin, batch_end, row_begin, row_end, col_begin, col_end)
    pybind11::list tiles;
    for (int64_t u = 0; u < e.units; ++u) {
      const Tile t = adafactor_tile(e, u);
      int64_t first = t.batch, last = t.batch + 1;
      if (e.tile_matrices > 0) {
        first = thread_matrix(e, t, 0);
        last = std::min(thread_matrix(e, t, kAdafactorCudaThreads), e.batches);
      }
      tiles.append(pybind11::make_tuple(first, last, t.row_begin, t.row_end, t.col_begin,
                                        t.col_end));
    }
    d["tiles"] = tiles;
    entries.append(d);
  }
  pybind11::dict out;
  out["entries"] = entries;
  out["units"] = plan.units;
  out["batches"] = plan.batches;
  out["partial_floats"] = plan.row_partials + plan.col_partials + plan.row_sums;
  out["fin_blocks"] = plan.fin_blocks;
  out["work_floats"] = plan.work_floats();
  pybind11::dict l;
  l["sums"] = dims_dict(launches.sums);
  l["factors"] = dims_dict(launches.factors);
  l["means"] = dims_dict(launches.means);
  l["norm"] = dims_dict(launches.norm);
  l["scalars"] = dims_dict(launches.scalars);
  l["update"] = dims_dict(launches.update);
  out["launches"] = l;
  return out;
}

const bool registered = (add_python_entry([](pybind11::module_& m) {
                           m.def("plan_elementwise", &elementwise_for_python,
                                 pybind11::arg("numels"),
                                 "The CUDA launch plan of AdamW and AnyPrecisionAdamW over "
                                 "tensors of these sizes (testing).");
                           m.def("plan_adafactor", &adafactor_for_python, pybind11::arg("shapes"),
                                 pybind11::arg("element_sizes"),
                                 "The CUDA launch plan of Adafactor over parameters of these "
                                 "shapes and element sizes (testing).");
                           pybind11::dict limits;
                           limits["max_grid_x"] = kCudaMaxGridX;
                           limits["max_grid_yz"] = kCudaMaxGridYZ;
                           limits["max_threads_per_block"] = kCudaMaxThreadsPerBlock;
                           limits["max_static_shared_bytes"] = kCudaMaxStaticSharedBytes;
                           limits["max_opt_in_shared_bytes_sm90"] = kCudaMaxOptInSharedBytesSm90;
                           m.attr("cuda_launch_limits") = limits;
                         }),
                         true);

}  // namespace
}  // namespace pytrainer
