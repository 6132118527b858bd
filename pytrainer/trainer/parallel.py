"""How the ranks of a run hold the model: each the whole model (one process, or
DistributedDataParallel), or a shard of it (FSDP2).

The Trainer picks one strategy when training starts (``choose_parallel``) and asks
it, without asking which kind it is, to wrap the model, to turn the gradient
all-reduce off inside an accumulation window, to reduce the gradient norm, and to
gather and scatter the full model and optimizer states of a checkpoint.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn

from pytrainer.trainer import checkpoint as ckpt
from pytrainer.trainer.distributed import (DistributedContext, DistributedSetupError,
                                           fsdp2_available)
from pytrainer.trainer.stepping import squared_norm

__all__ = ["Replicated", "DataParallel", "FullyShardedParallel", "choose_parallel",
           "shard_fsdp2", "fsdp2_units"]


class Replicated:
    """Every rank holds the whole model and its own copy of every gradient (one
    process, or ranks that only share data): nothing to wrap or reduce."""

    #: the optimizer must be built over the parameters ``wrap`` leaves
    rebuilds_optimizer = False

    def __init__(self, dist: DistributedContext):
        self.dist = dist

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training loop calls (``model`` itself, or its wrapper)."""
        return model

    def gradient_sync(self, wrapped: nn.Module, enabled: bool) -> ContextManager:
        """Around one micro-batch's backward: whether its gradients are reduced
        over ranks (only on the last micro-batch of a window)."""
        return contextlib.nullcontext()

    def grad_norm(self, grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """The 2-norm of the whole gradient, on the device."""
        return squared_norm(grads, device).sqrt()

    def full_model_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The model's whole state, each tied tensor once, on rank 0 (None elsewhere);
        every rank calls it."""
        return ckpt.model_state_to_save(model) if self.dist.is_main else None

    def full_states(self, model: nn.Module, optimizer: torch.optim.Optimizer
                    ) -> tuple[dict | None, dict | None]:
        """(model state, optimizer state), whole, on rank 0; every rank calls it."""
        if not self.dist.is_main:
            return None, None
        return ckpt.model_state_to_save(model), optimizer.state_dict()

    def load_model_weights(self, model: nn.Module, path: str) -> None:
        ckpt.load_model_weights(model, path)

    def load_states(self, model: nn.Module, optimizer: torch.optim.Optimizer, path: str,
                    optimizer_state: dict[str, Any]) -> None:
        """Restores the checkpoint's weights and ``optimizer_state`` (whole states,
        as ``full_states`` returned them)."""
        self.load_model_weights(model, path)
        optimizer.load_state_dict(optimizer_state)


class DataParallel(Replicated):
    """DistributedDataParallel: gradients averaged over ranks in the backward pass."""

    def __init__(self, dist: DistributedContext, device: torch.device,
                 find_unused_parameters: bool):
        super().__init__(dist)
        self.device = device
        self.find_unused_parameters = find_unused_parameters

    def wrap(self, model: nn.Module) -> nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=self.find_unused_parameters)

    def gradient_sync(self, wrapped: nn.Module, enabled: bool) -> ContextManager:
        return contextlib.nullcontext() if enabled else wrapped.no_sync()


class FullyShardedParallel(Replicated):
    """FSDP2: parameters, gradients and optimizer states are DTensors holding this
    rank's shard; checkpoints hold the gathered whole states."""

    rebuilds_optimizer = True

    def __init__(self, dist: DistributedContext, device: torch.device):
        super().__init__(dist)
        self.device = device

    def wrap(self, model: nn.Module) -> nn.Module:
        shard_fsdp2(model, self.device.type, self.dist.world_size)
        return model

    def gradient_sync(self, wrapped: nn.Module, enabled: bool) -> ContextManager:
        wrapped.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def grad_norm(self, grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        # local sums of squares, reduced over ranks: the norm of the full gradients
        squares = squared_norm([_local(g) for g in grads], device)
        if grads:
            self.dist.all_reduce_sum(squares)
        return squares.sqrt()

    def full_model_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        state = get_model_state_dict(model, options=_options(cpu_offload=True))
        return ckpt.drop_aliases(model, state) if self.dist.is_main else None

    def full_states(self, model, optimizer):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        model_state = self.full_model_state(model)
        optimizer_state = get_optimizer_state_dict(model, optimizer,
                                                   options=_options(cpu_offload=True))
        return (model_state, optimizer_state) if self.dist.is_main else (None, None)

    def load_model_weights(self, model: nn.Module, path: str) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict
        ckpt.load_model_weights(model, path, load=lambda full: set_model_state_dict(
            model, full, options=_options()))

    def load_states(self, model, optimizer, path, optimizer_state):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
        self.load_model_weights(model, path)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=_options())


def _options(cpu_offload: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2 leaves some tensors plain)."""
    from torch.distributed.tensor import DTensor
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def shard_fsdp2(model: nn.Module, device_type: str, world_size: int) -> None:
    """FSDP2 in place over a mesh of the world's ``device_type`` devices: each unit of
    ``fsdp2_units`` shards on its own (its parameters are gathered for its forward
    only), then the root takes the rest; parameters become DTensors holding this
    rank's shard."""
    if not fsdp2_available():
        raise DistributedSetupError(
            f"fsdp2=True needs torch.distributed.fsdp.fully_shard (torch >= 2.6); this is torch "
            f"{torch.__version__}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device_type, (world_size,))
    for unit in fsdp2_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)


def fsdp2_units(model: nn.Module) -> list[nn.Module]:
    """The submodules FSDP2 shards as units of their own: the children with
    trainable parameters, looking inside containers (modules without a forward,
    such as a ModuleList of blocks: each block is a unit; FSDP2 gathers a unit's
    parameters around its forward) and inside children that hold a tied
    parameter, which stays with the root (one FSDP group must own every module
    that uses it, e.g. a language model's embedding and output layer)."""
    names: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        names[id(param)] = names.get(id(param), 0) + 1
    tied = {pid for pid, count in names.items() if count > 1}
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = list(child.parameters())
            if not any(p.requires_grad for p in params):
                continue
            if type(child).forward is nn.Module.forward or any(id(p) in tied for p in params):
                visit(child)
            else:
                units.append(child)

    visit(model)
    return units


def choose_parallel(dist: DistributedContext, device: torch.device, fsdp2: bool,
                    find_unused_parameters: bool) -> Replicated:
    """The strategy of this run: FSDP2 or DDP under torchrun, else none."""
    if not dist.enabled:
        return Replicated(dist)
    if fsdp2:
        return FullyShardedParallel(dist, device)
    return DataParallel(dist, device, find_unused_parameters)
