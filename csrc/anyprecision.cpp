// pytrainer::anyprecision_adamw_: torchdistx's AnyPrecisionAdamW, momentum,
// variance and the Kahan compensation each in its own dtype (one per list),
// float32 math. Its schema, its input checks (the same on every device), and
// its steps on the CPU (every tensor of the call in one parallel region) and on
// CUDA (one table and launch per param dtype).
#include <vector>

#include "common/anyprecision_coeffs.h"
#include "op.h"

namespace pytrainer {
namespace {

constexpr const char* kOp = "pytrainer::anyprecision_adamw_";

// The tensor lists of one call.
struct Lists {
  at::TensorList params, grads, exp_avgs, exp_avg_sqs, compensations, state_steps;
};

// The scalars the kernels of both devices take as they are.
struct Settings {
  AnyPrecisionHyper hyper;
  int64_t rounding;  // AnyPrecisionRounding
  int64_t seed;
  at::IntArrayRef rounding_ids;
};

void check_args(const Lists& t, const Settings& s, const StepArgs& args) {
  TORCH_CHECK(s.rounding >= 0 && s.rounding < kNumRoundings, kOp, ": rounding=", s.rounding,
              " is not valid; 0 (nearest), 1 (Kahan compensation) or 2 (stochastic)");
  check_16_or_32_bit_params(kOp, t.params);
  check_grads(kOp, t.params, t.grads);
  check_state_list(kOp, t.params, t.exp_avgs, "exp_avgs");
  check_state_list(kOp, t.params, t.exp_avg_sqs, "exp_avg_sqs");
  if (s.rounding == kRoundKahan) {
    check_state_list(kOp, t.params, t.compensations, "compensations");
  } else {
    check_same_length(kOp, t.params, t.compensations, "compensations (no Kahan summation)", 0);
  }
  if (s.rounding == kRoundStochastic) {
    TORCH_CHECK(s.rounding_ids.size() == t.params.size(), kOp, ": rounding_ids has ",
                s.rounding_ids.size(), " values but params has ", t.params.size(),
                "; stochastic rounding needs one id per tensor");
  }
  check_steps_and_scalars(kOp, t.params, t.state_steps, args);
}

void step_cpu(const Lists& t, const Settings& s, const cpu::HostScalars& h) {
  if (h.skip) return;
  const bool kahan = s.rounding == kRoundKahan;
  const cpu::Dt m_dt = cpu::dt_of(t.exp_avgs[0].scalar_type());
  const cpu::Dt v_dt = cpu::dt_of(t.exp_avg_sqs[0].scalar_type());
  const cpu::Dt c_dt = kahan ? cpu::dt_of(t.compensations[0].scalar_type()) : cpu::kF32;
  cpu::StepCoeffs<AnyPrecisionCoeffs> coeffs(t.params.size());
  cpu::step_every_tensor<cpu::AnyPrecisionTask>(
      t.params, t.state_steps,
      [&](const cpu::IsaKernels& isa, size_t i, float step, cpu::AnyPrecisionTask& task) {
        const AnyPrecisionCoeffs* c = coeffs.at(step, [&](float at) {
          return make_anyprecision_coeffs(s.hyper, h.lr, at, h.grad_mult);
        });
        task = cpu::AnyPrecisionTask{t.params[i].data_ptr(), t.grads[i].data_ptr(),
                                     t.exp_avgs[i].data_ptr(), t.exp_avg_sqs[i].data_ptr(),
                                     kahan ? t.compensations[i].data_ptr() : nullptr, c, m_dt,
                                     v_dt, c_dt, 0u, h.write_back};
        if (s.rounding == kRoundStochastic) {
          task.rounding_key = rounding_key(static_cast<uint64_t>(s.seed),
                                           static_cast<uint32_t>(s.rounding_ids[i]),
                                           static_cast<uint32_t>(step));
        }
        return isa.anyprecision[cpu::dt_of(t.params[i].scalar_type())][s.rounding];
      });
}

#if defined(PYTRAINER_WITH_CUDA)
void step_cuda(const Lists& t, const Settings& s, const cuda::CudaCall& call) {
  const bool kahan = s.rounding == kRoundKahan;
  cuda::AnyPrecisionLaunch launch{};
  launch.hyper = s.hyper;
  launch.lr = call.ds.lr;
  launch.scalars = call.ds.scalars;
  launch.write_back_grads = call.write_back_grads;
  launch.m_dt = cuda::dtype_of(t.exp_avgs[0].scalar_type());
  launch.v_dt = cuda::dtype_of(t.exp_avg_sqs[0].scalar_type());
  launch.c_dt = kahan ? cuda::dtype_of(t.compensations[0].scalar_type()) : cuda::Dtype::F32;
  launch.rounding = static_cast<int>(s.rounding);
  launch.seed = static_cast<uint64_t>(s.seed);
  // the tag of each tensor: its stochastic-rounding id
  const at::IntArrayRef tags =
      s.rounding == kRoundStochastic ? s.rounding_ids : at::IntArrayRef();
  cuda::launch_per_dtype(
      call, {t.params, t.grads, t.exp_avgs, t.exp_avg_sqs, t.compensations}, t.state_steps,
      tags, {at::kBFloat16, at::kFloat, at::kHalf},
      [&](cuda::Dtype dtype, const cuda::DeviceTable& table) {
        launch.table = table;
        return cuda::launch_anyprecision(dtype, launch, call.stream);
      });
}
#endif

void anyprecision_adamw(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList compensations,
                        at::TensorList state_steps, at::IntArrayRef rounding_ids, double lr,
                        const OptTensor& lr_tensor, double beta1, double beta2,
                        double weight_decay, double eps, int64_t rounding, int64_t seed,
                        const OptTensor& grad_scale, const OptTensor& found_inf,
                        bool write_back_grads) {
  const Lists t{params, grads, exp_avgs, exp_avg_sqs, compensations, state_steps};
  const Settings s{AnyPrecisionHyper{beta1, beta2, weight_decay, eps}, rounding, seed,
                   rounding_ids};
  const StepArgs args{lr, lr_tensor, grad_scale, found_inf, write_back_grads};
  check_args(t, s, args);
#if defined(PYTRAINER_WITH_CUDA)
  if (params[0].is_cuda()) return step_cuda(t, s, cuda::CudaCall(params, args));
#endif
  step_cpu(t, s, cpu::host_scalars(args));
}

}  // namespace

// rounding: 0 nearest, 1 Kahan compensation, 2 stochastic (seeded by seed and
// rounding_ids, one id per tensor).
TORCH_LIBRARY_FRAGMENT(pytrainer, m) {
  define_op(m,
            "anyprecision_adamw_(Tensor(a!)[] params, Tensor(b!)[] grads, "
            "Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] compensations, "
            "Tensor(f!)[] state_steps, *, int[] rounding_ids, float lr, Tensor? lr_tensor, "
            "float beta1, float beta2, float weight_decay, float eps, int rounding, int seed, "
            "Tensor? grad_scale=None, Tensor? found_inf=None, bool write_back_grads=False) -> ()",
            &anyprecision_adamw);
}

}  // namespace pytrainer
