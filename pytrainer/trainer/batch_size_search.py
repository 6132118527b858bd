"""``auto_find_batch_size``: when the first update runs out of memory, train
again with a smaller per-device batch and more accumulation steps, so the
global batch (hence the training) stays the same.

The per-device batch is divided by its smallest prime factor (halved when it is
even) and the accumulation steps multiplied by it: batch 8 x 1 becomes 4 x 2,
then 2 x 4, then 1 x 8. (Hugging Face multiplies the batch by 0.9 and changes
the global batch.) A retry happens only before the first update completes: a
later one would start from weights already trained."""
from __future__ import annotations

import gc

import torch

__all__ = ["is_out_of_memory", "smaller_batch", "free_memory", "empty_device_cache"]

_MESSAGES = (" out of memory", "MPS backend out of memory", "DefaultCPUAllocator: can't allocate "
             "memory", "CUDNN_STATUS_NOT_SUPPORTED")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error of torch (any device)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and len(error.args) == 1 and \
        isinstance(error.args[0], str) and any(m in error.args[0] for m in _MESSAGES)


def smaller_batch(batch_size: int, accumulation: int) -> tuple[int, int] | None:
    """(batch, accumulation) with the same product and a smaller batch; None at 1."""
    if batch_size <= 1:
        return None
    factor = next(p for p in range(2, batch_size + 1) if batch_size % p == 0)
    return batch_size // factor, accumulation * factor


def empty_device_cache(device: torch.device) -> None:
    """The device allocator's cached blocks released (torch_empty_cache_steps)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def free_memory(model: torch.nn.Module) -> None:
    """What a failed attempt leaves: gradients, and the allocator's cache."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
