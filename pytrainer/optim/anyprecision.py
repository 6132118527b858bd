"""AnyPrecisionAdamW: AdamW with each state in a dtype of the user's choosing,
Kahan-compensated or stochastically rounded updates, in one fused kernel call
per parameter group."""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from pytrainer._suggest import invalid_choice_message
from pytrainer.optim._base import KernelOptimizer, State
from pytrainer.optim._docs import (_betas_doc, _capturable_doc, _eps_doc, _kernels_doc, _lr_doc,
                                   _params_doc, _weight_decay_doc)
from pytrainer.optim._validation import (check_betas, check_eps, check_flag, check_lr,
                                         check_weight_decay)

__all__ = ["AnyPrecisionAdamW", "STATE_DTYPES", "resolve_state_dtype"]

#: the dtypes momentum, variance and the compensation buffer may have
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROUNDINGS = ("nearest", "stochastic")
# the op's `rounding` argument
_NEAREST, _KAHAN, _STOCHASTIC = 0, 1, 2


def state_dtype_name(name: str, value: Any) -> str:
    """The name param groups store (plain strings keep state dicts loadable
    everywhere: JSON, weights_only, torch.distributed.checkpoint)."""
    dtype = resolve_state_dtype(name, value)
    return next(key for key, known in STATE_DTYPES.items() if known == dtype)


def resolve_state_dtype(name: str, value: Any) -> torch.dtype:
    """A state dtype given as a torch.dtype or its name (``"bfloat16"``, ``"torch.bfloat16"``)."""
    if isinstance(value, torch.dtype):
        if value in STATE_DTYPES.values():
            return value
        value = str(value)
    if isinstance(value, str):
        key = value.strip().removeprefix("torch.")
        if key in STATE_DTYPES:
            return STATE_DTYPES[key]
    raise ValueError(invalid_choice_message(name, value, STATE_DTYPES))


@functools.lru_cache(maxsize=None)
def _state_lists(momentum_dtype, variance_dtype, compensation_buffer_dtype, kahan: bool):
    """The kernel's state lists (the same objects for the same settings, which
    keeps the per-step check of the cached lists an identity comparison)."""
    return {"exp_avgs": State("exp_avg", resolve_state_dtype("momentum_dtype", momentum_dtype)),
            "exp_avg_sqs": State("exp_avg_sq", resolve_state_dtype("variance_dtype",
                                                                   variance_dtype)),
            "compensations": State("compensation", resolve_state_dtype(
                "compensation_buffer_dtype", compensation_buffer_dtype)) if kahan else None}


class AnyPrecisionAdamW(KernelOptimizer):
    _op_name = "anyprecision_adamw_"
    _param_dtypes = (torch.float32, torch.bfloat16, torch.float16)

    def __init__(self, params, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, use_kahan_summation: bool = False,
                 momentum_dtype: torch.dtype | str = torch.float32,
                 variance_dtype: torch.dtype | str = torch.bfloat16,
                 compensation_buffer_dtype: torch.dtype | str = torch.bfloat16, *,
                 rounding: str = "nearest", seed: int = 0, capturable: bool = False) -> None:
        check_lr(lr)
        check_eps("eps", eps)
        check_betas(betas)
        check_weight_decay(weight_decay)
        check_flag("use_kahan_summation", use_kahan_summation)
        check_flag("capturable", capturable)
        if rounding not in ROUNDINGS:
            raise ValueError(invalid_choice_message("rounding", rounding, ROUNDINGS))
        if use_kahan_summation and rounding == "stochastic":
            raise ValueError("use_kahan_summation=True and rounding='stochastic' are alternative "
                             "ways to keep small updates; choose one")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        use_kahan_summation=use_kahan_summation,
                        momentum_dtype=state_dtype_name("momentum_dtype", momentum_dtype),
                        variance_dtype=state_dtype_name("variance_dtype", variance_dtype),
                        compensation_buffer_dtype=state_dtype_name(
                            "compensation_buffer_dtype", compensation_buffer_dtype),
                        rounding=rounding, seed=seed, capturable=capturable)
        super().__init__(params, defaults)

    def _state_lists(self, group):
        return _state_lists(group["momentum_dtype"], group["variance_dtype"],
                            group["compensation_buffer_dtype"], group["use_kahan_summation"])

    def _kernel_args(self, group, first_index):
        beta1, beta2 = group["betas"]
        rounding = (_KAHAN if group["use_kahan_summation"] else
                    _STOCHASTIC if group["rounding"] == "stochastic" else _NEAREST)
        # stochastic rounding keys each tensor by its position among all params
        ids = [first_index + i for i, p in enumerate(group["params"]) if p.grad is not None] \
            if rounding == _STOCHASTIC else []
        return dict(rounding_ids=ids, beta1=float(beta1), beta2=float(beta2),
                    weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                    rounding=rounding, seed=int(group["seed"]))


AnyPrecisionAdamW.__doc__ = rf"""AdamW whose states live in the dtypes you choose, as torchdistx's
    AnyPrecisionAdamW, fused into one kernel call per parameter group.

    Per parameter, with :math:`t` the step count after this step, in float32 with
    each stored value rounded once to its dtype::

        p = p * (1 - lr*weight_decay)                  # when weight_decay != 0
        m = beta1*m + (1-beta1)*g                      # stored in momentum_dtype
        v = beta2*v + (1-beta2)*g*g                    # stored in variance_dtype
        u = -(lr/(1-beta1^t)) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
        p = p + u                                      # plain
        c = c + u; y = p; p = p + c; c = c + (y - p)   # use_kahan_summation

    With 16-bit parameters a plain update below half a unit in the last place of
    the weight is lost; the Kahan buffer ``c`` (in ``compensation_buffer_dtype``)
    keeps what rounding dropped and adds it back on later steps. As an alternative,
    ``rounding="stochastic"`` rounds the new 16-bit weight up or down at random with
    the probabilities that make it exact on average, from a counter-based random
    stream keyed by ``seed``, the parameter's position in the optimizer and the
    step: the same result on every run (and on CPU and CUDA) for the same seed.

    Parameters may be float32, bfloat16 or float16. State keys: ``step``,
    ``exp_avg``, ``exp_avg_sq`` and, with Kahan summation, ``compensation``.

    {_kernels_doc}

    Args:
        {_params_doc}
        {_lr_doc} (default: 1e-3)
        {_betas_doc}
        {_eps_doc}
        {_weight_decay_doc} (default: 0)
        use_kahan_summation (bool, optional): keep the compensation buffer ``c``
            (default: False)
        momentum_dtype (torch.dtype or str, optional): dtype of ``exp_avg``, one of
            float32, bfloat16, float16 (default: float32)
        variance_dtype (torch.dtype or str, optional): dtype of ``exp_avg_sq``
            (default: bfloat16)
        compensation_buffer_dtype (torch.dtype or str, optional): dtype of the
            Kahan compensation (default: bfloat16)
        rounding (str, optional): how a new 16-bit weight is rounded, ``"nearest"``
            or ``"stochastic"`` (default: "nearest")
        seed (int, optional): seed of the stochastic rounding, in [0, 2**63)
            (default: 0)
        {_capturable_doc}
    """
