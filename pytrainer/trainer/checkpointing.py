"""A run's checkpoints as the Trainer writes and restores them: which one to
resume from, what goes into it (the model's folder, the whole optimizer state,
the scheduler, the scaler, the random states, the trainer state with the
callbacks' states, pytrainer's loss totals), and restoring all of it, from a
checkpoint of pytrainer's or of Hugging Face's Trainer."""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from pytrainer.trainer import checkpoint as ckpt
from pytrainer.trainer.saving import write_model_folder
from pytrainer.trainer.state import CheckpointError, TrainerState, TrainingTotals
from pytrainer.utils.seed import get_rng_state, set_rng_state

__all__ = ["resolve_checkpoint", "batch_sizes", "write_run_checkpoint",
           "restore_run_checkpoint"]

logger = logging.getLogger("pytrainer")

#: the state fields of the run being resumed, not of the checkpoint's run
_FIELDS_OF_THIS_RUN = ("max_steps", "logging_steps", "eval_steps", "save_steps",
                       "num_train_epochs", "train_batch_size", "is_world_process_zero",
                       "is_local_process_zero")


def resolve_checkpoint(resume: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint ``resume_from_checkpoint`` names (True: the latest complete
    one in ``output_dir``)."""
    if resume is None or resume is False:
        return None
    if resume is True:
        path = ckpt.latest_checkpoint(output_dir)
        if path is None:
            raise CheckpointError(f"No valid checkpoint found in output directory ({output_dir})")
        return path
    return str(resume)


def batch_sizes(args, checkpoint: str | None) -> tuple[int, int]:
    """(per-device batch, accumulation steps) to train with: the arguments', or
    those an auto_find_batch_size run found and saved in its checkpoint."""
    default = (args.per_device_train_batch_size, args.gradient_accumulation_steps)
    if checkpoint is None or not args.auto_find_batch_size:
        return default
    state = TrainerState.load_from_json(str(Path(checkpoint, ckpt.TRAINER_STATE)))
    totals = Path(checkpoint, ckpt.TRAINING_TOTALS)
    steps = TrainingTotals.load_from_json(str(totals)).gradient_accumulation_steps \
        if totals.is_file() else None
    return state.train_batch_size or default[0], steps or default[1]


def write_run_checkpoint(args, state: TrainerState, totals: TrainingTotals, *, model, optimizer,
                         scheduler, scaler, parallel, dist, processing_class: Any,
                         writes: bool, keep: set[str | None]) -> str:
    """Writes checkpoint-<global_step> (every rank takes part; ``writes``: this
    rank writes the shared files) and rotates the old ones, never those in
    ``keep``."""
    step = state.global_step
    if state.best_global_step:
        best = os.path.join(args.output_dir, f"{ckpt.PREFIX}-{state.best_global_step}")
        if state.best_global_step == step or os.path.isdir(best):
            state.best_model_checkpoint = best
    if args.save_only_model:
        model_state, optimizer_state = parallel.full_model_state(model, writes), None
    else:
        model_state, optimizer_state = parallel.full_states(model, optimizer, writes)
    path = ckpt.save_checkpoint(
        args.output_dir, step, write_model=functools.partial(
            write_model_folder, model, state=model_state, safetensors=args.save_safetensors,
            processing_class=processing_class),
        optimizer_state=optimizer_state, scheduler=scheduler, scaler=scaler, state=state,
        totals=totals, args_json=args.to_json_string(),
        rng_state=None if args.save_only_model else get_rng_state(dist.enabled), writes=writes,
        rank=dist.rank, world_size=dist.world_size, barrier=dist.barrier)
    if writes:
        ckpt.rotate_checkpoints(args.output_dir, args.save_total_limit,
                                keep={state.best_model_checkpoint, *keep})
    dist.barrier()
    return path


def restore_run_checkpoint(path: str, *, model, optimizer, scheduler, scaler, parallel, dist,
                           current: TrainerState) -> tuple[TrainerState, TrainingTotals | None]:
    """Restores the model, optimizer, scheduler, scaler and random states of a
    checkpoint; returns its state (with this run's step intervals and lengths
    from ``current``) and pytrainer's totals (None in Hugging Face's)."""
    ckpt.check_checkpoint(path)
    folder = Path(path)
    state = TrainerState.load_from_json(str(folder / ckpt.TRAINER_STATE))
    totals = TrainingTotals.load_from_json(str(folder / ckpt.TRAINING_TOTALS)) \
        if (folder / ckpt.TRAINING_TOTALS).is_file() else None
    try:
        parallel.load_states(model, optimizer, path, ckpt.load_tensors(folder / ckpt.OPTIMIZER))
    except ValueError as error:  # torch.optim: other parameter groups
        raise CheckpointError(
            f"{folder / ckpt.OPTIMIZER} does not fit this run's optimizer ({error}): resume with "
            f"the optimizer family and parameter groups of the run that saved it") from None
    if scheduler is not None and (folder / ckpt.SCHEDULER).is_file():
        scheduler.load_state_dict(ckpt.load_tensors(folder / ckpt.SCHEDULER))
    if scaler is not None and (folder / ckpt.SCALER).is_file():
        scaler.load_state_dict(ckpt.load_tensors(folder / ckpt.SCALER))
    rng = folder / ckpt.rng_file(dist.rank, dist.world_size)
    if rng.is_file():
        set_rng_state(ckpt.load_tensors(rng))
    else:
        logger.warning("%s has no %s: the random state is not restored (a run resumed with "
                       "another number of processes draws other numbers)", path, rng.name)
    if state.max_steps != current.max_steps:
        logger.warning("resuming a run of %d steps as one of %d steps", state.max_steps,
                       current.max_steps)
    for key in _FIELDS_OF_THIS_RUN:
        setattr(state, key, getattr(current, key))
    if state.best_model_checkpoint and not os.path.isdir(state.best_model_checkpoint):
        state.best_model_checkpoint = None
    return state, totals
