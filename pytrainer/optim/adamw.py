"""FusedAdamW: torch.optim.AdamW's math in one fused kernel call per parameter group."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytrainer import ops
from pytrainer.optim._base import _DTensor, KernelOptimizer, local_tensor
from pytrainer.optim._validation import check_betas, check_eps, check_lr, check_weight_decay

__all__ = ["FusedAdamW"]


class FusedAdamW(KernelOptimizer):
    r"""AdamW with decoupled weight decay, exactly as :class:`torch.optim.AdamW`.

    Per parameter, with :math:`t` the step count after this step:
    ``p *= 1 - lr*wd``; ``m = lerp(m, g, 1-beta1)``; ``v = beta2*v + (1-beta2)*g*g``;
    ``p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)``; with ``amsgrad`` the
    running maximum of the (uncorrected) ``v`` replaces ``v`` in the denominator.

    All parameters of a group with a gradient are updated by a single kernel call
    on their device (CPU: vectorised and multi-threaded; CUDA: one launch over a
    table of all tensors). Parameters may be float32, float64, float16 or bfloat16;
    16-bit parameters keep their states in their own dtype, as torch's fused AdamW
    does, and compute in float32. ``lr`` may be a float or a 0-d tensor (on the
    CPU or the parameters' device).

    ``state_dict()`` has the keys and layout of ``torch.optim.AdamW`` (``step``,
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so checkpoints move both ways.
    """

    _op_name = "adamw_"

    def __init__(self, params, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        check_lr(lr)
        check_eps("eps", eps)
        check_betas(betas)
        check_weight_decay(weight_decay)
        # torch.optim.AdamW's group keys, so state dicts load into either class.
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=None, capturable=False, differentiable=False,
                        fused=None, decoupled_weight_decay=True)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)

    def _init_group(self, group: dict[str, Any]):
        amsgrad = group["amsgrad"]
        keys = {"exp_avg": None, "exp_avg_sq": None}
        if amsgrad:
            keys["max_exp_avg_sq"] = None
        params, grads, lists, steps = self._collect(group, keys)
        exp_avgs, exp_avg_sqs = lists["exp_avg"], lists["exp_avg_sq"]
        max_exp_avg_sqs = lists["max_exp_avg_sq"] if amsgrad else []
        if params and _DTensor is not None and isinstance(params[0], _DTensor):
            # FSDP2: states are DTensors like their params; the kernel steps the shards
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = (
                [local_tensor(t) for t in ts]
                for ts in (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs))
        return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps

    def _step_group(self, group, grad_scale, found_inf, write_back_grads) -> None:
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = self._init_group(group)
        if not params:
            return
        device = params[0].device
        self._check_kernels(device)
        lr, lr_tensor = self._lr_args(group["lr"])
        beta1, beta2 = group["betas"]
        # torch.ops.pytrainer.adamw_, through its typed entry (see csrc/ops.cpp)
        ops.kernels.adamw_(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
            lr, lr_tensor, float(beta1), float(beta2), float(group["weight_decay"]),
            float(group["eps"]), group["amsgrad"], group["maximize"],
            self._on(grad_scale, device), self._on(found_inf, device), write_back_grads)
