"""What pytrainer's kernel-backed optimizers share: GradScaler support, checks
of new parameters, and the placement of per-parameter step counts."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytrainer import ops
from pytrainer.optim._state_cache import (GroupCache, TrackedStateMap, Version, grads_or_none)
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
        self._track_state()

    def _track_state(self) -> None:
        """Makes ``self.state`` count its changes (see _state_cache)."""
        if "_version" not in self.__dict__:
            self._version = Version()
        self.state = TrackedStateMap(self._version, self.state)
        self._version.bump()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._track_state()

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout, with plain dicts (weights_only loading refuses any
        other class, so the state's change-counting dicts stay out of checkpoints)."""
        state_dict = super().state_dict()
        state_dict["state"] = {key: dict(value) if isinstance(value, dict) else value
                               for key, value in state_dict["state"].items()}
        return state_dict

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        check_param_dtypes(type(self).__name__, params, self._param_dtypes)
        super().add_param_group(param_group)
        if "_version" in self.__dict__:
            self._version.bump()

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

    def _collect(self, group: dict[str, Any], keys: dict[str, torch.dtype | None]
                 ) -> tuple[list[Tensor], list[Tensor], dict[str, list[Tensor]], list[Tensor]]:
        """The group's parameters that have a gradient, their gradients, their
        states ``keys`` (of the given dtype, None: the parameter's) and float32
        ``step`` counts, created as zeros where missing.

        When every parameter has a gradient the lists are kept for the next step,
        as long as no state, state map or parameter list changed in between."""
        if not isinstance(self.state, TrackedStateMap):  # replaced by the user
            self._track_state()
        caches = self.__dict__.setdefault("_group_caches", {})
        params_list = group["params"]
        key_names = tuple(keys)
        cached = caches.get(id(group))
        if cached is not None and cached.valid(self._version.value, params_list, key_names):
            grads = grads_or_none(cached.params)
            if grads is not None:
                return cached.params, grads, cached.lists, cached.steps
        params, grads, states, missing = [], [], [], []
        for p in params_list:
            grad = p.grad
            if grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            for key in keys:
                if key not in state:
                    missing.append((p, state))
                    break
            params.append(p)
            grads.append(grad)
            states.append(state)
        if missing:
            self._create_states(missing, keys)
        lists = {key: [state[key] for state in states] for key in keys}
        steps = [state["step"] for state in states]
        if len(params) == len(params_list) and not (
                params and _DTensor is not None and isinstance(params[0], _DTensor)):
            caches[id(group)] = GroupCache(self._version.value, params_list, key_names,
                                           params, lists, steps)
        return params, grads, lists, steps

    @staticmethod
    def _create_states(missing: list[tuple[Tensor, dict[str, Any]]],
                       keys: dict[str, torch.dtype | None]) -> None:
        # One buffer per state and (device, dtype) for the contiguous parameters,
        # handed out as views: the kernels then stream each state through memory
        # in one piece (separately allocated small states cost a third of the
        # time of a step over thousands of tensors on the CPU), and the state
        # dict still has one tensor per parameter, as torch.optim's.
        for key, dtype in keys.items():
            pending: dict[tuple, list[tuple[Tensor, dict[str, Any]]]] = {}
            for p, state in missing:
                if key in state:
                    continue
                if p.is_contiguous() and p.numel() > 0 and not (
                        _DTensor is not None and isinstance(p, _DTensor)):
                    pending.setdefault((p.device, dtype or p.dtype), []).append((p, state))
                else:
                    state[key] = torch.zeros_like(p, dtype=dtype,
                                                  memory_format=torch.preserve_format)
            for (device, buffer_dtype), members in pending.items():
                buffer = torch.zeros(sum(p.numel() for p, _ in members), dtype=buffer_dtype,
                                     device=device)
                offset = 0
                for p, state in members:
                    state[key] = buffer[offset:offset + p.numel()].view(p.shape)
                    offset += p.numel()

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
