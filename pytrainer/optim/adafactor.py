"""Adafactor (transformers' semantics) with factored second moments, in three
fused passes over memory per step."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pytrainer import ops
from pytrainer.optim._base import _DTensor, KernelOptimizer
from pytrainer.optim._validation import as_float, check_beta, check_lr, check_weight_decay

__all__ = ["Adafactor"]


class Adafactor(KernelOptimizer):
    r"""Adafactor as ``transformers.optimization.Adafactor`` defines it, fused.

    Per parameter, with :math:`t` the step count after this step:

    - step size: ``rho = min(1e-6*t if warmup_init else 1e-2, 1/sqrt(t))`` when
      ``relative_step``, else ``lr``; ``alpha = rho * max(eps[1], RMS(p))`` when
      ``scale_parameter``, else ``rho``; ``beta2t = 1 - t**decay_rate``.
    - second moment of ``g*g + eps[0]``: factored for parameters of 2 or more dims
      (row state ``R`` over the last dim, column state ``C`` over the second last,
      leading dims batched), ``U = g / sqrt(R/mean(R) ⊗ C)``; a full state ``V``
      for vectors and scalars, ``U = g / sqrt(V)``.
    - ``U /= max(1, RMS(U)/clip_threshold)``; ``U *= alpha``; with ``beta1`` the first
      moment ``m = beta1*m + (1-beta1)*U`` replaces ``U``; ``p -= weight_decay*alpha*p``;
      ``p -= U``.

    For a matrix the state is ``rows + cols`` float32 values (plus the matrix-sized
    first moment with ``beta1``). 16-bit parameters are updated with float32 states
    and float32 math. Each step makes three passes over memory (row/column sums of
    ``g*g`` with the sum of ``p*p``; the sum of ``U*U``; the update) for all
    tensors of a group at once, with no host synchronisation.

    State keys are transformers': ``step``, ``exp_avg_sq_row``, ``exp_avg_sq_col``
    (factored), ``exp_avg_sq`` (not factored), ``exp_avg`` (with ``beta1``).
    """

    _op_name = "adafactor_"
    _param_dtypes = (torch.float32, torch.bfloat16, torch.float16)

    def __init__(self, params, lr: float | Tensor | None = None,
                 eps: tuple[float, float] = (1e-30, 1e-3), clip_threshold: float = 1.0,
                 decay_rate: float = -0.8, beta1: float | None = None, weight_decay: float = 0.0,
                 scale_parameter: bool = True, relative_step: bool = True,
                 warmup_init: bool = False) -> None:
        if lr is not None and relative_step:
            raise ValueError("Cannot combine manual `lr` and `relative_step=True` options: "
                             "pass lr=None for relative steps, or relative_step=False")
        if warmup_init and not relative_step:
            raise ValueError("`warmup_init=True` requires `relative_step=True`")
        if lr is None and not relative_step:
            raise ValueError("lr=None needs `relative_step=True` (the step size then comes from "
                             "the step count); with relative_step=False pass a learning rate")
        check_lr(lr, allow_none=True)
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"Invalid eps: {eps!r}; expected a pair (eps1, eps2) of numbers >= 0")
        for name, value in zip(("eps[0]", "eps[1]"), eps):
            number = as_float(name, value)
            if not (number >= 0.0) or math.isinf(number):
                raise ValueError(f"Invalid {name}: {value!r}; it must be a finite number >= 0")
        if not (as_float("clip_threshold", clip_threshold) > 0.0):
            raise ValueError(f"Invalid clip_threshold: {clip_threshold!r}; it must be > 0")
        if not (as_float("decay_rate", decay_rate) <= 0.0):
            raise ValueError(f"Invalid decay_rate: {decay_rate!r}; it must be <= 0 "
                             "(beta2 = 1 - step**decay_rate must stay in [0, 1))")
        if beta1 is not None:
            check_beta("beta1", beta1)
        check_weight_decay(weight_decay)
        defaults = dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold,
                        decay_rate=decay_rate, beta1=beta1, weight_decay=weight_decay,
                        scale_parameter=scale_parameter, relative_step=relative_step,
                        warmup_init=warmup_init)
        super().__init__(params, defaults)

    def _state_dtype(self, group, key, param):
        return torch.float32  # every Adafactor state is float32, whatever the parameter

    def _empty(self, device: torch.device) -> Tensor:
        # the col_states placeholder of a parameter that is not factored
        cache = self.__dict__.setdefault("_empty_states", {})
        if device not in cache:
            cache[device] = torch.empty(0, dtype=torch.float32, device=device)
        return cache[device]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if _DTensor is not None and any(isinstance(p, _DTensor) for p in params):
            raise ValueError("Adafactor does not step FSDP2-sharded (DTensor) parameters: its "
                             "factored statistics span whole rows and columns of each matrix; "
                             "train with DDP, or use FusedAdamW/AnyPrecisionAdamW with FSDP2")
        super().add_param_group(param_group)

    def _init_group(self, group: dict[str, Any]):
        params, grads, exp_avgs, rows, cols, steps = [], [], [], [], [], []
        first_moment = group["beta1"] is not None
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            state = self.state[p]
            factored = p.dim() >= 2
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                zeros = dict(dtype=torch.float32, device=p.device)
                if factored:
                    state["exp_avg_sq_row"] = torch.zeros(p.shape[:-1], **zeros)
                    state["exp_avg_sq_col"] = torch.zeros(p.shape[:-2] + p.shape[-1:], **zeros)
                else:
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32,
                                                           memory_format=torch.preserve_format)
            if first_moment:
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32,
                                                        memory_format=torch.preserve_format)
                exp_avgs.append(state["exp_avg"])
            if factored:
                rows.append(state["exp_avg_sq_row"])
                cols.append(state["exp_avg_sq_col"])
            else:
                rows.append(state["exp_avg_sq"])
                cols.append(self._empty(p.device))
            params.append(p)
            grads.append(grad)
            steps.append(state["step"])
        return params, grads, exp_avgs, rows, cols, steps

    def _step_group(self, group, grad_scale, found_inf, write_back_grads) -> None:
        params, grads, exp_avgs, rows, cols, steps = self._init_group(group)
        if not params:
            return
        device = params[0].device
        self._check_kernels(device)
        lr, lr_tensor = self._lr_args(0.0 if group["lr"] is None else group["lr"])
        eps1, eps2 = group["eps"]
        beta1 = group["beta1"]
        # torch.ops.pytrainer.adafactor_, through its typed entry
        ops.kernels.adafactor_(
            params, grads, exp_avgs, rows, cols, steps, lr, lr_tensor, float(eps1),
            float(eps2), float(group["clip_threshold"]), float(group["decay_rate"]),
            None if beta1 is None else float(beta1), float(group["weight_decay"]),
            bool(group["scale_parameter"]), bool(group["relative_step"]),
            bool(group["warmup_init"]), self._on(grad_scale, device), self._on(found_inf, device),
            write_back_grads)
