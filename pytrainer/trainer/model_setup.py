"""What the arguments do to the model and to torch's global settings before
training: mixed precision, activation checkpointing, the key/value cache, NEFTune noise,
torch.compile, TF32 matmuls and deterministic algorithms. Each is checked when
the Trainer is built, so a model that cannot do it fails before the first step.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any

import torch
from torch import nn

__all__ = ["autocast_for", "check_activation_checkpointing", "enable_activation_checkpointing",
           "set_use_cache",
           "NEFTune", "compile_model", "apply_tf32", "enable_full_determinism"]


def autocast_for(args, device: torch.device):
    """The mixed-precision context of bf16 / fp16 (none without)."""
    if args.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if args.fp16:
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def check_activation_checkpointing(model: nn.Module) -> None:
    """A clear error when ``activation_checkpointing`` (``gradient_checkpointing``)
    cannot be turned on for ``model``."""
    name = type(model).__name__
    if not (hasattr(model, "activation_checkpointing_enable")
            or hasattr(model, "gradient_checkpointing_enable")):
        raise ValueError(
            f"activation_checkpointing=True (gradient_checkpointing) needs a model with a "
            f"gradient_checkpointing_enable() method, as transformers' models have; {name} has "
            f"none: wrap its blocks in torch.utils.checkpoint.checkpoint yourself and leave "
            f"activation_checkpointing off")
    if getattr(model, "supports_gradient_checkpointing", True) is False:
        raise ValueError(f"activation_checkpointing=True: {name} does not support activation "
                         f"checkpointing (its supports_gradient_checkpointing is False)")


def enable_activation_checkpointing(model: nn.Module, kwargs: dict[str, Any] | None) -> None:
    """Hugging Face's call: ``every_n_layers`` and ``offload`` go to the model's
    method, the other keys to torch.utils.checkpoint."""
    options = dict(kwargs or {})
    extra = {key: options.pop(key) for key in ("every_n_layers", "offload") if key in options}
    method = getattr(model, "activation_checkpointing_enable", None)
    if method is not None:
        method(activation_checkpointing_kwargs=options or None, **extra)
        return
    method = model.gradient_checkpointing_enable
    accepted = inspect.signature(method).parameters
    method(gradient_checkpointing_kwargs=options or None,
           **{k: v for k, v in extra.items() if k in accepted})


def set_use_cache(model: nn.Module, use_cache: bool) -> None:
    """transformers' models keep past keys/values when ``config.use_cache``: of
    no use in training, so the argument (default False) is written there."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = use_cache


class NEFTune:
    """NEFTune: uniform noise of magnitude ``alpha / sqrt(length * width)`` added
    to the input embeddings in training mode, by a hook on the model's input
    embedding layer (``get_input_embeddings()``) while training runs."""

    def __init__(self, model: nn.Module, alpha: float):
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") \
            else None
        if not isinstance(embeddings, nn.Module):
            raise ValueError(
                f"neftune_noise_alpha={alpha} adds noise to the input embeddings, found through "
                f"get_input_embeddings(), which {type(model).__name__} does not have; add it, "
                f"or drop neftune_noise_alpha")
        self.embeddings, self.alpha, self.handle = embeddings, alpha, None

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        magnitude = self.alpha / (output.size(1) * output.size(2)) ** 0.5
        return output + torch.zeros_like(output).uniform_(-magnitude, magnitude)

    def __enter__(self) -> "NEFTune":
        self.handle = self.embeddings.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def compile_model(model: nn.Module, backend: str, mode: str | None) -> nn.Module:
    """``torch.compile`` of the module the training loop calls."""
    return torch.compile(model, backend=backend, **({"mode": mode} if mode else {}))


def apply_tf32(tf32: bool | None) -> None:
    """TF32 for float32 matmuls and convolutions on or off (None: torch's
    setting stays), as Hugging Face sets it. On needs an Ampere or newer GPU."""
    if tf32 is None:
        return
    if tf32 and not (torch.cuda.is_available()
                     and torch.cuda.get_device_capability()[0] >= 8):
        raise ValueError("tf32=True needs an NVIDIA GPU of the Ampere generation or newer; this "
                         "machine has none (leave tf32 unset)")
    if hasattr(torch.backends, "fp32_precision"):
        torch.backends.fp32_precision = "tf32" if tf32 else "ieee"
    else:  # torch before 2.9
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def enable_full_determinism() -> None:
    """Deterministic algorithms everywhere, as Hugging Face's full_determinism:
    torch's deterministic mode (an error names any op without a deterministic
    version), cuDNN without benchmarking, cuBLAS with a fixed workspace."""
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
