"""Optimizer names (as ``TrainingArguments.optim`` spells them) and their builders."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from pytrainer._suggest import invalid_choice_message

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
        raise ValueError(invalid_choice_message("optim", name, optimizer_names()))
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


def _build_adamw_hf(groups, config: OptimizerConfig):
    from pytrainer.optim.hf_adamw import AdamWHF
    _reject_optim_args("adamw_hf", config)
    return AdamWHF(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def _build_adamw_torch(groups, config: OptimizerConfig):
    # Hugging Face ignores optim_args for torch's AdamW; rejecting them surfaces the mistake.
    _reject_optim_args("adamw_torch", config)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def _build_adamw_torch_fused(groups, config: OptimizerConfig):
    _reject_optim_args("adamw_torch_fused", config)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=True)


def _build_adamw_apex_fused(groups, config: OptimizerConfig):
    try:
        from apex.optimizers import FusedAdam
    except ImportError as error:
        raise ImportError(
            f"optim='adamw_apex_fused' needs NVIDIA apex, which could not be imported ({error}); "
            f"install apex with its CUDA extensions, or use optim='adamw_custom_fused', "
            f"pytrainer's own fused AdamW") from None
    _reject_optim_args("adamw_apex_fused", config)
    # adam_w_mode=True (its default) is decoupled weight decay, as Hugging Face used it.
    return FusedAdam(groups, lr=config.lr, betas=config.betas, eps=config.eps, adam_w_mode=True)


register_optimizer("adamw_hf", _build_adamw_hf,
                   "pytrainer.optim.AdamWHF: the classic Hugging Face AdamW, plain PyTorch")
register_optimizer("adamw_torch", _build_adamw_torch,
                   "torch.optim.AdamW (foreach implementation where available)")
register_optimizer("adamw_torch_fused", _build_adamw_torch_fused, "torch.optim.AdamW(fused=True)")
register_optimizer("adamw_apex_fused", _build_adamw_apex_fused,
                   "NVIDIA apex FusedAdam (needs apex)")


_TRUE, _FALSE = ("y", "yes", "t", "true", "on", "1"), ("n", "no", "f", "false", "off", "0")


def _str_to_bool(key: str, value: str) -> bool:
    """Hugging Face's strtobool."""
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"optim_args {key}={value!r} is not a boolean; use true/false (or "
                     f"yes/no, 1/0)")


def _build_adamw_anyprecision(groups, config: OptimizerConfig):
    """Hugging Face's wiring of torchdistx's optimizer: optim_args keys
    use_kahan_summation, momentum_dtype, variance_dtype, compensation_buffer_dtype
    with its defaults (False, float32, float32, bfloat16), plus pytrainer's
    rounding (nearest|stochastic) and seed."""
    from pytrainer.optim.anyprecision import AnyPrecisionAdamW, resolve_state_dtype
    defaults = dict(use_kahan_summation="False", momentum_dtype="float32",
                    variance_dtype="float32", compensation_buffer_dtype="bfloat16",
                    rounding="nearest", seed="0")
    unknown = sorted(set(config.optim_args) - set(defaults))
    if unknown:
        raise ValueError(f"optim_args key(s) {', '.join(unknown)} not valid for "
                         f"adamw_anyprecision; valid keys: {', '.join(defaults)}")
    args = {**defaults, **config.optim_args}
    try:
        seed = int(args["seed"])
    except ValueError:
        raise ValueError(f"optim_args seed={args['seed']!r} is not an integer") from None
    return AnyPrecisionAdamW(
        groups, lr=config.lr, betas=config.betas, eps=config.eps,
        use_kahan_summation=_str_to_bool("use_kahan_summation", args["use_kahan_summation"]),
        momentum_dtype=resolve_state_dtype("momentum_dtype", args["momentum_dtype"]),
        variance_dtype=resolve_state_dtype("variance_dtype", args["variance_dtype"]),
        compensation_buffer_dtype=resolve_state_dtype("compensation_buffer_dtype",
                                                      args["compensation_buffer_dtype"]),
        rounding=args["rounding"], seed=seed)


register_optimizer("adamw_anyprecision", _build_adamw_anyprecision,
                   "pytrainer.optim.AnyPrecisionAdamW: AdamW with 16-bit states, Kahan "
                   "summation or stochastic rounding, fused CPU/CUDA kernels")


def _build_adafactor(groups, config: OptimizerConfig):
    """As Hugging Face's Trainer builds it: the given lr, no relative step, no
    parameter scaling."""
    from pytrainer.optim.adafactor import Adafactor
    _reject_optim_args("adafactor", config)
    return Adafactor(groups, lr=config.lr, scale_parameter=False, relative_step=False)


register_optimizer("adafactor", _build_adafactor,
                   "pytrainer.optim.Adafactor: transformers' Adafactor, factored second "
                   "moments, fused CPU/CUDA kernels")
