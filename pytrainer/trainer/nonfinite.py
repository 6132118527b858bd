"""The watch over skipped updates: each update's flag (its loss or gradient was
not finite, so the step was skipped on the device) is read on the host, in
order, without stalling the device.

On CUDA the flag is copied to pinned memory without blocking and an event marks
the copy; the host reads it ``lag`` updates later, when the device is long past
it, so waiting on the event costs nothing. Every rank reads the same update at
the same step, and the flags are the same on every rank (they come from reduced
values), so every rank takes the same decisions at the same step. ``drain``
reads everything recorded, at points where the host synchronises anyway (a log
line, an evaluation, a checkpoint, the end of training). On other devices the
flag is read at once (lag 0): the host waits for the device there anyway.
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

import torch

__all__ = ["NonFiniteWatch", "Reading"]


class Reading(NamedTuple):
    step: int
    #: whether the update of ``step`` was skipped
    skipped: bool
    #: skipped updates in a row through ``step``
    streak: int


class NonFiniteWatch:
    def __init__(self, device: torch.device, streak: int = 0, lag: int | None = None):
        self.asynchronous = device.type == "cuda"
        self.lag = lag if lag is not None else (2 if self.asynchronous else 0)
        if self.lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        #: skipped updates in a row through the last update read
        self.streak = streak
        self._pending: deque[tuple[int, torch.Tensor, torch.cuda.Event | None]] = deque()
        self._free: list[torch.Tensor] = []  # pinned host slots to reuse

    def record(self, step: int, skipped: torch.Tensor) -> list[Reading]:
        """Notes update ``step``'s flag (a device bool); returns the readings now
        due: the updates ``lag`` and more before this one, oldest first."""
        if self.asynchronous:
            host = self._free.pop() if self._free else torch.empty(
                (), dtype=torch.bool, pin_memory=True)
            host.copy_(skipped, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((step, host, event))
        else:
            self._pending.append((step, skipped.detach().clone(), None))
        return self._read(len(self._pending) - self.lag)

    def drain(self) -> list[Reading]:
        """Every update recorded and not yet read, oldest first."""
        return self._read(len(self._pending))

    def _read(self, count: int) -> list[Reading]:
        readings = []
        for _ in range(max(count, 0)):
            step, host, event = self._pending.popleft()
            if event is not None:
                event.synchronize()
            skipped = bool(host.item())
            if event is not None:
                self._free.append(host)
            self.streak = self.streak + 1 if skipped else 0
            readings.append(Reading(step, skipped, self.streak))
        return readings
