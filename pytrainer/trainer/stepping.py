"""How an update reaches the optimizer: the backward pass, gradient clipping and
the skip of an update whose loss or gradients are not finite.

The Trainer picks one stepper when training starts (``choose_stepper``); the
per-update code then calls it without asking which kind it is:

- ``GradScalerStepper`` (fp16): scaled backward, ``unscale_``, clipping, and the
  scaler's own skip of steps with inf/NaN gradients;
- ``FoldedStepper``: pytrainer's kernels take the clipping factor and the skip
  flag as device tensors (``step_scaled``): no pass over the gradients, no host
  read;
- ``FusedProtocolStepper``: torch's fused optimizers take the same two tensors
  through GradScaler's protocol (``grad_scale``/``found_inf``);
- ``PlainStepper``: any other optimizer; clipping in place, and one host read per
  update to skip a bad one.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["Stepper", "GradScalerStepper", "FoldedStepper", "FusedProtocolStepper",
           "PlainStepper", "choose_stepper", "squared_norm"]

#: added to the norm before dividing by it, as torch's clip_grad_norm_ does
_EPS = 1e-6


def squared_norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The sum of squares of ``grads`` (float32, on ``device``), without a host read."""
    if not grads:
        return torch.zeros((), device=device)
    return torch.stack([n.float().to(device) for n in torch._foreach_norm(grads)]).square().sum()


class Stepper:
    """One way of running the backward pass and the optimizer step."""

    def __init__(self, max_grad_norm: float):
        #: clipping is off when max_grad_norm <= 0
        self.max_grad_norm = max_grad_norm

    @property
    def clips(self) -> bool:
        return self.max_grad_norm > 0

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Makes the gradients true gradients before their norm is taken."""

    def step(self, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor],
             norm: torch.Tensor, bad: torch.Tensor, loss_bad: torch.Tensor) -> torch.Tensor:
        """Clips to ``max_grad_norm`` and steps unless ``bad`` (a device bool: the
        norm or a loss is not finite; ``loss_bad``: a loss is; both the same on every
        rank); returns the device flag of an update that counts as skipped."""
        raise NotImplementedError

    def _divisor(self, norm: torch.Tensor) -> torch.Tensor | None:
        """What the gradients are divided by to clip them (None: no clipping)."""
        if not self.clips:
            return None
        return torch.clamp((norm + _EPS) / self.max_grad_norm, min=1.0)

    def _clip_in_place(self, grads: list[torch.Tensor], norm: torch.Tensor) -> None:
        if self.clips:
            torch._foreach_mul_(grads, torch.clamp(self.max_grad_norm / (norm + _EPS), max=1.0))


class GradScalerStepper(Stepper):
    """fp16: the scaler finds inf/NaN gradients itself and skips those steps. An
    overflow of the loss scale is routine (the scaler lowers the scale), so only
    a non-finite loss counts as a skipped update."""

    def __init__(self, max_grad_norm: float, scaler: torch.amp.GradScaler):
        super().__init__(max_grad_norm)
        self.scaler = scaler

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.unscale_(optimizer)

    def step(self, optimizer, grads, norm, bad, loss_bad):
        self._clip_in_place(grads, norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        return loss_bad


class FoldedStepper(Stepper):
    """pytrainer's kernels divide by the clipping factor and skip on the flag, on
    the device (``KernelOptimizer.step_scaled``)."""

    def step(self, optimizer, grads, norm, bad, loss_bad):
        optimizer.step_scaled(self._divisor(norm), bad.to(torch.float32))
        return bad


class FusedProtocolStepper(Stepper):
    """torch's fused optimizers read ``grad_scale`` and ``found_inf`` set on them
    around ``step()`` (GradScaler's protocol)."""

    def step(self, optimizer, grads, norm, bad, loss_bad):
        divisor = self._divisor(norm)
        optimizer.grad_scale = divisor.to(torch.float32) if divisor is not None else None
        optimizer.found_inf = bad.to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
        return bad


class PlainStepper(Stepper):
    """Any other optimizer: it cannot skip on a device flag, so one host read per
    update decides."""

    def step(self, optimizer, grads, norm, bad, loss_bad):
        self._clip_in_place(grads, norm)
        if not bool(bad):
            optimizer.step()
        return bad


def choose_stepper(optimizer: Any, scaler: torch.amp.GradScaler | None,
                   max_grad_norm: float) -> Stepper:
    """The stepper of ``optimizer`` (None before it exists: backward only)."""
    if scaler is not None:
        return GradScalerStepper(max_grad_norm, scaler)
    if hasattr(optimizer, "step_scaled"):
        return FoldedStepper(max_grad_norm)
    if getattr(optimizer, "_step_supports_amp_scaling", False) and \
            getattr(optimizer, "defaults", {}).get("fused"):
        return FusedProtocolStepper(max_grad_norm)
    return PlainStepper(max_grad_norm)
