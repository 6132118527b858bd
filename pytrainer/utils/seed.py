"""Seeding, and the random states a checkpoint saves and restores.

The states are plain tuples, lists and tensors under Hugging Face's keys, so a
checkpoint loads them with ``torch.load(weights_only=True)``, which cannot run
code, and Hugging Face's Trainer reads them too.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["set_seed", "get_rng_state", "set_rng_state"]


def set_seed(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's generators (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def get_rng_state(distributed: bool = False) -> dict[str, Any]:
    """Every generator's state under Hugging Face's keys (``python``, ``numpy``,
    ``cpu``, ``cuda``: one device's state, or every device's under
    torch.distributed), in plain types: tuples, lists of ints, tensors. Hugging
    Face's Trainer reads it as its own; ``torch.load(weights_only=True)`` reads
    it without allowing any class."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": (version, tuple(internal), gauss),
        "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = (torch.cuda.get_rng_state_all() if distributed
                         else torch.cuda.get_rng_state())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`get_rng_state` returned, or Hugging Face's file (whose
    NumPy key is an array)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["cpu"])
    cuda_states = state.get("cuda")
    if cuda_states is None or not torch.cuda.is_available():
        return
    if isinstance(cuda_states, torch.Tensor):  # one device's (a single-process run)
        torch.cuda.set_rng_state(cuda_states)
    elif len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    else:
        for index, cuda_state in enumerate(cuda_states[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
