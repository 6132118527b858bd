"""Learning-rate schedules by Hugging Face's names, with its formulas.

Each is a LambdaLR factor of the step (0-based: the factor of step s applies to
the update after s scheduler steps). ``reduce_lr_on_plateau`` is torch's
ReduceLROnPlateau, stepped after each evaluation.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

__all__ = ["create_scheduler"]


def _warmup(step: int, warmup: int) -> float:
    return step / max(1, warmup)


def _constant(step: int) -> float:
    return 1.0


def _constant_with_warmup(step: int, *, warmup: int) -> float:
    return _warmup(step, warmup) if step < warmup else 1.0


def _linear(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _cosine(step: int, *, warmup: int, total: int, num_cycles: float = 0.5,
            min_lr_rate: float = 0.0) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
    return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)


def _cosine_with_restarts(step: int, *, warmup: int, total: int, num_cycles: int = 1) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))


def _polynomial(step: int, *, warmup: int, total: int, lr_init: float, lr_end: float = 1e-7,
                power: float = 1.0) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    if step > total:
        return lr_end / lr_init
    remaining = 1 - (step - warmup) / max(1, total - warmup)
    return ((lr_init - lr_end) * remaining ** power + lr_end) / lr_init


def _inverse_sqrt(step: int, *, warmup: int, timescale: int | None = None) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    timescale = timescale or (warmup or 10_000)
    return 1.0 / math.sqrt((step + timescale - warmup) / timescale)


def _cosine_warmup_with_min_lr(step: int, *, warmup: int, total: int, num_cycles: float = 0.5,
                               min_lr_rate: float = 0.0, warmup_lr_rate: float | None = None
                               ) -> float:
    if step < warmup:
        if warmup_lr_rate is None:
            return (step + 1.0) / max(1.0, warmup)
        return warmup_lr_rate + (1.0 - warmup_lr_rate) * step / max(1, warmup - 1)
    progress = (step - warmup + 1.0) / max(1.0, total - warmup)
    factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
    return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)


def _shape(kind: str, progress: float, num_cycles: float, decay: bool) -> float:
    if kind == "linear":
        return 1.0 - progress if decay else progress
    if kind == "cosine":
        return (0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)) if decay
                else 0.5 * (1.0 - math.cos(math.pi * progress)))
    return 1.0 - math.sqrt(progress) if decay else 1.0 - math.sqrt(1.0 - progress)  # "1-sqrt"


def _warmup_stable_decay(step: int, *, warmup: int, stable: int, decay: int,
                         warmup_type: str = "linear", decay_type: str = "cosine",
                         min_lr_ratio: float = 0.0, num_cycles: float = 0.5) -> float:
    if step < warmup:
        factor = _shape(warmup_type, step / max(1, warmup), num_cycles, decay=False)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        factor = _shape(decay_type, (step - warmup - stable) / max(1, decay), num_cycles, True)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


def _min_lr_rate(kwargs: dict[str, Any], lr: float, name: str) -> dict[str, Any]:
    kwargs = dict(kwargs)
    min_lr, rate = kwargs.pop("min_lr", None), kwargs.get("min_lr_rate")
    if min_lr is not None and rate is not None:
        raise ValueError(f"lr_scheduler_kwargs of {name}: give min_lr or min_lr_rate, not both")
    if min_lr is not None:
        kwargs["min_lr_rate"] = min_lr / lr
    elif rate is None:
        raise ValueError(f"lr_scheduler_type={name!r} needs min_lr or min_lr_rate in "
                         f"lr_scheduler_kwargs")
    return kwargs


def create_scheduler(name: str, optimizer: torch.optim.Optimizer, *, num_warmup_steps: int,
                     num_training_steps: int, kwargs: dict[str, Any] | None = None):
    """The scheduler ``name`` (a TrainingArguments.lr_scheduler_type) over ``optimizer``."""
    kwargs = dict(kwargs or {})
    w, t = num_warmup_steps, num_training_steps
    lr = optimizer.defaults.get("lr") or optimizer.param_groups[0]["lr"]
    try:
        if name == "reduce_lr_on_plateau":
            return ReduceLROnPlateau(optimizer, **kwargs)
        if name == "constant":
            fn = functools.partial(_constant, **kwargs)
        elif name == "constant_with_warmup":
            fn = functools.partial(_constant_with_warmup, warmup=w, **kwargs)
        elif name == "linear":
            fn = functools.partial(_linear, warmup=w, total=t, **kwargs)
        elif name == "cosine":
            fn = functools.partial(_cosine, warmup=w, total=t, **kwargs)
        elif name == "cosine_with_restarts":
            fn = functools.partial(_cosine_with_restarts, warmup=w, total=t, **kwargs)
        elif name == "polynomial":
            fn = functools.partial(_polynomial, warmup=w, total=t, lr_init=float(lr), **kwargs)
        elif name == "inverse_sqrt":
            fn = functools.partial(_inverse_sqrt, warmup=w, **kwargs)
        elif name == "cosine_with_min_lr":
            fn = functools.partial(_cosine, warmup=w, total=t,
                                   **_min_lr_rate(kwargs, float(lr), name))
        elif name == "cosine_warmup_with_min_lr":
            fn = functools.partial(_cosine_warmup_with_min_lr, warmup=w, total=t,
                                   **_min_lr_rate(kwargs, float(lr), name))
        elif name == "warmup_stable_decay":
            decay = kwargs.pop("num_decay_steps", None)
            if decay is None:
                raise ValueError("lr_scheduler_type='warmup_stable_decay' needs num_decay_steps "
                                 "in lr_scheduler_kwargs")
            stable = kwargs.pop("num_stable_steps", None)
            stable = t - w - decay if stable is None else stable
            fn = functools.partial(_warmup_stable_decay, warmup=w, stable=stable, decay=decay,
                                   **kwargs)
        else:
            raise ValueError(f"unknown lr_scheduler_type {name!r}")
        fn(0)  # unknown keyword arguments fail here, at construction
    except TypeError as error:
        raise ValueError(f"lr_scheduler_kwargs {kwargs} do not fit lr_scheduler_type={name!r}: "
                         f"{error}") from None
    return LambdaLR(optimizer, fn)
