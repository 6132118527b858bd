"""The one table of what pytrainer does with each TrainingArguments field.

Every field is of exactly one kind:

- :class:`Implemented`: pytrainer honours it. ``by`` says what reads it;
  ``pending`` marks the fields whose run-time effect the Trainer does not have yet
  (issue 14's Trainer work), so that the list of what is left is this table.
- :class:`NotAvailable`: pytrainer accepts it at its default only (so transformers'
  ``training_args.json`` files and scripts that spell the default still load); any
  other value is a ValueError that names the field and says what to use instead.
  Nothing is silently ignored.

``tests/test_field_kinds.py`` checks that this table and the dataclass list the same
fields, and diffs them against the installed transformers' TrainingArguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pytrainer._arg_checks import plain, same, show

__all__ = ["Implemented", "NotAvailable", "FIELD_KINDS", "PYTRAINER_FIELDS", "implemented_fields",
           "unavailable_fields", "pending_fields", "reject_unavailable"]


@dataclass(frozen=True)
class Implemented:
    by: str
    pending: bool = False


@dataclass(frozen=True)
class NotAvailable:
    #: completes "<field>=<value> is not available in pytrainer: ..."
    instead: str
    #: values that mean the same as the default (transformers' serialised forms of it)
    also_default: tuple[Any, ...] = ()
    #: for structured values: whether one means the default
    is_default: Callable[[Any], bool] | None = None


def _mapping_of_defaults(defaults: Mapping[str, Any]) -> Callable[[Any], bool]:
    """A dict whose every key is one of ``defaults`` with that default value (what
    transformers writes for an unset AcceleratorConfig or FSDP config)."""
    def is_default(value: Any) -> bool:
        return isinstance(value, dict) and all(
            key in defaults and same(item, defaults[key]) for key, item in value.items())
    return is_default


_HUB = "pytrainer does not upload to the Hugging Face Hub; upload output_dir after training " \
       "with huggingface_hub's upload_folder"
_TRACKIO = "pytrainer has no Trackio integration; report_to='tensorboard' logs the same scalars"
_PENDING = Implemented("Trainer", pending=True)
_DATA = Implemented("Trainer (data loading)", pending=True)

#: transformers' serialised AcceleratorConfig() (4.57 and 5.x)
_ACCELERATOR_DEFAULTS = {"split_batches": False, "dispatch_batches": None, "even_batches": True,
                         "use_seedable_sampler": True, "non_blocking": False,
                         "gradient_accumulation_kwargs": None, "use_configured_state": False}
#: what transformers 4.57 fills into fsdp_config when FSDP is off
_FSDP_CONFIG_DEFAULTS = {"min_num_params": 0, "xla": False, "xla_fsdp_v2": False,
                         "xla_fsdp_grad_ckpt": False}

FIELD_KINDS: dict[str, Implemented | NotAvailable] = {
    "output_dir": Implemented("Trainer"),
    "per_device_train_batch_size": Implemented("Trainer"),
    "num_train_epochs": Implemented("Trainer"),
    "max_steps": Implemented("Trainer"),
    "learning_rate": Implemented("optimizer"),
    "lr_scheduler_type": Implemented("scheduler"),
    "lr_scheduler_kwargs": Implemented("scheduler"),
    "warmup_steps": Implemented("scheduler"),
    "optim": Implemented("optimizer registry"),
    "optim_args": Implemented("optimizer registry"),
    "weight_decay": Implemented("optimizer"),
    "adam_beta1": Implemented("optimizer"),
    "adam_beta2": Implemented("optimizer"),
    "adam_epsilon": Implemented("optimizer"),
    "optim_target_modules": Implemented("optimizer registry (GaLore, APOLLO)"),
    "gradient_accumulation_steps": Implemented("Trainer"),
    "average_tokens_across_devices": _PENDING,
    "max_grad_norm": Implemented("Trainer"),
    "label_smoothing_factor": _PENDING,
    "bf16": Implemented("Trainer"),
    "fp16": Implemented("Trainer"),
    "bf16_full_eval": NotAvailable(
        "evaluation runs in the training precision: bf16=True evaluates under bfloat16 "
        "autocast, or cast the model with model.to(torch.bfloat16) before evaluate()"),
    "fp16_full_eval": NotAvailable(
        "evaluation runs in the training precision: fp16=True evaluates under float16 "
        "autocast, or cast the model with model.to(torch.float16) before evaluate()"),
    "tf32": _PENDING,
    "activation_checkpointing": _PENDING,
    "activation_checkpointing_kwargs": _PENDING,
    "gradient_checkpointing": Implemented("arguments (transformers 5's deprecated name of "
                                          "activation_checkpointing, mirrored)"),
    "gradient_checkpointing_kwargs": Implemented("arguments (mirrors "
                                                 "activation_checkpointing_kwargs)"),
    "torch_compile": _PENDING,
    "torch_compile_backend": _PENDING,
    "torch_compile_mode": _PENDING,
    "use_liger_kernel": NotAvailable(
        "apply Liger's kernels to the model yourself (liger_kernel.transformers."
        "apply_liger_kernel_to_<model type>) before building the Trainer"),
    "liger_kernel_config": NotAvailable(
        "apply Liger's kernels to the model yourself (liger_kernel.transformers."
        "apply_liger_kernel_to_<model type>) before building the Trainer"),
    "use_cache": _PENDING,
    "neftune_noise_alpha": _PENDING,
    "torch_empty_cache_steps": _PENDING,
    "auto_find_batch_size": _PENDING,
    "logging_strategy": Implemented("Trainer"),
    "logging_steps": Implemented("Trainer"),
    "logging_first_step": Implemented("Trainer"),
    "log_on_each_node": _PENDING,
    "logging_nan_inf_filter": _PENDING,
    "include_num_input_tokens_seen": _PENDING,
    "log_level": _PENDING,
    "log_level_replica": _PENDING,
    "disable_tqdm": Implemented("Trainer (progress bar)"),
    "report_to": Implemented("Trainer (integrations)"),
    "run_name": _PENDING,
    "project": NotAvailable(_TRACKIO),
    "trackio_space_id": NotAvailable(_TRACKIO, also_default=("trackio",)),  # 4.57's default
    "trackio_bucket_id": NotAvailable(_TRACKIO),
    "trackio_static_space_id": NotAvailable(_TRACKIO, also_default=(False,)),
    "eval_strategy": Implemented("Trainer"),
    "eval_steps": Implemented("Trainer"),
    "eval_delay": _PENDING,
    "per_device_eval_batch_size": Implemented("Trainer"),
    "prediction_loss_only": _PENDING,
    "eval_on_start": _PENDING,
    "eval_do_concat_batches": NotAvailable(
        "pytrainer concatenates evaluation outputs; batch_eval_metrics=True hands "
        "compute_metrics one batch at a time"),
    "eval_use_gather_object": NotAvailable(
        "pytrainer gathers tensors only; gather other objects in compute_metrics with "
        "torch.distributed.all_gather_object"),
    "eval_accumulation_steps": _PENDING,
    "include_for_metrics": _PENDING,
    "batch_eval_metrics": _PENDING,
    "save_only_model": _PENDING,
    "save_strategy": Implemented("Trainer"),
    "save_steps": Implemented("Trainer"),
    "save_on_each_node": _PENDING,
    "save_total_limit": Implemented("Trainer (checkpoint rotation)"),
    "save_safetensors": Implemented("Trainer (checkpoint writer)"),
    "enable_jit_checkpoint": NotAvailable(
        "pytrainer does not checkpoint on SIGTERM; its checkpoints are written atomically, so "
        "save_steps bounds the work a preemption loses"),
    "push_to_hub": NotAvailable(_HUB),
    "hub_token": NotAvailable(_HUB, also_default=("<HUB_TOKEN>",)),  # transformers' mask
    "hub_private_repo": NotAvailable(_HUB),
    "hub_model_id": NotAvailable(_HUB),
    "hub_strategy": NotAvailable(_HUB),
    "hub_always_push": NotAvailable(_HUB),
    "hub_revision": NotAvailable(_HUB),
    "load_best_model_at_end": Implemented("Trainer"),
    "metric_for_best_model": Implemented("Trainer"),
    "greater_is_better": Implemented("Trainer"),
    "ignore_data_skip": NotAvailable(
        "pytrainer resumes at the exact batch the checkpoint stopped at; to restart the data "
        "order, start a new run from the checkpoint's weights"),
    "restore_callback_states_from_checkpoint": _PENDING,
    "full_determinism": _PENDING,
    "seed": Implemented("Trainer"),
    "data_seed": Implemented("Trainer (sampler)"),
    "use_cpu": Implemented("Trainer (device)"),
    "accelerator_config": NotAvailable(
        "pytrainer does not run on Accelerate; its Trainer batches and accumulates itself",
        also_default=({},), is_default=_mapping_of_defaults(_ACCELERATOR_DEFAULTS)),
    "parallelism_config": NotAvailable(
        "use fsdp=True (FSDP2) or DDP under torchrun for data parallelism"),
    "dataloader_drop_last": Implemented("Trainer (data loading)"),
    "dataloader_num_workers": Implemented("Trainer (data loading)"),
    "dataloader_pin_memory": _DATA,
    "dataloader_persistent_workers": _DATA,
    "dataloader_prefetch_factor": _DATA,
    "dataloader_multiprocessing_context": _DATA,
    "dataloader_in_order": NotAvailable(
        "pytrainer's exact resume needs the batches in sampler order"),
    "remove_unused_columns": _DATA,
    "label_names": Implemented("Trainer"),
    "train_sampling_strategy": _DATA,
    "length_column_name": _DATA,
    "ddp_find_unused_parameters": Implemented("Trainer (DDP)"),
    "ddp_bucket_cap_mb": _PENDING,
    "ddp_broadcast_buffers": _PENDING,
    "ddp_static_graph": _PENDING,
    "ddp_backend": _PENDING,
    "ddp_timeout": Implemented("Trainer (distributed setup)"),
    "fsdp": Implemented("arguments (turns fsdp2 on)"),
    "fsdp2": Implemented("Trainer (FSDP2)"),
    "fsdp_config": NotAvailable(
        "fsdp=True shards every child module with torch's fully_shard defaults; other FSDP "
        "settings are not available",
        also_default=({},), is_default=_mapping_of_defaults(_FSDP_CONFIG_DEFAULTS)),
    "deepspeed": NotAvailable(
        "use fsdp=True (FSDP2 under torchrun) to shard parameters, gradients and optimizer "
        "states"),
    "debug": NotAvailable(
        "nonfinite_steps_limit stops a run after repeated NaN/inf updates",
        also_default=("", [], None)),
    "skip_memory_metrics": _PENDING,
    "nonfinite_steps_limit": Implemented("Trainer"),
    "do_train": Implemented("scripts"),
    "do_eval": Implemented("scripts (set when eval_strategy is not 'no')"),
    "do_predict": Implemented("scripts"),
    "resume_from_checkpoint": Implemented("scripts"),
    "local_rank": Implemented("the parser (torch.distributed.launch passes --local-rank; "
                              "pytrainer reads the rank from LOCAL_RANK)"),
}

#: pytrainer's fields that transformers 5.24 does not have, and why they exist
PYTRAINER_FIELDS: dict[str, str] = {
    "save_safetensors": (
        "transformers 4.x's switch, removed in 5 (always safetensors). pytrainer keeps it as a "
        "field, not a deprecated alias: its checkpoint writer honours False (weights saved "
        "with torch.save, read back with weights_only) and no transformers 5 field could "
        "carry that"),
    "fsdp2": "pytrainer's FSDP2 switch (issue 7); fsdp=True turns it on",
    "nonfinite_steps_limit": "pytrainer's stop after repeated NaN/inf updates (issue 8)",
}


def implemented_fields() -> list[str]:
    return [name for name, kind in FIELD_KINDS.items() if isinstance(kind, Implemented)]


def unavailable_fields() -> list[str]:
    return [name for name, kind in FIELD_KINDS.items() if isinstance(kind, NotAvailable)]


def pending_fields() -> list[str]:
    """The implemented fields whose run-time effect the Trainer does not have yet."""
    return [name for name, kind in FIELD_KINDS.items()
            if isinstance(kind, Implemented) and kind.pending]


def reject_unavailable(args: Any, defaults: Mapping[str, Any]) -> None:
    """Sets each not-available field given in a default-meaning form to its default, and
    raises a ValueError for the first one set to anything else."""
    for name, kind in FIELD_KINDS.items():
        if not isinstance(kind, NotAvailable):
            continue
        value, default = plain(getattr(args, name)), defaults[name]
        if same(value, default) or any(same(value, d) for d in kind.also_default) or (
                kind.is_default is not None and kind.is_default(value)):
            setattr(args, name, default)
            continue
        raise ValueError(f"{name}={show(value)} is not available in pytrainer: {kind.instead}")
