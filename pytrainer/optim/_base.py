"""What pytrainer's kernel-backed optimizers share: GradScaler support, checks
of new parameters, and the placement of per-parameter step counts."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytrainer import ops
from pytrainer.optim._validation import check_param_dtypes


try:  # FSDP2 parameters are DTensors; the kernels update their local shards
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch without torch.distributed
    _DTensor = None


def local_tensor(tensor: Tensor | None) -> Tensor | None:
    """This rank's shard of a DTensor (FSDP2), or the tensor itself."""
    if _DTensor is not None and isinstance(tensor, _DTensor):
        return tensor.to_local()
    return tensor


class KernelOptimizer(torch.optim.Optimizer):
    """Base of the optimizers whose step is one ``torch.ops.pytrainer`` call per group.

    GradScaler: with ``_step_supports_amp_scaling`` the scaler sets ``grad_scale``
    and ``found_inf`` on the optimizer around ``step()``; the kernels divide the
    grads by the scale (leaving them unscaled, as torch's fused optimizers do) and
    skip the whole step on the device when ``found_inf`` is set, so no value is
    read back to the host. :meth:`step_scaled` does the same for a training loop
    that folds gradient clipping and its own inf/NaN check into the step.
    """

    _step_supports_amp_scaling = True
    #: the op of this optimizer, checked for a kernel on each group's device
    _op_name: str = ""
    #: parameter dtypes the kernels accept
    _param_dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def __init__(self, params, defaults: dict[str, Any]) -> None:
        ops.require()
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        check_param_dtypes(type(self).__name__, params, self._param_dtypes)
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch.optim casts every floating state to its parameter's dtype, which
        # would round float32 states of 16-bit parameters: recast the saved
        # tensors to the dtypes this optimizer keeps instead.
        saved = state_dict["state"]
        saved_ids = [group["params"] for group in state_dict["param_groups"]]
        super().load_state_dict(state_dict)
        for group, ids in zip(self.param_groups, saved_ids):
            for p, pid in zip(group["params"], ids):
                for key, tensor in saved.get(pid, {}).items():
                    dtype = self._state_dtype(group, key, p)
                    if dtype is not None and key != "step" and isinstance(tensor, Tensor):
                        self.state[p][key] = tensor.to(device=p.device, dtype=dtype)
        self._place_steps()

    def _state_dtype(self, group: dict[str, Any], key: str, param: Tensor) -> torch.dtype | None:
        """The dtype of state ``key`` of ``param`` (None: the parameter's own)."""
        return None

    def _place_steps(self) -> None:
        # The kernels read and advance a float32 step on the parameter's device.
        # torch.optim keeps it on the CPU (or loads it there with
        # map_location="cpu"): move it once here rather than check every step.
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state or "step" not in state:
                    continue
                step = state["step"]
                if not isinstance(step, Tensor):
                    step = torch.tensor(float(step))
                if step.dtype != torch.float32 or step.device != p.device or step.dim() != 0:
                    state["step"] = step.reshape(()).to(device=p.device, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        folded = self.__dict__.get("_folded")
        if folded is not None:  # step_scaled
            self._step_groups(*folded, write_back_grads=False)
        else:  # GradScaler.step sets these around this call
            self._step_groups(getattr(self, "grad_scale", None), getattr(self, "found_inf", None),
                              write_back_grads=True)
        return loss

    @torch.no_grad()
    def step_scaled(self, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
        """One step with every grad divided by ``grad_scale`` (a 1-element tensor)
        and the whole step skipped on the device when ``found_inf`` (a 1-element
        tensor) is nonzero: params, states and step counts untouched. The grads
        themselves are left as they are. A training loop passes ``1/clip_coef`` and
        ``~isfinite(grad_norm)`` here, so gradient clipping and the inf/NaN check
        cost neither a pass over the grads nor a host synchronisation. (Through
        ``step()``, so step hooks and learning-rate schedulers see the step.)"""
        self._folded = (grad_scale, found_inf)
        try:
            self.step()
        finally:
            self._folded = None

    def _step_groups(self, grad_scale: Tensor | None, found_inf: Tensor | None,
                     write_back_grads: bool) -> None:
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf, write_back_grads)

    def _step_group(self, group: dict[str, Any], grad_scale: Tensor | None,
                    found_inf: Tensor | None, write_back_grads: bool) -> None:
        raise NotImplementedError

    @staticmethod
    def _on(tensor: Tensor | None, device: torch.device) -> Tensor | None:
        """``tensor`` on ``device`` (the scaler's tensors live on its own device)."""
        if tensor is None or tensor.device == device:
            return tensor
        return tensor.to(device, non_blocking=True)

    @staticmethod
    def _lr_args(lr: float | Tensor) -> tuple[float, Tensor | None]:
        """(lr as a float, lr as a tensor): a tensor lr stays on its device so a
        scheduler can update it without a host round trip."""
        if isinstance(lr, Tensor):
            return 0.0, lr
        return float(lr), None

    def _check_kernels(self, device: torch.device) -> None:
        """Clear error when this build has no kernel for ``device`` (checked once per device)."""
        checked = self.__dict__.setdefault("_devices_with_kernels", set())
        if device not in checked:
            ops.check_device(device, self._op_name)
            checked.add(device)
