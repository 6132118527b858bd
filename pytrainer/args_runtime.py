"""What transformers' TrainingArguments tells a script about its process, which
Hugging Face's example scripts read before building the Trainer: the device,
the world size and ranks, whether this process logs and saves, its log level,
and ``main_process_first`` around dataset preprocessing. Read from the
environment torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK), as the Trainer reads
it."""
from __future__ import annotations

import contextlib
import enum
import logging
import os
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

__all__ = ["ParallelMode", "ProcessProperties"]


class ParallelMode(str, enum.Enum):
    """transformers' ParallelMode, for the two modes pytrainer runs in."""
    NOT_PARALLEL = "not_parallel"
    DISTRIBUTED = "distributed"


def _env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


class ProcessProperties:
    """Mixed into TrainingArguments (reads its use_cpu, log_*, save_on_each_node)."""

    @property
    def world_size(self) -> int:
        return max(_env("WORLD_SIZE", 1), 1)

    @property
    def process_index(self) -> int:
        return _env("RANK", 0)

    @property
    def local_process_index(self) -> int:
        return _env("LOCAL_RANK", 0)

    @property
    def parallel_mode(self) -> ParallelMode:
        return ParallelMode.DISTRIBUTED if self.world_size > 1 else ParallelMode.NOT_PARALLEL

    @property
    def device(self) -> "torch.device":
        """The device the Trainer will train on."""
        from pytrainer.trainer.distributed import DistributedContext, select_device
        context = DistributedContext(self.world_size, self.process_index,
                                     self.local_process_index)
        return select_device(self.use_cpu, context)

    @property
    def n_gpu(self) -> int:
        """GPUs this process uses: 1 on CUDA (pytrainer has no DataParallel), else 0."""
        return 1 if self.device.type == "cuda" else 0

    @property
    def should_log(self) -> bool:
        return self.local_process_index == 0 if self.log_on_each_node else \
            self.process_index == 0

    @property
    def should_save(self) -> bool:
        return self.local_process_index == 0 if self.save_on_each_node else \
            self.process_index == 0

    def get_process_log_level(self) -> int:
        """This process's log level (log_level, or log_level_replica on the other
        processes; 'passive': pytrainer's logger's current level)."""
        from pytrainer.trainer.log_levels import process_log_level
        level = process_log_level(self, self.process_index, self.local_process_index)
        return level if level is not None else logging.getLogger("pytrainer").getEffectiveLevel()

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work") -> Iterator[None]:
        """Runs the block on the main process (of each node with ``local``) first,
        the others after it (e.g. a dataset map whose cache they then read). Joins
        the process group the Trainer will use."""
        if self.world_size <= 1:
            yield
            return
        from pytrainer.trainer.distributed import init_distributed
        context = init_distributed(self.use_cpu, self.ddp_timeout, self.ddp_backend)
        main = self.local_process_index == 0 if local else self.process_index == 0
        if not main:
            context.barrier()
        try:
            yield
        finally:
            if main:
                context.barrier()
