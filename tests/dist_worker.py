"""A training run for the distributed tests: ``python tests/dist_worker.py CONFIG OUT``,
under torchrun or alone. CONFIG is JSON; rank 0 writes OUT (JSON) with the final
parameters, the log history and the evaluation metrics."""
from __future__ import annotations

import json
import sys

import torch

from pytrainer import Trainer, TrainingArguments
from pytrainer.trainer import PaddingCollator, TrainerCallback
from tests.trainer_fixtures import RegressionDataset, RegressionModel, TokenDataset, TokenModel


class StopAt(TrainerCallback):
    """Ends the run after step `step` (and its checkpoint): an interrupted run."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def main(config_path: str, out_path: str) -> None:
    config = json.loads(open(config_path).read())
    if config["model"] == "token":
        train, model, collator = TokenDataset(48), TokenModel(), PaddingCollator()
        evaluation = TokenDataset(13, seed=5)
    else:
        train, model, collator = RegressionDataset(64), RegressionModel(), None
        evaluation = RegressionDataset(13, seed=5)
    fields = dict(output_dir=config["output_dir"], use_cpu=True, report_to="none",
                  disable_tqdm=True, logging_steps=2, save_strategy="no", seed=7,
                  per_device_eval_batch_size=4)
    fields.update(config.get("args", {}))
    args = TrainingArguments(**fields)
    optimizers = (None, None)
    if config.get("sgd"):
        optimizers = (torch.optim.SGD(model.parameters(), lr=fields.get("learning_rate", 0.05)),
                      None)
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=evaluation,
                      data_collator=collator, optimizers=optimizers)
    if config.get("stop_at"):
        trainer.add_callback(StopAt(config["stop_at"]))
    trainer.train(resume_from_checkpoint=config.get("resume"))
    metrics = trainer.evaluate()
    state = trainer.model.state_dict()
    if trainer.args.fsdp2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(trainer.model,
                                     options=StateDictOptions(full_state_dict=True))
    if trainer.dist.is_main:
        volatile = ("train_runtime", "train_samples_per_second", "train_steps_per_second",
                    "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
        history = [{k: v for k, v in e.items() if k not in volatile}
                   for e in trainer.state.log_history]
        with open(out_path, "w") as file:
            json.dump({"params": {k: v.float().flatten().tolist() for k, v in state.items()},
                       "history": history, "eval_loss": metrics["eval_loss"],
                       "world_size": trainer.dist.world_size,
                       "global_step": trainer.state.global_step}, file)
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
