"""torch's optimizers under transformers' names, with the class and keyword arguments
transformers' ``Trainer.get_optimizer_cls_and_kwargs`` gives them (compared with it
in tests/test_optimizer_names.py).

``optim_args`` are read as transformers reads them, with two differences that only
turn silent mistakes into errors: an unknown key is refused (transformers drops it),
and so is ``weight_decay``, which transformers passes as a default that the
parameter groups' own weight decay always overrides (set the ``weight_decay``
argument instead).
"""
from __future__ import annotations

import torch

from pytrainer.optim.registry import (OptimizerConfig, as_bool, as_float, register_optimizer,
                                      reject_optim_args, typed_optim_args)

_WEIGHT_DECAY = ("the parameter groups carry weight decay (the weight_decay argument, 0 for "
                 "biases and norms), which overrides it")


def _adam_kwargs(config: OptimizerConfig) -> dict:
    return {"lr": config.lr, "betas": config.betas, "eps": config.eps}


def _adamw_torch(config: OptimizerConfig):
    # transformers ignores optim_args for torch's AdamW; refusing them surfaces the mistake
    reject_optim_args("adamw_torch", config)
    return torch.optim.AdamW, _adam_kwargs(config)


def _adamw_torch_fused(config: OptimizerConfig):
    reject_optim_args("adamw_torch_fused", config)
    return torch.optim.AdamW, {**_adam_kwargs(config), "fused": True}


def _sgd(config: OptimizerConfig):
    return torch.optim.SGD, {"lr": config.lr, **typed_optim_args(
        "sgd", config, {"momentum": as_float, "dampening": as_float, "nesterov": as_bool},
        refused={"weight_decay": _WEIGHT_DECAY})}


def _adagrad(config: OptimizerConfig):
    return torch.optim.Adagrad, {"lr": config.lr, **typed_optim_args(
        "adagrad", config, {"lr_decay": as_float, "eps": as_float},
        refused={"weight_decay": _WEIGHT_DECAY})}


def _rmsprop(config: OptimizerConfig):
    return torch.optim.RMSprop, {"lr": config.lr, **typed_optim_args(
        "rmsprop", config, {"momentum": as_float, "alpha": as_float, "eps": as_float,
                            "centered": as_bool},
        refused={"weight_decay": _WEIGHT_DECAY})}


_TORCH = {
    "adamw_torch": (_adamw_torch, "torch.optim.AdamW (foreach implementation where available)"),
    "adamw_torch_fused": (_adamw_torch_fused, "torch.optim.AdamW(fused=True)"),
    "sgd": (_sgd, "torch.optim.SGD; optim_args: momentum, dampening, nesterov"),
    "adagrad": (_adagrad, "torch.optim.Adagrad; optim_args: lr_decay, eps"),
    "rmsprop": (_rmsprop, "torch.optim.RMSprop; optim_args: momentum, alpha, eps, centered"),
}
NAMES = tuple(_TORCH)

for _name, (_resolve, _description) in _TORCH.items():
    register_optimizer(_name, description=_description, resolve=_resolve)
