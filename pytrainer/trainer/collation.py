"""Turning dataset rows into batches: the default collators, Hugging Face's
choice of one, dropping the columns the model's forward does not take
(``remove_unused_columns``), and errors that name the column a collator could
not batch."""
from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = ["default_data_collator", "PaddingCollator", "IGNORE_INDEX", "default_collator_for",
           "signature_columns", "drop_unused_columns", "ColumnFilter", "ColumnNamingCollator",
           "unbatchable_column", "is_hf_dataset"]

logger = logging.getLogger("pytrainer")

#: the label value losses ignore (torch's cross_entropy default)
IGNORE_INDEX = -100


def _as_tensor(key: str, values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(values))
    if isinstance(first, (bool, int, float, np.generic)) or (
            isinstance(first, Sequence) and not isinstance(first, str)):
        return torch.tensor(values)
    return values  # strings and other objects stay a list


def default_data_collator(samples: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Samples as dicts -> a dict of batched tensors, as Hugging Face's
    default_data_collator: ``label``/``label_ids`` become ``labels`` (long for
    integers, float otherwise), keys whose first value is None are left out;
    strings stay a list (Hugging Face drops them)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    if not isinstance(samples[0], Mapping):
        raise TypeError(f"samples must be dicts of the model's forward arguments (got "
                        f"{type(samples[0]).__name__}); wrap the dataset or pass a data_collator")
    batch = {}
    for key, first in samples[0].items():
        if first is None:
            continue
        values = [s[key] for s in samples]
        if key in ("label", "label_ids") and not isinstance(first, torch.Tensor):
            scalar = first.item() if isinstance(first, np.ndarray) and first.ndim == 0 else first
            probe = scalar[0] if isinstance(scalar, Sequence) and scalar else scalar
            dtype = torch.long if isinstance(probe, (int, np.integer)) else torch.float
            batch["labels"] = torch.tensor(values, dtype=dtype)
            continue
        batch["labels" if key in ("label", "label_ids") else key] = _as_tensor(key, values)
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


def default_collator_for(processing_class: Any) -> Callable:
    """Hugging Face's choice when no data_collator is given: transformers'
    DataCollatorWithPadding over a tokenizer or feature extractor, else the
    default collator."""
    if processing_class is not None and "transformers" in sys.modules:
        from transformers import (DataCollatorWithPadding, PreTrainedTokenizerBase,
                                  SequenceFeatureExtractor)
        if isinstance(processing_class, (PreTrainedTokenizerBase, SequenceFeatureExtractor)):
            return DataCollatorWithPadding(processing_class)
    return default_data_collator


def _describe(values: list[Any]) -> str | None:
    """Why these values of one column do not make a tensor (None: they do)."""
    kinds = {type(v) for v in values}
    if any(v is None for v in values):
        return "is None in some rows and set in others" if len(kinds) > 1 else None
    if any(isinstance(v, str) for v in values):
        return f"holds text (e.g. {str(values[0])[:40]!r})"
    if any(isinstance(v, Mapping) for v in values):
        return "holds dicts"
    shapes = []
    for v in values:
        if isinstance(v, (torch.Tensor, np.ndarray)):
            shapes.append(tuple(v.shape))
        elif isinstance(v, Sequence):
            if any(isinstance(x, str) for x in v):
                return "holds lists of text"
            shapes.append((len(v),))
        elif not isinstance(v, (bool, int, float, np.generic)):
            return f"holds {type(v).__name__} values"
    if len(set(shapes)) > 1:
        lengths = sorted({s[0] if s else 0 for s in shapes})
        return (f"has rows of different lengths ({', '.join(map(str, lengths[:4]))}"
                f"{', ...' if len(lengths) > 4 else ''})")
    return None


def unbatchable_column(samples: list[Any]) -> tuple[str, str] | None:
    """The first column of dict rows that cannot be stacked into a tensor, and
    why; None when every column can."""
    if not samples or not all(isinstance(s, Mapping) for s in samples):
        return None
    for key in samples[0]:
        missing = [i for i, s in enumerate(samples) if key not in s]
        if missing:
            return key, f"is missing from row {missing[0]} of the batch"
        why = _describe([s[key] for s in samples])
        if why is not None:
            return key, why
    return None


class ColumnNamingCollator:
    """Runs a collator; when it fails on a batch, the error names the column it
    could not batch and why (text, rows of different lengths...)."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, samples: list[Any]) -> Any:
        try:
            return self.collate(samples)
        except (ValueError, TypeError, RuntimeError) as error:
            problem = unbatchable_column(samples)
            if problem is None:
                raise
            column, why = problem
            name = getattr(self.collate, "__name__", type(self.collate).__name__)
            raise ValueError(
                f"the data collator ({name}) cannot batch column {column!r}: it {why}. Drop the "
                f"column (remove_unused_columns=True drops those the model's forward does not "
                f"take), tokenize it, or pad it with a padding collator (DataCollatorWithPadding, "
                f"DataCollatorForLanguageModeling, pytrainer's PaddingCollator). The collator "
                f"said: {type(error).__name__}: {str(error).strip()[:300]}") from error


def _forward_of(model: nn.Module) -> Callable:
    """The forward whose signature names the model's inputs (under
    torch.compile's and PEFT's wrappers)."""
    model = getattr(model, "_orig_mod", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.forward


def signature_columns(model: nn.Module, label_names: list[str]) -> list[str]:
    """The columns a batch keeps: the forward's parameters, the label names and
    ``label``/``label_ids`` (which the default collator renames)."""
    names = list(inspect.signature(_forward_of(model)).parameters)
    return names + [n for n in ["label", "label_ids", *label_names] if n not in names]


def is_hf_dataset(dataset: Any) -> bool:
    """Whether ``dataset`` is a datasets.Dataset (map-style, with columns)."""
    if "datasets" not in sys.modules:
        return False
    import datasets
    return isinstance(dataset, datasets.Dataset)


def drop_unused_columns(dataset: Any, columns: list[str], model_name: str, description: str):
    """A datasets.Dataset without the columns outside ``columns``; a ValueError
    when none of its columns is one of them."""
    ignored = [c for c in dataset.column_names if c not in columns]
    if len(ignored) == len(dataset.column_names):
        raise ValueError(
            f"none of the {description} set's columns ({', '.join(dataset.column_names)}) is an "
            f"argument of {model_name}.forward ({', '.join(columns)}); rename them, or set "
            f"remove_unused_columns=False")
    if ignored:
        logger.info("the %s set's columns %s are not arguments of %s.forward and are dropped",
                    description, ", ".join(ignored), model_name)
        dataset = dataset.remove_columns(ignored)
    return dataset


class ColumnFilter:
    """Drops the keys outside ``columns`` from each dict row before collating
    (``remove_unused_columns`` for datasets other than datasets.Dataset)."""

    def __init__(self, collate: Callable, columns: list[str]):
        self.collate = collate
        self.columns = set(columns)

    def __call__(self, samples: list[Any]) -> Any:
        return self.collate([{k: v for k, v in s.items() if k in self.columns}
                             if isinstance(s, dict) else s for s in samples])
