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
                                           fsdp2_unsupported)
from pytrainer.trainer.stepping import squared_norm, total_norm

__all__ = ["Replicated", "DataParallel", "FullyShardedParallel", "choose_parallel",
           "shard_fsdp2", "fsdp2_units", "ddp_options"]


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
        return total_norm(grads, device)

    def full_model_state(self, model: nn.Module, writer: bool) -> dict[str, torch.Tensor] | None:
        """The model's whole state, each tied tensor once, on the ranks that write
        it (``writer``; None elsewhere); every rank calls it."""
        return ckpt.model_state_to_save(model) if writer else None

    def full_states(self, model: nn.Module, optimizer: torch.optim.Optimizer, writer: bool
                    ) -> tuple[dict | None, dict | None]:
        """(model state, optimizer state), whole, on the writing ranks; every rank
        calls it."""
        if not writer:
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

    def __init__(self, dist: DistributedContext, device: torch.device, options: dict[str, Any]):
        super().__init__(dist)
        self.device = device
        self.options = options

    def wrap(self, model: nn.Module) -> nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, **self.options)

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

    def full_model_state(self, model: nn.Module, writer: bool) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        state = get_model_state_dict(model, options=_options(cpu_offload=True))
        return ckpt.drop_aliases(model, state) if writer else None

    def full_states(self, model, optimizer, writer):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        model_state = self.full_model_state(model, writer)
        optimizer_state = get_optimizer_state_dict(model, optimizer,
                                                   options=_options(cpu_offload=True))
        return (model_state, optimizer_state) if writer else (None, None)

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
    unsupported = fsdp2_unsupported(device_type)
    if unsupported:
        raise DistributedSetupError(unsupported)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard
    mesh = init_device_mesh(device_type, (world_size,))
    for unit in fsdp2_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if device_type == "cpu":
        # FSDP2 reduce-scatters float32 and bfloat16 grads with ReduceOp.AVG, and
        # torch 2.8's gloo returns the sum for it (world_size times the mean): sums,
        # then FSDP2's own division, are right with every release.
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)


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


def ddp_options(args: Any) -> dict[str, Any]:
    """DistributedDataParallel's keyword arguments from the ``ddp_*`` fields
    (None: torch's default; find_unused_parameters None means False)."""
    options: dict[str, Any] = {"find_unused_parameters": bool(args.ddp_find_unused_parameters)}
    for name, key in (("ddp_bucket_cap_mb", "bucket_cap_mb"),
                      ("ddp_broadcast_buffers", "broadcast_buffers"),
                      ("ddp_static_graph", "static_graph")):
        if getattr(args, name) is not None:
            options[key] = getattr(args, name)
    return options


def choose_parallel(dist: DistributedContext, device: torch.device, fsdp2: bool,
                    options: dict[str, Any]) -> Replicated:
    """The strategy of this run: FSDP2 or DDP (with ``options``) under torchrun, else none."""
    if not dist.enabled:
        return Replicated(dist)
    if fsdp2:
        return FullyShardedParallel(dist, device)
    return DataParallel(dist, device, options)
