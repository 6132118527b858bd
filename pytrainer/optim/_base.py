"""What pytrainer's kernel-backed optimizers share: GradScaler support, checks
of new parameters, and the placement of per-parameter step counts."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytrainer import ops
from pytrainer.optim._validation import check_param_dtypes


class KernelOptimizer(torch.optim.Optimizer):
    """Base of the optimizers whose step is one ``torch.ops.pytrainer`` call per group.

    GradScaler: with ``_step_supports_amp_scaling`` the scaler sets ``grad_scale``
    and ``found_inf`` on the optimizer around ``step()``; the kernels divide the
    grads by the scale and skip the whole step on the device when ``found_inf``
    is set, so no value is read back to the host.
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
        super().load_state_dict(state_dict)
        self._place_steps()

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

    def _amp_tensors(self, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """GradScaler's ``grad_scale`` and ``found_inf`` on ``device`` (None when absent)."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if grad_scale is not None and grad_scale.device != device:
            grad_scale = grad_scale.to(device, non_blocking=True)
        if found_inf is not None and found_inf.device != device:
            found_inf = found_inf.to(device, non_blocking=True)
        return grad_scale, found_inf

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
