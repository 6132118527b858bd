"""Batches: which samples each micro-batch holds, how they are collated, and
the target-token counts that normalise an accumulation window's loss.

The order of samples depends only on the data seed and the epoch: a global
batch of ``per_device_batch * world_size`` consecutive samples of the epoch's
permutation, rank r taking its r-th slice. So batch 8 x 1 and batch 2 x 4 see
the same samples in the same windows, and N ranks with batch b see what one
process with batch N*b sees.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["WindowBatchSampler", "default_data_collator", "PaddingCollator", "count_targets",
           "build_train_loader", "build_eval_loader", "eval_batches", "seed_loader",
           "IGNORE_INDEX"]

#: the label value losses ignore (torch's cross_entropy default)
IGNORE_INDEX = -100


class WindowBatchSampler(Sampler[list[int]]):
    """The micro-batches of one rank for one epoch (see the module docstring).

    ``set_epoch`` picks the epoch's permutation; ``skip`` micro-batches at the
    start are dropped without touching the data (resuming mid-epoch). With
    several ranks and a last global batch too small to give every rank a full
    micro-batch, ranks are filled by wrapping to the start of the epoch, as
    accelerate's even_batches does, so no rank idles in a collective.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, shuffle: bool = True,
                 drop_last: bool = False, world_size: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.world_size = world_size
        self.rank = rank
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.drop_last:
            return self.num_samples // global_batch
        return math.ceil(self.num_samples / global_batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.permutation()
        global_batch = self.batch_size * self.world_size
        for b in range(self.skip, len(self)):
            chunk = order[b * global_batch:(b + 1) * global_batch]
            if len(chunk) < global_batch and self.world_size > 1:
                chunk = chunk + (order * global_batch)[:global_batch - len(chunk)]
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            if mine:
                yield mine


def _as_tensor(key: str, values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        try:
            return torch.stack(values)
        except RuntimeError as error:
            shapes = sorted({tuple(v.shape) for v in values})
            raise ValueError(f"cannot stack {key!r} of shapes {shapes} into a batch ({error}); "
                             "pad them with a data_collator such as "
                             "pytrainer.trainer.data.PaddingCollator") from None
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(values))
    if isinstance(first, (bool, int, float)) or (
            isinstance(first, Sequence) and not isinstance(first, str)):
        return torch.tensor(values)
    return values  # strings and other objects stay a list


def default_data_collator(samples: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Samples as dicts -> a dict of batched tensors (``label``/``label_ids`` become
    ``labels``, as in Hugging Face)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    if not isinstance(samples[0], Mapping):
        raise TypeError(f"samples must be dicts of the model's forward arguments (got "
                        f"{type(samples[0]).__name__}); wrap the dataset or pass a data_collator")
    batch = {}
    for key in samples[0]:
        out = "labels" if key in ("label", "label_ids") else key
        batch[out] = _as_tensor(key, [s[key] for s in samples])
    return batch


class PaddingCollator:
    """Pads variable-length sequences to the longest of the batch: ``input_ids``
    (and other keys) with ``pad_token_id``, ``labels`` with -100 (ignored by the
    loss), ``attention_mask`` with 0."""

    def __init__(self, pad_token_id: int = 0, label_pad_id: int = IGNORE_INDEX):
        self.pad_token_id = pad_token_id
        self.label_pad_id = label_pad_id

    def __call__(self, samples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in samples[0]:
            values = [torch.as_tensor(s[key]) for s in samples]
            if values[0].dim() == 0:
                batch[key] = torch.stack(values)
                continue
            fill = (self.label_pad_id if key == "labels" else 0 if key == "attention_mask"
                    else self.pad_token_id)
            length = max(v.shape[0] for v in values)
            out = torch.full((len(values), length, *values[0].shape[1:]), fill,
                             dtype=values[0].dtype)
            for i, v in enumerate(values):
                out[i, :v.shape[0]] = v
            batch[key] = out
        return batch


def count_targets(window: list[Mapping[str, Any]], shift: bool) -> torch.Tensor | None:
    """Labels that are loss targets in a whole accumulation window, as a device
    tensor (no host synchronisation): positions not equal to -100 of ``labels``
    (of ``labels[..., 1:]`` when the model's loss shifts them, of ``shift_labels``
    when the batch has them). None when the batches have no labels."""
    counts = []
    for batch in window:
        labels = batch.get("shift_labels")
        if labels is None:
            labels = batch.get("labels")
            if labels is None or not isinstance(labels, torch.Tensor):
                return None
            if shift:
                labels = labels[..., 1:]
        counts.append(labels.ne(IGNORE_INDEX).sum())
    return torch.stack(counts).sum() if counts else None


def _pin(device: torch.device) -> bool:
    return device.type == "cuda"


def build_train_loader(dataset: Dataset, sampler: WindowBatchSampler,
                       collate_fn: Callable, num_workers: int, device: torch.device) -> DataLoader:
    """The loader draws its workers' base seed from its own generator (see
    ``seed_loader``), not from torch's global one, which the training step owns:
    starting an epoch's iterator then leaves the model's random stream alone, so a
    run resumed mid-epoch draws exactly what the uninterrupted run drew."""
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, pin_memory=_pin(device),
                      generator=torch.Generator())


def seed_loader(loader: DataLoader, seed: int, epoch: int) -> None:
    """Workers' seeds of an epoch, the same whether or not the run was resumed."""
    loader.generator.manual_seed(seed * 100_003 + epoch)


def eval_batches(num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0
                 ) -> tuple[list[list[int]], int]:
    """Rank ``rank``'s evaluation batches, in order: every world_size-th batch-sized
    slice (no padding inside a batch: the metrics are gathered per sample), and
    how many of them are real. Under several ranks every rank gets as many batches
    as the rank with the most (each forward of a sharded model is a collective);
    the extra ones repeat the set's first batch and must not be counted."""
    starts = range(rank * batch_size, num_samples, batch_size * world_size)
    batches = [list(range(i, min(i + batch_size, num_samples))) for i in starts]
    real = len(batches)
    if world_size > 1 and num_samples > 0:
        most = math.ceil(math.ceil(num_samples / batch_size) / world_size)
        batches += [list(range(min(batch_size, num_samples)))] * (most - real)
    return batches, real


def build_eval_loader(dataset: Dataset, batch_size: int, collate_fn: Callable, num_workers: int,
                      device: torch.device, world_size: int = 1, rank: int = 0
                      ) -> tuple[DataLoader, int]:
    """In order, no shuffling; with several ranks each takes every world_size-th
    batch-sized slice (see ``eval_batches``). Returns the loader and how many of
    its batches are real: the others only keep the ranks in step."""
    batches, real = eval_batches(len(dataset), batch_size, world_size, rank)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn,
                        num_workers=num_workers, pin_memory=_pin(device))
    return loader, real
