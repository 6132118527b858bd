// pytrainer::adafactor_ on the CPU: three passes over memory, each one parallel
// region over the work units of every tensor (common/adafactor_layout.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/adafactor_plan.h"
#include "cpu/dispatch.h"
#include "cpu/dtypes.h"

namespace pytrainer::cpu {
namespace {

// The CPU tasks of a step: runs of up to kAdafactorCpuRunTiles tiles of one row
// band of a factored tensor, single chunks of a vector.
struct UnitRun {
  const AdafactorEntry* entry;
  int64_t unit, count;
};

std::vector<UnitRun> unit_runs(const AdafactorPlan& plan) {
  std::vector<UnitRun> runs;
  runs.reserve(static_cast<size_t>(plan.units));
  for (const AdafactorEntry& e : plan.entries) {
    const int64_t width = e.factored ? std::min(kAdafactorCpuRunTiles, e.col_tiles) : 1;
    // units are numbered row band by row band, col_tiles per band
    const int64_t band = e.factored ? e.col_tiles : 1;
    for (int64_t first = 0; first < e.units; first += band) {
      for (int64_t u = first; u < first + band; u += width) {
        runs.push_back(UnitRun{&e, u, std::min(width, first + band - u)});
      }
    }
  }
  return runs;
}

// Runs `pass(entry, unit, count)` over the runs of the selected entries in parallel.
template <class Select, class Pass>
void for_runs(const std::vector<UnitRun>& runs, Select select, Pass pass) {
  at::parallel_for(0, static_cast<int64_t>(runs.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      if (select(*runs[k].entry)) pass(*runs[k].entry, runs[k].unit, runs[k].count);
    }
  });
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

void adafactor_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                   at::TensorList row_states, at::TensorList col_states,
                   at::TensorList state_steps, double lr,
                   const std::optional<at::Tensor>& lr_tensor, double eps1, double eps2,
                   double clip_threshold, double decay_rate, std::optional<double> beta1,
                   double weight_decay, bool scale_parameter, bool relative_step,
                   bool warmup_init, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf, bool write_back_grads) {
  check_adafactor_args(params, grads, exp_avgs, row_states, col_states, state_steps,
                       beta1.has_value(), lr_tensor, grad_scale, found_inf);
  if (found_inf && found_inf->item<double>() != 0.0) return;
  if (lr_tensor) lr = lr_tensor->item<double>();
  const AdafactorHyper hyper{lr, eps1, eps2, clip_threshold, decay_rate, beta1.value_or(-1.0),
                             weight_decay, scale_parameter, relative_step, warmup_init};
  const AdafactorPlan plan =
      plan_adafactor(params, grads, exp_avgs, row_states, col_states, state_steps);
  const size_t n = plan.entries.size();

  at::Tensor work = at::empty({std::max<int64_t>(plan.work_floats(), 1)}, at::kFloat);
  std::vector<float> beta2(2 * n);
  std::vector<double> steps(n);
  for (size_t i = 0; i < n; ++i) {
    steps[i] = static_cast<double>(state_steps[i].data_ptr<float>()[0]) + 1.0;
    const double b2 = adafactor_beta2(hyper, steps[i]);
    beta2[2 * i] = static_cast<float>(b2);
    beta2[2 * i + 1] = static_cast<float>(1.0 - b2);
  }
  AdafactorCpuStep step{};
  step.work = plan.carve(work.data_ptr<float>());
  step.beta2 = beta2.data();
  step.grad_mult = grad_scale ? static_cast<float>(1.0 / grad_scale->item<double>()) : 1.0f;
  step.eps1 = static_cast<float>(eps1);
  step.beta1 = static_cast<float>(beta1.value_or(0.0));
  step.one_minus_beta1 = static_cast<float>(1.0 - beta1.value_or(0.0));
  step.first_moment = beta1.has_value();
  step.weight_decay = static_cast<float>(weight_decay);
  step.write_back_grad = grad_scale.has_value() && write_back_grads;

  std::vector<const AdafactorKernels*> kernel_of(n);
  for (size_t i = 0; i < n; ++i) {
    kernel_of[i] = &kernels().adafactor[dt_of(params[i].scalar_type())];
  }
  auto factored = [](const AdafactorEntry& e) { return e.factored != 0; };
  auto any = [](const AdafactorEntry&) { return true; };

  const std::vector<UnitRun> runs = unit_runs(plan);
  // pass 1: sums of g^2 by row and column, of p^2; vectors finish their state
  for_runs(runs, any, [&](const AdafactorEntry& e, int64_t u, int64_t count) {
    const AdafactorKernels& k = *kernel_of[e.index];
    (e.factored ? k.tile_sums : k.vector_sums)(e, step, u, count);
  });
  // finalize 1: row and column states
  std::vector<std::pair<const AdafactorEntry*, int64_t>> batches;
  batches.reserve(plan.batches);
  for (const AdafactorEntry& e : plan.entries) {
    if (e.factored && e.units > 0) {
      for (int64_t b = 0; b < e.batches; ++b) batches.emplace_back(&e, b);
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
  for_runs(runs, factored, [&](const AdafactorEntry& e, int64_t u, int64_t count) {
    kernel_of[e.index]->tile_norm(e, step, u, count);
  });
  // finalize 2: alpha and the clipping divisor of each tensor
  for (const AdafactorEntry& e : plan.entries) {
    double p_sq = 0.0, u_sq = 0.0;
    for (int64_t u = e.first_unit; u < e.first_unit + e.units; ++u) {
      p_sq += step.work.p_sq[u];
      u_sq += step.work.u_sq[u];
    }
    adafactor_scalars(hyper, lr, steps[e.index], e.numel, p_sq, u_sq,
                      &step.work.scalars[2 * e.index], &step.work.scalars[2 * e.index + 1]);
  }
  // pass 3: the update
  for_runs(runs, any, [&](const AdafactorEntry& e, int64_t u, int64_t count) {
    kernel_of[e.index]->update(e, step, u, count);
  });
  for (const at::Tensor& s : state_steps) s.data_ptr<float>()[0] += 1.0f;
}

}  // namespace

TORCH_LIBRARY_IMPL(pytrainer, CPU, m) { m.impl("adafactor_", &adafactor_cpu); }

}  // namespace pytrainer::cpu
