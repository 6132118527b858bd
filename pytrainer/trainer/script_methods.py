"""The Trainer methods Hugging Face's example scripts and Trainer subclasses call
besides train/evaluate/predict: which process reports, the metrics printed and
saved as JSON, the state saved beside the model, the model card, the optimizer's
groups and learning rates, parameter and example counts, the context compute_loss
runs under. Printing and writing happen on the main process only, as there."""
from __future__ import annotations

import datetime
import json
import os
from typing import Any

import torch
from torch import nn

from pytrainer.trainer.callbacks import TrainerCallback
from pytrainer.trainer.model_io import flops_per_token
from pytrainer.trainer.model_setup import autocast_for

__all__ = ["ScriptMethods", "metrics_format", "NO_HYPERPARAMETER_SEARCH"]

NO_HYPERPARAMETER_SEARCH = ("hyperparameter search is not available in pytrainer: train one "
                            "Trainer per configuration (model_init builds each one's model)")


def metrics_format(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics for people: memory in MB, runtimes as h:mm:ss.cc, flos in GF,
    floats to 4 decimals (Hugging Face's format)."""
    out = dict(metrics)
    for key, value in out.items():
        if "_mem_" in key:
            out[key] = f"{int(value) >> 20}MB"
        elif "_runtime" in key:
            hundredths = int(abs(value - int(value)) * 100)
            out[key] = f"{datetime.timedelta(seconds=int(value))}.{hundredths:02d}"
        elif key == "total_flos":
            out[key] = f"{int(value) >> 30}GF"
        elif isinstance(value, float):
            out[key] = round(value, 4)
    return out


class ScriptMethods:
    """Mixed into the Trainer (reads its ``args``, ``state``, ``dist``, ``model``,
    ``optimizer``, ``device``, ``totals``, ``callback_handler``)."""

    #: transformers imports this helper into its Trainer's namespace too; here it
    #: can also be called on an instance
    metrics_format = staticmethod(metrics_format)

    def is_world_process_zero(self) -> bool:
        return self.dist.is_main

    def is_local_process_zero(self) -> bool:
        return self.dist.local_rank == 0

    def log_metrics(self, split: str, metrics: dict[str, Any]) -> None:
        """Prints ``metrics`` under a ``***** <split> metrics *****`` header."""
        if not self.is_world_process_zero():
            return
        print(f"***** {split} metrics *****")
        formatted = metrics_format(metrics)
        key_width = max((len(str(k)) for k in formatted), default=0)
        value_width = max((len(str(v)) for v in formatted.values()), default=0)
        for key in sorted(formatted):
            print(f"  {key: <{key_width}} = {formatted[key]:>{value_width}}")

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """``<split>_results.json`` in output_dir, merged into ``all_results.json``."""
        if not self.is_world_process_zero():
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, f"{split}_results.json"), "w",
                  encoding="utf-8") as file:
            json.dump(metrics, file, indent=4, sort_keys=True)
        if combined:
            path = os.path.join(self.args.output_dir, "all_results.json")
            everything = {}
            if os.path.exists(path):
                with open(path, encoding="utf-8") as file:
                    everything = json.load(file)
            everything.update(metrics)
            with open(path, "w", encoding="utf-8") as file:
                json.dump(everything, file, indent=4, sort_keys=True)

    def save_state(self) -> None:
        """The trainer state as ``trainer_state.json`` in output_dir."""
        if self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            self.state.save_to_json(os.path.join(self.args.output_dir, "trainer_state.json"))

    def create_model_card(self, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from: str | None = None, tasks: str | list[str] | None = None,
                          dataset_tags: Any = None, dataset: Any = None, dataset_args: Any = None,
                          **kwargs: Any) -> None:
        """A README.md in output_dir: the model's name, what it was fine-tuned from
        and on, the training hyperparameters and the last evaluation."""
        if not self.is_world_process_zero():
            return
        args = self.args
        name = model_name or os.path.basename(os.path.normpath(args.output_dir))
        lines = [f"# {name}", "", "Trained with pytrainer's Trainer"
                 + (f", fine-tuned from {finetuned_from}" if finetuned_from else "")
                 + (f" on {dataset}" if dataset else "") + "."]
        meta = {"language": language, "license": license, "tags": tags, "tasks": tasks,
                "datasets": dataset_tags}
        lines += [f"- {key}: {value}" for key, value in meta.items() if value]
        lines += ["", "## Training hyperparameters", ""] + [
            f"- {key}: {getattr(args, key)}" for key in (
                "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
                "gradient_accumulation_steps", "seed", "optim", "lr_scheduler_type",
                "warmup_steps", "num_train_epochs", "max_steps")]
        evaluations = [e for e in self.state.log_history if any(k.endswith("_loss") and
                                                                 k.startswith("eval") for k in e)]
        if evaluations:
            lines += ["", "## Evaluation", ""] + [f"- {k}: {v}" for k, v in evaluations[-1].items()]
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "README.md"), "w", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")

    # ------------------------------------------------------------ callbacks
    def add_callback(self, callback: TrainerCallback | type) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: TrainerCallback | type) -> TrainerCallback | None:
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: TrainerCallback | type) -> None:
        self.callback_handler.remove_callback(callback)

    # ------------------------------------------------------------ model and optimizer
    def get_num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """The parameters weight decay applies to (Hugging Face's rule)."""
        from pytrainer.optim.factory import get_decay_parameter_names
        return get_decay_parameter_names(model)

    def _built_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise ValueError("the Trainer has no optimizer yet: train() or "
                             "create_optimizer() builds it")
        return self.optimizer

    def get_learning_rates(self) -> list[float]:
        """The learning rate of each optimizer group."""
        return [group["lr"] for group in self._built_optimizer().param_groups]

    def get_optimizer_group(self, param: str | torch.Tensor | None = None):
        """The optimizer group holding ``param`` (the parameter, or its name in the
        model), else every group's parameters."""
        groups = self._built_optimizer().param_groups
        if isinstance(param, str):
            param = dict(self.model.named_parameters()).get(param)
        for group in groups if param is not None else ():
            if any(p is param for p in group["params"]):
                return group
        return [group["params"] for group in groups]

    def get_total_train_batch_size(self, args: Any) -> int:
        """Samples per update: the per-device batch (lowered by auto_find_batch_size)
        times the accumulation steps times the processes."""
        batch = self.state.train_batch_size or args.per_device_train_batch_size
        return batch * self.totals.gradient_accumulation_steps * args.world_size

    def num_examples(self, dataloader: torch.utils.data.DataLoader) -> int:
        """The length of the loader's dataset, else its batches times the batch size."""
        try:
            return len(dataloader.dataset)
        except (AttributeError, TypeError):
            return len(dataloader) * self.args.per_device_train_batch_size

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """Hugging Face's estimate for one batch: 6 x the parameters outside the
        embeddings x the main input's tokens (0 for models that do not count their
        parameters). total_flos sums it over the training batches; a subclass that
        overrides it is called for each micro-batch instead."""
        tensor = inputs.get(getattr(self.model, "main_input_name", "input_ids"))
        return flops_per_token(self.model) * tensor.numel() \
            if isinstance(tensor, torch.Tensor) else 0

    def _flops_override(self):
        """The subclass's floating_point_ops, or None where it is the estimate
        (which the counters compute without a call per batch)."""
        overridden = type(self).floating_point_ops is not ScriptMethods.floating_point_ops
        return self.floating_point_ops if overridden else None

    # ------------------------------------------------------------ contexts
    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        """The autocast of the run's precision (bf16 / fp16), or a null context."""
        return autocast_for(self.args, self.device)

    def compute_loss_context_manager(self):
        """What compute_loss runs under in training and evaluation steps (override
        to add a context)."""
        return self.autocast_smart_context_manager()

    # ------------------------------------------------------------ not available
    def hyperparameter_search(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(NO_HYPERPARAMETER_SEARCH)

    def end(self) -> None:
        """transformers 5's name for close(): the distributed resources released."""
        self.close()

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("push_to_hub is not available in pytrainer: upload output_dir after "
                         "training with huggingface_hub's upload_folder")
