"""The training loss between log lines, the run's totals, and the watch over
skipped updates, kept on the device: nothing is read back to the host per
update; a log line, an evaluation, a checkpoint or the end of training reads
them (the host waits for the device there anyway).

With ``logging_nan_inf_filter`` (the default) an update whose loss or gradient
was not finite, which the Trainer skips, is left out of the logged loss; without
it, it is logged as the NaN or inf it was.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from pytrainer.trainer.nonfinite import NonFiniteWatch
from pytrainer.trainer.state import TrainingTotals

__all__ = ["LossTracker"]

logger = logging.getLogger("pytrainer")


class LossTracker:
    def __init__(self, device: torch.device, dist, totals: TrainingTotals, nan_inf_filter: bool,
                 limit: int, log: Callable[[dict, int], None]):
        self.dist = dist
        self.totals = totals
        self.nan_inf_filter = nan_inf_filter
        self.limit = limit
        #: log(entry, step): a skipped update is a log line of its own
        self._log = log
        self._loss_sum = torch.tensor(totals.loss_since_log, device=device)
        self._steps = torch.tensor(float(totals.steps_since_log), device=device)
        #: the gradient norm of the last update (device scalar)
        self.grad_norm = torch.zeros((), device=device)
        self._watch = NonFiniteWatch(device, streak=totals.consecutive_bad_steps)
        #: (step, streak) when ``limit`` skipped updates came in a row
        self.limit_hit: tuple[int, int] | None = None

    def record(self, step: int, loss: torch.Tensor, skipped: torch.Tensor) -> None:
        """Update ``step``'s loss (the mean over its window) and its skip flag."""
        counted = ~skipped if self.nan_inf_filter else torch.ones_like(skipped)
        # where, not a product: the loss of a skipped update may be NaN
        self._loss_sum += torch.where(counted, loss.float(), 0.0)
        self._steps += counted.to(self._steps.dtype)
        self._read(self._watch.record(step, skipped))

    def drain(self) -> None:
        """Reads every skip flag recorded (logging each skipped update)."""
        self._read(self._watch.drain())

    def _read(self, readings) -> None:
        for step, skipped, streak in readings:
            if skipped:
                logger.warning("non-finite loss or gradient at step %d: update skipped", step)
                self._log({"nonfinite_update_skipped": step}, step)
            if self.limit and streak >= self.limit and self.limit_hit is None:
                self.limit_hit = (step, streak)
        self.totals.consecutive_bad_steps = self._watch.streak

    def _reduced_sum(self) -> float:
        """The loss sum since the last log line, averaged over ranks (every rank
        takes part): the loss of the global batch, the same on every rank."""
        total = self.dist.all_reduce_sum(self._loss_sum.clone()) / self.dist.world_size
        return float(total.item())

    def take_log_loss(self) -> float | None:
        """The mean update loss since the last log line (None: no update counted),
        moved into the run's totals."""
        loss, steps = self._reduced_sum(), int(self._steps.item())
        self.totals.total_loss += loss
        self.totals.loss_steps += steps
        self._loss_sum.zero_()
        self._steps.zero_()
        self.totals.loss_since_log, self.totals.steps_since_log = 0.0, 0
        return loss / steps if steps else None

    def snapshot(self) -> TrainingTotals:
        """The totals with the sums since the last log line, for a checkpoint (a
        resumed run then logs what this one would)."""
        self.drain()
        self.totals.loss_since_log = self._reduced_sum()
        self.totals.steps_since_log = int(self._steps.item())
        return self.totals

    def train_loss(self) -> float:
        """The mean update loss of the run (of this call, after resuming from a
        checkpoint without pytrainer's totals)."""
        self.take_log_loss()
        return self.totals.total_loss / max(self.totals.loss_steps, 1)
