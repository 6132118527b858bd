"""The ``pytrainer`` command (also ``python -m pytrainer``).

``pytrainer train`` trains a small byte-level GPT with the Trainer. With no flags
it uses text every Python installation carries (the standard library's source)
and needs no download; ``--train_file`` trains on your text. Every
TrainingArguments field is a flag (Hugging Face's names), plus the model's and
the data's; ``--config FILE`` (JSON or YAML) gives any of them, flags win.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field

__all__ = ["main", "DataArguments", "DEMO_DEFAULTS"]


@dataclass
class DataArguments:
    train_file: str | None = field(default=None, metadata={"help": (
        "A text file to train on (read as bytes); default: the Python standard library's "
        "source files.")})
    max_train_bytes: int = field(default=2_000_000, metadata={"help": "Bytes of text to read."})
    eval_fraction: float = field(default=0.05, metadata={"help": (
        "The held-out share of the text (its end), for evaluation and prediction.")})
    sample_length: int = field(default=200, metadata={"help": (
        "Bytes the trained model writes at the end as a sample (0: none).")})

    def __post_init__(self):
        if self.max_train_bytes < 4096:
            raise ValueError(f"max_train_bytes must be at least 4096, got {self.max_train_bytes}")
        if not 0.0 < self.eval_fraction < 0.5:
            raise ValueError(f"eval_fraction must be in (0, 0.5), got {self.eval_fraction}")
        if self.sample_length < 0:
            raise ValueError(f"sample_length must be >= 0, got {self.sample_length}")


#: What the default run changes from TrainingArguments' defaults (all flags override).
DEMO_DEFAULTS = dict(
    optim="adamw_custom_fused", learning_rate=2e-3, weight_decay=0.1, warmup_steps=50,
    lr_scheduler_type="cosine", max_steps=1000, per_device_train_batch_size=16,
    per_device_eval_batch_size=32, logging_steps=50, eval_strategy="steps", eval_steps=250,
    save_steps=250, save_total_limit=2,
)

_RUN_FLAGS = ("do_train", "do_eval", "do_predict")


def _given(argv: list[str], name: str) -> bool:
    return any(token.split("=", 1)[0].lstrip("-").replace("-", "_") in (name, f"no_{name}")
               for token in argv if token.startswith("--"))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the epilog's lines (the optimizer list) kept as written."""


def _setup_error(args) -> str | None:
    """What would stop the run after training has started, found before it starts."""
    try:  # the first checkpoint is written there: find out now whether it can be
        os.makedirs(args.output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.output_dir):
            pass
    except OSError as error:
        return f"--output_dir {args.output_dir}: cannot write there ({error.strerror or error})"
    resume = args.resume_from_checkpoint
    if resume and not os.path.isdir(resume):
        return f"--resume_from_checkpoint {resume}: no such checkpoint folder"
    return None


def train_command(argv: list[str]) -> int:
    from pytrainer import ArgumentParser, Trainer, TrainingArguments
    from pytrainer.examples.byte_gpt import ByteGPT, ByteGPTConfig
    from pytrainer.examples.corpus import ByteBlocks, read_corpus, split
    from pytrainer.optim.registry import availability_report
    from pytrainer.trainer import checkpoint as ckpt
    from pytrainer.utils.plot import plot_losses
    from pytrainer.utils.seed import set_seed

    parser = ArgumentParser([TrainingArguments, ByteGPTConfig, DataArguments],
                            prog="pytrainer train", description=__doc__.split("\n\n")[1],
                            epilog=availability_report(), formatter_class=_HelpFormatter)
    parser.set_defaults(**DEMO_DEFAULTS)
    args, model_config, data_args = parser.parse_args_into_dataclasses(argv)
    if not any(_given(argv, name) for name in _RUN_FLAGS):
        args.do_train = args.do_eval = True  # none given: train and evaluate
    problem = _setup_error(args)
    if problem:
        parser.error(problem)

    set_seed(args.seed)  # before the model is built: its initial weights follow the seed
    try:
        train_text, eval_text = split(read_corpus(data_args.train_file, data_args.max_train_bytes),
                                      data_args.eval_fraction)
    except ValueError as error:
        parser.error(str(error))
    train_set = ByteBlocks(train_text, model_config.block_size)
    eval_set = ByteBlocks(eval_text, model_config.block_size)
    if len(eval_set) == 0:
        parser.error("the held-out text is shorter than one block; raise eval_fraction or "
                     "max_train_bytes, or lower block_size")
    model = ByteGPT(model_config)
    try:
        trainer = Trainer(model, args, train_dataset=train_set if args.do_train else None,
                          eval_dataset=eval_set)
    except (ValueError, ImportError) as error:  # arguments the Trainer refuses (report_to, ...)
        parser.error(" ".join(str(error).split()))
    main_process = trainer.dist.is_main
    if main_process:
        n_params = sum(p.numel() for p in model.parameters())
        source = data_args.train_file or "the Python standard library's source"
        print(f"pytrainer train: ByteGPT of {n_params / 1e6:.2f} M parameters on {len(train_text):,} "
              f"bytes of {source} ({len(eval_text):,} held out), device {trainer.device}, "
              f"optimizer {args.optim}", flush=True)

    metrics: dict[str, float] = {}
    if args.do_train:
        output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        metrics.update(output.metrics)
        trainer.save_model()
    else:
        weights = args.resume_from_checkpoint or args.output_dir
        if os.path.isfile(os.path.join(weights, ckpt.WEIGHTS_SAFETENSORS)) or \
                os.path.isfile(os.path.join(weights, ckpt.WEIGHTS_TORCH)):
            ckpt.load_model_weights(model, weights)
            if main_process:
                print(f"pytrainer train: evaluating the model saved in {weights}", flush=True)
        elif main_process:
            print("pytrainer train: no trained model found; evaluating the initial weights",
                  flush=True)
    if args.do_eval:
        metrics.update(trainer.evaluate())
    if args.do_predict:
        metrics.update(trainer.predict(eval_set).metrics)
    if "eval_loss" in metrics:
        metrics["eval_bits_per_byte"] = metrics["eval_loss"] / math.log(2)

    if main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        path = os.path.join(args.output_dir, "metrics.json")
        with open(path, "w", encoding="utf-8") as file:
            json.dump(metrics, file, indent=2, sort_keys=True)
        plot = plot_losses(trainer.state.log_history, os.path.join(args.output_dir, "loss.png"),
                           title=f"ByteGPT, {args.optim}")
        print("\nfinal metrics:")
        for key in sorted(metrics):
            value = metrics[key]
            print(f"  {key:<28} {value:.4f}" if isinstance(value, float) else f"  {key:<28} {value}")
        print(f"\nwrote {path}" + (f" and {plot}" if plot else " (no plot: matplotlib is not "
                                                        "installed)"))
    if data_args.sample_length and args.do_train:
        # on every rank: each forward of a sharded (FSDP2) model is a collective
        import torch
        sample = model.generate(b"def ", data_args.sample_length,
                                generator=torch.Generator().manual_seed(args.seed))
        if main_process:
            print("\nsample:\n" + sample.decode("utf-8", errors="replace"))
    trainer.close()
    return 0


USAGE = """usage: pytrainer <command> [flags]

commands:
  train    train a byte-level GPT with pytrainer's Trainer (pytrainer train --help)
  env      print the versions, the kernels' build and the GPUs, for a bug report
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_command(rest)
    if command == "env":
        from pytrainer.env_report import main as env_command
        return env_command(rest)
    print(f"pytrainer: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
