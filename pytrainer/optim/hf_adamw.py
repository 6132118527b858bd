"""AdamWHF: the classic Hugging Face ``transformers.optimization.AdamW``, which
transformers removed in 4.50 (PR #36177); ``optim="adamw_hf"`` builds it.

It differs from :class:`torch.optim.AdamW` in three ways that change results, so
runs tuned with it need it rather than an "equivalent": ``eps`` is added to
``sqrt(v)`` *before* the bias correction (folded into the step size instead),
weight decay is applied *after* the Adam update (to the updated weights), and
``correct_bias=False`` turns the bias correction off (as BERT's original code did).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pytrainer.optim._validation import (check_betas, check_eps, check_lr, check_param_dtypes,
                                         check_weight_decay)

__all__ = ["AdamWHF"]


class AdamWHF(torch.optim.Optimizer):
    r"""Hugging Face's original AdamW, a plain (unfused) per-parameter loop.

    Per parameter, with :math:`t` the step count after this step::

        m = beta1*m + (1-beta1)*g
        v = beta2*v + (1-beta2)*g*g
        step_size = lr * sqrt(1-beta2^t) / (1-beta1^t)   # lr when correct_bias=False
        p -= step_size * m / (sqrt(v) + eps)
        p -= lr * weight_decay * p                        # when weight_decay > 0

    The math runs in the parameter's dtype, as the original did. State keys are
    ``step`` (a Python int, so no device sync per step), ``exp_avg`` and ``exp_avg_sq``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True) -> None:
        check_lr(lr)
        check_eps("eps", eps)
        check_betas(betas)
        check_weight_decay(weight_decay)
        if not isinstance(correct_bias, bool):
            raise ValueError(f"Invalid correct_bias: {correct_bias!r}; it must be True or False")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        check_param_dtypes(type(self).__name__, params)
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("correct_bias", True)

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; ``closure`` re-evaluates the model and returns the
        loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = (float(b) for b in group["betas"])
            eps, weight_decay = float(group["eps"]), float(group["weight_decay"])
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("AdamWHF (adamw_hf) does not support sparse gradients; "
                                       "use torch.optim.SparseAdam for sparse embeddings")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                # A checkpoint of torch.optim.AdamW stores the step as a tensor.
                step = int(state["step"]) + 1
                state["step"] = step
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(eps)
                step_size = lr
                if group["correct_bias"]:
                    step_size *= math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if weight_decay > 0.0:
                    p.add_(p, alpha=-lr * weight_decay)
        return loss
