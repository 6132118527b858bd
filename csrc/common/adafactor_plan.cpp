#include "common/adafactor_plan.h"

#include <c10/util/Exception.h>

#include <vector>

namespace pytrainer {
namespace {

constexpr const char* kOp = "pytrainer::adafactor_";

// The state sizes the factored second moment needs: shape[:-1] and
// shape[:-2] + shape[-1:] (products, not divisions: a dim may be 0).
int64_t numel_without_dim(const at::Tensor& p, int64_t skipped) {
  int64_t n = 1;
  for (int64_t d = 0; d < p.dim(); ++d) {
    if (d != skipped) n *= p.size(d);
  }
  return n;
}
int64_t rows_numel(const at::Tensor& p) { return numel_without_dim(p, p.dim() - 1); }
int64_t cols_numel(const at::Tensor& p) { return numel_without_dim(p, p.dim() - 2); }

void check_state(const at::Tensor& p, const at::Tensor& s, const char* name, size_t i,
                 int64_t expected) {
  TORCH_CHECK(s.defined() && s.layout() == at::kStrided, kOp, ": ", name, "[", i,
              "] must be a dense tensor");
  TORCH_CHECK(s.scalar_type() == at::kFloat, kOp, ": ", name, "[", i, "] has dtype ",
              s.scalar_type(), "; Adafactor keeps its states in float32");
  TORCH_CHECK(s.device() == p.device(), kOp, ": ", name, "[", i, "] is on ", s.device(),
              " but params[", i, "] is on ", p.device());
  TORCH_CHECK(s.numel() == expected, kOp, ": ", name, "[", i, "] has ", s.numel(),
              " elements but params[", i, "] of shape ", p.sizes(), " needs ", expected);
  TORCH_CHECK(s.numel() == 0 || s.is_contiguous(), kOp, ": ", name, "[", i,
              "] must be contiguous");
}

}  // namespace

AdafactorWork AdafactorPlan::carve(float* base) const {
  AdafactorWork w;
  w.row_partials = base;
  w.col_partials = w.row_partials + row_partials;
  w.p_sq = w.col_partials + col_partials;
  w.u_sq = w.p_sq + units;
  w.mean_row = w.u_sq + units;
  w.scalars = w.mean_row + batches;
  w.row_sums = w.scalars + 2 * static_cast<int64_t>(entries.size());
  return w;
}

void check_adafactor_args(TensorList params, TensorList grads, TensorList exp_avgs,
                          TensorList row_states, TensorList col_states, TensorList state_steps,
                          bool first_moment, const StepArgs& args) {
  check_16_or_32_bit_params(kOp, params);
  check_grads(kOp, params, grads);
  if (first_moment) {
    check_like_params(kOp, params, exp_avgs, "exp_avgs", at::kFloat);
  } else {
    check_same_length(kOp, params, exp_avgs, "exp_avgs (beta1=None)", 0);
  }
  check_same_length(kOp, params, row_states, "row_states", params.size());
  check_same_length(kOp, params, col_states, "col_states", params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const bool factored = p.dim() >= 2;
    // The factored moment is over the last two dims as indexed, so their
    // elements must be where a row-major layout puts them.
    TORCH_CHECK(!factored || p.is_contiguous(), kOp, ": params[", i, "] (shape ", p.sizes(),
                ", strides ", p.strides(),
                ") is not contiguous; Adafactor factors the last two dims and needs "
                "row-major parameters");
    check_state(p, row_states[i], "row_states", i, factored ? rows_numel(p) : p.numel());
    check_state(p, col_states[i], "col_states", i, factored ? cols_numel(p) : 0);
  }
  check_steps_and_scalars(kOp, params, state_steps, args);
}

namespace {

// The geometry and offsets of entry i, appended to `plan`.
void place_entry(AdafactorPlan& plan, size_t i, const int64_t* sizes, int64_t dim,
                 int64_t element_size, AdafactorTarget target) {
  AdafactorEntry& e = plan.entries[i];
  const bool cuda = target == AdafactorTarget::kCuda;
  if (cuda) {
    adafactor_cuda_geometry(e, sizes, dim, element_size);
  } else {
    adafactor_geometry(e, sizes, dim, element_size);
  }
  e.index = static_cast<int32_t>(i);
  e.first_unit = plan.units;
  plan.units += e.units;
  if (e.factored) {
    e.first_batch = plan.batches;
    plan.batches += e.batches;
    e.row_partials = plan.row_partials;
    plan.row_partials +=
        cuda ? adafactor_cuda_row_partials(e) : e.batches * e.rows * e.col_tiles;
    e.col_partials = plan.col_partials;
    plan.col_partials +=
        cuda ? adafactor_cuda_col_partials(e) : e.batches * e.row_tiles * e.cols;
    if (cuda) {
      e.row_sums = plan.row_sums;
      plan.row_sums += adafactor_cuda_row_sums(e);
      e.first_fin_block = plan.fin_blocks;
      plan.fin_blocks += e.fin_blocks;
    }
  }
}

}  // namespace

AdafactorPlan plan_adafactor_shapes(const std::vector<std::vector<int64_t>>& shapes,
                                    const std::vector<int64_t>& element_sizes,
                                    AdafactorTarget target) {
  AdafactorPlan plan;
  plan.entries.resize(shapes.size());
  for (size_t i = 0; i < shapes.size(); ++i) {
    for (const int64_t size : shapes[i]) {
      TORCH_CHECK(size >= 0, "plan_adafactor: shape ", i, " has a negative size");
    }
    TORCH_CHECK(element_sizes[i] == 2 || element_sizes[i] == 4, "plan_adafactor: element size ",
                element_sizes[i], " of shape ", i, "; Adafactor takes 2- or 4-byte parameters");
    plan.entries[i] = AdafactorEntry{};
    place_entry(plan, i, shapes[i].data(), static_cast<int64_t>(shapes[i].size()),
                element_sizes[i], target);
  }
  return plan;
}

AdafactorPlan plan_adafactor(TensorList params, TensorList grads, TensorList exp_avgs,
                             TensorList row_states, TensorList col_states,
                             TensorList state_steps, AdafactorTarget target) {
  AdafactorPlan plan;
  plan.entries.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    AdafactorEntry& e = plan.entries[i];
    e = AdafactorEntry{};
    e.param = p.data_ptr();
    e.grad = grads[i].data_ptr();
    e.exp_avg = exp_avgs.empty() ? nullptr : exp_avgs[i].data_ptr<float>();
    e.state_row = row_states[i].data_ptr<float>();
    e.state_col = col_states[i].numel() > 0 ? col_states[i].data_ptr<float>() : nullptr;
    e.step = state_steps[i].data_ptr<float>();
    place_entry(plan, i, p.sizes().data(), p.dim(), p.element_size(), target);
  }
  return plan;
}

}  // namespace pytrainer
