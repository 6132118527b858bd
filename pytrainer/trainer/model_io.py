"""What the Trainer needs to know of a model it did not write: where the loss is
in its outputs, whether its loss takes the window's target count, whether that
loss shifts the labels; and batches moved to its device."""
from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import nn

__all__ = ["loss_of", "accepts_loss_kwargs", "loss_shifts_labels", "to_device"]


def loss_of(outputs: Any) -> torch.Tensor:
    """The loss in a model's outputs: ``.loss``, a dict's ``"loss"``, a tuple's
    first item, or a 0-d tensor."""
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        if "loss" not in outputs.keys():
            raise ValueError(f"the model returned keys {list(outputs.keys())} without 'loss'; "
                             "return the loss, or pass compute_loss_func")
        return outputs["loss"]
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    loss = getattr(outputs, "loss", None)
    if loss is None:
        if isinstance(outputs, torch.Tensor) and outputs.dim() == 0:
            return outputs
        raise ValueError(f"cannot find a loss in the model's output ({type(outputs).__name__}): "
                         "return an object with .loss, a dict with 'loss' or a tuple whose first "
                         "item is the loss, or pass compute_loss_func")
    return loss


def accepts_loss_kwargs(model: nn.Module) -> bool:
    """Whether the model's forward takes ``num_items_in_batch``."""
    if hasattr(model, "accepts_loss_kwargs"):
        return bool(model.accepts_loss_kwargs)
    params = inspect.signature(model.forward).parameters
    return "num_items_in_batch" in params or any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def loss_shifts_labels(model: nn.Module) -> bool:
    """Whether the model's loss predicts labels[i+1] at position i (a causal LM of
    transformers): then position 0 of each row is no target."""
    if hasattr(model, "loss_shifts_labels"):
        return bool(model.loss_shifts_labels)
    if "transformers" not in sys.modules:  # then no model of it: spare the import
        return False
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    except ImportError:
        return False
    config = getattr(model, "config", None)
    return (LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss
            and not getattr(config, "is_encoder_decoder", False))


def to_device(batch: Any, device: torch.device) -> Any:
    """Every tensor of a (nested) batch on ``device``, copied without blocking."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
