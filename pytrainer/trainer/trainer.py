"""The Trainer: Hugging Face's training loop behaviour, correct and lean.

One update = one accumulation window of micro-batches: forward/backward of
each (the loss normalised once for the whole window), then clipping, the
optimizer step, the scheduler step and zeroing the grads. Nothing reads a
device value back to the host per micro-batch or per update: losses, token
counts, the gradient norm and the inf/NaN flag stay on the device until a log
line needs them. With pytrainer's optimizers the clipping factor and the
inf/NaN flag go straight into the fused kernel (``step_scaled``).

How the update reaches the optimizer (stepping.py) and how the ranks hold the
model (parallel.py) are chosen once, when training starts.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset

from pytrainer.trainer import checkpoint as ckpt
from pytrainer.trainer.callbacks import (CallbackHandler, DefaultFlowCallback,
                                         JsonLinesLogCallback, PrinterCallback, ProgressCallback,
                                         TrainerCallback, report_callbacks)
from pytrainer.trainer.data import (WindowBatchSampler, build_eval_loader, build_train_loader,
                                    count_targets, default_data_collator, seed_loader)
from pytrainer.trainer.distributed import init_distributed, select_device
from pytrainer.trainer.evaluation import batch_size_of, gather_in_order, logits_of, to_numpy
from pytrainer.trainer.model_io import accepts_loss_kwargs, loss_of, loss_shifts_labels, to_device
from pytrainer.trainer.nonfinite import NonFiniteWatch, Reading
from pytrainer.trainer.parallel import Replicated, choose_parallel
from pytrainer.trainer.schedules import create_scheduler
from pytrainer.trainer.state import (CheckpointError, EvalPrediction, PredictionOutput,
                                     TrainerControl, TrainerState, TrainOutput)
from pytrainer.trainer.stepping import choose_stepper
from pytrainer.training_args import TrainingArguments
from pytrainer.utils.seed import get_rng_state, set_rng_state, set_seed

__all__ = ["Trainer", "NonFiniteLossError"]

logger = logging.getLogger("pytrainer")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive updates had a NaN or inf loss or gradient."""


class _Plan(NamedTuple):
    """The step accounting of a run."""
    batches_per_epoch: int
    steps_per_epoch: int
    max_steps: int
    num_epochs: int


class Trainer:
    """Trains, evaluates and predicts as Hugging Face's Trainer does (see the README).

    ``model`` is any ``nn.Module`` whose forward takes a batch's keys and returns
    its loss (``.loss``, a dict's ``"loss"``, or a tuple's first item), or any
    module with a ``compute_loss_func(outputs, labels, num_items_in_batch)``.
    """

    def __init__(self, model: nn.Module, args: TrainingArguments | None = None,
                 train_dataset: Dataset | None = None, eval_dataset: Dataset | None = None,
                 data_collator: Callable | None = None, compute_metrics: Callable | None = None,
                 callbacks: list[TrainerCallback] | None = None,
                 optimizers: tuple[Any, Any] = (None, None),
                 compute_loss_func: Callable | None = None):
        if model is None:
            raise ValueError("Trainer needs a model")
        self.args = args if args is not None else TrainingArguments(output_dir="tmp_trainer")
        args = self.args
        if args.eval_strategy != "no" and eval_dataset is None:
            raise ValueError(f"eval_strategy={args.eval_strategy!r} needs an eval_dataset")
        self.dist = init_distributed(args.use_cpu, args.ddp_timeout)
        self.device = select_device(args.use_cpu, self.dist)
        set_seed(args.seed)
        self.model = model.to(self.device)
        self.model_wrapped: nn.Module = self.model
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.data_collator = data_collator or default_data_collator
        self.compute_metrics = compute_metrics
        self.compute_loss_func = compute_loss_func
        self.optimizer, self.lr_scheduler = optimizers
        if args.fsdp2 and self.dist.enabled and self.optimizer is not None:
            raise ValueError(
                "fsdp2=True shards the model when training starts, and an optimizer passed in "
                "`optimizers` would keep updating the parameters from before sharding (training "
                "nothing); let the Trainer create it (optim=..., learning_rate=..., "
                "weight_decay=...), or pass optimizer_cls_and_kwargs=(optimizer class, kwargs)")
        self.model_accepts_loss_kwargs = accepts_loss_kwargs(self.model)
        self.loss_shifts_labels = loss_shifts_labels(self.model)
        self.label_names = args.label_names or ["labels"]
        self.scaler = (torch.amp.GradScaler(self.device.type) if args.fp16 else None)
        # until train() wraps the model, every rank holds it whole
        self.parallel = Replicated(self.dist)
        self.stepper = choose_stepper(self.optimizer, self.scaler, args.max_grad_norm)
        self.state = TrainerState(is_world_process_zero=self.dist.is_main,
                                  is_local_process_zero=self.dist.local_rank == 0)
        self.control = TrainerControl()
        default = [DefaultFlowCallback(),
                   PrinterCallback() if args.disable_tqdm else ProgressCallback(),
                   JsonLinesLogCallback(), *report_callbacks(args.report_to)]
        self.callback_handler = CallbackHandler(default + list(callbacks or []),
                                                model=self.model, processing_class=None)
        self._resumed_from: str | None = None
        self._optimizer_built_here = False
        self._wrapped = False
        self.control = self.callback_handler.call("on_init_end", args, self.state, self.control)
        if self.dist.enabled:
            # a script that never calls close() still tears down in the safe order
            atexit.register(self.close)

    def close(self) -> None:
        """Releases the distributed resources: the DDP wrapper first (its reducer
        talks to the process group), then the process group this Trainer created.
        Call at the end of a torchrun script (``pytrainer train`` does)."""
        if self.model_wrapped is not self.model:
            self.model_wrapped = self.model
            import gc
            gc.collect()
        self.dist.shutdown()

    # ------------------------------------------------------------ callbacks
    def add_callback(self, callback: TrainerCallback | type) -> None:
        self.callback_handler.add(callback)

    def _event(self, name: str, **kwargs) -> None:
        self.callback_handler.objects.update(optimizer=self.optimizer,
                                             lr_scheduler=self.lr_scheduler)
        self.control = self.callback_handler.call(name, self.args, self.state, self.control,
                                                  **kwargs)

    # ------------------------------------------------------------ setup
    def create_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            from pytrainer.optim import create_optimizer
            self.optimizer = create_optimizer(self.model, self.args)
            self._optimizer_built_here = True
        return self.optimizer

    def create_scheduler(self, num_training_steps: int) -> Any:
        if self.lr_scheduler is None:
            self.lr_scheduler = create_scheduler(
                self.args.lr_scheduler_type, self.optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps, kwargs=self.args.lr_scheduler_kwargs)
        return self.lr_scheduler

    def _wrap_model(self) -> nn.Module:
        """Chooses how the ranks hold the model (once): DistributedDataParallel under
        torchrun, FSDP2 with ``fsdp2`` (sharded in place), else the model as it is."""
        if self._wrapped:
            return self.model_wrapped
        args = self.args
        self.parallel = choose_parallel(self.dist, self.device, args.fsdp2,
                                        bool(args.ddp_find_unused_parameters))
        self.model_wrapped = self.parallel.wrap(self.model)
        self._wrapped = True
        if self.parallel.rebuilds_optimizer and self.optimizer is not None \
                and self._optimizer_built_here:
            # the parameters changed (FSDP2's DTensors): build the optimizer over them
            self.optimizer = None
            self.create_optimizer()
            self.lr_scheduler = None
        return self.model_wrapped

    def _autocast(self):
        if self.args.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.args.fp16:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _train_sampler(self) -> WindowBatchSampler:
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return WindowBatchSampler(len(self.train_dataset), self.args.per_device_train_batch_size,
                                  seed=seed, shuffle=True, drop_last=self.args.dataloader_drop_last,
                                  world_size=self.dist.world_size, rank=self.dist.rank)

    def _plan(self, batches_per_epoch: int) -> _Plan:
        args = self.args
        if batches_per_epoch == 0:
            raise ValueError(f"the training set ({len(self.train_dataset)} samples) is smaller than "
                             "one batch and dataloader_drop_last is set")
        steps_per_epoch = max(math.ceil(batches_per_epoch / args.gradient_accumulation_steps), 1)
        if args.max_steps > 0:
            max_steps = args.max_steps
            num_epochs = math.ceil(max_steps / steps_per_epoch)
        else:
            max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
            num_epochs = math.ceil(args.num_train_epochs)
        return _Plan(batches_per_epoch, steps_per_epoch, max_steps, num_epochs)

    # ------------------------------------------------------------ training
    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Trains, from scratch or from a checkpoint (``True``: the latest complete
        one in output_dir); returns the global step, the mean training loss and
        the run's metrics."""
        args = self.args
        if self.train_dataset is None:
            raise ValueError("Trainer.train needs a train_dataset")
        checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
        set_seed(args.seed)

        sampler = self._train_sampler()
        loader = build_train_loader(self.train_dataset, sampler, self.data_collator,
                                    args.dataloader_num_workers, self.device)
        plan = self._plan(len(sampler))
        model = self._wrap_model()
        self.create_optimizer()
        self.create_scheduler(plan.max_steps)
        self.stepper = choose_stepper(self.optimizer, self.scaler, args.max_grad_norm)
        intervals = args.resolve_steps(plan.max_steps)
        self.state = TrainerState(
            max_steps=plan.max_steps, logging_steps=intervals.logging_steps,
            eval_steps=intervals.eval_steps, save_steps=intervals.save_steps,
            train_batch_size=args.per_device_train_batch_size, num_train_epochs=plan.num_epochs,
            is_world_process_zero=self.dist.is_main,
            is_local_process_zero=self.dist.local_rank == 0)
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)

        self.callback_handler.objects.update(model=self.model, train_dataloader=loader)
        self._event("on_train_begin")
        model.train()
        self.model.zero_grad(set_to_none=True)
        self._reset_accumulators()
        start, start_step = time.perf_counter(), self.state.global_step
        samples = self._train_epochs(model, loader, sampler, plan)
        self._note_skipped(self._watch.drain())  # the last updates' flags
        self._stop_if_nonfinite()
        return self._end_training(time.perf_counter() - start, start_step, samples)

    def _train_epochs(self, model: nn.Module, loader, sampler: WindowBatchSampler,
                      plan: _Plan) -> int:
        """The epochs from the state's step on; returns the samples this rank trained on."""
        accumulation = self.args.gradient_accumulation_steps
        epochs_done, steps_done_in_epoch = divmod(self.state.global_step, plan.steps_per_epoch)
        samples = 0
        for epoch in range(epochs_done, plan.num_epochs):
            if self.control.should_training_stop:
                break
            sampler.set_epoch(epoch)
            seed_loader(loader, sampler.seed, epoch)
            skipped = steps_done_in_epoch * accumulation if epoch == epochs_done else 0
            sampler.skip = skipped
            self._event("on_epoch_begin")
            self.control.should_epoch_stop = False
            micro_done = skipped
            batches = iter(loader)
            while not (self.control.should_training_stop or self.control.should_epoch_stop):
                window = [b for _, b in zip(range(accumulation), batches)]
                if not window:
                    break
                self._event("on_step_begin")
                samples += self._update(model, window)
                micro_done += len(window)
                self.state.epoch = epoch + micro_done / plan.batches_per_epoch
                self._event("on_step_end")
                self._maybe_log_save_evaluate()
            self._event("on_epoch_end")
            self._maybe_log_save_evaluate()
        return samples

    def _end_training(self, runtime: float, start_step: int, samples: int) -> TrainOutput:
        self._flush_loss_accumulators()
        steps = self.state.global_step - start_step
        train_loss = self.state.total_loss / max(self.state.global_step, 1)
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint:
            self.dist.barrier()
            self.parallel.load_model_weights(self.model, self.state.best_model_checkpoint)
        metrics = {"train_runtime": runtime,
                   "train_samples_per_second": samples * self.dist.world_size / max(runtime, 1e-9),
                   "train_steps_per_second": steps / max(runtime, 1e-9),
                   "total_flos": self.state.total_flos, "train_loss": train_loss,
                   "epoch": self.state.epoch}
        self.log(dict(metrics))
        self._event("on_train_end")
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def _update(self, model: nn.Module, window: list[dict[str, Any]]) -> int:
        """One optimizer update from the window's micro-batches; returns its samples."""
        window = [to_device(batch, self.device) for batch in window]
        num_items = self._count_targets(window)
        step_loss = torch.zeros((), device=self.device)
        samples = 0
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            with self.parallel.gradient_sync(model, enabled=last):
                step_loss += self.training_step(model, batch, num_items, len(window))
            samples += batch_size_of(batch)
            if not last:
                self._event("on_substep_end")
        self._optimizer_update(step_loss)
        return samples

    def _count_targets(self, window: list[dict[str, Any]]) -> torch.Tensor | None:
        """The window's target tokens, summed over ranks, when the loss can use them."""
        if not (self.model_accepts_loss_kwargs or self.compute_loss_func):
            return None
        count = count_targets(window, self.loss_shifts_labels)
        if count is not None:
            count = self.dist.all_reduce_sum(count.to(self.device))
        return count

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | None = None,
                      window_size: int = 1) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its share of the window's
        loss (detached). A loss that uses ``num_items_in_batch`` is already normalised
        over the whole window (across ranks: DDP averages grads, so it is scaled back
        by the world size); any other is divided by the window's micro-batch count."""
        with self._autocast():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if num_items_in_batch is not None and self._uses_item_count():
            loss = loss * self.dist.world_size
        else:
            loss = loss / window_size
        self.stepper.backward(loss)
        # as the gradient all-reduce sees it: the mean over ranks is the global loss
        return loss.detach()

    def _uses_item_count(self) -> bool:
        return self.model_accepts_loss_kwargs or self.compute_loss_func is not None

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | None = None):
        """The loss of one batch (override for custom losses)."""
        inputs = dict(inputs)
        labels = None
        if self.compute_loss_func is not None and "labels" in inputs:
            labels = inputs.pop("labels")
        kwargs = {}
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs \
                and self.compute_loss_func is None:
            kwargs["num_items_in_batch"] = num_items_in_batch
        outputs = model(**inputs, **kwargs)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        else:
            loss = loss_of(outputs)
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------ the update
    def _optimizer_update(self, step_loss: torch.Tensor) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.stepper.unscale(self.optimizer)
        norm = self.parallel.grad_norm(grads, self.device)
        self._grad_norm = norm
        # every rank must take the same decision: the grads (hence the norm) are
        # reduced already; the loss flag is summed over ranks
        loss_bad = self.dist.all_reduce_sum((~torch.isfinite(step_loss)).to(torch.float32)) > 0
        bad = ~torch.isfinite(norm) | loss_bad
        self._event("on_pre_optimizer_step")
        self._lr_used = self._current_lr()
        bad = self.stepper.step(self.optimizer, grads, norm, bad, loss_bad)
        self._event("on_optimizer_step")
        if self.lr_scheduler is not None and not isinstance(
                self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.lr_scheduler.step()
        self.model.zero_grad(set_to_none=True)
        self.state.global_step += 1
        # where, not a product: the loss of a skipped update may be NaN
        self._loss_sum += torch.where(bad, 0.0, step_loss.float())
        self._good_steps += (~bad).to(self._good_steps.dtype)
        self._note_skipped(self._watch.record(self.state.global_step, bad))
        self._stop_if_nonfinite()

    def _current_lr(self) -> float:
        if self.lr_scheduler is not None and hasattr(self.lr_scheduler, "get_last_lr"):
            lr = self.lr_scheduler.get_last_lr()[0]
        else:
            lr = self.optimizer.param_groups[0]["lr"]
        return float(lr) if not isinstance(lr, torch.Tensor) else lr

    # ------------------------------------------------------------ inf/NaN watch
    def _reset_accumulators(self) -> None:
        device = self.device
        self._loss_sum = torch.tensor(self.state.loss_since_log, device=device)
        self._good_steps = torch.tensor(float(self.state.steps_since_log), device=device)
        self._grad_norm = torch.zeros((), device=device)
        self._watch = NonFiniteWatch(device, streak=self.state.consecutive_bad_steps)
        self._nonfinite_limit_hit: tuple[int, int] | None = None

    def _note_skipped(self, readings: list[Reading]) -> None:
        """Logs each skipped update read, and notes when ``nonfinite_steps_limit``
        of them came in a row (``_stop_if_nonfinite`` then stops)."""
        limit = self.args.nonfinite_steps_limit
        for step, skipped, streak in readings:
            if skipped:
                logger.warning("non-finite loss or gradient at step %d: update skipped", step)
                self._log({"nonfinite_update_skipped": step}, step)
            if limit and streak >= limit and self._nonfinite_limit_hit is None:
                self._nonfinite_limit_hit = (step, streak)
        self.state.consecutive_bad_steps = self._watch.streak

    def _stop_if_nonfinite(self) -> None:
        if self._nonfinite_limit_hit is None:
            return
        step, streak = self._nonfinite_limit_hit
        path = self._save_checkpoint()
        raise NonFiniteLossError(
            f"{streak} consecutive updates (through step {step}) had a NaN or inf loss or "
            f"gradient and were skipped; stopping (nonfinite_steps_limit="
            f"{self.args.nonfinite_steps_limit}). The parameters are those of the last good "
            f"update, saved in {path}")

    # ------------------------------------------------------------ log / eval / save
    def _reduce_loss_sum(self) -> float:
        """The loss sum since the last log line, averaged over ranks (every rank
        takes part): the loss of the global batch, the same on every rank."""
        self.dist.all_reduce_sum(self._loss_sum)
        self._loss_sum /= self.dist.world_size
        return float(self._loss_sum.item())

    def _flush_loss_accumulators(self) -> tuple[float, int]:
        """Moves the device loss sums into the state (a host read)."""
        loss = self._reduce_loss_sum()
        good = int(self._good_steps.item())
        self.state.total_loss += loss
        self._loss_sum.zero_()
        self._good_steps.zero_()
        self.state.loss_since_log = 0.0
        self.state.steps_since_log = 0
        return loss, good

    def _maybe_log_save_evaluate(self) -> None:
        metrics = None
        control = self.control
        if control.should_log or control.should_evaluate or control.should_save:
            # the host waits for the device here anyway: skipped updates first
            self._note_skipped(self._watch.drain())
        if self.control.should_log:
            loss, good = self._flush_loss_accumulators()
            logs: dict[str, float] = {}
            if good:
                logs["loss"] = loss / good
            logs["grad_norm"] = float(self._grad_norm.item())
            lr = self._lr_used if hasattr(self, "_lr_used") else self._current_lr()
            logs["learning_rate"] = float(lr)
            logs["epoch"] = self.state.epoch
            self.log(logs)
        if self.control.should_evaluate:
            metrics = self.evaluate()
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.lr_scheduler.step(metrics[self._best_metric_name()])
        if self.control.should_save or (self.args.save_strategy == "best" and metrics is not None
                                        and self._improves(metrics)):
            self._save_checkpoint(metrics)
            self._event("on_save")
        self.control._new_step()
        self._stop_if_nonfinite()

    def _best_metric_name(self) -> str:
        name = self.args.metric_for_best_model or "loss"
        return name if name.startswith("eval_") else f"eval_{name}"

    def _improves(self, metrics: dict[str, float]) -> bool:
        name = self._best_metric_name()
        if name not in metrics:
            return False
        value = metrics[name]
        best = self.state.best_metric
        greater = self.args.greater_is_better if self.args.greater_is_better is not None \
            else not name.endswith("loss")
        return best is None or (value > best if greater else value < best)

    def log(self, logs: dict[str, float]) -> None:
        """Adds ``epoch`` and ``step``, appends to the state's log history, calls on_log."""
        self._log(logs, self.state.global_step)

    def _log(self, logs: dict[str, float], step: int) -> None:
        if self.state.epoch is not None:
            logs.setdefault("epoch", self.state.epoch)
        self.state.log_history.append({**logs, "step": step})
        self._event("on_log", logs=logs)

    def _rng_state(self) -> dict[str, Any]:
        return get_rng_state()

    def _save_checkpoint(self, metrics: dict[str, float] | None = None) -> str:
        """Writes checkpoint-<global_step> (every rank takes part) and rotates."""
        args = self.args
        if metrics is not None and self._improves(metrics):
            self.state.best_metric = metrics[self._best_metric_name()]
            self.state.best_global_step = self.state.global_step
            self.state.best_model_checkpoint = os.path.join(
                args.output_dir, f"{ckpt.PREFIX}-{self.state.global_step}")
        # the loss bookkeeping, so that a resumed run logs what this one would: the
        # sum reduced over ranks (what every rank resumes from), the skips read
        self.state.loss_since_log = self._reduce_loss_sum()
        self.state.steps_since_log = int(self._good_steps.item())
        self._note_skipped(self._watch.drain())
        model_state, optimizer_state = self.parallel.full_states(self.model, self.optimizer)
        path = ckpt.save_checkpoint(
            args.output_dir, self.state.global_step, model=self.model,
            optimizer_state=optimizer_state, scheduler=self.lr_scheduler, scaler=self.scaler,
            state=self.state, args_json=args.to_json_string(), rng_state=self._rng_state(),
            safetensors=args.save_safetensors, rank=self.dist.rank,
            world_size=self.dist.world_size, barrier=self.dist.barrier, model_state=model_state)
        if self.dist.is_main:
            ckpt.rotate_checkpoints(args.output_dir, args.save_total_limit,
                                    keep={self.state.best_model_checkpoint, self._resumed_from})
        self.dist.barrier()
        return path

    def _resolve_checkpoint(self, resume: str | bool | None) -> str | None:
        if resume is None or resume is False:
            return None
        if resume is True:
            path = ckpt.latest_checkpoint(self.args.output_dir)
            if path is None:
                raise CheckpointError(f"No valid checkpoint found in output directory "
                                      f"({self.args.output_dir})")
            return path
        return str(resume)

    def _load_checkpoint(self, path: str) -> None:
        """Restores the model, optimizer, scheduler, scaler, state and random states."""
        ckpt.check_checkpoint(path)
        folder = Path(path)
        state = TrainerState.load_from_json(str(folder / ckpt.TRAINER_STATE))
        self.parallel.load_states(self.model, self.optimizer, path,
                                  ckpt.load_tensors(folder / ckpt.OPTIMIZER))
        if self.lr_scheduler is not None and (folder / ckpt.SCHEDULER).is_file():
            self.lr_scheduler.load_state_dict(ckpt.load_tensors(folder / ckpt.SCHEDULER))
        if self.scaler is not None:
            self.scaler.load_state_dict(ckpt.load_tensors(folder / ckpt.SCALER))
        rng = folder / ckpt.rng_file(self.dist.rank, self.dist.world_size)
        if rng.is_file():
            set_rng_state(ckpt.load_tensors(rng))
        if state.max_steps != self.state.max_steps:
            logger.warning("resuming a run of %d steps as one of %d steps", state.max_steps,
                           self.state.max_steps)
        keep = {k: getattr(self.state, k) for k in ("max_steps", "logging_steps", "eval_steps",
                                                    "save_steps", "num_train_epochs",
                                                    "train_batch_size")}
        self.state = state
        for key, value in keep.items():
            setattr(self.state, key, value)
        self.state.is_world_process_zero = self.dist.is_main
        self.state.is_local_process_zero = self.dist.local_rank == 0
        self._resumed_from = path

    def save_model(self, output_dir: str | None = None) -> None:
        """The model weights (and the arguments) in ``output_dir`` (default: the run's)."""
        output_dir = output_dir or self.args.output_dir
        model_state = self.parallel.full_model_state(self.model)
        if self.dist.is_main:
            os.makedirs(output_dir, exist_ok=True)
            ckpt.save_weights(self.model, Path(output_dir), self.args.save_safetensors,
                              model_state)
            Path(output_dir, ckpt.TRAINING_ARGS).write_text(self.args.to_json_string(),
                                                            encoding="utf-8")
        self.dist.barrier()

    # ------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset: Dataset | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Loss and ``compute_metrics`` over the evaluation set, logged."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("Trainer.evaluate needs an eval_dataset")
        _, _, metrics = self._evaluation_loop(dataset, metric_key_prefix)
        metrics["epoch"] = self.state.epoch
        self.log(metrics)
        self._event("on_evaluate", metrics=metrics)
        return metrics

    def predict(self, test_dataset: Dataset, metric_key_prefix: str = "test") -> PredictionOutput:
        """Predictions, label ids and ``test_``-prefixed metrics (not logged)."""
        predictions, labels, metrics = self._evaluation_loop(test_dataset, metric_key_prefix,
                                                             keep_predictions=True)
        self._event("on_predict", metrics=metrics)
        return PredictionOutput(predictions, labels, metrics)

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any]):
        """(loss or None, logits, labels or None) of one batch, without gradients."""
        has_labels = all(inputs.get(name) is not None for name in self.label_names)
        with torch.no_grad(), self._autocast():
            if has_labels:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.detach().float()
            else:
                loss, outputs = None, model(**inputs)
        labels = inputs.get(self.label_names[0]) if has_labels else None
        return loss, logits_of(outputs), labels

    def _evaluation_loop(self, dataset: Dataset, prefix: str, keep_predictions: bool = False):
        args = self.args
        loader, real = build_eval_loader(dataset, args.per_device_eval_batch_size,
                                         self.data_collator, args.dataloader_num_workers,
                                         self.device, self.dist.world_size, self.dist.rank)
        model = self.model
        was_training = model.training
        model.eval()
        want = keep_predictions or self.compute_metrics is not None
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        counted = torch.zeros((), dtype=torch.float64, device=self.device)
        predictions, labels = [], []
        start = time.perf_counter()
        for index, batch in enumerate(loader):
            batch = to_device(batch, self.device)
            loss, logits, label = self.prediction_step(model, batch)
            if index >= real:  # run only to keep in step with the other ranks
                continue
            if loss is not None:  # a non-finite loss is left out, on the device
                finite = torch.isfinite(loss)
                size = batch_size_of(batch)
                loss_sum += torch.where(finite, loss.double() * size, 0.0)
                counted += finite.double() * size
            if want:
                predictions.append((index, to_numpy(logits)))
                labels.append((index, to_numpy(label) if label is not None else None))
        model.train(was_training)
        self.dist.all_reduce_sum(loss_sum)
        self.dist.all_reduce_sum(counted)
        runtime = time.perf_counter() - start
        predictions_all = labels_all = None
        if want:
            predictions_all, labels_all = gather_in_order(self.dist, predictions, labels)
        metrics = self._eval_metrics(prefix, loss_sum, counted, predictions_all, labels_all)
        metrics[f"{prefix}_runtime"] = runtime
        metrics[f"{prefix}_samples_per_second"] = len(dataset) / max(runtime, 1e-9)
        metrics[f"{prefix}_steps_per_second"] = (
            math.ceil(len(dataset) / args.per_device_eval_batch_size) / max(runtime, 1e-9))
        return predictions_all, labels_all, metrics

    def _eval_metrics(self, prefix: str, loss_sum: torch.Tensor, counted: torch.Tensor,
                      predictions: Any, labels: Any) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if counted.item() > 0:
            metrics[f"{prefix}_loss"] = float(loss_sum.item() / counted.item())
        if self.compute_metrics is not None and predictions is not None:
            extra = self.compute_metrics(EvalPrediction(predictions, labels))
            for key, value in (extra or {}).items():
                metrics[key if key.startswith(f"{prefix}_") else f"{prefix}_{key}"] = value
        return metrics
