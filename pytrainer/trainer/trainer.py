"""The Trainer: Hugging Face's training loop behaviour, correct and lean.

One update = one accumulation window of micro-batches: forward/backward of
each (the loss normalised once for the whole window), then clipping, the
optimizer step, the scheduler step and zeroing the grads. Nothing reads a
device value back to the host per micro-batch or per update: losses, token
counts, the gradient norm and the inf/NaN flag stay on the device until a log
line needs them. With pytrainer's optimizers the clipping factor and the
inf/NaN flag go straight into the fused kernel (``step_scaled``). How the
update reaches the optimizer (stepping.py) and how the ranks hold the model
(parallel.py) are chosen once, when training starts. The constructor, events,
logs, checkpoints and saved models are Hugging Face's.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import itertools
import logging
import time
from typing import Any, Callable

import torch
from torch import nn

from pytrainer.trainer.best_metric import metric_key, note_best_metric
from pytrainer.trainer.batch_size_search import (empty_device_cache, free_memory,
                                                 is_out_of_memory, smaller_batch)
from pytrainer.trainer.checkpointing import (resolve_checkpoint, restore_run_checkpoint,
                                             batch_sizes, write_run_checkpoint)
from pytrainer.trainer.callbacks import CallbackHandler, TrainerCallback, default_callbacks
from pytrainer.trainer.collation import default_collator_for
from pytrainer.trainer.data import count_targets, seed_loader
from pytrainer.trainer.distributed import init_distributed, select_device
from pytrainer.trainer.evaluation import (EvalOutput, EvalSettings, batch_size_of,
                                          inference_ignore_keys, labels_of, logits_of,
                                          run_evaluation, speed_metrics)
from pytrainer.trainer.input_counters import InputCounters
from pytrainer.trainer.label_smoothing import label_smoother_for
from pytrainer.trainer.loaders import StepPlan, TrainerLoaders, TrainLoader
from pytrainer.trainer.log_levels import apply_log_level
from pytrainer.trainer.loss_tracking import LossTracker
from pytrainer.trainer.memory_metrics import MemoryMetrics, check_memory_metrics
from pytrainer.trainer.model_io import (accepts_loss_kwargs, find_labels, loss_of,
                                        loss_shifts_labels, to_device)
from pytrainer.trainer.model_setup import (NEFTune, apply_tf32,
                                           check_activation_checkpointing,
                                           compile_model, enable_activation_checkpointing,
                                           enable_full_determinism, set_use_cache)
from pytrainer.trainer.parallel import Replicated, choose_parallel, ddp_options
from pytrainer.trainer.saving import processing_to_save, save_model_folder, writes_files
from pytrainer.trainer.schedules import create_scheduler
from pytrainer.trainer.script_methods import NO_HYPERPARAMETER_SEARCH, ScriptMethods
from pytrainer.trainer.setup_checks import check_sharded_optimizer, check_trainer_inputs
from pytrainer.trainer.state import (PredictionOutput, TrainerControl,
                                     TrainerState, TrainingTotals, TrainOutput)
from pytrainer.trainer.stepping import choose_stepper
from pytrainer.training_args import TrainingArguments
from pytrainer.utils.seed import set_seed

__all__ = ["Trainer", "NonFiniteLossError"]

logger = logging.getLogger("pytrainer")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive updates had a NaN or inf loss or gradient."""


class Trainer(ScriptMethods):
    """Trains, evaluates and predicts as Hugging Face's Trainer does, with its
    arguments in its order (see the README); ScriptMethods has what its example
    scripts call besides (log_metrics, save_metrics, save_state...).

    ``model`` is any ``nn.Module`` whose forward takes a batch's keys and returns
    its loss (``.loss``, a dict's ``"loss"``, or a tuple's first item), or any
    module with a ``compute_loss_func(outputs, labels, num_items_in_batch)``.
    """

    #: as Hugging Face's: whether compute_loss's loss already covers the accumulation
    #: window (None: when normalised by num_items_in_batch); set by custom losses
    loss_is_scaled_for_ga: bool | None = None

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None,
                 data_collator: Callable | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None,
                 model_init: Callable | None = None, compute_loss_func: Callable | None = None,
                 compute_metrics: Callable | None = None,
                 callbacks: list[TrainerCallback] | None = None,
                 optimizers: tuple[Any, Any] = (None, None),
                 optimizer_cls_and_kwargs: tuple[type, dict[str, Any]] | None = None,
                 preprocess_logits_for_metrics: Callable | None = None):
        self.args = args = args if args is not None else TrainingArguments(output_dir="tmp_trainer")
        check_trainer_inputs(args, model=model, model_init=model_init, optimizers=optimizers,
                             optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                             train_dataset=train_dataset, eval_dataset=eval_dataset,
                             data_collator=data_collator, compute_metrics=compute_metrics)
        self._setup_process()
        self.model_init = model_init
        self.model = self._place(model if model is not None else self.call_model_init())
        self.model_wrapped: nn.Module = self.model
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.processing_class = processing_class
        self.data_collator = data_collator if data_collator is not None else \
            default_collator_for(processing_class)
        self.compute_metrics, self.compute_loss_func = compute_metrics, compute_loss_func
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        check_sharded_optimizer(args.fsdp2 and self.dist.enabled, self.optimizer)
        self.label_smoother = label_smoother_for(self.model, args.label_smoothing_factor)
        self.scaler = (torch.amp.GradScaler(self.device.type) if args.fp16 else None)
        # until train() wraps the model, every rank holds it whole
        self.parallel = Replicated(self.dist)
        self.stepper = choose_stepper(self.optimizer, self.scaler, args.max_grad_norm)
        self.state = TrainerState(is_world_process_zero=self.dist.is_main,
                                  is_local_process_zero=self.dist.local_rank == 0)
        self.control = TrainerControl()
        self.totals = TrainingTotals(gradient_accumulation_steps=args.gradient_accumulation_steps)
        self.callback_handler = CallbackHandler(default_callbacks(args, callbacks), self.model,
                                                processing_class, self.optimizer,
                                                self.lr_scheduler)
        self._eval_loaders: dict = {}
        self._ignore_keys_for_eval: list[str] | None = None
        self._resumed_from: str | None = None
        self._optimizer_built_here = self._wrapped = self._in_train = False
        self._init_metrics: dict[str, Any] = {}
        self._memory.stop("init", self._init_metrics)
        self._event("on_init_end")
        if self.dist.enabled:
            # a script that never calls close() still tears down in the safe order
            atexit.register(self.close)

    def _setup_process(self) -> None:
        """This process's place in the run, its device, log level, seeds, TF32 and
        memory measurement."""
        args = self.args
        self.dist = init_distributed(args.use_cpu, args.ddp_timeout, args.ddp_backend)
        self.device = select_device(args.use_cpu, self.dist)
        apply_log_level(args, self.dist.rank, self.dist.local_rank)
        self._seed()
        apply_tf32(args.tf32)
        check_memory_metrics(args.skip_memory_metrics)
        self._memory = MemoryMetrics(args.skip_memory_metrics, self.device)
        self._memory.start("init")

    def _seed(self) -> None:
        set_seed(self.args.seed)
        if self.args.full_determinism:
            enable_full_determinism()

    def _place(self, model: nn.Module) -> nn.Module:
        """The model on the device, set up as the arguments say (what cannot be done
        fails here, before training)."""
        args = self.args
        model = model.to(self.device)
        set_use_cache(model, args.use_cache)
        if args.activation_checkpointing:
            check_activation_checkpointing(model)
        if args.neftune_noise_alpha is not None:
            NEFTune(model, args.neftune_noise_alpha)  # checks the model has input embeddings
        self.model_accepts_loss_kwargs = accepts_loss_kwargs(model)
        self.loss_shifts_labels = loss_shifts_labels(model)
        self.label_names = args.label_names if args.label_names is not None else \
            (find_labels(model) or ["labels"])
        return model

    def call_model_init(self) -> nn.Module:
        model = self.model_init()
        if model is None:
            raise RuntimeError("model_init returned None: it must return the model to train")
        return model

    @property
    def loaders(self) -> TrainerLoaders:
        """The loaders of the current model, collator and arguments."""
        return TrainerLoaders(self.args, self.model, self.data_collator, self.processing_class,
                              self.label_names, self.dist, self.device, self._eval_loaders)

    def close(self) -> None:
        """Releases the distributed resources: the DDP wrapper first (its reducer
        talks to the process group), then the process group this Trainer created.
        Call at the end of a torchrun script (``pytrainer train`` does)."""
        if self.model_wrapped is not self.model:
            self.model_wrapped = self.model
            gc.collect()
        self.dist.shutdown()

    # ------------------------------------------------------------ callbacks
    def _event(self, name: str, **kwargs) -> None:
        handler = self.callback_handler
        handler.model, handler.optimizer, handler.lr_scheduler = (self.model, self.optimizer,
                                                                 self.lr_scheduler)
        self.control = handler.call(name, self.args, self.state, self.control, **kwargs)

    # ------------------------------------------------------------ data
    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset")
        return self.loaders.train(self.train_dataset, self.args.per_device_train_batch_size,
                                  self.args.gradient_accumulation_steps).loader

    def get_eval_dataloader(self, eval_dataset: Any = None) -> torch.utils.data.DataLoader:
        dataset = self.eval_dataset[eval_dataset] if isinstance(eval_dataset, str) else \
            eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset")
        return self.loaders.eval(dataset)[0]

    def get_test_dataloader(self, test_dataset: Any) -> torch.utils.data.DataLoader:
        return self.loaders.eval(test_dataset, "test")[0]

    # ------------------------------------------------------------ setup
    def create_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer ``optim`` names, or the class of optimizer_cls_and_kwargs
        over Hugging Face's two parameter groups (decayed, not decayed)."""
        if self.optimizer is None:
            from pytrainer.optim.factory import create_optimizer, parameter_groups
            if self.optimizer_cls_and_kwargs is not None:
                cls, kwargs = self.optimizer_cls_and_kwargs
                self.optimizer = cls(parameter_groups(self.model, self.args.weight_decay),
                                     **kwargs)
            else:
                self.optimizer = create_optimizer(self.model, self.args)
            self._optimizer_built_here = True
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None:
            self.lr_scheduler = create_scheduler(
                self.args.lr_scheduler_type, optimizer or self.optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps, kwargs=self.args.lr_scheduler_kwargs)
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.create_optimizer()
        self.create_scheduler(num_training_steps)

    def _wrap_model(self) -> nn.Module:
        """Sets the model up for training, once: activation checkpointing, how the
        ranks hold it (DDP under torchrun, FSDP2 with ``fsdp2``, sharded in place,
        else the model as it is), then torch.compile of what the loop calls."""
        if self._wrapped:
            return self.model_wrapped
        args = self.args
        if args.activation_checkpointing:
            enable_activation_checkpointing(self.model, args.activation_checkpointing_kwargs)
        self.parallel = choose_parallel(self.dist, self.device, args.fsdp2, ddp_options(args))
        self.model_wrapped = self.parallel.wrap(self.model)
        if args.torch_compile:
            self.model_wrapped = compile_model(self.model_wrapped, args.torch_compile_backend,
                                               args.torch_compile_mode)
        self._wrapped = True
        if self.parallel.rebuilds_optimizer and self.optimizer is not None \
                and self._optimizer_built_here:
            # the parameters changed (FSDP2's DTensors): build the optimizer over them
            self.optimizer = None
            self.create_optimizer()
            self.lr_scheduler = None
        return self.model_wrapped

    def _optimizer_mode(self, mode: str) -> None:
        """Schedule-free optimizers: train() puts the training weights in the model,
        eval() the averaged ones (to evaluate and save); others have neither."""
        switch = getattr(self.optimizer, mode, None)
        if callable(switch):
            switch()

    # ------------------------------------------------------------ training
    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None,
              ignore_keys_for_eval: list[str] | None = None) -> TrainOutput:
        """Trains, from scratch or from a checkpoint (``True``: the latest in
        output_dir); returns the global step, mean training loss and metrics. With
        auto_find_batch_size, running out of memory in the first update retries
        with a smaller batch and more accumulation steps."""
        if trial is not None:
            raise ValueError(NO_HYPERPARAMETER_SEARCH)
        if self.train_dataset is None:
            raise ValueError("Trainer.train needs a train_dataset")
        self._memory.start("train")
        if self.model_init is not None:
            set_seed(self.args.seed)
            self.model = self.model_wrapped = self._place(self.call_model_init())
            self.optimizer = self.lr_scheduler = None
            self._wrapped = False
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        self._ignore_keys_for_eval = ignore_keys_for_eval
        batch, accumulation = batch_sizes(self.args, checkpoint)
        while True:
            self._first_step = None  # the step this attempt starts from, once known
            try:
                return self._train_with(batch, accumulation, checkpoint)
            except Exception as error:  # noqa: BLE001 - re-raised unless an early OOM
                first = self._first_step is None or self.state.global_step == self._first_step
                smaller = smaller_batch(batch, accumulation)
                if not (self.args.auto_find_batch_size and is_out_of_memory(error) and first
                        and smaller is not None):
                    raise
                logger.warning("out of memory with a per-device batch of %d: retrying with %d "
                               "and %d accumulation steps", batch, *smaller)
                free_memory(self.model)
                batch, accumulation = smaller
            finally:
                self._in_train = False  # evaluations after this leave the optimizer in eval

    def _train_with(self, batch: int, accumulation: int, checkpoint: str | None) -> TrainOutput:
        args = self.args
        self._seed()
        data = self.loaders.train(self.train_dataset, batch, accumulation)
        plan = data.plan(args, accumulation)
        model = self._wrap_model()
        self.create_optimizer_and_scheduler(plan.max_steps)
        self.stepper = choose_stepper(self.optimizer, self.scaler, args.max_grad_norm)
        intervals = args.resolve_steps(plan.max_steps)
        self.state = TrainerState(
            max_steps=plan.max_steps, logging_steps=intervals.logging_steps,
            eval_steps=intervals.eval_steps, save_steps=intervals.save_steps,
            train_batch_size=batch, num_train_epochs=plan.num_epochs,
            is_world_process_zero=self.dist.is_main,
            is_local_process_zero=self.dist.local_rank == 0)
        self.totals = TrainingTotals(gradient_accumulation_steps=accumulation)
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)
        self._first_step = self.state.global_step
        self._tracker = LossTracker(self.device, self.dist, self.totals,
                                    args.logging_nan_inf_filter, args.nonfinite_steps_limit,
                                    self._log)
        self._counters = InputCounters(self.model, self.device, self.dist,
                                       args.include_num_input_tokens_seen,
                                       getattr(self.processing_class, "pad_token_id", None),
                                       self._flops_override())
        self.callback_handler.train_dataloader = data.loader
        self._in_train, self._last_logged = True, self.state.global_step
        self._event("on_train_begin")
        self._optimizer_mode("train")
        model.train()
        self.model.zero_grad(set_to_none=True)
        self._start_time = start = time.perf_counter()
        if args.eval_on_start:
            self._evaluate(skip_scheduler=True)
        neftune = NEFTune(self.model, args.neftune_noise_alpha) \
            if args.neftune_noise_alpha is not None else contextlib.nullcontext()
        with neftune:
            samples = self._train_epochs(model, data, plan, accumulation)
        self._tracker.drain()  # the last updates' flags
        self._stop_if_nonfinite()
        return self._end_training(time.perf_counter() - start, self._first_step, samples)

    def _epoch_batches(self, data: TrainLoader, epoch: int, skip: int):
        """The micro-batches of an epoch, the first ``skip`` left out (resuming)."""
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        seed_loader(data.loader, seed, epoch)
        if data.sampler is None:
            return itertools.islice(iter(data.loader), skip, None)
        data.sampler.set_epoch(epoch)
        data.sampler.skip = skip  # dropped without reading the data
        return iter(data.loader)

    def _train_epochs(self, model: nn.Module, data: TrainLoader, plan: StepPlan,
                      accumulation: int) -> int:
        """The epochs from the state's step on; returns the samples this rank trained on."""
        epochs_done, steps_done_in_epoch = divmod(self.state.global_step, plan.steps_per_epoch)
        samples = 0
        for epoch in range(epochs_done, plan.num_epochs):
            if self.control.should_training_stop:
                break
            skipped = steps_done_in_epoch * accumulation if epoch == epochs_done else 0
            batches = self._epoch_batches(data, epoch, skipped)
            self._event("on_epoch_begin")
            micro_done = skipped
            while not (self.control.should_training_stop or self.control.should_epoch_stop):
                window = list(itertools.islice(batches, accumulation))
                if not window:
                    break
                self._event("on_step_begin")
                samples += self._update(model, window)
                micro_done += len(window)
                self.state.epoch = epoch + micro_done / plan.batches_per_epoch
                self._event("on_step_end")
                self._maybe_log_save_evaluate()
            if micro_done == skipped and not (self.control.should_training_stop
                                              or self.control.should_epoch_stop):
                logger.warning("the training set gave no batch in epoch %d: stopping at step %d",
                               epoch, self.state.global_step)
                self.control.should_training_stop = True
            self._event("on_epoch_end")
            self._maybe_log_save_evaluate()
        return samples

    def _end_training(self, runtime: float, start_step: int, samples: int) -> TrainOutput:
        self._counters.flush(self.state)
        train_loss = self._tracker.train_loss()
        steps = self.state.global_step - start_step
        metrics = speed_metrics("train", runtime, samples * self.dist.world_size, steps)
        metrics.update(total_flos=self.state.total_flos, train_loss=train_loss,
                       **self._init_metrics)
        self._memory.stop("train", metrics)
        self.log(metrics)
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint:
            self.dist.barrier()
            self.parallel.load_model_weights(self.model, self.state.best_model_checkpoint)
        self._in_train = False
        self._optimizer_mode("eval")  # schedule-free: the averaged weights, to save and evaluate
        self._event("on_train_end")
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def _update(self, model: nn.Module, window: list[dict[str, Any]]) -> int:
        """One optimizer update from the window's micro-batches; returns its samples."""
        window = [to_device(batch, self.device) for batch in window]
        num_items = self._count_targets(window, across_ranks=True)
        self.current_gradient_accumulation_steps = len(window)
        step_loss = torch.zeros((), device=self.device)
        samples = 0
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            with self.parallel.gradient_sync(model, enabled=last):
                step_loss += self.training_step(model, batch, num_items)
            self._counters.add(batch)
            samples += batch_size_of(batch)
            if not last:
                self._event("on_substep_end")
        self._optimizer_update(step_loss)
        return samples

    def _count_targets(self, window: list[dict[str, Any]], across_ranks: bool
                       ) -> torch.Tensor | None:
        """The window's target tokens when the loss can use them, summed over ranks
        with average_tokens_across_devices (``across_ranks``)."""
        uses_count = self.model_accepts_loss_kwargs or self.compute_loss_func is not None
        if not uses_count or "labels" not in window[0]:
            return None
        count = count_targets(window, self.loss_shifts_labels)
        if count is not None and across_ranks and self.args.average_tokens_across_devices:
            count = self.dist.all_reduce_sum(count.to(self.device))
        return count

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | None = None) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its share of the window's
        loss (detached). A loss normalised by ``num_items_in_batch`` already is over
        the whole window (with the count over all ranks, DDP's average of the grads is
        undone by the world size); any other is divided by the window's micro-batches."""
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        steps = self.args.torch_empty_cache_steps
        if steps and self.state.global_step % steps == 0:
            empty_device_cache(self.device)
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:  # normalised by num_items_in_batch: by the model or compute_loss_func
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or \
                self.compute_loss_func is not None
        if not scaled:
            loss = loss / self.current_gradient_accumulation_steps
        elif num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.dist.world_size
        self.stepper.backward(loss)
        # as the gradient all-reduce sees it: the mean over ranks is the global loss
        return loss.detach()

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | None = None):
        """The loss of one batch, as Hugging Face computes it: the model's, label
        smoothing's, or compute_loss_func's (override for custom losses)."""
        inputs = dict(inputs)
        labels = None
        if (self.label_smoother is not None or self.compute_loss_func is not None) \
                and "labels" in inputs:
            labels = inputs.pop("labels")
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            inputs["num_items_in_batch"] = num_items_in_batch
        outputs = model(**inputs)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        elif labels is not None:
            loss = self.label_smoother(outputs, labels, shift_labels=self.loss_shifts_labels,
                                       num_items_in_batch=num_items_in_batch)
        else:
            loss = loss_of(outputs)
        return (loss, outputs) if return_outputs else loss

    def _optimizer_update(self, step_loss: torch.Tensor) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.stepper.unscale(self.optimizer)
        norm = self.parallel.grad_norm(grads, self.device)
        self._tracker.grad_norm = norm
        # every rank must take the same decision: the grads (hence the norm) are
        # reduced already; the loss flag is summed over ranks
        loss_bad = self.dist.all_reduce_sum((~torch.isfinite(step_loss)).to(torch.float32)) > 0
        bad = ~torch.isfinite(norm) | loss_bad
        self._event("on_pre_optimizer_step")
        self._lr_used = self._get_learning_rate()
        bad = self.stepper.step(self.optimizer, grads, norm, bad, loss_bad)
        self._event("on_optimizer_step")
        if self.lr_scheduler is not None and not isinstance(
                self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.lr_scheduler.step()
        self.model.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self._tracker.record(self.state.global_step, step_loss, bad)
        self._stop_if_nonfinite()

    def _get_learning_rate(self) -> float:
        if self.lr_scheduler is not None and hasattr(self.lr_scheduler, "get_last_lr"):
            lr = self.lr_scheduler.get_last_lr()[0]
        else:
            lr = self.optimizer.param_groups[0]["lr"]
        return float(lr.item() if isinstance(lr, torch.Tensor) else lr)

    def _stop_if_nonfinite(self) -> None:
        if self._tracker.limit_hit is None:
            return
        step, streak = self._tracker.limit_hit
        path = self._save_checkpoint()
        raise NonFiniteLossError(
            f"{streak} consecutive updates (through step {step}) had a NaN or inf loss or gradient "
            f"and were skipped; stopping (nonfinite_steps_limit={self.args.nonfinite_steps_limit})."
            f" The parameters are those of the last good update, saved in {path}")

    # ------------------------------------------------------------ log / eval / save
    def _maybe_log_save_evaluate(self) -> None:
        control = self.control
        if control.should_log or control.should_evaluate or control.should_save:
            self._tracker.drain()  # the host waits for the device here anyway
        if control.should_log and self.state.global_step > self._last_logged:
            loss = self._tracker.take_log_loss()
            logs: dict[str, float] = {} if loss is None else {"loss": loss}
            logs["grad_norm"] = float(self._tracker.grad_norm.item())
            logs["learning_rate"] = self._lr_used
            self._last_logged = self.state.global_step
            self._counters.flush(self.state)
            self.log(logs, self._start_time)
        if self.control.should_evaluate:
            best = note_best_metric(self.args, self.state, self._evaluate())
            if self.args.save_strategy == "best":
                self.control.should_save = best
        if self.control.should_save:
            self._save_checkpoint()
            self._event("on_save")
        self._stop_if_nonfinite()

    def _evaluate(self, skip_scheduler: bool = False) -> dict[str, float]:
        try:
            metrics = self.evaluate(ignore_keys=self._ignore_keys_for_eval)
        except RuntimeError as error:  # not retried with a smaller training batch
            if self.args.auto_find_batch_size and is_out_of_memory(error):
                raise ValueError("evaluation exceeded the device's memory, which "
                                 "auto_find_batch_size does not fix (it lowers the training "
                                 "batch): lower per_device_eval_batch_size") from error
            raise
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and \
                not skip_scheduler:
            self.lr_scheduler.step(metrics[metric_key(self.args, metrics)])
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds ``epoch`` (and the tokens seen), appends to the log history, calls
        on_log; training lines (``start_time``) get the tokens per second."""
        logs["epoch"] = self.state.epoch
        if self.args.include_num_input_tokens_seen != "no":
            logs.update(InputCounters.log_fields(self.state, start_time))
        self._log(logs, self.state.global_step)

    def _log(self, logs: dict[str, float], step: int) -> None:
        logs.setdefault("epoch", self.state.epoch)
        self.state.log_history.append({**logs, "step": step})
        self._event("on_log", logs=logs)

    def _save_checkpoint(self) -> str:
        """Writes checkpoint-<global_step> (every rank takes part) and rotates."""
        self._counters.flush(self.state)
        self.state.stateful_callbacks = self.callback_handler.export_states(self.control)
        return write_run_checkpoint(
            self.args, self.state, self._tracker.snapshot(), model=self.model,
            optimizer=self.optimizer, scheduler=self.lr_scheduler, scaler=self.scaler,
            parallel=self.parallel, dist=self.dist,
            processing_class=processing_to_save(self.processing_class, self.data_collator),
            writes=writes_files(self.args, self.dist), keep={self._resumed_from})

    def _load_checkpoint(self, path: str) -> None:
        """Restores a checkpoint of pytrainer's or of Hugging Face's Trainer (and,
        with restore_callback_states_from_checkpoint, the callbacks' states)."""
        self.state, totals = restore_run_checkpoint(
            path, model=self.model, optimizer=self.optimizer, scheduler=self.lr_scheduler,
            scaler=self.scaler, parallel=self.parallel, dist=self.dist, current=self.state)
        self.totals = totals or self.totals
        if self.args.restore_callback_states_from_checkpoint:
            self.control = self.callback_handler.restore_states(self.state.stateful_callbacks,
                                                                self.control)
        self._resumed_from = path

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model (save_pretrained's files for a transformers model), processing
        class and arguments in ``output_dir``, each file replaced in one rename."""
        output_dir = output_dir or self.args.output_dir
        writes = writes_files(self.args, self.dist)
        state = self.parallel.full_model_state(self.model, writes)
        if writes:
            save_model_folder(self.model, output_dir, state, self.args.save_safetensors,
                              processing_to_save(self.processing_class, self.data_collator),
                              self.args.to_json_string())
        self.dist.barrier()

    # ------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Loss and ``compute_metrics`` over the evaluation set (each set of a dict,
        its metrics prefixed ``eval_<name>_``), logged."""
        override = eval_dataset is not None
        dataset = eval_dataset if override else self.eval_dataset
        if isinstance(dataset, dict):
            metrics = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part if override else name, ignore_keys,
                                             f"{metric_key_prefix}_{name}"))
            return metrics
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        if dataset is None:
            raise ValueError("Trainer.evaluate needs an eval_dataset")
        self._memory.start("eval")
        loader, real = self.loaders.eval(dataset)
        output = self.evaluation_loop(loader, "Evaluation", prediction_loss_only=True if
                                      self.compute_metrics is None else None,
                                      ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix,
                                      real_batches=real)
        self.log(output.metrics)
        self._event("on_evaluate", metrics=output.metrics)
        self._memory.stop("eval", output.metrics)
        return output.metrics

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None,
                metric_key_prefix: str = "test") -> PredictionOutput:
        """Predictions, label ids and ``test_``-prefixed metrics (not logged)."""
        self._memory.start("test")
        loader, real = self.loaders.eval(test_dataset, "test")
        output = self.evaluation_loop(loader, "Prediction", ignore_keys=ignore_keys,
                                      metric_key_prefix=metric_key_prefix, real_batches=real)
        self._event("on_predict", metrics=output.metrics)
        self._memory.stop("test", output.metrics)
        return PredictionOutput(output.predictions, output.label_ids, output.metrics)

    def evaluation_loop(self, dataloader, description: str,
                        prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval",
                        real_batches: int | None = None) -> EvalOutput:
        """One pass over ``dataloader`` in evaluation mode (model and schedule-free
        optimizer); batches past ``real_batches`` only keep the ranks in step."""
        args = self.args
        settings = EvalSettings.of(
            args, self.device, self.dist, self.model,
            prediction_step=functools.partial(self.prediction_step, ignore_keys=ignore_keys),
            on_prediction_step=lambda: self._event("on_prediction_step"),
            compute_metrics=self.compute_metrics,
            preprocess_logits_for_metrics=self.preprocess_logits_for_metrics)
        self.callback_handler.eval_dataloader = dataloader
        model, was_training = self.model, self.model.training
        model.eval()
        self._optimizer_mode("eval")
        try:
            return run_evaluation(model, dataloader, real_batches, settings,
                                  args.prediction_loss_only if prediction_loss_only is None
                                  else prediction_loss_only, metric_key_prefix)
        finally:
            model.train(was_training)
            if self._in_train:
                self._optimizer_mode("train")

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any],
                        prediction_loss_only: bool = False, ignore_keys: list[str] | None = None):
        """(loss or None, logits, labels or None) of one batch, without gradients;
        the model's outputs but its loss and ``ignore_keys`` (default: the config's
        keys_to_ignore_at_inference) are the logits."""
        labels = labels_of(inputs, self.label_names)
        has_labels = labels is not None
        ignore_keys = inference_ignore_keys(self.model) if ignore_keys is None else ignore_keys
        with torch.no_grad(), self.compute_loss_context_manager():
            if has_labels:
                num_items = self._count_targets([inputs], across_ranks=False)
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True,
                                                  num_items_in_batch=num_items)
                loss = loss.detach().float().mean()
            else:
                loss, outputs = None, model(**inputs)
        if prediction_loss_only:
            return loss, None, None
        return loss, logits_of(outputs, tuple(ignore_keys), has_loss=has_labels), labels

