"""The Trainer: Hugging Face's training loop behaviour, correct and lean.

One update = one accumulation window of micro-batches: forward/backward of
each (the loss normalised once for the whole window), then clipping, the
optimizer step, the scheduler step and zeroing the grads. Nothing reads a
device value back to the host per micro-batch or per update: losses, token
counts, the gradient norm and the inf/NaN flag stay on the device until a log
line needs them. With pytrainer's optimizers the clipping factor and the
inf/NaN flag go straight into the fused kernel (``step_scaled``).
"""
from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import math
import os
import time
from typing import Any, Callable

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
from pytrainer.trainer.evaluation import batch_size_of, concat_padded, logits_of, to_numpy
from pytrainer.trainer.schedules import create_scheduler
from pytrainer.trainer.state import (CheckpointError, EvalPrediction, PredictionOutput,
                                     TrainerControl, TrainerState, TrainOutput)
from pytrainer.training_args import TrainingArguments
from pytrainer.utils.seed import get_rng_state, set_rng_state, set_seed

__all__ = ["Trainer", "NonFiniteLossError"]

logger = logging.getLogger("pytrainer")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive updates had a NaN or inf loss or gradient."""


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _loss_of(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        if "loss" not in outputs.keys():
            raise ValueError(f"the model returned keys {list(outputs.keys())} without 'loss'; "
                             "return the loss, or pass compute_loss_func")
        return outputs["loss"]
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    loss = getattr(outputs, "loss", None)
    if loss is None:
        if isinstance(outputs, torch.Tensor) and outputs.dim() == 0:
            return outputs
        raise ValueError(f"cannot find a loss in the model's output ({type(outputs).__name__}): "
                         "return an object with .loss, a dict with 'loss' or a tuple whose first "
                         "item is the loss, or pass compute_loss_func")
    return loss


def _accepts_loss_kwargs(model: nn.Module) -> bool:
    if hasattr(model, "accepts_loss_kwargs"):
        return bool(model.accepts_loss_kwargs)
    params = inspect.signature(model.forward).parameters
    return "num_items_in_batch" in params or any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def _loss_shifts_labels(model: nn.Module) -> bool:
    """Whether the model's loss predicts labels[i+1] at position i (a causal LM of
    transformers): then position 0 of each row is no target."""
    if hasattr(model, "loss_shifts_labels"):
        return bool(model.loss_shifts_labels)
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    except ImportError:
        return False
    config = getattr(model, "config", None)
    return (LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss
            and not getattr(config, "is_encoder_decoder", False))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


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
        self.model_accepts_loss_kwargs = _accepts_loss_kwargs(self.model)
        self.loss_shifts_labels = _loss_shifts_labels(self.model)
        self.label_names = args.label_names or ["labels"]
        self.scaler = (torch.amp.GradScaler(self.device.type) if args.fp16 else None)
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
        self._fsdp2 = False
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
        """DistributedDataParallel under torchrun, or FSDP2 (``fsdp2``: every child
        module with parameters, then the root, sharded in place)."""
        if not self.dist.enabled or self.model_wrapped is not self.model:
            return self.model_wrapped
        if self.args.fsdp2:
            from pytrainer.trainer.distributed import shard_fsdp2
            shard_fsdp2(self.model)
            self.model_wrapped = self.model
            self._fsdp2 = True
            if self.optimizer is not None and self._optimizer_built_here:
                # parameters became DTensors: build the optimizer over them
                self.optimizer = None
                self.create_optimizer()
                self.lr_scheduler = None
        else:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model_wrapped = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids,
                find_unused_parameters=bool(self.args.ddp_find_unused_parameters))
        return self.model_wrapped

    def _gradient_sync(self, model: nn.Module, enabled: bool):
        """The all-reduce of gradients runs on the last micro-batch of a window only."""
        if enabled:
            if getattr(self, "_fsdp2", False):
                model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if getattr(self, "_fsdp2", False):
            model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()

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
        batches_per_epoch = len(sampler)
        if batches_per_epoch == 0:
            raise ValueError(f"the training set ({len(self.train_dataset)} samples) is smaller than "
                             "one batch and dataloader_drop_last is set")
        accumulation = args.gradient_accumulation_steps
        steps_per_epoch = max(math.ceil(batches_per_epoch / accumulation), 1)
        if args.max_steps > 0:
            max_steps = args.max_steps
            num_epochs = math.ceil(max_steps / steps_per_epoch)
        else:
            max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
            num_epochs = math.ceil(args.num_train_epochs)

        model = self._wrap_model()
        self.create_optimizer()
        self.create_scheduler(max_steps)
        intervals = args.resolve_steps(max_steps)
        self.state = TrainerState(
            max_steps=max_steps, logging_steps=intervals.logging_steps,
            eval_steps=intervals.eval_steps, save_steps=intervals.save_steps,
            train_batch_size=args.per_device_train_batch_size, num_train_epochs=num_epochs,
            is_world_process_zero=self.dist.is_main,
            is_local_process_zero=self.dist.local_rank == 0)
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)
        epochs_done, steps_done_in_epoch = divmod(self.state.global_step, steps_per_epoch)

        self.callback_handler.objects.update(model=self.model, train_dataloader=loader)
        self._event("on_train_begin")
        model.train()
        self.model.zero_grad(set_to_none=True)
        self._reset_accumulators()
        start, start_step = time.perf_counter(), self.state.global_step
        samples = 0
        for epoch in range(epochs_done, num_epochs):
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
                self.state.epoch = epoch + micro_done / batches_per_epoch
                self._event("on_step_end")
                self._maybe_log_save_evaluate()
            self._event("on_epoch_end")
            self._maybe_log_save_evaluate()
        self._check_nonfinite(final=True)

        runtime = time.perf_counter() - start
        self._flush_loss_accumulators()
        steps = self.state.global_step - start_step
        train_loss = self.state.total_loss / max(self.state.global_step, 1)
        if args.load_best_model_at_end and self.state.best_model_checkpoint:
            self.dist.barrier()
            best = self.state.best_model_checkpoint
            if self._fsdp2:
                from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                                     set_model_state_dict)
                ckpt.load_model_weights(self.model, best, load=lambda full: set_model_state_dict(
                    self.model, full, options=StateDictOptions(full_state_dict=True)))
            else:
                ckpt.load_model_weights(self.model, best)
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
        window = [_to_device(batch, self.device) for batch in window]
        num_items = self._count_targets(window)
        step_loss = torch.zeros((), device=self.device)
        samples = 0
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            with self._gradient_sync(model, enabled=last):
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
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
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
            loss = _loss_of(outputs)
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------ the update
    def _grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.model.parameters() if p.grad is not None]

    def _optimizer_update(self, step_loss: torch.Tensor) -> None:
        args, optimizer = self.args, self.optimizer
        grads = self._grads()
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        norm = self._total_norm(grads)
        self._grad_norm = norm
        # every rank must take the same decision: the grads (hence the norm) are
        # reduced already; the loss flag is summed over ranks
        loss_bad = self.dist.all_reduce_sum((~torch.isfinite(step_loss)).to(torch.float32))
        bad = ~torch.isfinite(norm) | (loss_bad > 0)
        clip = args.max_grad_norm > 0
        self._event("on_pre_optimizer_step")
        self._lr_used = self._current_lr()
        if self.scaler is not None:
            # fp16: the scaler found the infs and skips those steps itself
            if clip:
                torch._foreach_mul_(grads, torch.clamp(args.max_grad_norm / (norm + 1e-6), max=1.0))
            self.scaler.step(optimizer)
            self.scaler.update()
            bad = torch.zeros_like(bad)
        elif hasattr(optimizer, "step_scaled"):
            # pytrainer's kernels divide by the scale and skip on the flag, on the device
            scale = torch.clamp((norm + 1e-6) / args.max_grad_norm, min=1.0) if clip else None
            optimizer.step_scaled(scale, bad.to(torch.float32))
        elif getattr(optimizer, "_step_supports_amp_scaling", False) and \
                getattr(optimizer, "defaults", {}).get("fused"):
            # torch's fused optimizers take the same two tensors (GradScaler's protocol)
            optimizer.grad_scale = (torch.clamp((norm + 1e-6) / args.max_grad_norm, min=1.0)
                                    .to(torch.float32) if clip else None)
            optimizer.found_inf = bad.to(torch.float32)
            try:
                optimizer.step()
            finally:
                del optimizer.grad_scale, optimizer.found_inf
        else:
            if clip:
                torch._foreach_mul_(grads, torch.clamp(args.max_grad_norm / (norm + 1e-6), max=1.0))
            # other optimizers cannot skip on a device flag: one sync per update
            if not bool(bad):
                optimizer.step()
        self._event("on_optimizer_step")
        if self.lr_scheduler is not None and not isinstance(
                self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.lr_scheduler.step()
        self.model.zero_grad(set_to_none=True)
        self.state.global_step += 1
        good = (~bad).to(step_loss.dtype)
        self._loss_sum += step_loss.float() * good
        self._good_steps += good
        self._streak = (self._streak + 1) * bad.to(self._streak.dtype)
        self._check_nonfinite()

    def _total_norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """The 2-norm of all gradients, on the device (of the full gradients when
        FSDP2 shards them: local sums of squares reduced over ranks)."""
        if not grads:
            return torch.zeros((), device=self.device)
        from pytrainer.optim._base import local_tensor
        local = [local_tensor(g) for g in grads]
        squares = torch.stack([n.float().to(self.device) for n in torch._foreach_norm(local)]).square().sum()
        if self._fsdp2:
            self.dist.all_reduce_sum(squares)
        return squares.sqrt()

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
        self._streak = torch.tensor(float(self.state.consecutive_bad_steps), device=device)
        self._grad_norm = torch.zeros((), device=device)
        self._streak_seen = int(self.state.consecutive_bad_steps)
        self._pending: tuple[int, torch.Tensor, Any] | None = None

    def _check_nonfinite(self, final: bool = False) -> None:
        """Reads the streak of skipped updates one update late (a non-blocking copy
        and an event on CUDA: no synchronisation), logs each skipped update, and
        stops the run after ``nonfinite_steps_limit`` in a row."""
        if self.device.type == "cuda":
            if self._pending is not None:
                step, host, event = self._pending
                if final:
                    event.synchronize()
                if event.query():
                    self._pending = None
                    self._on_streak(step, int(host.item()))
            if not final and self._pending is None:
                host = torch.empty((), dtype=torch.float32, pin_memory=True)
                host.copy_(self._streak, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._pending = (self.state.global_step, host, event)
        elif not final:
            self._on_streak(self.state.global_step, int(self._streak.item()))

    def _on_streak(self, step: int, streak: int) -> None:
        if streak > 0 and streak != self._streak_seen:
            message = f"non-finite loss or gradient at step {step}: update skipped"
            logger.warning(message)
            self.log({"nonfinite_update_skipped": step})
        self._streak_seen = streak
        self.state.consecutive_bad_steps = streak
        limit = self.args.nonfinite_steps_limit
        if limit and streak >= limit:
            path = self._save_checkpoint()
            raise NonFiniteLossError(
                f"{streak} consecutive updates (through step {step}) had a NaN or inf loss or "
                f"gradient and were skipped; stopping (nonfinite_steps_limit={limit}). The "
                f"parameters are those of the last good update, saved in {path}")

    # ------------------------------------------------------------ log / eval / save
    def _flush_loss_accumulators(self) -> tuple[float, int]:
        """Moves the device loss sums into the state (a host read); every rank takes
        part (the loss logged is the mean over ranks, the loss of the global batch)."""
        self.dist.all_reduce_sum(self._loss_sum)
        self._loss_sum /= self.dist.world_size
        loss = float(self._loss_sum.item())
        good = int(self._good_steps.item())
        self.state.total_loss += loss
        self._loss_sum.zero_()
        self._good_steps.zero_()
        self.state.loss_since_log = 0.0
        self.state.steps_since_log = 0
        return loss, good

    def _maybe_log_save_evaluate(self) -> None:
        metrics = None
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
        if self.state.epoch is not None:
            logs.setdefault("epoch", self.state.epoch)
        self.state.log_history.append({**logs, "step": self.state.global_step})
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
        # the loss bookkeeping, so that a resumed run logs what this one would
        self.state.loss_since_log = float(self._loss_sum.item())
        self.state.steps_since_log = int(self._good_steps.item())
        self.state.consecutive_bad_steps = int(self._streak.item())
        model_state, optimizer_state = self._full_states()
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

    def _full_states(self) -> tuple[dict | None, dict | None]:
        """The model's state (each tied tensor once) and the optimizer's, whole, on
        rank 0. Under FSDP2 every rank takes part in gathering the shards."""
        if not self._fsdp2:
            if not self.dist.is_main:
                return None, None
            return ckpt.model_state_to_save(self.model), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict,
                                                             get_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=options)
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        if not self.dist.is_main:
            return None, None
        return ckpt.drop_aliases(self.model, model_state), optimizer_state

    def _load_full_states(self, path: str, optimizer_state: dict) -> None:
        if not self._fsdp2:
            ckpt.load_model_weights(self.model, path)
            self.optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict,
                                                             set_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True)
        ckpt.load_model_weights(
            self.model, path, load=lambda full: set_model_state_dict(self.model, full,
                                                                     options=options))
        set_optimizer_state_dict(self.model, self.optimizer, optimizer_state, options=options)
        from pytrainer.optim._base import KernelOptimizer
        if isinstance(self.optimizer, KernelOptimizer):
            self.optimizer._place_steps()

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
        from pathlib import Path
        ckpt.check_checkpoint(path)
        folder = Path(path)
        state = TrainerState.load_from_json(str(folder / ckpt.TRAINER_STATE))
        self._load_full_states(path, ckpt.load_tensors(folder / ckpt.OPTIMIZER))
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
        model_state = None
        if self._fsdp2:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                                 get_model_state_dict)
            model_state = ckpt.drop_aliases(self.model, get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
        if self.dist.is_main:
            os.makedirs(output_dir, exist_ok=True)
            from pathlib import Path
            ckpt._save_weights(self.model, Path(output_dir), self.args.save_safetensors,
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
        loader = build_eval_loader(dataset, args.per_device_eval_batch_size, self.data_collator,
                                   args.dataloader_num_workers, self.device,
                                   self.dist.world_size, self.dist.rank)
        model = self.model
        was_training = model.training
        model.eval()
        want = keep_predictions or self.compute_metrics is not None
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        counted = torch.zeros((), dtype=torch.float64, device=self.device)
        predictions, labels = [], []
        start = time.perf_counter()
        batches = 0
        for batch in loader:
            batch = _to_device(batch, self.device)
            loss, logits, label = self.prediction_step(model, batch)
            size = batch_size_of(batch)
            if loss is not None and torch.isfinite(loss):
                loss_sum += loss.double() * size
                counted += size
            if want:
                predictions.append((batches, to_numpy(logits)))
                labels.append((batches, to_numpy(label) if label is not None else None))
            batches += 1
        model.train(was_training)
        self.dist.all_reduce_sum(loss_sum)
        self.dist.all_reduce_sum(counted)
        runtime = time.perf_counter() - start
        predictions_all = labels_all = None
        if want:
            predictions_all, labels_all = self._gather_predictions(predictions, labels)
        metrics: dict[str, float] = {}
        if counted.item() > 0:
            metrics[f"{prefix}_loss"] = float(loss_sum.item() / counted.item())
        if self.compute_metrics is not None and predictions_all is not None:
            extra = self.compute_metrics(EvalPrediction(predictions_all, labels_all))
            for key, value in (extra or {}).items():
                metrics[key if key.startswith(f"{prefix}_") else f"{prefix}_{key}"] = value
        metrics[f"{prefix}_runtime"] = runtime
        metrics[f"{prefix}_samples_per_second"] = len(dataset) / max(runtime, 1e-9)
        metrics[f"{prefix}_steps_per_second"] = (
            math.ceil(len(dataset) / args.per_device_eval_batch_size) / max(runtime, 1e-9))
        return predictions_all, labels_all, metrics

    def _gather_predictions(self, predictions, labels):
        """Every rank's (batch index, array) pairs, back in dataset order."""
        world, rank = self.dist.world_size, self.dist.rank
        gathered_p = self.dist.all_gather_objects(predictions)
        gathered_l = self.dist.all_gather_objects(labels)
        ordered_p, ordered_l = [], []
        for r in range(world):
            for (index, p), (_, label) in zip(gathered_p[r], gathered_l[r]):
                ordered_p.append((index * world + r, p))
                ordered_l.append((index * world + r, label))
        ordered_p.sort(key=lambda item: item[0])
        ordered_l.sort(key=lambda item: item[0])
        preds = concat_padded([p for _, p in ordered_p])
        label_arrays = [label for _, label in ordered_l]
        labels_all = None if not label_arrays or label_arrays[0] is None else \
            concat_padded(label_arrays)
        del rank
        return preds, labels_all
