"""Optimizer names (as ``TrainingArguments.optim`` spells them) and their builders."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["OptimizerConfig", "OptimizerSpec", "register_optimizer", "register_pending",
           "get_optimizer_spec", "optimizer_names", "build_optimizer", "parse_optim_args"]


@dataclass(frozen=True)
class OptimizerConfig:
    """The training-argument values an optimizer builder reads."""
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    #: ``optim_args`` parsed into strings, as Hugging Face passes them
    optim_args: dict[str, str] = field(default_factory=dict)


Builder = Callable[[list[dict[str, Any]], OptimizerConfig], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Builder
    description: str


_REGISTRY: dict[str, OptimizerSpec] = {}


def register_optimizer(name: str, build: Builder, description: str) -> None:
    """Makes ``name`` buildable; ``build(param_groups, config)`` returns the optimizer.
    Weight decay is set per group by the caller, never passed to ``build``."""
    if name in _REGISTRY:
        raise ValueError(f"optimizer name {name!r} is already registered")
    _REGISTRY[name] = OptimizerSpec(name, build, description)


def register_pending(name: str, missing: str) -> None:
    """Makes ``name`` a known optimizer name whose builder is not available yet:
    building it raises an error saying what is missing."""
    def build(groups, config):
        raise NotImplementedError(f"optimizer {name!r} is not available yet: {missing}")
    register_optimizer(name, build, f"(not available: {missing})")


def parse_optim_args(text: str | None) -> dict[str, str]:
    """Hugging Face's ``optim_args`` form: ``"key=value,key=value"``, spaces ignored,
    values kept as strings for the builder to convert."""
    if not text:
        return {}
    result: dict[str, str] = {}
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key or "=" in value:
            raise ValueError(f"optim_args item {item!r} is not of the form key=value "
                             f"(in optim_args={text!r})")
        result[key] = value
    return result


def optimizer_names() -> list[str]:
    return sorted(_REGISTRY)


def get_optimizer_spec(name: str) -> OptimizerSpec:
    spec = _REGISTRY.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown optimizer {name!r}; valid names: "
                         f"{', '.join(optimizer_names())}.{hint}")
    return spec


def build_optimizer(name: str, param_groups: list[dict[str, Any]],
                    config: OptimizerConfig) -> torch.optim.Optimizer:
    return get_optimizer_spec(name).build(param_groups, config)


def _reject_optim_args(name: str, config: OptimizerConfig) -> None:
    if config.optim_args:
        raise ValueError(f"optimizer {name!r} takes no optim_args, got "
                         f"{', '.join(sorted(config.optim_args))}")


def _build_adamw_custom_fused(groups, config: OptimizerConfig):
    from pytrainer.optim.adamw import FusedAdamW
    _reject_optim_args("adamw_custom_fused", config)
    return FusedAdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


register_optimizer("adamw_custom_fused", _build_adamw_custom_fused,
                   "pytrainer.optim.FusedAdamW: torch AdamW math, fused CPU/CUDA kernels")
