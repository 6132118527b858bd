"""The optimizer a Trainer builds from its TrainingArguments: decayed and
non-decayed parameter groups, handed to the builder ``args.optim`` names."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pytrainer.optim.registry import OptimizerConfig, build_optimizer

if TYPE_CHECKING:
    from pytrainer.training_args import TrainingArguments

__all__ = ["get_decay_parameter_names", "create_optimizer", "NO_DECAY_MODULE_TYPES"]

#: Hugging Face's name rule: biases and anything named like a normalisation layer.
#: ``bias`` is a bare substring, so ``attn_bias_proj.weight`` is excluded too, as there.
_NO_DECAY_NAME = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")

#: Parameters anywhere under these modules are never decayed. Hugging Face lists
#: LayerNorm only; torch's RMSNorm is added so an RMSNorm under any attribute name
#: (``ln_f``) is excluded as well.
NO_DECAY_MODULE_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if t is not None)


def get_decay_parameter_names(model: nn.Module) -> list[str]:
    """Names (as ``model.named_parameters()`` gives them) of the parameters that get
    weight decay: all but those under a LayerNorm or RMSNorm module and those whose
    lower-cased full name matches ``bias``, ``layernorm``, ``rmsnorm``,
    ``(^|.)norm($|.)`` or ``_norm($|.)``. Frozen parameters are included (the
    caller filters them); a tied parameter appears once, under its first name."""
    excluded_prefixes = [f"{name}." for name, module in model.named_modules()
                         if isinstance(module, NO_DECAY_MODULE_TYPES)]
    if isinstance(model, NO_DECAY_MODULE_TYPES):
        excluded_prefixes.append("")
    return [name for name, _ in model.named_parameters()
            if not _NO_DECAY_NAME.search(name.lower())
            and not any(name.startswith(prefix) for prefix in excluded_prefixes)]


def create_optimizer(model: nn.Module, args: "TrainingArguments") -> torch.optim.Optimizer:
    """The optimizer ``args.optim`` names over ``model``'s trainable parameters.

    Two groups, as Hugging Face builds them: the decayed parameters with
    ``args.weight_decay`` and the rest with 0.0 (an empty group is left out).
    ``learning_rate``, ``adam_beta1/2``, ``adam_epsilon``, ``optim_args`` (and the
    model, for the optimizers that need it) reach the builder through
    :class:`OptimizerConfig`. Raises ValueError when the model has no trainable
    parameter.
    """
    decay = set(get_decay_parameter_names(model))
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameters "
                         "(every parameter has requires_grad=False); nothing to optimize")
    groups: list[dict[str, Any]] = [
        {"params": [p for name, p in trainable if name in decay],
         "weight_decay": args.weight_decay},
        {"params": [p for name, p in trainable if name not in decay], "weight_decay": 0.0},
    ]
    config = OptimizerConfig.from_args(args, model)
    return build_optimizer(args.optim, [g for g in groups if g["params"]], config)
