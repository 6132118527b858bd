"""Which samples each training micro-batch holds (``train_sampling_strategy``).

The order of an epoch depends only on the data seed and the epoch: a global
batch of ``per_device_batch * world_size`` consecutive samples of the epoch's
order, rank r taking its r-th slice. So batch 8 x 1 and batch 2 x 4 see the
same samples in the same windows, and N ranks with batch b see what one
process with batch N*b sees. The order is one of Hugging Face's strategies:

- ``random``: a permutation drawn from the data seed and the epoch;
- ``sequential``: the dataset's own order;
- ``group_by_length``: a permutation whose samples are sorted by length within
  mega-batches of 50 accumulation windows (fewer for small sets), the longest
  sample first, so that batches hold samples of similar lengths (less padding)
  and an out-of-memory error shows at the first step.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["WindowBatchSampler", "length_grouped_order", "sample_lengths"]


def length_grouped_order(lengths: Sequence[int], group_size: int,
                         generator: torch.Generator) -> list[int]:
    """A random order of the samples whose every ``group_size`` consecutive
    samples have similar lengths: the permutation is cut into mega-batches of
    ``min(50, len // (4 * group_size))`` groups (at least one), each sorted by
    length, longest first; the longest sample of all leads."""
    if not lengths:
        return []
    mult = max(min(len(lengths) // (group_size * 4), 50), 1)
    size = mult * group_size
    order = torch.randperm(len(lengths), generator=generator).tolist()
    megabatches = [sorted(order[i:i + size], key=lambda j: lengths[j], reverse=True)
                   for i in range(0, len(order), size)]
    longest = max(range(len(megabatches)), key=lambda m: lengths[megabatches[m][0]])
    megabatches[0][0], megabatches[longest][0] = megabatches[longest][0], megabatches[0][0]
    return [i for megabatch in megabatches for i in megabatch]


def sample_lengths(dataset: Any, length_column: str, input_name: str) -> list[int]:
    """Each sample's length: the ``length_column`` of a datasets.Dataset that has
    one, else the length of each row's ``input_name`` (read once, row by row)."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None and length_column in columns:
        return [int(n) for n in dataset[length_column]]
    lengths = []
    for index in range(len(dataset)):
        row = dataset[index]
        if not isinstance(row, Mapping) or input_name not in row:
            found = (f"a dict with keys {sorted(row)}" if isinstance(row, Mapping)
                     else type(row).__name__)
            raise ValueError(
                f"train_sampling_strategy='group_by_length' needs each sample's length: a "
                f"'{length_column}' column (length_column_name) or rows that are dicts with an "
                f"'{input_name}' key; sample {index} is {found}")
        lengths.append(len(row[input_name]))
    return lengths


class WindowBatchSampler(Sampler[list[int]]):
    """The micro-batches of one rank for one epoch (see the module docstring).

    ``set_epoch`` picks the epoch's order; ``skip`` micro-batches at the start
    are dropped without touching the data (resuming mid-epoch). With several
    ranks and a last global batch too small to give every rank a full
    micro-batch, ranks are filled by wrapping to the start of the epoch, as
    accelerate's even_batches does, so no rank idles in a collective.
    ``lengths`` (with ``group_size``, the samples of one accumulation window of
    every rank) orders by length (group_by_length); else ``shuffle`` chooses
    between random and sequential.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, shuffle: bool = True,
                 drop_last: bool = False, world_size: int = 1, rank: int = 0,
                 lengths: Sequence[int] | None = None, group_size: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"{len(lengths)} lengths for {num_samples} samples")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.world_size = world_size
        self.rank = rank
        self.lengths = lengths
        self.group_size = group_size or batch_size * world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.lengths is not None:
            return length_grouped_order(self.lengths, self.group_size, generator)
        if not self.shuffle:
            return list(range(self.num_samples))
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
