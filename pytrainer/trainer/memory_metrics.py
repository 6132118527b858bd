"""Memory metrics of a stage (``skip_memory_metrics=False``), with Hugging
Face's names: ``<stage>_mem_cpu_alloc_delta`` (resident memory at the end minus
at the start, bytes), ``<stage>_mem_cpu_peaked_delta`` (the peak above the end),
and the same for the GPU (torch's allocator) when training on CUDA. The CPU
peak is sampled by a thread while the stage runs, which costs some speed:
hence off by default."""
from __future__ import annotations

import threading
from typing import Any

import torch

__all__ = ["MemoryMetrics", "check_memory_metrics"]


def check_memory_metrics(skip: bool) -> None:
    if not skip:
        try:
            import psutil  # noqa: F401
        except ImportError:
            raise ImportError("skip_memory_metrics=False measures memory with psutil, which is "
                              "not installed (pip install psutil)") from None


class MemoryMetrics:
    def __init__(self, skip: bool, device: torch.device):
        self.skip = skip
        self.cuda = device.type == "cuda"
        self._stage: str | None = None

    def start(self, stage: str) -> None:
        """Starts measuring ``stage`` (a stage already running, e.g. evaluation
        inside training, is measured as part of it)."""
        if self.skip or self._stage is not None:
            return
        import psutil
        self._stage, self._process = stage, psutil.Process()
        self._cpu_start = self._cpu_peak = self._process.memory_info().rss
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._gpu_start = torch.cuda.memory_allocated()

    def _sample(self) -> None:
        while self._running:
            self._cpu_peak = max(self._cpu_peak, self._process.memory_info().rss)
            threading.Event().wait(0.005)

    def stop(self, stage: str, metrics: dict[str, Any]) -> None:
        """Adds the measurements of ``stage`` to ``metrics`` (when it was started)."""
        if self.skip or self._stage != stage:
            return
        self._running = False
        self._thread.join()
        end = self._process.memory_info().rss
        metrics[f"{stage}_mem_cpu_alloc_delta"] = end - self._cpu_start
        metrics[f"{stage}_mem_cpu_peaked_delta"] = max(0, max(self._cpu_peak, end) - end)
        if self.cuda:
            gpu_end = torch.cuda.memory_allocated()
            metrics[f"{stage}_mem_gpu_alloc_delta"] = gpu_end - self._gpu_start
            metrics[f"{stage}_mem_gpu_peaked_delta"] = max(
                0, torch.cuda.max_memory_allocated() - gpu_end)
        self._stage = None
