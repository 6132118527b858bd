// pytrainer::adafactor_: transformers' Adafactor over lists of tensors of one
// device. Its schema and its steps: on the CPU three passes over the tensors,
// each one parallel region over their work units (common/adafactor_layout.h),
// taken a cache-sized group of tensors at a time;
// on CUDA the plan of the call (tiles and partial-sum slots), its tables in
// device memory, and the five launches per param dtype.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/adafactor_plan.h"
#include "common/launch_plan.h"
#include "op.h"

namespace pytrainer {
namespace {

// The tensor lists of one call (checked by check_adafactor_args).
struct Lists {
  at::TensorList params, grads, exp_avgs, row_states, col_states, state_steps;
};

// The CPU tasks of a step: runs of up to kAdafactorCpuRunTiles tiles of one row
// band of a factored tensor, single chunks of a vector.
struct UnitRun {
  const AdafactorEntry* entry;
  int64_t unit, count;
  int64_t start;  // elements in the runs before this one, the weight of the split
};

// The runs of the selected entries among [first, last), then a sentinel (no
// entry) whose start is the elements of them all.
template <class Select>
std::vector<UnitRun> unit_runs(const AdafactorEntry* first, const AdafactorEntry* last,
                               Select select) {
  std::vector<UnitRun> runs;
  int64_t start = 0;
  for (const AdafactorEntry* e = first; e != last; ++e) {
    if (!select(*e)) continue;
    const int64_t width = e->factored ? std::min(cpu::kAdafactorCpuRunTiles, e->col_tiles) : 1;
    // units are numbered row band by row band, col_tiles per band
    const int64_t band = e->factored ? e->col_tiles : 1;
    for (int64_t first_unit = 0; first_unit < e->units; first_unit += band) {
      for (int64_t u = first_unit; u < first_unit + band; u += width) {
        const int64_t count = std::min(width, first_unit + band - u);
        runs.push_back(UnitRun{e, u, count, start});
        // a tensor's mean unit size: only its edge tiles differ, by less than a tile
        start += count * e->numel / e->units;
      }
    }
  }
  runs.push_back(UnitRun{nullptr, 0, 0, start});
  return runs;
}

// Runs `pass(entry, unit, count)` over `runs` in parallel: each thread takes
// consecutive runs of about equal elements (not an equal count of runs, which
// left a thread the large tiles of a mixed set).
template <class Pass>
void for_runs(const std::vector<UnitRun>& runs, Pass pass) {
  const int64_t n = static_cast<int64_t>(runs.size()) - 1;
  const int64_t shares = std::min<int64_t>(at::get_num_threads(), n);
  if (shares <= 0) return;
  const int64_t total = runs.back().start;
  auto share_begin = [&](int64_t s) {
    const int64_t at = total / shares * s + total % shares * s / shares;
    return std::lower_bound(runs.begin(), runs.end() - 1, at,
                            [](const UnitRun& r, int64_t v) { return r.start < v; });
  };
  at::parallel_for(0, shares, 1, [&](int64_t lo, int64_t hi) {
    const auto end = share_begin(hi);
    for (auto r = share_begin(lo); r != end; ++r) pass(*r->entry, r->unit, r->count);
  });
}

// Consecutive entries whose params and grads fit in kAdafactorCpuGroupBytesPerThread
// per thread together (a larger tensor alone), as [first, last) pairs.
std::vector<std::pair<const AdafactorEntry*, const AdafactorEntry*>> cache_groups(
    const AdafactorPlan& plan, at::TensorList params, at::TensorList grads) {
  const int64_t limit =
      cpu::kAdafactorCpuGroupBytesPerThread * std::max<int64_t>(at::get_num_threads(), 1);
  std::vector<std::pair<const AdafactorEntry*, const AdafactorEntry*>> groups;
  const AdafactorEntry* first = plan.entries.data();
  const AdafactorEntry* const end = first + plan.entries.size();
  int64_t bytes = 0;
  for (const AdafactorEntry* e = first; e != end; ++e) {
    const int64_t b =
        e->numel * (params[e->index].element_size() + grads[e->index].element_size());
    if (e != first && bytes + b > limit) {
      groups.emplace_back(first, e);
      first = e;
      bytes = 0;
    }
    bytes += b;
  }
  if (first != end) groups.emplace_back(first, end);
  return groups;
}

// Finalize 1 for one batch of a factored tensor: the row and column states from
// the partial sums of g^2, and the mean of the new row state.
void finalize_batch(const AdafactorEntry& e, int64_t b, float beta2, float one_minus_beta2,
                    float eps1, const AdafactorWork& w) {
  float* row = e.state_row + b * e.rows;
  double row_sum = 0.0;
  for (int64_t i = 0; i < e.rows; ++i) {
    float s = 0.0f;
    for (int64_t ct = 0; ct < e.col_tiles; ++ct) s += w.row_partials[row_partial_slot(e, b, i, ct)];
    row[i] = beta2 * row[i] + one_minus_beta2 * (s / static_cast<float>(e.cols) + eps1);
    row_sum += row[i];
  }
  w.mean_row[e.first_batch + b] = static_cast<float>(row_sum / static_cast<double>(e.rows));
  float* col = e.state_col + b * e.cols;
  for (int64_t j = 0; j < e.cols; ++j) {
    float s = 0.0f;
    for (int64_t rt = 0; rt < e.row_tiles; ++rt) s += w.col_partials[col_partial_slot(e, b, rt, j)];
    col[j] = beta2 * col[j] + one_minus_beta2 * (s / static_cast<float>(e.rows) + eps1);
  }
}

// hyper.lr is the float lr; beta1 is unset without a first moment.
void step_cpu(const Lists& t, AdafactorHyper hyper, std::optional<double> beta1,
              const cpu::HostScalars& h) {
  if (h.skip) return;
  hyper.lr = h.lr;
  const AdafactorPlan plan =
      plan_adafactor(t.params, t.grads, t.exp_avgs, t.row_states, t.col_states,
                     t.state_steps, AdafactorTarget::kCpu);
  const size_t n = plan.entries.size();

  at::Tensor work = at::empty({std::max<int64_t>(plan.work_floats(), 1)}, at::kFloat);
  std::vector<float> beta2(2 * n);
  std::vector<double> steps(n);
  for (size_t i = 0; i < n; ++i) {
    steps[i] = static_cast<double>(t.state_steps[i].data_ptr<float>()[0]) + 1.0;
    const double b2 = adafactor_beta2(hyper, steps[i]);
    beta2[2 * i] = static_cast<float>(b2);
    beta2[2 * i + 1] = static_cast<float>(1.0 - b2);
  }
  cpu::AdafactorCpuStep step{};
  step.work = plan.carve(work.data_ptr<float>());
  step.beta2 = beta2.data();
  step.grad_mult = static_cast<float>(h.grad_mult);
  step.eps1 = static_cast<float>(hyper.eps1);
  step.beta1 = static_cast<float>(beta1.value_or(0.0));
  step.one_minus_beta1 = static_cast<float>(1.0 - beta1.value_or(0.0));
  step.first_moment = beta1.has_value();
  step.weight_decay = static_cast<float>(hyper.weight_decay);
  step.write_back_grad = h.write_back;

  std::vector<const cpu::AdafactorKernels*> kernel_of(n);
  for (size_t i = 0; i < n; ++i) {
    kernel_of[i] = &cpu::kernels().adafactor[cpu::dt_of(t.params[i].scalar_type())];
  }
  auto factored = [](const AdafactorEntry& e) { return e.factored != 0; };
  auto any = [](const AdafactorEntry&) { return true; };

  // Group by group, so that passes 2 and 3 reread params and grads from the cache
  // that pass 1 brought them into rather than from memory.
  for (const auto& [first, last] : cache_groups(plan, t.params, t.grads)) {
    const std::vector<UnitRun> runs = unit_runs(first, last, any);
    // pass 1: sums of g^2 by row and column, of p^2; vectors finish their state
    for_runs(runs, [&](const AdafactorEntry& e, int64_t u, int64_t count) {
      const cpu::AdafactorKernels& k = *kernel_of[e.index];
      (e.factored ? k.tile_sums : k.vector_sums)(e, step, u, count);
    });
    // finalize 1: row and column states
    std::vector<std::pair<const AdafactorEntry*, int64_t>> batches;
    for (const AdafactorEntry* e = first; e != last; ++e) {
      if (e->factored && e->units > 0) {
        for (int64_t b = 0; b < e->batches; ++b) batches.emplace_back(e, b);
      }
    }
    at::parallel_for(0, static_cast<int64_t>(batches.size()), 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        const AdafactorEntry& e = *batches[k].first;
        finalize_batch(e, batches[k].second, beta2[2 * e.index], beta2[2 * e.index + 1],
                       step.eps1, step.work);
      }
    });
    // pass 2: sum of U^2 of factored tensors
    for_runs(unit_runs(first, last, factored), [&](const AdafactorEntry& e, int64_t u,
                                                   int64_t count) {
      kernel_of[e.index]->tile_norm(e, step, u, count);
    });
    // finalize 2: alpha and the clipping divisor of each tensor
    for (const AdafactorEntry* e = first; e != last; ++e) {
      double p_sq = 0.0, u_sq = 0.0;
      for (int64_t u = e->first_unit; u < e->first_unit + e->units; ++u) {
        p_sq += step.work.p_sq[u];
        u_sq += step.work.u_sq[u];
      }
      adafactor_scalars(hyper, hyper.lr, steps[e->index], e->numel, p_sq, u_sq,
                        &step.work.scalars[2 * e->index], &step.work.scalars[2 * e->index + 1]);
    }
    // pass 3: the update
    for_runs(runs, [&](const AdafactorEntry& e, int64_t u, int64_t count) {
      kernel_of[e.index]->update(e, step, u, count);
    });
  }
  cpu::advance_steps(t.state_steps);
}

#if defined(PYTRAINER_WITH_CUDA)
// The tensors of `list` at `indices` (one dtype's share of the call).
std::vector<at::Tensor> pick(at::TensorList list, const std::vector<size_t>& indices) {
  std::vector<at::Tensor> out;
  if (list.empty()) return out;
  out.reserve(indices.size());
  for (size_t i : indices) out.push_back(list[i]);
  return out;
}

void step_cuda(const Lists& t, const AdafactorHyper& hyper, const cuda::CudaCall& call) {
  size_t launch_index = 0;
  for (const auto& [dtype, indices] :
       cuda::split_by_dtype(t.params, {at::kFloat, at::kBFloat16, at::kHalf})) {
    const std::vector<at::Tensor> p = pick(t.params, indices), g = pick(t.grads, indices),
                                  m = pick(t.exp_avgs, indices), r = pick(t.row_states, indices),
                                  c = pick(t.col_states, indices), s = pick(t.state_steps, indices);
    const AdafactorPlan plan = plan_adafactor(p, g, m, r, c, s, AdafactorTarget::kCuda);
    // checked against CUDA's limits before anything is allocated
    const AdafactorLaunches launches = adafactor_launches(plan);

    // The table: entries, then the entry of each unit, factored batch and
    // finalize 1 block.
    const int64_t entry_bytes = static_cast<int64_t>(plan.entries.size() * sizeof(AdafactorEntry));
    const int64_t units_at = cuda::align16(entry_bytes);
    const int64_t batches_at = cuda::align16(units_at + plan.units * 4);
    const int64_t fin_at = cuda::align16(batches_at + plan.batches * 4);
    const std::string key(reinterpret_cast<const char*>(plan.entries.data()), entry_bytes);
    const cuda::DeviceBytes table = cuda::upload_cached(
        key, fin_at + plan.fin_blocks * 4,
        [&](uint8_t* h) {
          std::memcpy(h, plan.entries.data(), entry_bytes);
          auto* units = reinterpret_cast<int32_t*>(h + units_at);
          auto* batches = reinterpret_cast<int32_t*>(h + batches_at);
          auto* fin = reinterpret_cast<int32_t*>(h + fin_at);
          for (size_t i = 0; i < plan.entries.size(); ++i) {
            const AdafactorEntry& e = plan.entries[i];
            for (int64_t u = 0; u < e.units; ++u) *units++ = static_cast<int32_t>(i);
            if (e.factored && e.units > 0) {
              for (int64_t b = 0; b < e.batches; ++b) *batches++ = static_cast<int32_t>(i);
              for (int64_t f = 0; f < e.fin_blocks; ++f) *fin++ = static_cast<int32_t>(i);
            }
          }
        },
        call.device, cuda::TablePlace{call.table_slot, launch_index++});

    const at::Tensor work = at::empty({std::max<int64_t>(plan.work_floats(), 1)},
                                      at::TensorOptions().dtype(at::kFloat).device(call.device));
    cuda::AdafactorLaunch launch{};
    launch.entries = reinterpret_cast<const AdafactorEntry*>(table.data);
    launch.unit_entry = reinterpret_cast<const int32_t*>(table.data + units_at);
    launch.batch_entry = reinterpret_cast<const int32_t*>(table.data + batches_at);
    launch.fin_entry = reinterpret_cast<const int32_t*>(table.data + fin_at);
    launch.num_entries = static_cast<int64_t>(plan.entries.size());
    launch.units = plan.units;
    launch.batches = plan.batches;
    launch.work = plan.carve(work.data_ptr<float>());
    launch.hyper = hyper;
    launch.hyper.lr = call.ds.lr;
    launch.scalars = call.ds.scalars;
    launch.write_back_grads = call.write_back_grads;
    C10_CUDA_CHECK(cuda::launch_adafactor(cuda::dtype_of(dtype), launch, launches, call.stream));
  }
}
#endif

void adafactor(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList row_states, at::TensorList col_states, at::TensorList state_steps,
               double lr, const OptTensor& lr_tensor, double eps1, double eps2,
               double clip_threshold, double decay_rate, std::optional<double> beta1,
               double weight_decay, bool scale_parameter, bool relative_step, bool warmup_init,
               const OptTensor& grad_scale, const OptTensor& found_inf, bool write_back_grads,
               int64_t table_slot) {
  const StepArgs args{lr, lr_tensor, grad_scale, found_inf, write_back_grads,
                       table_slot};
  check_adafactor_args(params, grads, exp_avgs, row_states, col_states, state_steps,
                       beta1.has_value(), args);
  const Lists t{params, grads, exp_avgs, row_states, col_states, state_steps};
  const AdafactorHyper hyper{lr, eps1, eps2, clip_threshold, decay_rate, beta1.value_or(-1.0),
                             weight_decay, scale_parameter, relative_step, warmup_init};
#if defined(PYTRAINER_WITH_CUDA)
  if (params[0].is_cuda()) return step_cuda(t, hyper, cuda::CudaCall(params, args));
#endif
  step_cpu(t, hyper, beta1, cpu::host_scalars(args));
}

}  // namespace

// A parameter with 2+ dims keeps row and column states of its last two dims
// (row_states[i]: shape[:-1], col_states[i]: shape[:-2] + shape[-1:]); others
// keep a full state in row_states[i] and an empty col_states[i]. exp_avgs is
// empty without beta1. States are float32.
TORCH_LIBRARY_FRAGMENT(pytrainer, m) {
  define_op(m,
            "adafactor_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
            "Tensor(d!)[] row_states, Tensor(e!)[] col_states, Tensor(f!)[] state_steps, *, "
            "float lr, Tensor? lr_tensor, float eps1, float eps2, float clip_threshold, "
            "float decay_rate, float? beta1, float weight_decay, bool scale_parameter, "
            "bool relative_step, bool warmup_init, Tensor? grad_scale=None, "
            "Tensor? found_inf=None, bool write_back_grads=False, int table_slot=-1) -> ()",
            &adafactor);
}

}  // namespace pytrainer
