"""Any-precision AdamW written from its definition in plain PyTorch.

``anyprecision_step`` is the oracle of the fused kernels: float32 math, every
stored value rounded once to its dtype (momentum and variance as stored feed
the update). ``TorchdistxAnyPrecisionAdamW`` is torchdistx's original per-tensor
loop (each op rounding in its tensor's dtype), the anchor of the benchmark.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


# ------------------------------------------------ the counter-based random stream
def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def rounding_key(seed: int, tensor_id: int, step: int) -> int:
    h = lambda v: int(hash32(torch.tensor(v & MASK32, dtype=torch.int64)))
    k = h((seed & MASK32) ^ 0x9E3779B9)
    k = h(k ^ ((seed >> 32) & MASK32))
    k = h(k ^ tensor_id)
    return h(k ^ step)


def rounding_bits(key: int, numel: int) -> torch.Tensor:
    index = torch.arange(numel, dtype=torch.int64)
    return hash32(hash32(key ^ (index & MASK32)) ^ (index >> 32))


# ------------------------------------------------------------ stochastic rounding
def stochastic_round(x: torch.Tensor, dtype: torch.dtype, bits: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded to ``dtype`` up or down with probability given by its
    position between the two neighbours (random ``bits``, one uint32 per element)."""
    x = x.float().flatten()
    if dtype == torch.float32:
        return x
    if dtype == torch.bfloat16:
        u = x.view(torch.int32).to(torch.int64) & MASK32
        u = ((u + (bits & 0xFFFF)) & 0xFFFF0000)
        out = u.to(torch.int32).view(torch.float32)  # wraps to int32 as the bit pattern
        return torch.where(torch.isnan(x), x, out).to(torch.bfloat16)
    assert dtype == torch.float16
    nearest = x.to(torch.float16)
    magnitude_bits = nearest.view(torch.int16).to(torch.int32) & 0x7FFF
    too_far = nearest.float().abs() > x.abs()
    low_bits = torch.where(too_far, magnitude_bits - 1, magnitude_bits)
    sign = (x < 0).to(torch.int32) << 15
    low = (low_bits | sign).to(torch.int16).view(torch.float16)
    high = ((low_bits + 1).clamp(max=0x7BFF) | sign).to(torch.int16).view(torch.float16)
    gap = high.float() - low.float()
    fraction = torch.where(gap != 0, (x - low.float()) / gap, torch.zeros_like(x))
    uniform = (bits >> 8).to(torch.float32) * 2.0 ** -24
    out = torch.where(uniform < fraction, high, low)
    return torch.where(low.float() == x, x.to(torch.float16), out)


# ------------------------------------------------------------------- one step
def correctly_rounded_sqrt(x: torch.Tensor) -> torch.Tensor:
    """IEEE sqrt of float32 values (the kernels' sqrt). torch's vectorised CPU sqrt
    is not always correctly rounded; float64 sqrt rounded to float32 is (53 bits
    are enough for the double rounding to be exact)."""
    return x.double().sqrt().to(x.dtype)


def divided_by(x: torch.Tensor, divisor: float) -> torch.Tensor:
    """x / divisor with IEEE division (the kernels'), on every device: torch on
    CUDA multiplies by the reciprocal of a Python number or of a 0-d CPU tensor,
    which can be an ulp off; a divisor on x's device divides."""
    return x / torch.tensor(divisor, dtype=x.dtype, device=x.device)


def anyprecision_step(p, g, m, v, c, step: int, *, lr: float, beta1: float, beta2: float,
                      eps: float, weight_decay: float, rounding: str, grad_scale: float = 1.0,
                      bits: torch.Tensor | None = None):
    """Returns new (p, m, v, c) in the input dtypes; ``rounding`` is nearest, kahan or
    stochastic (then ``bits`` holds the random stream of this tensor and step)."""
    P = p.float()
    G = g.float() * (1.0 / grad_scale)
    if weight_decay != 0:
        P = P * (1 - lr * weight_decay)
    M = (beta1 * m.float() + (1 - beta1) * G).to(m.dtype)
    V = (beta2 * v.float() + ((1 - beta2) * G) * G).to(v.dtype)
    denom = divided_by(correctly_rounded_sqrt(V.float()), (1 - beta2 ** step) ** 0.5) + eps
    U = (-(lr / (1 - beta1 ** step)) * M.float()) / denom
    new_c = None
    if rounding == "kahan":
        C = c.float() + U
        new_p = (P + C).to(p.dtype)
        new_c = (C + (P - new_p.float())).to(c.dtype)
    elif rounding == "stochastic":
        new_p = stochastic_round(P + U, p.dtype, bits).reshape(p.shape)
    else:
        new_p = (P + U).to(p.dtype)
    return new_p, M, V, new_c


class TorchdistxAnyPrecisionAdamW(torch.optim.Optimizer):
    """torchdistx's AnyPrecisionAdamW step, op by op: a per-tensor Python loop
    (the reference algorithm Hugging Face's ``adamw_anyprecision`` needs)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 use_kahan_summation=False, momentum_dtype=torch.float32,
                 variance_dtype=torch.bfloat16, compensation_buffer_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      use_kahan_summation=use_kahan_summation,
                                      momentum_dtype=momentum_dtype, variance_dtype=variance_dtype,
                                      compensation_buffer_dtype=compensation_buffer_dtype))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=group["momentum_dtype"])
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=group["variance_dtype"])
                    if group["use_kahan_summation"]:
                        state["compensation"] = torch.zeros_like(
                            p, dtype=group["compensation_buffer_dtype"])
                state["step"] += 1
                step = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                grad = p.grad
                if wd:
                    p.data.mul_(1 - lr * wd)
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1 ** step
                step_size = lr / bias_correction1
                denom_correction = (1 - beta2 ** step) ** 0.5
                centered_variance = (exp_avg_sq.sqrt() / denom_correction).add_(eps, alpha=1)
                if group["use_kahan_summation"]:
                    compensation = state["compensation"]
                    compensation.addcdiv_(exp_avg, centered_variance, value=-step_size)
                    temp_buffer = p.detach().clone()
                    p.data.add_(compensation)
                    compensation.add_(temp_buffer.sub_(p.data))
                else:
                    p.data.addcdiv_(exp_avg, centered_variance, value=-step_size)
