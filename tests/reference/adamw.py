"""AdamW written from its definition in plain PyTorch: the oracle for the kernels.

Arithmetic in float32 (float64 for float64 tensors), every stored value rounded
once to its dtype, in the op order of torch.optim.AdamW's single-tensor path.
"""
from __future__ import annotations

import torch

from tests.reference.anyprecision import correctly_rounded_sqrt, divided_by


def adamw_step(p, g, m, v, vmax, step: int, *, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, amsgrad: bool, maximize: bool, grad_scale: float = 1.0):
    """One step; returns new (p, m, v, vmax) in the input dtypes. ``step`` counts this step."""
    math = torch.float64 if p.dtype == torch.float64 else torch.float32
    P, G, M, V = (t.to(math) for t in (p, g, m, v))
    G = G * (1.0 / grad_scale)
    if maximize:
        G = -G
    if weight_decay != 0:
        P = P * (1 - lr * weight_decay)
    M = torch.lerp(M, G, 1 - beta1)
    V = V * beta2 + (1 - beta2) * G * G
    second = V
    X = None
    if amsgrad:
        X = torch.maximum(vmax.to(math), V)
        second = X
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    denom = divided_by(correctly_rounded_sqrt(second), bias_correction2_sqrt) + eps
    P = P + (-lr / bias_correction1) * M / denom
    out = [P.to(p.dtype), M.to(m.dtype), V.to(v.dtype)]
    out.append(X.to(vmax.dtype) if amsgrad else None)
    return tuple(out)
