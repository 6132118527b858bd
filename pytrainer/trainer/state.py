"""The Trainer's bookkeeping: its state (saved as trainer_state.json), the
control flags callbacks set, and what train/evaluate/predict return."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["TrainerState", "TrainerControl", "TrainOutput", "EvalPrediction",
           "PredictionOutput", "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the model."""


@dataclass
class TrainerState:
    """Where a run is, with Hugging Face's field names; saved in every checkpoint."""

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
    # pytrainer: the loss bookkeeping, saved so a resumed run logs exactly what
    # the uninterrupted run logs
    loss_since_log: float = 0.0
    steps_since_log: int = 0
    total_loss: float = 0.0
    consecutive_bad_steps: int = 0

    def to_json_string(self) -> str:
        return json.dumps(_jsonable(dataclasses.asdict(self)), indent=2, sort_keys=True) + "\n"

    def save_to_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json_string())

    @classmethod
    def load_from_json(cls, path: str) -> "TrainerState":
        """The state in ``path``; a CheckpointError naming the file and the problem
        when it is not a trainer state."""
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise CheckpointError(f"{path} has unknown trainer state fields: {', '.join(unknown)}")
        for name in ("global_step", "max_steps"):
            if name in data and (not isinstance(data[name], int) or isinstance(data[name], bool)
                                 or data[name] < 0):
                raise CheckpointError(f"{path}: {name} must be a non-negative integer, "
                                      f"got {data[name]!r}")
        if "log_history" in data and not isinstance(data["log_history"], list):
            raise CheckpointError(f"{path}: log_history must be a list")
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


@dataclass
class TrainerControl:
    """Decisions for the loop, set by callbacks (Hugging Face's TrainerControl)."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_step(self) -> None:
        self.should_save = self.should_evaluate = self.should_log = False


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


class EvalPrediction(NamedTuple):
    """What ``compute_metrics`` receives: numpy arrays of the whole evaluation set."""
    predictions: np.ndarray | tuple
    label_ids: np.ndarray | None


class PredictionOutput(NamedTuple):
    predictions: np.ndarray | tuple
    label_ids: np.ndarray | None
    metrics: dict[str, float]
