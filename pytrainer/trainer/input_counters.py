"""What the training batches amount to: input tokens seen
(``include_num_input_tokens_seen``: all of them, or those the attention mask
keeps) and Hugging Face's floating-point operation estimate. Tokens are summed
on the device and added to the state when a log line or a checkpoint reads them."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from pytrainer.trainer.model_io import flops_per_token

__all__ = ["InputCounters"]

logger = logging.getLogger("pytrainer")


class InputCounters:
    """The counting is chosen once (``tokens``: all, non_padding, no): each
    micro-batch only adds."""

    def __init__(self, model: nn.Module, device: torch.device, dist, tokens: str,
                 pad_token_id: int | None, flops_of: Callable[[Mapping], float] | None = None):
        """``flops_of``: a Trainer subclass's floating_point_ops, called per
        micro-batch; None: Hugging Face's estimate, from a count made once."""
        self.dist, self.mode, self.pad_token_id = dist, tokens, pad_token_id
        self.input_name = getattr(model, "main_input_name", "input_ids")
        self._tokens = torch.zeros((), dtype=torch.int64, device=device)
        self._flos = 0.0
        self._flops_per_token = flops_per_token(model)  # counted once: the model is fixed
        self._flops_of = flops_of if flops_of is not None else self._estimated_flops
        self._count = {"no": None, "all": self._all, "non_padding": self._non_padding}[tokens]
        self._warned = False

    def add(self, batch: Mapping[str, Any]) -> None:
        self._flos += float(self._flops_of(batch))
        inputs = batch.get(self.input_name)
        if not isinstance(inputs, torch.Tensor):
            return self._no_inputs()
        if self._count is not None:
            self._tokens += self._count(batch, inputs)

    def _estimated_flops(self, batch: Mapping[str, Any]) -> int:
        inputs = batch.get(self.input_name)
        return self._flops_per_token * inputs.numel() if isinstance(inputs, torch.Tensor) else 0

    @staticmethod
    def _all(batch: Mapping[str, Any], inputs: torch.Tensor) -> int:
        return inputs.numel()

    def _non_padding(self, batch: Mapping[str, Any], inputs: torch.Tensor):
        if "attention_mask" in batch:
            return batch["attention_mask"].sum()
        if self.pad_token_id is not None:
            return (inputs != self.pad_token_id).sum()
        return inputs.numel()

    def _no_inputs(self) -> None:
        if self._count is not None and not self._warned:
            logger.warning("include_num_input_tokens_seen: the batches have no %r tensor to "
                           "count (the model's main_input_name)", self.input_name)
            self._warned = True

    @staticmethod
    def log_fields(state, start_time: float | None) -> dict[str, float]:
        """What a log line adds: the tokens seen, and for a training line (with the
        run's ``start_time``) its runtime and tokens per second, as Hugging Face."""
        fields: dict[str, float] = {"num_input_tokens_seen": state.num_input_tokens_seen}
        if start_time is not None:
            runtime = time.perf_counter() - start_time
            fields.update(train_runtime=round(runtime, 4), train_tokens_per_second=round(
                state.num_input_tokens_seen / max(runtime, 1e-9), 3))
        return fields

    def flush(self, state) -> None:
        """Adds the counts since the last flush, summed over ranks, to ``state``."""
        if self.mode != "no":
            state.num_input_tokens_seen += int(self.dist.all_reduce_sum(self._tokens).item())
            self._tokens.zero_()
        if self._flos or self.dist.enabled:  # every rank joins the reduction
            flos = torch.tensor(self._flos, dtype=torch.float64, device=self._tokens.device)
            state.total_flos += float(self.dist.all_reduce_sum(flos).item())
            self._flos = 0.0
