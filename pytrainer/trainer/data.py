"""Data loaders of training and evaluation, and the target-token counts that
normalise an accumulation window's loss.

Map-style training sets go through a WindowBatchSampler (sampling.py); sets
without a length (torch or datasets IterableDataset) are read in order, each
global batch of ``per_device_batch * world_size`` samples split between the
ranks. Loaders take the DataLoader settings of the arguments (workers, pinned
memory, persistent workers, prefetching, the workers' start method).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from pytrainer.trainer.collation import IGNORE_INDEX
from pytrainer.trainer.sampling import WindowBatchSampler

__all__ = ["loader_options", "build_train_loader", "build_iterable_train_loader",
           "build_eval_loader", "eval_batches", "seed_loader", "count_targets", "has_length"]


def has_length(dataset: Any) -> bool:
    try:
        len(dataset)
    except TypeError:
        return False
    return True


def loader_options(args: Any, device: torch.device) -> dict[str, Any]:
    """The DataLoader settings of ``args``: pinned memory only where batches are
    copied to a GPU; the worker settings only with workers (the arguments refuse
    them without)."""
    options: dict[str, Any] = {"num_workers": args.dataloader_num_workers,
                               "pin_memory": bool(args.dataloader_pin_memory)
                               and device.type == "cuda"}
    if args.dataloader_num_workers > 0:
        options.update(persistent_workers=args.dataloader_persistent_workers,
                       prefetch_factor=args.dataloader_prefetch_factor,
                       multiprocessing_context=args.dataloader_multiprocessing_context)
    return options


def build_train_loader(dataset: Dataset, sampler: WindowBatchSampler, collate_fn: Callable,
                       options: dict[str, Any]) -> DataLoader:
    """The loader draws its workers' base seed from its own generator (see
    ``seed_loader``), not from torch's global one, which the training step owns:
    starting an epoch's iterator then leaves the model's random stream alone, so a
    run resumed mid-epoch draws exactly what the uninterrupted run drew."""
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                      generator=torch.Generator(), **options)


class _RankSlice:
    """Collates this rank's slice of a global batch; a short last global batch is
    filled from its own start, so every rank gets a micro-batch."""

    def __init__(self, collate: Callable, batch_size: int, world_size: int, rank: int):
        self.collate, self.batch_size, self.world_size, self.rank = (collate, batch_size,
                                                                    world_size, rank)

    def __call__(self, samples: list[Any]) -> Any:
        global_batch = self.batch_size * self.world_size
        if self.world_size > 1 and len(samples) < global_batch:
            samples = (samples * global_batch)[:global_batch]
        return self.collate(samples[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])


def build_iterable_train_loader(dataset: Any, batch_size: int, collate_fn: Callable,
                                options: dict[str, Any], drop_last: bool, world_size: int = 1,
                                rank: int = 0) -> DataLoader:
    """Global batches read in the dataset's order, rank r collating its r-th slice
    (accelerate's split of an IterableDataset). Sharding between workers is the
    dataset's (datasets.IterableDataset shards itself)."""
    return DataLoader(dataset, batch_size=batch_size * world_size, drop_last=drop_last,
                      collate_fn=_RankSlice(collate_fn, batch_size, world_size, rank),
                      generator=torch.Generator(), **options)


def seed_loader(loader: DataLoader, seed: int, epoch: int) -> None:
    """Workers' seeds of an epoch, the same whether or not the run was resumed;
    a dataset with ``set_epoch`` (datasets.IterableDataset) reshuffles by it."""
    loader.generator.manual_seed(seed * 100_003 + epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


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


def build_eval_loader(dataset: Dataset, batch_size: int, collate_fn: Callable,
                      options: dict[str, Any], world_size: int = 1, rank: int = 0
                      ) -> tuple[DataLoader, int | None]:
    """In order, no shuffling; with several ranks each takes every world_size-th
    batch-sized slice (see ``eval_batches``). Returns the loader and how many of
    its batches are real (None: all, for a set without a length): the others
    only keep the ranks in step."""
    if not has_length(dataset):
        if world_size > 1:
            raise ValueError("an evaluation set without a length cannot be split between "
                             f"{world_size} processes; give a map-style dataset (with __len__)")
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, **options), None
    batches, real = eval_batches(len(dataset), batch_size, world_size, rank)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn, **options), real


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
