"""Label smoothing of a model's logits (``label_smoothing_factor``), with Hugging
Face's formula: ``(1 - eps) * nll + eps * mean over classes of -log p``, over
the target positions (labels other than -100), normalised by the window's
target count when the Trainer passes it."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pytrainer.trainer.collation import IGNORE_INDEX

__all__ = ["LabelSmoother", "label_smoother_for"]

logger = logging.getLogger("pytrainer")


class LabelSmoother:
    def __init__(self, epsilon: float, ignore_index: int = IGNORE_INDEX):
        self.epsilon = epsilon
        self.ignore_index = ignore_index

    def __call__(self, outputs: Any, labels: torch.Tensor, shift_labels: bool = False,
                 num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) or hasattr(outputs, "keys") \
            else outputs[0]
        if shift_labels:  # a causal LM: position i predicts label i + 1
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        neg_log_probs = -nn.functional.log_softmax(logits.float(), dim=-1)
        if labels.dim() == neg_log_probs.dim() - 1:
            labels = labels.unsqueeze(-1)
        padding = labels.eq(self.ignore_index)
        nll = neg_log_probs.gather(dim=-1, index=labels.clamp(min=0)).masked_fill(padding, 0.0)
        smoothed = neg_log_probs.sum(dim=-1, keepdim=True).masked_fill(padding, 0.0)
        if num_items_in_batch is None:
            count = padding.numel() - padding.long().sum()
        else:
            count = torch.as_tensor(num_items_in_batch, device=nll.device)
        return ((1 - self.epsilon) * nll.sum() / count
                + self.epsilon * smoothed.sum() / (count * neg_log_probs.shape[-1]))


def label_smoother_for(model: nn.Module, factor: float) -> LabelSmoother | None:
    """The smoother of ``label_smoothing_factor`` (None at 0); multi-label
    classification is trained without, with a warning, as Hugging Face does."""
    if factor == 0:
        return None
    if getattr(getattr(model, "config", None), "problem_type", None) == \
            "multi_label_classification":
        logger.warning("label_smoothing_factor does not apply to multi-label classification: "
                       "training without label smoothing")
        return None
    return LabelSmoother(factor)
