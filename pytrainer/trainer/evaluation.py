"""Collecting what evaluation batches produce: losses weighted by batch size,
and predictions and labels concatenated across batches of different lengths."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["batch_size_of", "logits_of", "to_numpy", "concat_padded", "gather_in_order"]


def batch_size_of(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("cannot tell the batch size: no tensor with a batch dimension in the batch")


def logits_of(outputs: Any) -> Any:
    """What a model returned besides its loss: ``.logits``, a dict's ``logits``,
    or a tuple's items after the loss."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        if "logits" in outputs.keys():
            return outputs["logits"]
        rest = tuple(v for k, v in outputs.items() if k != "loss")
        return rest[0] if len(rest) == 1 else rest
    if isinstance(outputs, (tuple, list)):
        rest = tuple(outputs[1:])
        return rest[0] if len(rest) == 1 else rest
    return getattr(outputs, "logits", None)


def to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.cpu().numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(to_numpy(v) for v in value)
    return value


def concat_padded(arrays: list[Any], pad: int = -100) -> Any:
    """Concatenates along the first dim, padding the second dim (sequence lengths
    differ between batches) with ``pad``; tuples are concatenated item by item."""
    if not arrays:
        return None
    if isinstance(arrays[0], tuple):
        return tuple(concat_padded([a[i] for a in arrays], pad) for i in range(len(arrays[0])))
    if arrays[0].ndim < 2 or all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    length = max(a.shape[1] for a in arrays)
    padded = []
    for a in arrays:
        out = np.full((a.shape[0], length, *a.shape[2:]), pad, dtype=a.dtype)
        out[:, :a.shape[1]] = a
        padded.append(out)
    return np.concatenate(padded, axis=0)


def gather_in_order(dist, predictions: list[tuple[int, Any]], labels: list[tuple[int, Any]]
                    ) -> tuple[Any, Any]:
    """Every rank's (batch index, array) pairs of predictions and labels, back in
    dataset order (rank r's batch i is the evaluation set's batch i * world + r)."""
    world = dist.world_size
    gathered_p = dist.all_gather_objects(predictions)
    gathered_l = dist.all_gather_objects(labels)
    ordered_p, ordered_l = [], []
    for r in range(world):
        for (index, p), (_, label) in zip(gathered_p[r], gathered_l[r]):
            ordered_p.append((index * world + r, p))
            ordered_l.append((index * world + r, label))
    ordered_p.sort(key=lambda item: item[0])
    ordered_l.sort(key=lambda item: item[0])
    preds = concat_padded([p for _, p in ordered_p])
    label_arrays = [label for _, label in ordered_l]
    labels_all = None if not label_arrays or label_arrays[0] is None else \
        concat_padded(label_arrays)
    return preds, labels_all
