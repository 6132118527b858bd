"""Checkpoints: written atomically, loaded without running code, rotated.

A checkpoint ``output_dir/checkpoint-<step>/`` holds the model weights
(``model.safetensors``, or ``pytorch_model.bin`` without safetensors), the
optimizer, scheduler and GradScaler states (``optimizer.pt``, ``scheduler.pt``,
``scaler.pt``), the random states (``rng_state.pth``, ``rng_state_<rank>.pth``
under torch.distributed), ``trainer_state.json`` and ``training_args.json``.

It is written into ``.tmp-checkpoint-<step>`` in ``output_dir``, every file and
the folder flushed to disk, then renamed into place: a folder named
``checkpoint-<step>`` is always complete, and a crash leaves at most a
temporary folder, which the next save removes. Everything is loaded with
safetensors, ``torch.load(weights_only=True)`` or JSON.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pytrainer.trainer.state import CheckpointError, TrainerState

__all__ = ["CheckpointError", "save_checkpoint", "save_weights", "load_model_weights",
           "load_tensors", "model_state_to_save", "drop_aliases", "tied_groups",
           "latest_checkpoint", "sorted_checkpoints", "rotate_checkpoints", "check_checkpoint",
           "WEIGHTS_SAFETENSORS", "WEIGHTS_TORCH", "OPTIMIZER", "SCHEDULER", "SCALER",
           "TRAINER_STATE", "TRAINING_ARGS", "PREFIX", "rng_file"]

PREFIX = "checkpoint"
TMP_PREFIX = ".tmp-checkpoint-"
WEIGHTS_SAFETENSORS = "model.safetensors"
WEIGHTS_TORCH = "pytorch_model.bin"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
SCALER = "scaler.pt"
TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX}-(\d+)$")


def rng_file(rank: int, world_size: int) -> str:
    return "rng_state.pth" if world_size <= 1 else f"rng_state_{rank}.pth"


# ---------------------------------------------------------------------- writing
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, write: Callable[[Path], None]) -> None:
    write(path)
    _fsync(path)


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Names under which the same tensor appears in the model's state (tied
    weights), first name first."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def drop_aliases(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each tied tensor once (under its first name), contiguous:
    safetensors stores no aliases, and loading re-ties through the module."""
    state = dict(state)
    for names in tied_groups(model):
        for alias in names[1:]:
            state.pop(alias, None)
    return {name: t.detach().contiguous() for name, t in state.items()}


def model_state_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    return drop_aliases(model, model.state_dict())


def save_weights(model: nn.Module, folder: Path, safetensors: bool,
                 state: dict[str, torch.Tensor] | None = None) -> None:
    """The model's weights in ``folder`` (``state``: its whole state when the
    model is sharded), flushed to disk."""
    state = model_state_to_save(model) if state is None else state
    if safetensors:
        from safetensors.torch import save_file
        cpu_state = {k: v.cpu() for k, v in state.items()}
        _write(folder / WEIGHTS_SAFETENSORS,
               lambda p: save_file(cpu_state, str(p), metadata={"format": "pt"}))
    else:
        _write(folder / WEIGHTS_TORCH, lambda p: torch.save({k: v.cpu() for k, v in state.items()}, p))


def save_checkpoint(output_dir: str, step: int, *, model: nn.Module,
                    optimizer_state: dict[str, Any] | None, scheduler: Any, scaler: Any,
                    state: TrainerState, args_json: str, rng_state: dict[str, Any],
                    safetensors: bool = True, rank: int = 0, world_size: int = 1,
                    barrier: Callable[[], None] = lambda: None,
                    model_state: dict[str, torch.Tensor] | None = None) -> str:
    """Writes ``checkpoint-<step>`` atomically and returns its path. Under
    torch.distributed every rank calls it: rank 0 writes the shared files (the
    model's and optimizer's full states, given by the caller when sharded), every
    rank its random state, and rank 0 renames once all have written."""
    out = Path(output_dir)
    tmp = out / f"{TMP_PREFIX}{step}"
    final = out / f"{PREFIX}-{step}"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for leftover in out.glob(f"{TMP_PREFIX}*"):  # a crash's half-written checkpoint
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
    barrier()
    _write(tmp / rng_file(rank, world_size), lambda p: torch.save(rng_state, p))
    if rank == 0:
        save_weights(model, tmp, safetensors, model_state)
        if optimizer_state is not None:
            _write(tmp / OPTIMIZER, lambda p: torch.save(optimizer_state, p))
        if scheduler is not None:
            _write(tmp / SCHEDULER, lambda p: torch.save(scheduler.state_dict(), p))
        if scaler is not None:
            _write(tmp / SCALER, lambda p: torch.save(scaler.state_dict(), p))
        _write(tmp / TRAINING_ARGS, lambda p: p.write_text(args_json, encoding="utf-8"))
        # last: its presence marks a checkpoint whose files were all written
        _write(tmp / TRAINER_STATE, lambda p: state.save_to_json(str(p)))
    barrier()
    if rank == 0:
        _fsync(tmp)
        if final.exists():  # saving the same step again (e.g. after a resume)
            stale = out / f"{TMP_PREFIX}stale-{step}"
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(final)
        _fsync(out)
    barrier()
    return str(final)


# ---------------------------------------------------------------------- reading
def sorted_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoint folders of ``output_dir``, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_dir() and (entry / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), str(entry)))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str) -> str | None:
    checkpoints = sorted_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def check_checkpoint(path: str, *, need_optimizer: bool = True) -> None:
    """A clear error naming the first file a checkpoint lacks."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"Can't find a valid checkpoint at {path}: not a folder")
    if not (folder / WEIGHTS_SAFETENSORS).is_file() and not (folder / WEIGHTS_TORCH).is_file():
        raise CheckpointError(f"Can't find a valid checkpoint at {path}: it has no model weights "
                              f"({WEIGHTS_SAFETENSORS} or {WEIGHTS_TORCH})")
    required = [TRAINER_STATE, TRAINING_ARGS] + ([OPTIMIZER] if need_optimizer else [])
    for name in required:
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")


def load_tensors(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain data (no code can run);
    errors name the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain data, which pytrainer refuses "
            f"to load (loading them could run code): {error}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(f"{path} is corrupted or not a torch.save file: {error}") from None


def _model_differences(expected: dict[str, torch.Size], found: dict[str, tuple[int, ...]],
                       aliases: dict[str, str]) -> list[str]:
    lines = []
    for name, shape in expected.items():
        source = name if name in found else aliases.get(name)
        if source is None or source not in found:
            lines.append(f"missing in the checkpoint: {name} {tuple(shape)}")
        elif tuple(found[source]) != tuple(shape):
            lines.append(f"shape of {name}: checkpoint {tuple(found[source])}, model {tuple(shape)}")
    for name in found:
        if name not in expected:
            lines.append(f"unexpected in the checkpoint: {name} {tuple(found[name])}")
    return lines


def load_model_weights(model: nn.Module, checkpoint: str,
                       load: Callable[[dict[str, torch.Tensor]], None] | None = None) -> None:
    """Loads the checkpoint's weights into ``model``; a CheckpointError listing every
    difference of names or shapes, or naming the corrupted file. ``load`` puts the
    full state into the model (default ``model.load_state_dict``; FSDP2 shards it)."""
    folder = Path(checkpoint)
    state = model.state_dict()
    aliases = {alias: names[0] for names in tied_groups(model) for alias in names[1:]}
    expected = {name: t.shape for name, t in state.items()}
    if (folder / WEIGHTS_SAFETENSORS).is_file():
        from safetensors import safe_open
        from safetensors.torch import load_file
        path = folder / WEIGHTS_SAFETENSORS
        try:
            with safe_open(str(path), framework="pt") as file:
                shapes = {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
            loaded = load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is corrupted or not a safetensors file: {error}") from None
    else:
        path = folder / WEIGHTS_TORCH
        loaded = load_tensors(path)
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{path} does not hold a state dict")
        shapes = {name: tuple(t.shape) for name, t in loaded.items()}
    differences = _model_differences(expected, shapes, aliases)
    if differences:
        raise CheckpointError(f"the weights in {path} do not fit the model:\n  " +
                              "\n  ".join(differences))
    for alias, source in aliases.items():
        loaded.setdefault(alias, loaded[source])
    if load is None:
        model.load_state_dict(loaded, strict=True)
    else:
        load(loaded)


# ---------------------------------------------------------------------- rotation
def rotate_checkpoints(output_dir: str, limit: int | None, keep: set[str]) -> list[str]:
    """Deletes the oldest checkpoints beyond ``limit``, never the newest nor any in
    ``keep`` (the best one, the one being resumed from). Returns the deleted paths."""
    if not limit or limit <= 0:
        return []
    checkpoints = sorted_checkpoints(output_dir)
    protected = {os.path.abspath(p) for p in keep if p} | (
        {os.path.abspath(checkpoints[-1])} if checkpoints else set())
    excess = len(checkpoints) - limit
    deleted = []
    for path in checkpoints:
        if excess <= 0:
            break
        if os.path.abspath(path) in protected:
            continue
        # renamed first, so a crash mid-delete never leaves a half checkpoint under its name
        doomed = Path(output_dir) / f"{TMP_PREFIX}deleted-{Path(path).name}"
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(path)
        excess -= 1
    return deleted
