"""Adafactor (transformers' semantics) with factored second moments, in three
fused passes over memory per step."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytrainer.optim._base import _DTensor, KernelOptimizer, State
from pytrainer.optim._docs import (_capturable_doc, _kernels_doc, _lr_doc, _params_doc,
                                   _weight_decay_doc)
from pytrainer.optim._validation import (check_adafactor_eps, check_adafactor_step_size,
                                         check_beta, check_clip_threshold, check_decay_rate,
                                         check_flag, check_weight_decay)

__all__ = ["Adafactor"]

# Every Adafactor state is float32, whatever the parameter.
_EXP_AVG = State("exp_avg", torch.float32)
_FULL = State("exp_avg_sq", torch.float32)
_ROW = State("exp_avg_sq_row", torch.float32, shape=lambda p: p.shape[:-1])
_COL = State("exp_avg_sq_col", torch.float32, shape=lambda p: p.shape[:-2] + p.shape[-1:])


def _row_state(p: Tensor) -> State:
    """A parameter of 2+ dims keeps row and column states, others a full state."""
    return _ROW if p.dim() >= 2 else _FULL


def _col_state(p: Tensor) -> State | None:
    return _COL if p.dim() >= 2 else None


class Adafactor(KernelOptimizer):
    _op_name = "adafactor_"
    _param_dtypes = (torch.float32, torch.bfloat16, torch.float16)
    # Allocated one by one, as transformers does: the factored states are small,
    # and a checkpoint holds one storage per state.
    _pack_states = False

    def __init__(self, params, lr: float | Tensor | None = None,
                 eps: tuple[float, float] = (1e-30, 1e-3), clip_threshold: float = 1.0,
                 decay_rate: float = -0.8, beta1: float | None = None, weight_decay: float = 0.0,
                 scale_parameter: bool = True, relative_step: bool = True,
                 warmup_init: bool = False, *, capturable: bool = False) -> None:
        check_adafactor_step_size(lr, relative_step, warmup_init)
        check_adafactor_eps(eps)
        check_clip_threshold(clip_threshold)
        check_decay_rate(decay_rate)
        if beta1 is not None:
            check_beta("beta1", beta1)
        check_weight_decay(weight_decay)
        check_flag("capturable", capturable)
        defaults = dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold,
                        decay_rate=decay_rate, beta1=beta1, weight_decay=weight_decay,
                        scale_parameter=scale_parameter, relative_step=relative_step,
                        warmup_init=warmup_init, capturable=capturable)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if _DTensor is not None and any(isinstance(p, _DTensor) for p in params):
            raise ValueError("Adafactor does not step FSDP2-sharded (DTensor) parameters: its "
                             "factored statistics span whole rows and columns of each matrix; "
                             "train with DDP, or use FusedAdamW/AnyPrecisionAdamW with FSDP2")
        super().add_param_group(param_group)

    def _state_lists(self, group):
        return {"exp_avgs": _EXP_AVG if group["beta1"] is not None else None,
                "row_states": _row_state, "col_states": _col_state}

    def _kernel_args(self, group, first_index):
        eps1, eps2 = group["eps"]
        beta1 = group["beta1"]
        return dict(eps1=float(eps1), eps2=float(eps2),
                    clip_threshold=float(group["clip_threshold"]),
                    decay_rate=float(group["decay_rate"]),
                    beta1=None if beta1 is None else float(beta1),
                    weight_decay=float(group["weight_decay"]),
                    scale_parameter=bool(group["scale_parameter"]),
                    relative_step=bool(group["relative_step"]),
                    warmup_init=bool(group["warmup_init"]))


Adafactor.__doc__ = rf"""Adafactor as ``transformers.optimization.Adafactor`` defines it, fused.

    Per parameter, with :math:`t` the step count after this step:

    - step size: ``rho = min(1e-6*t if warmup_init else 1e-2, 1/sqrt(t))`` when
      ``relative_step`` (computed on the device from the step count there), else
      ``lr``; ``alpha = rho * max(eps[1], RMS(p))`` when ``scale_parameter``, else
      ``rho``; ``beta2t = 1 - t**decay_rate``.
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

    {_kernels_doc}

    Args:
        {_params_doc}
        {_lr_doc}; None with ``relative_step`` (default: None)
        eps (Tuple[float, float], optional): ``eps[0]`` is added to ``g*g``, ``eps[1]``
            is the floor of ``RMS(p)`` in the step size, each >= 0 (default: (1e-30, 1e-3))
        clip_threshold (float, optional): the RMS of the update above which it is
            scaled down, > 0 (default: 1.0)
        decay_rate (float, optional): ``beta2t = 1 - t**decay_rate``, <= 0 (default: -0.8)
        beta1 (float, optional): coefficient of the first moment, in [0, 1); None keeps
            no first moment (default: None)
        {_weight_decay_doc}, scaled by ``alpha`` (default: 0)
        scale_parameter (bool, optional): scale the step size by ``RMS(p)``
            (default: True)
        relative_step (bool, optional): the step size from the step count instead of
            ``lr`` (default: True)
        warmup_init (bool, optional): warm the relative step up linearly (default: False)
        {_capturable_doc}
    """
