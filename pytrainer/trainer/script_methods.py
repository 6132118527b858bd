"""The Trainer methods Hugging Face's example scripts call around training:
which process reports, the metrics printed and saved as JSON, the state saved
beside the model, the model card. Printing and writing happen on the main
process only, as there."""
from __future__ import annotations

import datetime
import json
import os
from typing import Any

__all__ = ["ScriptMethods", "metrics_format"]


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
    """Mixed into the Trainer (reads its ``args``, ``state``, ``dist``)."""

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

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("push_to_hub is not available in pytrainer: upload output_dir after "
                         "training with huggingface_hub's upload_folder")
