"""The data loaders of a Trainer, as Hugging Face builds them: the datasets'
unused columns dropped (``remove_unused_columns``), the collator (given, or
Hugging Face's default choice) wrapped so its errors name the column it could
not batch, the training order of ``train_sampling_strategy``, and the
DataLoader settings of the arguments."""
from __future__ import annotations

import math
import sys
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from pytrainer.trainer.collation import (ColumnFilter, ColumnNamingCollator, drop_unused_columns,
                                         is_hf_dataset, signature_columns)
from pytrainer.trainer.data import (build_eval_loader, build_iterable_train_loader,
                                    build_train_loader, has_length, loader_options)
from pytrainer.trainer.model_io import unwrap
from pytrainer.trainer.sampling import WindowBatchSampler, sample_lengths

__all__ = ["TrainerLoaders", "TrainLoader", "StepPlan"]


class StepPlan(NamedTuple):
    """The step accounting of a run (an epoch of a set without a length is
    max_steps updates long, as in Hugging Face)."""
    batches_per_epoch: int
    steps_per_epoch: int
    max_steps: int
    num_epochs: int


class TrainLoader:
    """A training loader, its sampler (None for a set without a length) and its
    micro-batches per epoch (None: unknown)."""

    def __init__(self, loader: DataLoader, sampler: WindowBatchSampler | None):
        self.loader, self.sampler = loader, sampler
        self.batches_per_epoch = len(sampler) if sampler is not None else None

    def plan(self, args, accumulation: int) -> StepPlan:
        """Updates per epoch, in all (max_steps, or the epochs') and epochs."""
        batches = self.batches_per_epoch
        if batches is None:  # a set without a length: epochs of max_steps updates
            return StepPlan(args.max_steps * accumulation, args.max_steps, args.max_steps,
                            sys.maxsize)
        if batches == 0:
            raise ValueError(f"the training set ({self.sampler.num_samples} samples) is smaller "
                             f"than one global batch and dataloader_drop_last is set")
        steps_per_epoch = max(math.ceil(batches / accumulation), 1)
        if args.max_steps > 0:
            return StepPlan(batches, steps_per_epoch, args.max_steps,
                            math.ceil(args.max_steps / steps_per_epoch))
        return StepPlan(batches, steps_per_epoch,
                        math.ceil(args.num_train_epochs * steps_per_epoch),
                        math.ceil(args.num_train_epochs))


class TrainerLoaders:
    def __init__(self, args, model: nn.Module, collator: Callable, processing_class: Any,
                 label_names: list[str], dist, device: torch.device,
                 eval_cache: dict[int, tuple[Any, DataLoader, int | None]]):
        self.args, self.model, self.collator = args, model, collator
        self.processing_class, self.label_names = processing_class, label_names
        self.dist, self.device = dist, device
        #: id -> (dataset, loader, real batches) of the evaluation loaders kept with
        #: persistent workers; the dataset held so that its id stays its own
        self._eval_cache = eval_cache

    def _prepared(self, dataset: Any, description: str) -> tuple[Any, Callable]:
        """The dataset and collator of a loader: unused columns dropped from a
        datasets.Dataset, filtered out of other rows by the collator."""
        collate = self.collator
        if self.args.remove_unused_columns:
            columns = signature_columns(self.model, self.label_names)
            if is_hf_dataset(dataset):
                dataset = drop_unused_columns(dataset, columns, type(unwrap(self.model)).__name__,
                                              description)
            else:
                collate = ColumnFilter(collate, columns)
        return dataset, ColumnNamingCollator(collate)

    def train(self, dataset: Any, batch_size: int, accumulation: int) -> TrainLoader:
        args, dist = self.args, self.dist
        iterable = not has_length(dataset) or isinstance(dataset, torch.utils.data.IterableDataset)
        lengths = None
        if args.train_sampling_strategy == "group_by_length" and not iterable:
            # read before the unused columns go: the length column is one of them
            input_name = (self.processing_class.model_input_names[0]
                          if hasattr(self.processing_class, "model_input_names") else "input_ids")
            lengths = sample_lengths(dataset, args.length_column_name, input_name)
        dataset, collate = self._prepared(dataset, "training")
        options = loader_options(args, self.device)
        if iterable:
            return TrainLoader(build_iterable_train_loader(
                dataset, batch_size, collate, options, args.dataloader_drop_last,
                dist.world_size, dist.rank), None)
        sampler = WindowBatchSampler(
            len(dataset), batch_size, seed=args.data_seed if args.data_seed is not None
            else args.seed, shuffle=args.train_sampling_strategy != "sequential",
            drop_last=args.dataloader_drop_last, world_size=dist.world_size, rank=dist.rank,
            lengths=lengths, group_size=batch_size * dist.world_size * accumulation)
        return TrainLoader(build_train_loader(dataset, sampler, collate, options), sampler)

    def eval(self, dataset: Any, description: str = "evaluation"
             ) -> tuple[DataLoader, int | None]:
        """The evaluation loader of ``dataset`` and how many of its batches are real;
        kept across evaluations with persistent workers (no new workers each time)."""
        cached = self._eval_cache.get(id(dataset))
        if cached is not None:
            return cached[1], cached[2]
        prepared, collate = self._prepared(dataset, description)
        built = build_eval_loader(prepared, self.args.per_device_eval_batch_size, collate,
                                  loader_options(self.args, self.device), self.dist.world_size,
                                  self.dist.rank)
        if self.args.dataloader_persistent_workers:
            self._eval_cache[id(dataset)] = (dataset, *built)
        return built
