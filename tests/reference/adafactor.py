"""Adafactor written from transformers' definition in plain PyTorch, in float64.

float64 makes it an oracle for any float32 implementation: over millions of
elements transformers' own float32 code drifts from the exact result by a few
1e-6 (its norms and means round), more than the fused kernels do.
"""
from __future__ import annotations

import math

import torch


def new_state(p: torch.Tensor, beta1: float | None) -> dict:
    state = {"step": 0}
    if p.dim() >= 2:
        state["exp_avg_sq_row"] = torch.zeros(p.shape[:-1], dtype=torch.float64)
        state["exp_avg_sq_col"] = torch.zeros(p.shape[:-2] + p.shape[-1:], dtype=torch.float64)
    else:
        state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float64)
    if beta1 is not None:
        state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float64)
    return state


def rms(x: torch.Tensor) -> float:
    return (x.norm(2) / math.sqrt(x.numel())).item() if x.numel() else 0.0


def adafactor_step(p: torch.Tensor, g: torch.Tensor, state: dict, *, lr=None, eps=(1e-30, 1e-3),
                   clip_threshold=1.0, decay_rate=-0.8, beta1=None, weight_decay=0.0,
                   scale_parameter=True, relative_step=True, warmup_init=False, grad_scale=1.0):
    """One step on float64 copies of p and g; updates ``state`` in place and
    returns the new parameter (float64)."""
    P, G = p.double(), g.double() / grad_scale
    state["step"] += 1
    t = state["step"]
    rho = lr
    if relative_step:
        rho = min(1e-6 * t if warmup_init else 1e-2, 1.0 / math.sqrt(t))
    alpha = rho * max(eps[1], rms(P)) if scale_parameter else rho
    beta2t = 1.0 - math.pow(t, decay_rate)
    update = G ** 2 + eps[0]
    if P.dim() >= 2:
        row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
        row.mul_(beta2t).add_(update.mean(dim=-1), alpha=1.0 - beta2t)
        col.mul_(beta2t).add_(update.mean(dim=-2), alpha=1.0 - beta2t)
        r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
        c_factor = col.unsqueeze(-2).rsqrt()
        update = r_factor * c_factor * G
    else:
        v = state["exp_avg_sq"]
        v.mul_(beta2t).add_(update, alpha=1.0 - beta2t)
        update = v.rsqrt() * G
    update = update / max(1.0, rms(update) / clip_threshold)
    update = update * alpha
    if beta1 is not None:
        m = state["exp_avg"]
        m.mul_(beta1).add_(update, alpha=1 - beta1)
        update = m
    if weight_decay != 0:
        P = P + P * (-weight_decay * alpha)
    return P - update
