"""FusedAdamW: torch.optim.AdamW's math in one fused kernel call per parameter group."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytrainer.optim._base import KernelOptimizer, State
from pytrainer.optim._docs import (_betas_doc, _capturable_doc, _eps_doc, _kernels_doc, _lr_doc,
                                   _maximize_doc, _params_doc, _weight_decay_doc)
from pytrainer.optim._validation import (check_betas, check_eps, check_flag, check_lr,
                                         check_weight_decay)

__all__ = ["FusedAdamW"]

_EXP_AVG, _EXP_AVG_SQ, _MAX_EXP_AVG_SQ = State("exp_avg"), State("exp_avg_sq"), State(
    "max_exp_avg_sq")


class FusedAdamW(KernelOptimizer):
    _op_name = "adamw_"

    def __init__(self, params, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, capturable: bool = False) -> None:
        check_lr(lr)
        check_eps("eps", eps)
        check_betas(betas)
        check_weight_decay(weight_decay)
        check_flag("capturable", capturable)
        # torch.optim.AdamW's group keys, so state dicts load into either class.
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=None, capturable=capturable, differentiable=False,
                        fused=None, decoupled_weight_decay=True)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)

    def _state_lists(self, group):
        return {"exp_avgs": _EXP_AVG, "exp_avg_sqs": _EXP_AVG_SQ,
                "max_exp_avg_sqs": _MAX_EXP_AVG_SQ if group["amsgrad"] else None}

    def _kernel_args(self, group, first_index):
        beta1, beta2 = group["betas"]
        return dict(beta1=float(beta1), beta2=float(beta2),
                    weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                    amsgrad=group["amsgrad"], maximize=group["maximize"])


FusedAdamW.__doc__ = rf"""AdamW with decoupled weight decay, exactly as :class:`torch.optim.AdamW`.

    Per parameter, with :math:`t` the step count after this step:
    ``p *= 1 - lr*wd``; ``m = lerp(m, g, 1-beta1)``; ``v = beta2*v + (1-beta2)*g*g``;
    ``p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)``; with ``amsgrad`` the
    running maximum of the (uncorrected) ``v`` replaces ``v`` in the denominator.

    {_kernels_doc}

    Parameters may be float32, float64, float16 or bfloat16; 16-bit parameters keep
    their states in their own dtype, as torch's fused AdamW does, and compute in float32.

    ``state_dict()`` has the keys and layout of ``torch.optim.AdamW`` (``step``,
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so checkpoints move both ways.

    Args:
        {_params_doc}
        {_lr_doc} (default: 1e-3)
        {_betas_doc}
        {_eps_doc}
        {_weight_decay_doc} (default: 1e-2)
        amsgrad (bool, optional): use the running maximum of the second moment in
            the denominator (AMSGrad) (default: False)
        {_maximize_doc}
        {_capturable_doc}
    """
