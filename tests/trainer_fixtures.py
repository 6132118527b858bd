"""Small models and datasets for the Trainer tests (Hugging Face's regression
fixture, and a token-level model with padded labels)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from pytrainer import TrainingArguments


class RegressionDataset(Dataset):
    """y = 2x + 3 + noise, as in transformers' tests."""

    def __init__(self, length: int = 64, seed: int = 42):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(length, generator=gen)
        self.y = 2.0 * self.x + 3.0 + 0.1 * torch.randn(length, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_x": self.x[i], "labels": self.y[i]}


class RegressionModel(nn.Module):
    """a*x + b, starting at 0; MSE loss. ``random`` draws from every generator in
    forward, so resuming must restore them."""

    def __init__(self, random: bool = False):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))
        self.random = random

    def forward(self, input_x, labels=None):
        y = input_x * self.a + self.b
        if self.random:
            import random as pyrandom

            import numpy as np
            y = y + 0.01 * (torch.randn(()) + pyrandom.random() + float(np.random.rand()))
        out = {"logits": y}
        if labels is not None:
            out["loss"] = nn.functional.mse_loss(y, labels)
        return out


class NanAt(RegressionModel):
    """The loss is NaN at the given forward calls (one micro-batch per step)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def forward(self, input_x, labels=None):
        self.calls += 1
        out = super().forward(input_x, labels)
        if self.calls in self.bad_calls:
            out["loss"] = out["loss"] * float("nan")
        return out


class TokenDataset(Dataset):
    """Variable-length sequences of token ids with next-token labels; padding
    (label -100) makes token-level losses depend on how samples are batched."""

    def __init__(self, length: int = 32, vocab: int = 11, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.samples = []
        for _ in range(length):
            n = int(torch.randint(3, 12, (1,), generator=gen))
            ids = torch.randint(0, vocab, (n + 1,), generator=gen)
            self.samples.append({"input_ids": ids[:-1], "labels": ids[1:]})

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


class TokenModel(nn.Module):
    """Embedding + linear next-token model; its loss sums token losses and divides
    by ``num_items_in_batch`` when given (the whole window's target count), else
    takes the mean over this batch's targets."""

    def __init__(self, vocab: int = 11, dim: int = 8, accept_count: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        self.accepts_loss_kwargs = accept_count

    def forward(self, input_ids, labels=None, num_items_in_batch=None):
        logits = self.head(torch.tanh(self.embed(input_ids)))
        out = {"logits": logits}
        if labels is not None:
            flat = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                               ignore_index=-100, reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
            out["loss"] = flat / count
        return out


def args(tmp_path, **kwargs) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), learning_rate=0.1, disable_tqdm=True, use_cpu=True,
                report_to="none", save_strategy="no", logging_steps=5)
    base.update(kwargs)
    return TrainingArguments(**base)
