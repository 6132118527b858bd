"""Callbacks: the events of a run, the default decisions of when to log,
evaluate and save, a progress bar, and the log sinks (console, a JSON-lines
file, TensorBoard)."""
from __future__ import annotations

import json
import math
import os
import socket
import sys
from datetime import datetime
from typing import Any

from pytrainer.trainer.state import TrainerControl, TrainerState

__all__ = ["TrainerCallback", "CallbackHandler", "DefaultFlowCallback", "ProgressCallback",
           "PrinterCallback", "JsonLinesLogCallback", "TensorBoardCallback",
           "EarlyStoppingCallback"]


class TrainerCallback:
    """Override any event; each gets ``(args, state, control, **kwargs)`` with the
    model, optimizer, lr_scheduler, train_dataloader and, for on_log, ``logs``,
    for on_evaluate, ``metrics``. Returning a TrainerControl replaces ``control``."""

    def on_init_end(self, args, state, control, **kwargs): pass
    def on_train_begin(self, args, state, control, **kwargs): pass
    def on_train_end(self, args, state, control, **kwargs): pass
    def on_epoch_begin(self, args, state, control, **kwargs): pass
    def on_epoch_end(self, args, state, control, **kwargs): pass
    def on_step_begin(self, args, state, control, **kwargs): pass
    def on_substep_end(self, args, state, control, **kwargs): pass
    def on_pre_optimizer_step(self, args, state, control, **kwargs): pass
    def on_optimizer_step(self, args, state, control, **kwargs): pass
    def on_step_end(self, args, state, control, **kwargs): pass
    def on_evaluate(self, args, state, control, **kwargs): pass
    def on_predict(self, args, state, control, **kwargs): pass
    def on_save(self, args, state, control, **kwargs): pass
    def on_log(self, args, state, control, **kwargs): pass


class CallbackHandler:
    """Calls every callback's handler of an event, in order."""

    def __init__(self, callbacks: list[TrainerCallback], **objects: Any):
        self.callbacks: list[TrainerCallback] = []
        for callback in callbacks:
            self.add(callback)
        self.objects = objects

    def add(self, callback: TrainerCallback | type) -> None:
        self.callbacks.append(callback() if isinstance(callback, type) else callback)

    def call(self, event: str, args, state: TrainerState, control: TrainerControl,
             **kwargs) -> TrainerControl:
        for callback in self.callbacks:
            result = getattr(callback, event)(args, state, control, **self.objects, **kwargs)
            if result is not None:
                control = result
        return control


class DefaultFlowCallback(TrainerCallback):
    """Hugging Face's decisions: log, evaluate and save by their strategies and
    intervals; stop (and save) at max_steps."""

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == "steps" and state.logging_steps and step % state.logging_steps == 0:
            control.should_log = True
        if args.eval_strategy == "steps" and state.eval_steps and step % state.eval_steps == 0:
            control.should_evaluate = True
        if args.save_strategy == "steps" and state.save_steps and step % state.save_steps == 0:
            control.should_save = True
        if step >= state.max_steps:
            control.should_training_stop = True
            if args.save_strategy == "steps":
                control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.logging_strategy == "epoch":
            control.should_log = True
        if args.eval_strategy == "epoch":
            control.should_evaluate = True
        if args.save_strategy == "epoch":
            control.should_save = True
        return control


def _format(logs: dict[str, Any]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else str(v)
        return str(v)
    return "{" + ", ".join(f"'{k}': {fmt(v)}" for k, v in logs.items()) + "}"


class ProgressCallback(TrainerCallback):
    """A tqdm progress bar over the optimizer steps; logs are written above it."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True,
                            desc="train")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None:
            self.bar.write(_format(logs))
        elif state.is_world_process_zero:
            print(_format(logs), flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class PrinterCallback(TrainerCallback):
    """Prints every log line (used when the progress bar is disabled)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            print(_format(logs), flush=True)


class JsonLinesLogCallback(TrainerCallback):
    """Appends every log (with its step) to ``output_dir/log_history.jsonl``."""

    filename = "log_history.jsonl"

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        record = {**logs, "step": state.global_step}
        with open(os.path.join(args.output_dir, self.filename), "a", encoding="utf-8") as file:
            file.write(json.dumps(record, default=str) + "\n")


class TensorBoardCallback(TrainerCallback):
    """Scalars of every log to TensorBoard, where Hugging Face writes them: the
    ``logging_dir`` argument of transformers 4.x when a script gives it, else the
    ``TENSORBOARD_LOGGING_DIR`` environment variable when set, otherwise
    ``output_dir/runs/<date>_<host>`` (a new folder per run, as torch's default)."""

    def __init__(self):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        self._writer_class = SummaryWriter
        self.writer = None
        self.logging_dir = os.getenv("TENSORBOARD_LOGGING_DIR") or None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.writer is not None:
            return
        # transformers 4.x's logging_dir, when a script gives it, wins over the environment
        self.logging_dir = getattr(args, "logging_dir", None) or self.logging_dir
        if self.logging_dir is None:
            run = datetime.now().strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname()
            self.logging_dir = os.path.join(args.output_dir, "runs", run)
        self.writer = self._writer_class(log_dir=os.path.expanduser(self.logging_dir))
        self.writer.add_text("args", args.to_json_string())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.writer is None:
            return
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                name = key if "/" in key else (f"eval/{key[5:]}" if key.startswith("eval_")
                                               else f"train/{key}")
                self.writer.add_scalar(name, value, state.global_step)
        self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EarlyStoppingCallback(TrainerCallback):
    """Stops training when ``metric_for_best_model`` has not improved (by more
    than ``threshold``) for ``patience`` evaluations."""

    def __init__(self, patience: int = 1, threshold: float = 0.0):
        self.patience = patience
        self.threshold = threshold
        self.best: float | None = None
        self.bad_evaluations = 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model or "loss"
        name = name if name.startswith("eval_") else f"eval_{name}"
        if metrics is None or name not in metrics:
            return
        value = metrics[name]
        better = args.greater_is_better if args.greater_is_better is not None \
            else not name.endswith("loss")
        improved = self.best is None or (value > self.best + self.threshold if better
                                         else value < self.best - self.threshold)
        if improved:
            self.best, self.bad_evaluations = value, 0
        else:
            self.bad_evaluations += 1
            if self.bad_evaluations >= self.patience:
                control.should_training_stop = True


def report_callbacks(report_to: list[str]) -> list[TrainerCallback]:
    """The integrations ``report_to`` names: "tensorboard" (an error when it is not
    installed), "all" (those installed)."""
    callbacks: list[TrainerCallback] = []
    known = {"tensorboard"}
    for name in report_to:
        if name not in known | {"all"}:
            raise ValueError(f"report_to={name!r} is not supported; valid: tensorboard, all, none")
    if "tensorboard" in report_to or "all" in report_to:
        try:
            callbacks.append(TensorBoardCallback())
        except ImportError:
            if "tensorboard" in report_to:
                raise ImportError("report_to names tensorboard, which is not installed "
                                  "(pip install tensorboard)") from None
            print("pytrainer: report_to='all' found no integration installed", file=sys.stderr)
    return callbacks
