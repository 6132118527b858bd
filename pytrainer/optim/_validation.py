"""Hyperparameter checks shared by pytrainer's optimizers: each raises a
ValueError that names the argument, the value and the valid range."""
from __future__ import annotations

import math
from typing import Any

import torch

SUPPORTED_PARAM_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def as_float(name: str, value: Any) -> float:
    """``value`` as a float, or a ValueError naming ``name``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got a tensor of "
                             f"shape {tuple(value.shape)}")
        if value.device.type != "cpu":
            return float(value.detach().cpu())
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def check_lr(lr: Any, *, allow_none: bool = False) -> None:
    if lr is None and allow_none:
        return
    value = as_float("lr", lr)
    if not (value >= 0.0) or math.isinf(value):
        raise ValueError(f"Invalid learning rate: lr={lr!r}; it must be a finite number >= 0")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_eps(name: str, eps: Any) -> None:
    value = as_float(name, eps)
    if not (value > 0.0) or math.isinf(value):
        raise ValueError(f"Invalid {name}: {eps!r}; it must be a finite number > 0")


def check_beta(name: str, beta: Any) -> None:
    value = as_float(name, beta)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"Invalid {name}: {beta!r}; it must be in [0, 1)")


def check_betas(betas: Any) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2), each in [0, 1)")
    check_beta("beta1 (betas[0])", betas[0])
    check_beta("beta2 (betas[1])", betas[1])


def check_weight_decay(weight_decay: Any) -> None:
    value = as_float("weight_decay", weight_decay)
    if not (value >= 0.0) or math.isinf(value):
        raise ValueError(f"Invalid weight_decay: {weight_decay!r}; it must be a finite number >= 0")


def check_adafactor_step_size(lr: Any, relative_step: bool, warmup_init: bool) -> None:
    """Adafactor's three step-size options: a given lr, or the relative step
    (optionally warmed up) computed from the step count."""
    if lr is not None and relative_step:
        raise ValueError("Cannot combine manual `lr` and `relative_step=True` options: "
                         "pass lr=None for relative steps, or relative_step=False")
    if warmup_init and not relative_step:
        raise ValueError("`warmup_init=True` requires `relative_step=True`")
    if lr is None and not relative_step:
        raise ValueError("lr=None needs `relative_step=True` (the step size then comes from "
                         "the step count); with relative_step=False pass a learning rate")
    check_lr(lr, allow_none=True)


def check_adafactor_eps(eps: Any) -> None:
    """Adafactor's (eps1, eps2): the regulariser of the squared gradient and the
    floor of the parameter scale, each a finite number >= 0."""
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"Invalid eps: {eps!r}; expected a pair (eps1, eps2) of numbers >= 0")
    for name, value in zip(("eps[0]", "eps[1]"), eps):
        number = as_float(name, value)
        if not (number >= 0.0) or math.isinf(number):
            raise ValueError(f"Invalid {name}: {value!r}; it must be a finite number >= 0")


def check_clip_threshold(clip_threshold: Any) -> None:
    if not (as_float("clip_threshold", clip_threshold) > 0.0):
        raise ValueError(f"Invalid clip_threshold: {clip_threshold!r}; it must be > 0")


def check_decay_rate(decay_rate: Any) -> None:
    if not (as_float("decay_rate", decay_rate) <= 0.0):
        raise ValueError(f"Invalid decay_rate: {decay_rate!r}; it must be <= 0 "
                         "(beta2 = 1 - step**decay_rate must stay in [0, 1))")


def check_param_dtypes(optimizer_name: str, params, dtypes=SUPPORTED_PARAM_DTYPES) -> None:
    """Rejects parameters the kernels cannot update, at construction rather than mid-run."""
    names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{optimizer_name}: params[{i}] is a {type(p).__name__}, not a tensor")
        if p.is_complex():
            raise ValueError(f"{optimizer_name} does not support complex parameters (params[{i}] is "
                             f"{p.dtype}); supported dtypes: {names}")
        if p.dtype not in dtypes:
            raise ValueError(f"{optimizer_name}: params[{i}] has dtype {p.dtype}; supported dtypes: "
                             f"{names}")
        if p.layout != torch.strided:
            raise ValueError(f"{optimizer_name}: params[{i}] has layout {p.layout}; only dense "
                             "(strided) parameters are supported")


def check_unique_params(optimizer_name: str, group_index: int, params) -> None:
    """Rejects a tensor listed twice in one param group (torch.optim only warns):
    the kernels would update its memory from two places at once, with a result
    that depends on their timing."""
    first_index: dict[int, int] = {}
    for i, p in enumerate(params):
        j = first_index.setdefault(id(p), i)
        if j != i:
            raise ValueError(
                f"{optimizer_name}: param group {group_index} lists the same tensor twice, at "
                f"params[{j}] and params[{i}] (shape {tuple(p.shape)}); each parameter must "
                "appear once (deduplicate tied weights, e.g. list(dict.fromkeys(params)))")
