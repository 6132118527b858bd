"""The Trainer's constructor arguments checked together, as Hugging Face checks
them, so that a mistake fails when the Trainer is built, not at the first step."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from pytrainer.trainer.data import has_length

__all__ = ["check_trainer_inputs", "check_sharded_optimizer"]


def check_trainer_inputs(args, *, model: Any, model_init: Callable | None,
                         optimizers: tuple[Any, Any], optimizer_cls_and_kwargs: Any,
                         train_dataset: Any, eval_dataset: Any, data_collator: Any,
                         compute_metrics: Callable | None) -> None:
    if model is None and model_init is None:
        raise RuntimeError("Trainer requires either a model or a model_init argument")
    if model is not None and model_init is not None:
        raise ValueError("Trainer requires either a model or a model_init argument, not both")
    if optimizer_cls_and_kwargs is not None and optimizers[0] is not None:
        raise RuntimeError("optimizers and optimizer_cls_and_kwargs cannot be used together: "
                           "give the optimizer, or its class and keyword arguments")
    if model_init is not None and (optimizers[0] is not None or optimizers[1] is not None):
        raise RuntimeError("model_init builds a new model for each train(), which an optimizer "
                           "in optimizers would not update; pass optimizer_cls_and_kwargs instead")
    if optimizer_cls_and_kwargs is not None:
        if not (isinstance(optimizer_cls_and_kwargs, tuple) and len(optimizer_cls_and_kwargs) == 2
                and callable(optimizer_cls_and_kwargs[0])
                and isinstance(optimizer_cls_and_kwargs[1], dict)):
            raise TypeError(f"optimizer_cls_and_kwargs must be (optimizer class, dict of keyword "
                            f"arguments), got {optimizer_cls_and_kwargs!r}")
    if data_collator is not None and not callable(data_collator):
        raise TypeError(f"data_collator must be callable (a function or an object with "
                        f"__call__), got {type(data_collator).__name__}")
    if args.eval_strategy != "no" and eval_dataset is None:
        raise ValueError(f"eval_strategy={args.eval_strategy!r} needs an eval_dataset")
    if train_dataset is not None and not has_length(train_dataset) and args.max_steps <= 0:
        raise ValueError("the train_dataset has no length (an IterableDataset), so the number of "
                         "training steps cannot be inferred: set max_steps")
    if args.batch_eval_metrics and compute_metrics is not None and \
            "compute_result" not in inspect.signature(compute_metrics).parameters:
        raise ValueError("batch_eval_metrics=True calls compute_metrics on each batch, with "
                         "compute_result=True on the last one: compute_metrics must take a "
                         "compute_result argument")


def check_sharded_optimizer(sharded: bool, optimizer: Any) -> None:
    if sharded and optimizer is not None:
        raise ValueError(
            "fsdp2=True shards the model when training starts, and an optimizer passed in "
            "`optimizers` would keep updating the parameters from before sharding (training "
            "nothing); let the Trainer create it (optim=..., learning_rate=..., "
            "weight_decay=...), or pass optimizer_cls_and_kwargs=(optimizer class, kwargs)")
