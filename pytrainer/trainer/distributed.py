"""The device a process trains on and, under torchrun, its place in the world.

A torchrun launch sets WORLD_SIZE, RANK and LOCAL_RANK; the Trainer then
initialises torch.distributed (NCCL on CUDA, gloo on the CPU), binds each rank
to its local device and reduces across ranks through this context. A single
process gets a context of one, whose collectives do nothing.
"""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "init_distributed", "select_device", "DistributedSetupError",
           "fsdp2_unsupported"]


class DistributedSetupError(RuntimeError):
    """The torch.distributed world is misconfigured."""


@dataclass
class DistributedContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    #: whether this context initialised the process group (and so destroys it)
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place, on the device: no host synchronisation."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shutdown(self) -> None:
        """Leaves the process group (when this context created it) once every rank
        is done: no rank tears down its connections under a peer still talking.
        A process ending on an uncaught exception leaves at once instead: its peers
        may wait in a collective it will never join (torchrun then stops them),
        and a barrier would hold it until ``ddp_timeout``."""
        if self.owns_group and dist.is_initialized():
            self.owns_group = False
            if _Failure.uncaught:
                return
            dist.barrier()
            dist.destroy_process_group()


class _Failure:
    """Whether this process is ending on an uncaught exception: Python calls
    ``sys.excepthook`` before the atexit handlers (where a Trainer shuts down)."""

    uncaught = False

    @classmethod
    def watch(cls) -> None:
        previous = sys.excepthook
        if getattr(previous, "notes_failure", False):
            return

        def hook(kind, value, traceback):
            cls.uncaught = True
            previous(kind, value, traceback)

        hook.notes_failure = True
        sys.excepthook = hook



class _Created:
    """The context of the process group this module created, handed to each later
    caller (TrainingArguments.main_process_first before the Trainer, the Trainer),
    which ends it once (its owns_group turns False)."""

    context: DistributedContext | None = None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"{name}={value!r} is not an integer") from None


def init_distributed(use_cpu: bool, timeout_s: float, backend: str | None = None
                     ) -> DistributedContext:
    """The context of a torchrun launch (or of one process without it); ``backend``
    (ddp_backend) None picks nccl on CUDA, gloo on the CPU."""
    world = _env_int("WORLD_SIZE") or 1
    if world <= 1:
        return DistributedContext()
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK")
    if rank is None or local_rank is None:
        raise DistributedSetupError(
            f"WORLD_SIZE={world} but RANK or LOCAL_RANK is not set: launch with torchrun "
            "(torchrun --nproc_per_node N script.py ...)")
    if not 0 <= rank < world:
        raise DistributedSetupError(f"RANK={rank} is outside the world of WORLD_SIZE={world}")
    cuda = torch.cuda.is_available() and not use_cpu
    if cuda:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedSetupError(
                f"LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s): more ranks "
                f"per machine than GPUs (use --nproc_per_node {count} or fewer, or use_cpu)")
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        if dist.get_world_size() != world:
            raise DistributedSetupError(
                f"torch.distributed is initialised with {dist.get_world_size()} ranks but "
                f"WORLD_SIZE={world}")
        if _Created.context is not None and _Created.context.owns_group:
            return _Created.context  # created here (main_process_first): still ours to end
        return DistributedContext(world, rank, local_rank, owns_group=False)
    if backend == "nccl" and not cuda:
        raise DistributedSetupError("ddp_backend='nccl' needs CUDA GPUs; this run is on the CPU "
                                    "(use ddp_backend='gloo', or leave it unset)")
    backend = backend or ("nccl" if cuda else "gloo")
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        dist.init_process_group(backend=backend, timeout=timeout,
                                **({"device_id": torch.device("cuda", local_rank)} if cuda else {}))
    except Exception as error:  # rendezvous timeouts and store errors have several types
        master = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedSetupError(
            f"rank {rank} of {world} could not join the process group at {master} within "
            f"{timeout_s:g} s ({type(error).__name__}: {error}); check that every rank runs, that "
            "MASTER_ADDR/MASTER_PORT reach rank 0, and --nnodes/--nproc_per_node") from None
    _Failure.watch()
    _Created.context = DistributedContext(world, rank, local_rank, owns_group=True)
    return _Created.context


def select_device(use_cpu: bool, context: DistributedContext) -> torch.device:
    """CUDA (this rank's local GPU) or MPS when available, unless ``use_cpu``."""
    if use_cpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", context.local_rank)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available() and not context.enabled:
        return torch.device("mps")
    return torch.device("cpu")


def fsdp2_unsupported(device_type: str) -> str | None:
    """Why FSDP2 cannot train here on ranks of ``device_type``; None when it can."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: F401
    except ImportError:
        return (f"fsdp2=True needs torch.distributed.fsdp.fully_shard (torch >= 2.6); this is "
                f"torch {torch.__version__}")
    if device_type == "cpu" and not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
        return (f"fsdp2=True on CPU ranks (gloo) needs torch >= 2.8: torch "
                f"{torch.__version__}'s gloo reduce-scatter returns the sum where FSDP2 asks for "
                "the mean, which would multiply every gradient by the number of ranks")
    return None

