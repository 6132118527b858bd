"""What pytrainer's kernel-backed optimizers share: the step (one kernel call
per parameter group, with its device, lr, GradScaler and FSDP2 handling), the
creation and caching of per-parameter states, and checkpoint loading.

An optimizer declares its kernel (``_op_name``), the state lists the kernel
takes (``_state_lists``) and the kernel's other arguments (``_kernel_args``);
the base class does the rest, as torch.optim's ``_init_group`` does for its
optimizers."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from torch import Tensor

from pytrainer import ops
from pytrainer.optim._state_cache import (GroupCache, TrackedStateMap, Version, grads_or_none)
from pytrainer.optim._validation import check_param_dtypes, check_unique_params


try:  # FSDP2 parameters are DTensors; the kernels update their local shards
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch without torch.distributed
    _DTensor = None


def local_tensor(tensor: Tensor | None) -> Tensor | None:
    """This rank's shard of a DTensor (FSDP2), or the tensor itself."""
    if _DTensor is not None and isinstance(tensor, _DTensor):
        return tensor.to_local()
    return tensor


#: each op's state lists by name, in the op's order (filled when an optimizer of
#: the op is made or unpickled: the traced step reads it and cannot read schemas)
_STATE_LIST_NAMES: dict[str, tuple[str, ...]] = {}


def _note_state_lists(op_name: str) -> None:
    if op_name not in _STATE_LIST_NAMES:
        _STATE_LIST_NAMES[op_name] = ops.state_list_names(op_name)


@dataclass(frozen=True)
class State:
    """A per-parameter state tensor of an optimizer, created as zeros on the
    parameter's device the first time the parameter has a gradient."""

    #: its key in ``optimizer.state[param]``
    key: str
    #: its dtype (None: the parameter's)
    dtype: torch.dtype | None = None
    #: its shape as a function of the parameter (None: the parameter's shape and layout)
    shape: Callable[[Tensor], tuple[int, ...]] | None = None


#: What a kernel's state list holds, by kernel argument name: a ``State`` of every
#: parameter; a function of the parameter giving its ``State``, or None for an empty
#: float32 tensor in its place; or None for an empty list (a state the group's
#: options turn off). Functions must be module-level (their identity keys the cache).
StateList = Union[State, Callable[[Tensor], Union[State, None]], None]


#: Where each packed state view starts: a multiple of 128 bytes (a GPU cache line,
#: a multiple of every vector width) from an aligned base, so no view is misaligned
#: by the sizes of the views before it (the kernels fall back to element-wise
#: loads and partial stores on a misaligned tensor).
STATE_ALIGNMENT = 128


def _aligned_views(sizes: list[int], dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """Zero 1-d tensors of ``sizes`` elements, views of one buffer, each starting
    ``STATE_ALIGNMENT``-aligned. One view is a buffer of exactly its size; several
    cost less than ``STATE_ALIGNMENT`` bytes of padding each (and as much again to
    align the buffer where the allocator does not)."""
    if len(sizes) == 1:
        return [torch.zeros(sizes[0], dtype=dtype, device=device)]
    step = max(1, STATE_ALIGNMENT // torch.empty((), dtype=dtype).element_size())
    starts, end = [], 0
    for n in sizes:
        start = -(-end // step) * step
        starts.append(start)
        end = start + n
    buffer = torch.zeros(end, dtype=dtype, device=device)
    shift = 0
    misaligned = buffer.data_ptr() % STATE_ALIGNMENT
    if misaligned:  # CUDA's allocator aligns to 512 bytes; the CPU's to 64
        buffer = torch.zeros(end + step - 1, dtype=dtype, device=device)
        shift = (-buffer.data_ptr() % STATE_ALIGNMENT) // buffer.element_size()
    return [buffer[shift + start:shift + start + n] for start, n in zip(starts, sizes)]


class _TableSlots:
    """The table slots of one optimizer's groups, by group identity, each marked
    with its group's ``capturable`` flag (the CUDA kernels refuse a capture of a
    slot that is not)."""

    def __init__(self) -> None:
        self._slots: dict[int, tuple[int, bool]] = {}

    def of(self, group: dict[str, Any]) -> int:
        capturable = bool(group.get("capturable", False))
        entry = self._slots.get(id(group))
        if entry is None or entry[1] != capturable:
            slot = ops.kernels.new_table_slot() if entry is None else entry[0]
            ops.kernels.set_table_slot_capturable(slot, capturable)
            entry = self._slots[id(group)] = (slot, capturable)
        return entry[0]

    def release(self) -> None:
        for slot, _ in self._slots.values():
            if ops.kernels is not None:
                ops.kernels.release_table_slot(slot)
        self._slots.clear()


def _state_of(rule: StateList, param: Tensor) -> State | None:
    return rule if isinstance(rule, State) or rule is None else rule(param)


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
    #: the op of this optimizer (``torch.ops.pytrainer.<_op_name>``)
    _op_name: str = ""
    #: parameter dtypes the kernels accept
    _param_dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    #: whether states of contiguous parameters are views of one buffer per state and dtype
    _pack_states = True

    def __init__(self, params, defaults: dict[str, Any]) -> None:
        ops.require()
        super().__init__(params, defaults)
        self._init_folded()
        self._track_state()
        _note_state_lists(self._op_name)

    # ------------------------------------------------------------ what a subclass declares

    def _state_lists(self, group: dict[str, Any]) -> dict[str, StateList]:
        """The kernel's state lists for ``group`` by kernel argument name (see
        :data:`StateList`); new states are created in this order."""
        raise NotImplementedError

    def _kernel_args(self, group: dict[str, Any], first_index: int) -> dict[str, Any]:
        """The kernel's hyperparameters for ``group``, by name; ``first_index`` is
        the position of the group's first parameter among all the optimizer's."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        folded = self._folded[0]
        if folded is not None:  # step_scaled
            grad_scale, found_inf, write_back_grads = (*folded, False)
        else:  # GradScaler.step sets these around this call
            grad_scale, found_inf, write_back_grads = (
                getattr(self, "grad_scale", None), getattr(self, "found_inf", None), True)
        first_index = 0
        for group in self.param_groups:
            self._step_group(group, first_index, grad_scale, found_inf, write_back_grads)
            first_index += len(group["params"])
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
        self._folded[0] = (grad_scale, found_inf)
        try:
            self.step()
        finally:
            self._folded[0] = None

    def _init_folded(self) -> None:
        # [(grad_scale, found_inf)] of step_scaled during its step, else [None]: a
        # list set in place, as torch 2.11's dynamo cannot trace a setattr on an
        # optimizer (an error, not a graph break)
        self._folded: list[tuple[Tensor | None, Tensor | None] | None] = [None]

    def _step_group(self, group: dict[str, Any], first_index: int, grad_scale: Tensor | None,
                    found_inf: Tensor | None, write_back_grads: bool) -> None:
        compiling = torch.compiler.is_compiling()
        if compiling:
            # dynamo cannot trace the pybind entry: the op goes into the graph
            kernel = getattr(torch.ops.pytrainer, self._op_name)
            params, grads, lists, steps, table_slot = self._traced_group_tensors(group)
        else:
            # pytrainer._C's typed entry of the op (csrc/python_entry.h)
            kernel = getattr(ops.kernels, self._op_name)
            params, grads, lists, steps = self._group_tensors(group)
            table_slot = self._table_slot(group) if params else -1
        if not params:
            return
        device = params[0].device
        if not compiling:  # traced, its cache of checked devices breaks the graph (torch 2.11)
            self._check_kernels(device)
        lr, lr_tensor = self._lr_args(group["lr"])
        # the one call of the kernels
        kernel(params=params, grads=grads, **lists, state_steps=steps, lr=lr, lr_tensor=lr_tensor,
               grad_scale=self._on(grad_scale, device), found_inf=self._on(found_inf, device),
               write_back_grads=write_back_grads, table_slot=table_slot,
               **self._kernel_args(group, first_index))

    def _traced_group_tensors(self, group: dict[str, Any]
                              ) -> tuple[list[Tensor], list[Tensor], dict[str, list[Tensor]],
                                         list[Tensor], int]:
        """:meth:`_group_tensors` and the group's table slot as ``torch.compile``
        traces them, by torch.optim's protocol: dynamo runs ``_init_group``
        untraced (the state cache and its tracked dicts stay out of the trace),
        guards on the tensors it appends to the lists and takes what it returns
        as a constant of the graph."""
        names = _STATE_LIST_NAMES[self._op_name]
        params, grads, steps = [], [], []
        lists = [[] for _ in names]
        table_slot = self._init_group(group, params, grads, steps, *lists)
        return params, grads, dict(zip(names, lists)), steps, table_slot

    def _init_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    steps: list[Tensor], *state_lists: list[Tensor]) -> int:
        """torch.optim's ``_init_group`` protocol (what dynamo runs untraced):
        appends the group's tensors of :meth:`_group_tensors` to the given lists,
        the state lists in the op's order, and returns the group's table slot
        (the same for the group's every step: the graph holds it, so that a
        compiled step keeps its tables where the eager steps do and can be
        captured in a CUDA graph, ``mode="reduce-overhead"``).

        The states are separate tensors here, not views of one buffer: the
        compiled graph would copy aliased inputs that the op mutates (in and out,
        on every step)."""
        self._unpack_states(group)
        found_params, found_grads, lists, found_steps = self._group_tensors(group, pack=False)
        if found_params:
            self._check_kernels(found_params[0].device)
        params.extend(found_params)
        grads.extend(found_grads)
        steps.extend(found_steps)
        for out, name in zip(state_lists, _STATE_LIST_NAMES[self._op_name], strict=True):
            out.extend(lists[name])
        return self._table_slot(group)

    def _unpack_states(self, group: dict[str, Any]) -> None:
        """Replaces the group's states that are views of a shared buffer by copies of their own."""
        for p in group["params"]:
            state = self.state.get(p)
            for key, value in (state or {}).items():
                if isinstance(value, Tensor) and value._base is not None:
                    state[key] = value.clone()

    def _table_slot(self, group: dict[str, Any]) -> int:
        """The group's table slot (csrc/table_slots.h): where the CUDA kernels keep
        the group's device tables between steps, rebuilt only when a tensor of the
        group moved or changed size. Taken on the group's first step, freed with
        the optimizer (so a captured CUDA graph must not outlive it); not part of
        the optimizer's pickled or saved state."""
        slots = self.__dict__.get("_table_slots")
        if slots is None:
            slots = self._table_slots = _TableSlots()
            # not at exit: the process frees everything, and the CUDA runtime may be gone
            weakref.finalize(self, slots.release).atexit = False
        return slots.of(group)

    @staticmethod
    def _lr_args(lr: float | Tensor | None) -> tuple[float, Tensor | None]:
        """(lr as a float, lr as a tensor): a tensor lr stays on its device so a
        scheduler can update it without a host round trip. None (Adafactor's
        relative step) is an lr the kernel does not read."""
        if isinstance(lr, Tensor):
            return 0.0, lr
        return (0.0 if lr is None else float(lr)), None

    @staticmethod
    def _on(tensor: Tensor | None, device: torch.device) -> Tensor | None:
        """``tensor`` on ``device`` (the scaler's tensors live on its own device)."""
        if tensor is None or tensor.device == device:
            return tensor
        return tensor.to(device, non_blocking=True)

    def _check_kernels(self, device: torch.device) -> None:
        """Clear error when this build has no kernel for ``device`` (checked once per device)."""
        checked = self.__dict__.setdefault("_devices_with_kernels", set())
        if device not in checked:
            ops.check_device(device, self._op_name)
            checked.add(device)

    # ------------------------------------------------------------------------ the states

    def _group_tensors(self, group: dict[str, Any], pack: bool = True
                       ) -> tuple[list[Tensor], list[Tensor], dict[str, list[Tensor]], list[Tensor]]:
        """The group's parameters that have a gradient, their gradients, the
        kernel's state lists (by argument name; states created as zeros where
        missing) and the float32 ``step`` counts; FSDP2 DTensors as their shards.

        When every parameter has a gradient the lists are kept for the next step,
        as long as no state, state map or parameter list changed in between."""
        if not isinstance(self.state, TrackedStateMap):  # replaced by the user
            self._track_state()
        rules = self._state_lists(group)
        key = tuple(rules.items())
        caches = self.__dict__.setdefault("_group_caches", {})
        params_list = group["params"]
        cached = caches.get(id(group))
        if cached is not None and cached.valid(self._version.value, params_list, key):
            grads = grads_or_none(cached.params)
            if grads is not None:
                return cached.params, grads, cached.lists, cached.steps
        params, grads, states = [], [], []
        for p in params_list:
            if p.grad is not None:
                params.append(p)
                grads.append(p.grad)
                states.append(self.state[p])
        self._create_states(params, states, rules, pack=pack and self._pack_states)
        lists = {name: self._state_list(rule, params, states) for name, rule in rules.items()}
        steps = [state["step"] for state in states]
        if params and _DTensor is not None and isinstance(params[0], _DTensor):
            # FSDP2: states are DTensors like their params; the kernel steps the shards
            params, grads = [local_tensor(p) for p in params], [local_tensor(g) for g in grads]
            lists = {name: [local_tensor(t) for t in ts] for name, ts in lists.items()}
        elif len(params) == len(params_list):
            caches[id(group)] = GroupCache(self._version.value, params_list, key, params, lists,
                                           steps)
        return params, grads, lists, steps

    def _state_list(self, rule: StateList, params: list[Tensor],
                    states: list[dict[str, Any]]) -> list[Tensor]:
        if rule is None:
            return []
        if isinstance(rule, State):
            return [state[rule.key] for state in states]
        entries = []
        for p, state in zip(params, states):
            own = rule(p)
            entries.append(state[own.key] if own is not None else self._empty(p.device))
        return entries

    def _empty(self, device: torch.device) -> Tensor:
        """The empty float32 tensor standing for a state a parameter does not have."""
        cache = self.__dict__.setdefault("_empty_states", {})
        if device not in cache:
            cache[device] = torch.empty(0, dtype=torch.float32, device=device)
        return cache[device]

    def _create_states(self, params: list[Tensor], states: list[dict[str, Any]],
                       rules: dict[str, StateList], pack: bool) -> None:
        """A zero ``step`` for new parameters and a zero tensor for each missing state.

        With ``pack``, the states shaped like contiguous parameters are
        views of one buffer per state and (device, dtype): the kernels then stream
        each state through memory in one piece (separately allocated small states
        cost a third of the time of a step over thousands of tensors on the CPU),
        and the state dict still has one tensor per parameter, as torch.optim's."""
        missing: list[tuple[Tensor, dict[str, Any], State]] = []
        for p, state in zip(params, states):
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            for rule in rules.values():
                own = _state_of(rule, p)
                if own is not None and own.key not in state:
                    missing.append((p, state, own))
        pending: dict[tuple, list[tuple[Tensor, dict[str, Any]]]] = {}
        for p, state, own in missing:
            dtype = own.dtype or p.dtype
            if own.shape is not None:
                state[own.key] = torch.zeros(own.shape(p), dtype=dtype, device=p.device)
            elif pack and p.is_contiguous() and p.numel() > 0 and not (
                    _DTensor is not None and isinstance(p, _DTensor)):
                pending.setdefault((own.key, p.device, dtype), []).append((p, state))
            else:
                state[own.key] = torch.zeros_like(p, dtype=dtype,
                                                  memory_format=torch.preserve_format)
        for (name, device, dtype), members in pending.items():
            for (p, state), view in zip(members, _aligned_views(
                    [p.numel() for p, _ in members], dtype, device)):
                state[name] = view.view(p.shape)

    def _track_state(self) -> None:
        """Makes ``self.state`` count its changes (see _state_cache)."""
        if "_version" not in self.__dict__:
            self._version = Version()
        self.state = TrackedStateMap(self._version, self.state)
        self._version.bump()

    # ---------------------------------------------------------- groups and checkpoints

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # saved before the flag existed
            group.setdefault("capturable", False)
        self._track_state()
        self._init_folded()
        _note_state_lists(self._op_name)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        check_param_dtypes(type(self).__name__, params, self._param_dtypes)
        check_unique_params(type(self).__name__, len(self.param_groups), params)
        super().add_param_group(param_group)
        if "_version" in self.__dict__:
            self._version.bump()

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout, with plain dicts (weights_only loading refuses any
        other class, so the state's change-counting dicts stay out of checkpoints)."""
        state_dict = super().state_dict()
        state_dict["state"] = {key: dict(value) if isinstance(value, dict) else value
                               for key, value in state_dict["state"].items()}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch.optim casts every floating state to its parameter's dtype, which
        # would round float32 states of 16-bit parameters: recast the saved
        # tensors to the dtypes this optimizer keeps instead.
        saved = state_dict["state"]
        saved_ids = [group["params"] for group in state_dict["param_groups"]]
        super().load_state_dict(state_dict)
        for group, ids in zip(self.param_groups, saved_ids):
            rules = self._state_lists(group)
            for p, pid in zip(group["params"], ids):
                dtypes = {own.key: own.dtype for own in (_state_of(r, p) for r in rules.values())
                          if own is not None and own.dtype is not None}
                for key, tensor in saved.get(pid, {}).items():
                    if key in dtypes and isinstance(tensor, Tensor):
                        self.state[p][key] = tensor.to(device=p.device, dtype=dtypes[key])
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
