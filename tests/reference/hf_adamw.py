"""Hugging Face's classic AdamW (``transformers.optimization.AdamW``, removed in
transformers 4.50) written out on plain tensors: the oracle of AdamWHF."""
from __future__ import annotations

import math

import torch


def adamw_hf_step(p: torch.Tensor, g: torch.Tensor, state: dict, *, lr: float = 1e-3,
                  betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                  weight_decay: float = 0.0, correct_bias: bool = True) -> torch.Tensor:
    """One step; updates ``state`` (``step``, ``exp_avg``, ``exp_avg_sq``) and
    returns the new parameter."""
    beta1, beta2 = betas
    state["step"] += 1
    t = state["step"]
    m = state["exp_avg"] = state["exp_avg"] * beta1 + (1 - beta1) * g
    v = state["exp_avg_sq"] = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    denom = v.sqrt() + eps
    step_size = lr
    if correct_bias:
        step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    p = p - step_size * (m / denom)
    if weight_decay > 0:
        p = p - lr * weight_decay * p
    return p
