"""The Trainer's bookkeeping: its state (saved as trainer_state.json, in Hugging
Face's format, so either Trainer resumes the other's checkpoints), pytrainer's
own loss totals (saved beside it), the control flags callbacks set, and what
train/evaluate/predict return."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["TrainerState", "TrainerControl", "TrainingTotals", "TrainOutput", "EvalPrediction",
           "PredictionOutput", "CheckpointError", "ExportableState", "eval_prediction"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the model."""


def _read_json_object(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _json_text(value: Any) -> str:
    return json.dumps(_jsonable(value), indent=2, sort_keys=True) + "\n"


@dataclass
class TrainerState:
    """Where a run is: Hugging Face's TrainerState, field for field (a checkpoint's
    trainer_state.json reads in either Trainer)."""

    epoch: float = 0.0
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int | None = None
    save_steps: int = 500
    train_batch_size: int | None = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, Any] | None = None
    #: the states of the callbacks that export one (``state()``), by class name
    stateful_callbacks: dict[str, Any] = field(default_factory=dict)

    def to_json_string(self) -> str:
        return _json_text(dataclasses.asdict(self))

    def save_to_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json_string())

    @classmethod
    def load_from_json(cls, path: str) -> "TrainerState":
        """The state in ``path``; a CheckpointError naming the file and the problem
        when it is not a trainer state."""
        data = _read_json_object(path)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{path} has unknown trainer state fields: {', '.join(unknown)}")
        for name in ("global_step", "max_steps"):
            if name in data and (not isinstance(data[name], int) or isinstance(data[name], bool)
                                 or data[name] < 0):
                raise CheckpointError(f"{path}: {name} must be a non-negative integer, "
                                      f"got {data[name]!r}")
        if "log_history" in data and not isinstance(data["log_history"], list):
            raise CheckpointError(f"{path}: log_history must be a list")
        if data.get("stateful_callbacks") is None:
            data.pop("stateful_callbacks", None)
        return cls(**data)


@dataclass
class TrainingTotals:
    """pytrainer's loss bookkeeping, which Hugging Face's state has no field for,
    saved beside it (``pytrainer_state.json``) so a resumed run logs exactly what
    the uninterrupted run logs. A checkpoint without it (Hugging Face's) starts
    from zero, as Hugging Face's Trainer does when it resumes."""

    #: summed update losses since the last log line, and how many updates they are
    loss_since_log: float = 0.0
    steps_since_log: int = 0
    #: summed update losses of the run, and how many updates they are (train_loss)
    total_loss: float = 0.0
    loss_steps: int = 0
    consecutive_bad_steps: int = 0
    #: the accumulation steps the run trained with (auto_find_batch_size may raise them)
    gradient_accumulation_steps: int | None = None

    def save_to_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as file:
            file.write(_json_text(dataclasses.asdict(self)))

    @classmethod
    def load_from_json(cls, path: str) -> "TrainingTotals":
        data = _read_json_object(path)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{path} has unknown fields: {', '.join(unknown)}")
        return cls(**data)


def _jsonable(value: Any) -> Any:
    """Values as JSON writes them: non-finite floats become null-safe strings."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": JSON has no literal for them
    if isinstance(value, np.generic):
        return value.item()
    return value


class ExportableState:
    """A callback whose state a checkpoint keeps (Hugging Face's protocol):
    ``state()`` returns ``{"args": constructor arguments, "attributes": values}``,
    restored on resume with ``restore_callback_states_from_checkpoint``."""

    def state(self) -> dict[str, Any]:
        raise NotImplementedError("an ExportableState implements state()")

    @classmethod
    def from_state(cls, state: dict[str, Any]):
        instance = cls(**state["args"])
        for key, value in state["attributes"].items():
            setattr(instance, key, value)
        return instance


@dataclass
class TrainerControl(ExportableState):
    """Decisions for the loop, set by callbacks (Hugging Face's TrainerControl)."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        self.should_save = self.should_evaluate = self.should_log = False

    def state(self) -> dict[str, Any]:
        return {"args": dataclasses.asdict(self), "attributes": {}}


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


class _AlsoTransformers(type):
    """isinstance(x, EvalPrediction) holds for transformers' EvalPrediction too,
    which is what compute_metrics receives when transformers is installed."""

    def __instancecheck__(cls, instance) -> bool:
        return super().__instancecheck__(instance) or any(
            c.__name__ == "EvalPrediction" and c.__module__.startswith("transformers")
            for c in type(instance).__mro__)


class EvalPrediction(metaclass=_AlsoTransformers):
    """What ``compute_metrics`` receives (Hugging Face's EvalPrediction, for when
    transformers is not installed): numpy arrays of the evaluation set, with the
    inputs and per-batch losses when ``include_for_metrics`` asks for them.
    Unpacks as ``predictions, labels = eval_pred``."""

    def __init__(self, predictions: Any, label_ids: Any, inputs: Any = None, losses: Any = None):
        self.predictions = predictions
        self.label_ids = label_ids
        self.inputs = inputs
        self.losses = losses
        self.elements = (predictions, label_ids) + tuple(
            item for item in (inputs, losses) if item is not None)

    def __iter__(self):
        return iter(self.elements)

    def __getitem__(self, index: int):
        if index < 0 or index >= len(self.elements):
            raise IndexError("tuple index out of range")
        return self.elements[index]


def eval_prediction(predictions: Any, label_ids: Any, inputs: Any = None,
                    losses: Any = None) -> EvalPrediction:
    """transformers' own EvalPrediction when transformers is installed (so
    ``isinstance`` checks in metric code hold), else pytrainer's."""
    cls = EvalPrediction
    if importlib.util.find_spec("transformers") is not None:
        from transformers.trainer_utils import EvalPrediction as cls  # noqa: N813
    return cls(predictions=predictions, label_ids=label_ids, inputs=inputs, losses=losses)


class PredictionOutput(NamedTuple):
    predictions: np.ndarray | tuple
    label_ids: np.ndarray | None
    metrics: dict[str, float]
