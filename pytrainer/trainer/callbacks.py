"""Callbacks: the events of a run, the default decisions of when to log,
evaluate and save, a progress bar, and the log sinks (console, a JSON-lines
file, TensorBoard)."""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
from datetime import datetime
from typing import Any

from pytrainer.trainer.state import ExportableState, TrainerControl, TrainerState

__all__ = ["TrainerCallback", "CallbackHandler", "DefaultFlowCallback", "ProgressCallback",
           "PrinterCallback", "JsonLinesLogCallback", "TensorBoardCallback",
           "EarlyStoppingCallback", "exports_state", "default_callbacks"]

logger = logging.getLogger("pytrainer")


class TrainerCallback:
    """Override any event; each gets ``(args, state, control, **kwargs)`` with
    Hugging Face's keyword arguments: ``model``, ``processing_class``,
    ``optimizer``, ``lr_scheduler``, ``train_dataloader``, ``eval_dataloader``,
    and ``logs`` for on_log, ``metrics`` for on_evaluate and on_predict.
    Returning a TrainerControl replaces ``control``. Subclasses of
    transformers.TrainerCallback work as they are."""

    def on_init_end(self, args, state, control, **kwargs): pass
    def on_train_begin(self, args, state, control, **kwargs): pass
    def on_train_end(self, args, state, control, **kwargs): pass
    def on_epoch_begin(self, args, state, control, **kwargs): pass
    def on_epoch_end(self, args, state, control, **kwargs): pass
    def on_step_begin(self, args, state, control, **kwargs): pass
    def on_pre_optimizer_step(self, args, state, control, **kwargs): pass
    def on_optimizer_step(self, args, state, control, **kwargs): pass
    def on_substep_end(self, args, state, control, **kwargs): pass
    def on_step_end(self, args, state, control, **kwargs): pass
    def on_evaluate(self, args, state, control, **kwargs): pass
    def on_predict(self, args, state, control, **kwargs): pass
    def on_save(self, args, state, control, **kwargs): pass
    def on_log(self, args, state, control, **kwargs): pass
    def on_prediction_step(self, args, state, control, **kwargs): pass
    def on_push_begin(self, args, state, control, **kwargs): pass


#: the control flags an event clears before the callbacks see it (Hugging Face's)
_CLEARS = {"on_train_begin": ("should_training_stop",), "on_epoch_begin": ("should_epoch_stop",),
           "on_step_begin": ("should_log", "should_evaluate", "should_save"),
           "on_evaluate": ("should_evaluate",), "on_save": ("should_save",),
           "on_log": ("should_log",)}


def exports_state(callback: Any) -> bool:
    """Whether ``callback`` keeps its state in checkpoints: pytrainer's or
    transformers' ExportableState (recognised by name: no transformers import)."""
    return any(cls.__name__ == "ExportableState" for cls in type(callback).__mro__[1:])


class CallbackHandler:
    """Calls every callback's handler of an event, in order, with the objects
    Hugging Face's handler passes (kept current by the Trainer)."""

    def __init__(self, callbacks: list[TrainerCallback], model=None, processing_class=None,
                 optimizer=None, lr_scheduler=None):
        self.callbacks: list[TrainerCallback] = []
        for callback in callbacks:
            self.add_callback(callback)
        self.model = model
        self.processing_class = processing_class
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_dataloader = None
        self.eval_dataloader = None

    def add_callback(self, callback: TrainerCallback | type) -> None:
        self.callbacks.append(callback() if isinstance(callback, type) else callback)

    def pop_callback(self, callback: TrainerCallback | type) -> TrainerCallback | None:
        for existing in self.callbacks:
            if (isinstance(existing, callback) if isinstance(callback, type)
                    else existing is callback):
                self.callbacks.remove(existing)
                return existing
        return None

    def remove_callback(self, callback: TrainerCallback | type) -> None:
        self.pop_callback(callback)

    @property
    def callback_list(self) -> str:
        return "\n".join(type(callback).__name__ for callback in self.callbacks)

    def call(self, event: str, args, state: TrainerState, control: TrainerControl,
             **kwargs) -> TrainerControl:
        for flag in _CLEARS.get(event, ()):
            setattr(control, flag, False)
        for callback in self.callbacks:
            result = getattr(callback, event)(
                args, state, control, model=self.model, processing_class=self.processing_class,
                optimizer=self.optimizer, lr_scheduler=self.lr_scheduler,
                train_dataloader=self.train_dataloader, eval_dataloader=self.eval_dataloader,
                **kwargs)
            if result is not None:
                control = result
        return control

    def export_states(self, control: TrainerControl) -> dict[str, Any]:
        """The states of the exporting callbacks and of ``control``, by class name
        (a list when several callbacks share one), as Hugging Face saves them."""
        states: dict[str, Any] = {}
        for callback in [*self.callbacks, control]:
            if not exports_state(callback):
                continue
            name = type(callback).__name__
            if name in states:
                if not isinstance(states[name], list):
                    states[name] = [states[name]]
                states[name].append(callback.state())
            else:
                states[name] = callback.state()
        return states

    def restore_states(self, saved: dict[str, Any], control: TrainerControl) -> TrainerControl:
        """Rebuilds the callbacks (and ``control``) whose class has a state in
        ``saved``, as Hugging Face does on resume; returns the control to use."""
        missing = []
        for name, states in saved.items():
            states = states if isinstance(states, list) else [states]
            matches = [c for c in [*self.callbacks, control] if type(c).__name__ == name]
            if not matches:
                missing.append(name)
            for callback, data in zip(matches, states):
                fresh = type(callback)(**data.get("args", {}))
                for key, value in data.get("attributes", {}).items():
                    setattr(fresh, key, value)
                if callback is control:
                    control = fresh
                else:
                    self.callbacks[self.callbacks.index(callback)] = fresh
        if missing:
            logger.warning("the checkpoint holds states of callbacks this Trainer does not have, "
                           "left unused: %s", ", ".join(missing))
        return control


def _event_method(event: str, payload: str | None):
    """Hugging Face's handler method of one event: ``handler.on_evaluate(args,
    state, control, metrics)`` as Trainer subclasses (run_qa's) call it."""
    def method(self, args, state, control, *value, **kwargs) -> TrainerControl:
        if payload is not None and value:
            kwargs[payload] = value[0]
        return self.call(event, args, state, control, **kwargs)
    method.__name__ = method.__qualname__ = event
    return method


_PAYLOADS = {"on_log": "logs", "on_evaluate": "metrics", "on_predict": "metrics"}
for _event in (name for name in vars(TrainerCallback) if name.startswith("on_")):
    setattr(CallbackHandler, _event, _event_method(_event, _PAYLOADS.get(_event)))


class DefaultFlowCallback(TrainerCallback):
    """Hugging Face's decisions: log, evaluate and save by their strategies and
    intervals (evaluations not before ``eval_delay``); at max_steps, stop,
    evaluate if the last step was not an evaluation step, and save."""

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        evaluates = args.eval_strategy == "steps" and bool(state.eval_steps) and \
            args.eval_delay <= step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == "steps" and state.logging_steps and \
                step % state.logging_steps == 0:
            control.should_log = True
        if evaluates and step % state.eval_steps == 0:
            control.should_evaluate = True
        if args.save_strategy == "steps" and state.save_steps and step % state.save_steps == 0:
            control.should_save = True
        if step >= state.max_steps:
            control.should_training_stop = True
            if evaluates:
                control.should_evaluate = True
            if args.save_strategy == "steps":
                control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.logging_strategy == "epoch":
            control.should_log = True
        if args.eval_strategy == "epoch" and args.eval_delay <= state.epoch:
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
    """Prints every log line (used when the progress bar is disabled); like Hugging
    Face's, it takes total_flos out of the logs (so out of train()'s metrics)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs.pop("total_flos", None)
        if state.is_local_process_zero:
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
    ``output_dir/runs/<run_name>``, or ``output_dir/runs/<date>_<host>`` without
    a run_name (a new folder per run, as torch's default)."""

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
            run = args.run_name or (datetime.now().strftime("%b%d_%H-%M-%S") + "_"
                                    + socket.gethostname())
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


class EarlyStoppingCallback(TrainerCallback, ExportableState):
    """Stops training when ``metric_for_best_model`` has not improved on the best
    so far (``state.best_metric``, by more than ``early_stopping_threshold``) for
    ``early_stopping_patience`` evaluations in a row; Hugging Face's callback,
    its patience counter kept in checkpoints."""

    def __init__(self, early_stopping_patience: int = 1,
                 early_stopping_threshold: float | None = 0.0):
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold or 0.0
        self.early_stopping_patience_counter = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if args.metric_for_best_model is None or args.eval_strategy == "no":
            raise ValueError("EarlyStoppingCallback needs evaluations and a metric: set "
                             "eval_strategy and metric_for_best_model")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model
        name = name if name.startswith("eval_") else f"eval_{name}"
        value = (metrics or {}).get(name)
        if value is None:
            logger.warning("EarlyStoppingCallback: the evaluation has no %s; early stopping "
                           "is off", name)
            return
        best = state.best_metric  # the Trainer updates it after this event
        if best is None or ((value > best if args.greater_is_better else value < best)
                            and abs(value - best) > self.early_stopping_threshold):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def state(self) -> dict[str, Any]:
        return {"args": {"early_stopping_patience": self.early_stopping_patience,
                         "early_stopping_threshold": self.early_stopping_threshold},
                "attributes": {"early_stopping_patience_counter":
                               self.early_stopping_patience_counter}}


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


def default_callbacks(args, user: list[TrainerCallback] | None) -> list[TrainerCallback]:
    """A Trainer's callbacks in Hugging Face's order: the flow, the integrations
    (and the JSON-lines log), the user's, the console."""
    return [DefaultFlowCallback(), *report_callbacks(args.report_to), JsonLinesLogCallback(),
            *(user or []), PrinterCallback() if args.disable_tqdm else ProgressCallback()]
