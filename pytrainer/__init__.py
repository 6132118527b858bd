"""pytrainer: fused optimizer kernels and a lean, Hugging Face-compatible training loop.

Heavy submodules load on first use, so ``import pytrainer`` stays cheap and works
even when the compiled kernels are not built.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TrainingArguments": "pytrainer.training_args",
    "ArgumentParser": "pytrainer.argparser",
    "Trainer": "pytrainer.trainer",
    "TrainerCallback": "pytrainer.trainer",
    "TrainOutput": "pytrainer.trainer",
    "set_seed": "pytrainer.utils.seed",
    "ops": "pytrainer.ops",
    "optim": "pytrainer.optim",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytrainer' has no attribute {name!r}")
    value = importlib.import_module(module)
    if name not in ("ops", "optim"):
        value = getattr(value, name)
    globals()[name] = value
    return value
