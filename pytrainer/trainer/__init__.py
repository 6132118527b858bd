"""The training loop (pytrainer.Trainer) and its parts."""
from pytrainer.trainer.callbacks import EarlyStoppingCallback, TrainerCallback
from pytrainer.trainer.collation import PaddingCollator, default_data_collator
from pytrainer.trainer.state import (CheckpointError, EvalPrediction, PredictionOutput,
                                     TrainerControl, TrainerState, TrainOutput)
from pytrainer.trainer.trainer import NonFiniteLossError, Trainer

__all__ = ["Trainer", "TrainerCallback", "EarlyStoppingCallback", "TrainerState",
           "TrainerControl", "TrainOutput", "EvalPrediction", "PredictionOutput",
           "CheckpointError", "NonFiniteLossError", "PaddingCollator", "default_data_collator"]
