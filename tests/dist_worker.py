"""A training run for the distributed tests: ``python tests/dist_worker.py CONFIG OUT``,
under torchrun or alone. CONFIG is JSON; rank 0 writes OUT (JSON) with the final
parameters, the log history and the evaluation metrics (every rank writes
OUT.<rank> with ``report_every_rank``: what its process saw)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time

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


class RaiseAt(TrainerCallback):
    """Rank `rank` fails after step `step`, noting the time in `marker`."""

    def __init__(self, rank, step, marker):
        self.rank, self.step, self.marker = rank, step, marker

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and int(os.environ.get("RANK", 0)) == self.rank:
            with open(self.marker, "w") as file:
                file.write(repr(time.time()))
            raise RuntimeError(f"rank {self.rank} fails after step {self.step}")


class NanAt(TrainerCallback):
    """The loss of update `step` is NaN on rank `rank` (None: every rank)."""

    def __init__(self, model, step, rank=None):
        self.step, self.rank, self.now = step, rank, False
        model.register_forward_hook(self.poison)

    def poison(self, module, inputs, outputs):
        if self.now and module.training:
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs

    def on_step_begin(self, args, state, control, **kwargs):
        rank = int(os.environ.get("RANK", 0))
        self.now = state.global_step + 1 == self.step and self.rank in (None, rank)


def gpt2():
    """A tiny transformers GPT-2, its output layer tied to its embedding."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    return GPT2LMHeadModel(config)


class CountingTokenModel(TokenModel):
    """Notes the target count each forward gets (num_items_in_batch)."""

    def __init__(self):
        super().__init__()
        self.counts = []

    def forward(self, input_ids, labels=None, num_items_in_batch=None):
        if self.training and num_items_in_batch is not None:
            self.counts.append(int(num_items_in_batch))
        return super().forward(input_ids, labels, num_items_in_batch)


class SamplesSeen:
    """compute_metrics for batch_eval_metrics: counts the samples it is given."""

    def __init__(self):
        self.count = 0

    def __call__(self, prediction, compute_result):
        self.count += len(prediction.label_ids)
        if not compute_result:
            return {}
        count, self.count = self.count, 0
        return {"samples_seen": count}


def ddp_settings(wrapped):
    """The DistributedDataParallel options the Trainer passed (None without DDP)."""
    if not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return None
    return {"bucket_bytes_cap": wrapped.bucket_bytes_cap,
            "broadcast_buffers": wrapped.broadcast_buffers,
            "static_graph": wrapped.static_graph,
            "find_unused_parameters": wrapped.find_unused_parameters,
            "backend": torch.distributed.get_backend()}


def average_reduce_scatter_sums():
    """Makes this process's reduce-scatters return the sum where asked for the mean
    (ReduceOp.AVG), as torch 2.8's gloo backend does: a run must not depend on AVG."""
    import torch.distributed as dist

    def summing(collective):
        def call(*args, **kwargs):
            if kwargs.get("op") == dist.ReduceOp.AVG:
                kwargs["op"] = dist.ReduceOp.SUM
            return collective(*args, **kwargs)
        return call

    # FSDP2 calls the one its release has
    for name in ("reduce_scatter_tensor", "reduce_scatter_single"):
        if hasattr(dist, name):
            setattr(dist, name, summing(getattr(dist, name)))


def setting(name):
    """(train set, model, collator, evaluation set) of a model name."""
    if name == "token":
        return TokenDataset(48), TokenModel(), PaddingCollator(), TokenDataset(13, seed=5)
    if name == "counting-token":
        return TokenDataset(48), CountingTokenModel(), PaddingCollator(), TokenDataset(13, seed=5)
    if name == "gpt2":  # 9 evaluation samples, batches of 4: 2 batches on rank 0, 1 on rank 1
        return TokenDataset(48), gpt2(), PaddingCollator(), TokenDataset(9, seed=5)
    return RegressionDataset(64), RegressionModel(), None, RegressionDataset(13, seed=5)


def main(config_path: str, out_path: str) -> None:
    config = json.loads(open(config_path).read())
    rank = int(os.environ.get("RANK", 0))
    output_dir = config["output_dir"]
    if config.get("node_dirs"):  # simulated nodes, each with a filesystem of its own
        output_dir = os.path.join(output_dir, f"node{rank}")
    fields = dict(output_dir=output_dir, use_cpu=True, report_to="none",
                  disable_tqdm=True, logging_steps=2, save_strategy="no", seed=7,
                  per_device_eval_batch_size=4)
    fields.update(config.get("args", {}))
    args = TrainingArguments(**fields)
    with args.main_process_first(desc="building the data"):  # as Hugging Face's scripts do
        train, model, collator, evaluation = setting(config["model"])
    if config.get("average_sums"):
        average_reduce_scatter_sums()
    optimizers, cls_and_kwargs = (None, None), None
    if config.get("sgd"):
        optimizers = (torch.optim.SGD(model.parameters(), lr=fields.get("learning_rate", 0.05)),
                      None)
    if config.get("sgd_class"):  # built by the Trainer (after FSDP2 shards the model)
        cls_and_kwargs = (torch.optim.SGD, {"lr": fields.get("learning_rate", 0.05)})
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=evaluation,
                      data_collator=collator, optimizers=optimizers,
                      optimizer_cls_and_kwargs=cls_and_kwargs,
                      compute_metrics=SamplesSeen() if args.batch_eval_metrics else None)
    if config.get("stop_at"):
        trainer.add_callback(StopAt(config["stop_at"]))
    if config.get("raise_at"):
        trainer.add_callback(RaiseAt(**config["raise_at"]))
    if config.get("nan_at"):
        trainer.add_callback(NanAt(model, **config["nan_at"]))
    trainer.train(resume_from_checkpoint=config.get("resume"))
    ddp = ddp_settings(trainer.model_wrapped)
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
                       "eval_samples_seen": metrics.get("eval_samples_seen"),
                       "world_size": trainer.dist.world_size,
                       "global_step": trainer.state.global_step,
                       "tied": config["model"] == "gpt2" and
                       model.lm_head.weight is model.transformer.wte.weight}, file)
    if config.get("report_every_rank"):
        with open(f"{out_path}.{rank}", "w") as file:
            json.dump({"ddp": ddp, "counts": getattr(model, "counts", None),
                       "log_level": logging.getLogger("pytrainer").level,
                       "checkpoints": sorted(p for p in os.listdir(output_dir)
                                             if p.startswith("checkpoint-"))}, file)
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
