"""The kinds of TrainingArguments' fields (pytrainer.field_kinds), the field set
against the installed transformers', and the training_args.json files of
transformers 4.57 and 5.x."""
from __future__ import annotations

import dataclasses
import enum
import json
import typing
import warnings

import pytest

from pytrainer import TrainingArguments
from pytrainer.field_kinds import (FIELD_KINDS, PYTRAINER_FIELDS, Implemented, NotAvailable,
                                   implemented_fields, pending_fields, unavailable_fields)
from tests.hf_versions import defaults_not_in, fields_not_in

OUR_FIELDS = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]


def _their_fields(transformers) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(transformers.TrainingArguments) if f.init}


# --------------------------------------------------------------------- the table
def test_every_field_is_of_exactly_one_kind():
    implemented, unavailable = set(implemented_fields()), set(unavailable_fields())
    assert not implemented & unavailable
    neither = set(OUR_FIELDS) - implemented - unavailable
    assert not neither, f"fields of no kind: {sorted(neither)}"
    unknown = (implemented | unavailable) - set(OUR_FIELDS)
    assert not unknown, f"kinds of fields TrainingArguments does not have: {sorted(unknown)}"
    assert all(isinstance(kind, (Implemented, NotAvailable)) for kind in FIELD_KINDS.values())
    assert set(pending_fields()) <= implemented


def test_the_kinds_cover_the_issue_list():
    # issue 14's "Implement at least these" are all implemented (their effects may be pending)
    required = """remove_unused_columns train_sampling_strategy length_column_name
        dataloader_pin_memory dataloader_persistent_workers dataloader_prefetch_factor
        dataloader_drop_last activation_checkpointing activation_checkpointing_kwargs
        gradient_checkpointing gradient_checkpointing_kwargs torch_compile torch_compile_backend
        torch_compile_mode tf32 neftune_noise_alpha label_smoothing_factor
        average_tokens_across_devices prediction_loss_only eval_accumulation_steps
        batch_eval_metrics include_for_metrics eval_on_start eval_delay
        include_num_input_tokens_seen save_only_model save_on_each_node
        restore_callback_states_from_checkpoint full_determinism auto_find_batch_size
        torch_empty_cache_steps run_name log_level logging_nan_inf_filter skip_memory_metrics
        ddp_bucket_cap_mb ddp_broadcast_buffers ddp_static_graph ddp_find_unused_parameters
        ddp_backend""".split()
    assert set(required) <= set(implemented_fields())
    # and the issue's examples of the other kind are not
    for name in ("push_to_hub", "deepspeed", "trackio_space_id", "liger_kernel_config"):
        assert isinstance(FIELD_KINDS[name], NotAvailable)


# --------------------------------------------------------- against transformers
def test_fields_are_transformers_fields_plus_pytrainers_own():
    transformers = pytest.importorskip("transformers")
    theirs = set(_their_fields(transformers))
    lacking = sorted(theirs - set(OUR_FIELDS))
    assert not lacking, (f"fields of transformers {transformers.__version__} that pytrainer's "
                         f"TrainingArguments lacks: {lacking}")
    extra = set(OUR_FIELDS) - theirs
    expected = set(PYTRAINER_FIELDS) | fields_not_in(transformers)
    assert extra == expected, f"undocumented fields: {sorted(extra - expected)}"


def _declared_default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def test_declared_defaults_are_transformers_defaults():
    transformers = pytest.importorskip("transformers")
    theirs = _their_fields(transformers)
    newer = defaults_not_in(transformers)
    different = {}
    for f in dataclasses.fields(TrainingArguments):
        if f.name in theirs and f.name not in newer:
            mine, their = _declared_default(f), _declared_default(theirs[f.name])
            their = their.value if isinstance(their, enum.Enum) else their
            if mine != their or type(mine) is not type(their):
                different[f.name] = (mine, their)
    assert not different, different


def _shape(hint, choices=None):
    """A type as the set of what it accepts: Literals and enums as their values, unions
    as their members, ``Enum | str`` as the enum's values (transformers validates the
    string against them)."""
    origin = typing.get_origin(hint)
    if choices is not None:
        return ("choices", frozenset(str(c) for c in choices))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return ("choices", frozenset(m.value for m in hint))
    if origin is typing.Literal:
        return ("choices", frozenset(str(a) for a in typing.get_args(hint)))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        members = {_shape(m) for m in typing.get_args(hint)}
        enums = {m for m in members if m[0] == "choices"}
        if enums and ("type", "str") in members and len(enums) == 1:  # Enum | str
            members.discard(("type", "str"))
        return ("union", frozenset(members)) if len(members) > 1 else members.pop()
    if origin is list:
        return ("list", _shape(typing.get_args(hint)[0]) if typing.get_args(hint) else "any")
    if origin is dict or hint is dict:
        return ("type", "dict")
    return ("type", getattr(hint, "__name__", str(hint)))


#: where pytrainer's annotation cannot be transformers' (its classes are not imported)
TYPE_DIFFERENCES = {
    "parallelism_config": "accelerate's ParallelismConfig; Any here (not available)",
    "debug": "list[DebugOption] there, list[str] here (not available)",
}


def test_field_types_accept_what_transformers_accepts():
    transformers = pytest.importorskip("transformers")
    theirs = _their_fields(transformers)
    their_hints = typing.get_type_hints(transformers.TrainingArguments)
    our_hints = typing.get_type_hints(TrainingArguments)
    newer = defaults_not_in(transformers)
    different = {}
    for f in dataclasses.fields(TrainingArguments):
        if f.name not in theirs or f.name in TYPE_DIFFERENCES or f.name in newer:
            continue
        mine = _shape(our_hints[f.name], f.metadata.get("choices"))
        their = _shape(their_hints[f.name], theirs[f.name].metadata.get("choices"))
        if mine[0] == "choices" and their in (mine, ("type", "str"),
                                                ("union", frozenset({("type", "str"),
                                                                     ("type", "NoneType")}))):
            continue  # the same values, or a string narrowed to the values that mean something
        if mine != their and not (mine[0] == "choices" and f.name in ("optim",)):
            different[f.name] = (mine, their)
    assert not different, different


def test_optimizer_names_are_transformers_names_plus_pytrainers():
    transformers = pytest.importorskip("transformers")
    from transformers.training_args import OptimizerNames
    from pytrainer.optim.registry import optimizer_names
    theirs = {name.value for name in OptimizerNames}
    assert theirs <= set(optimizer_names()), sorted(theirs - set(optimizer_names()))
    assert set(optimizer_names()) - theirs == {"adamw_custom_fused", "adamw_hf",
                                                "adamw_apex_fused"}


# ------------------------------------------------------------- not available
#: a value other than the default for each not-available field
NON_DEFAULT = {
    "bf16_full_eval": True, "fp16_full_eval": True, "use_liger_kernel": True,
    "liger_kernel_config": {"rope": True}, "project": "my-project",
    "trackio_space_id": "me/space", "trackio_bucket_id": "bucket",
    "trackio_static_space_id": "me/static", "eval_do_concat_batches": False,
    "eval_use_gather_object": True, "enable_jit_checkpoint": True, "push_to_hub": True,
    "hub_token": "hf_secret", "hub_private_repo": True, "hub_model_id": "me/model",
    "hub_strategy": "end", "hub_always_push": True, "hub_revision": "main",
    "ignore_data_skip": True, "accelerator_config": {"split_batches": True},
    "parallelism_config": {"dp_shard_size": 2}, "dataloader_in_order": False,
    "fsdp_config": {"min_num_params": 1000}, "deepspeed": "ds_config.json",
    "debug": "underflow_overflow",
}


def test_every_unavailable_field_has_a_non_default_example():
    assert set(NON_DEFAULT) == set(unavailable_fields())


@pytest.mark.parametrize("name", unavailable_fields())
def test_unavailable_field_set_to_a_non_default_value_is_an_error(name):
    with pytest.raises(ValueError) as error:
        TrainingArguments(**{name: NON_DEFAULT[name]})
    message = str(error.value)
    assert message.startswith(f"{name}=") and "is not available in pytrainer: " in message
    assert FIELD_KINDS[name].instead in message and "\n" not in message


@pytest.mark.parametrize("name,value", [
    ("hub_token", "<HUB_TOKEN>"),  # transformers masks the token in its JSON
    ("trackio_space_id", "trackio"),  # transformers 4.57's default
    ("trackio_static_space_id", False),
    ("debug", []), ("debug", None),
    ("accelerator_config", {}),
    ("accelerator_config", {"split_batches": False, "dispatch_batches": None,
                            "even_batches": True, "use_seedable_sampler": True,
                            "non_blocking": False, "gradient_accumulation_kwargs": None}),
    ("fsdp_config", {"min_num_params": 0, "xla": False, "xla_fsdp_v2": False,
                     "xla_fsdp_grad_ckpt": False}),
    ("hub_strategy", "every_save"),
])
def test_serialised_forms_of_the_default_are_accepted_and_stored_as_it(name, value):
    args = TrainingArguments(**{name: value})
    assert getattr(args, name) == getattr(TrainingArguments(), name)


def test_not_available_enum_values_are_compared_by_value():
    class Hub(str, enum.Enum):  # as transformers.trainer_utils.HubStrategy
        EVERY_SAVE = "every_save"
        END = "end"

    assert TrainingArguments(hub_strategy=Hub.EVERY_SAVE).hub_strategy == "every_save"
    with pytest.raises(ValueError, match="hub_strategy='end' is not available"):
        TrainingArguments(hub_strategy=Hub.END)


# ------------------------------------------------------- training_args.json files
#: the training_args.json transformers 4.57 writes for TrainingArguments("out", ...) with
#: the values below changed from the defaults: every 4.57 field, as its to_dict gives
#: them (written out from the 4.57 source; 4.57 is not installable next to 5.24)
TRANSFORMERS_4_57_JSON = {
    "output_dir": "out", "overwrite_output_dir": True, "do_train": True, "do_eval": True,
    "do_predict": False, "eval_strategy": "steps", "prediction_loss_only": False,
    "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
    "per_gpu_train_batch_size": None, "per_gpu_eval_batch_size": None,
    "gradient_accumulation_steps": 2, "eval_accumulation_steps": None, "eval_delay": 0,
    "torch_empty_cache_steps": None, "learning_rate": 3e-05, "weight_decay": 0.01,
    "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-08, "max_grad_norm": 1.0,
    "num_train_epochs": 3.0, "max_steps": -1, "lr_scheduler_type": "cosine",
    "lr_scheduler_kwargs": {}, "warmup_ratio": 0.1, "warmup_steps": 0, "log_level": "passive",
    "log_level_replica": "warning", "log_on_each_node": True,
    "logging_dir": "out/runs/Nov30_12-00-00_host", "logging_strategy": "steps",
    "logging_first_step": False, "logging_steps": 50, "logging_nan_inf_filter": True,
    "save_strategy": "steps", "save_steps": 500, "save_total_limit": 2,
    "save_safetensors": False, "save_on_each_node": False, "save_only_model": False,
    "restore_callback_states_from_checkpoint": False, "no_cuda": False, "use_cpu": False,
    "use_mps_device": False, "seed": 42, "data_seed": None, "jit_mode_eval": False,
    "bf16": False, "fp16": False, "fp16_opt_level": "O1", "half_precision_backend": "auto",
    "bf16_full_eval": False, "fp16_full_eval": False, "tf32": None, "local_rank": 0,
    "ddp_backend": None, "tpu_num_cores": None, "tpu_metrics_debug": False, "debug": [],
    "dataloader_drop_last": False, "eval_steps": 50, "dataloader_num_workers": 0,
    "dataloader_prefetch_factor": None, "past_index": -1, "run_name": "out",
    "disable_tqdm": False, "remove_unused_columns": True, "label_names": None,
    "load_best_model_at_end": False, "metric_for_best_model": None, "greater_is_better": None,
    "ignore_data_skip": False, "fsdp": [], "fsdp_min_num_params": 0,
    "fsdp_config": {"min_num_params": 0, "xla": False, "xla_fsdp_v2": False,
                    "xla_fsdp_grad_ckpt": False},
    "fsdp_transformer_layer_cls_to_wrap": None,
    "accelerator_config": {"split_batches": False, "dispatch_batches": None,
                           "even_batches": True, "use_seedable_sampler": True,
                           "non_blocking": False, "gradient_accumulation_kwargs": None},
    "parallelism_config": None, "deepspeed": None, "label_smoothing_factor": 0.0,
    "optim": "adamw_torch_fused", "optim_args": None, "adafactor": False,
    "group_by_length": True, "length_column_name": "length", "report_to": ["tensorboard"],
    "project": "huggingface", "trackio_space_id": "trackio",
    "ddp_find_unused_parameters": None, "ddp_bucket_cap_mb": None,
    "ddp_broadcast_buffers": None, "dataloader_pin_memory": True,
    "dataloader_persistent_workers": False, "skip_memory_metrics": True,
    "use_legacy_prediction_loop": False, "push_to_hub": False, "resume_from_checkpoint": None,
    "hub_model_id": None, "hub_strategy": "every_save", "hub_token": "<HUB_TOKEN>",
    "hub_private_repo": None, "hub_always_push": False, "hub_revision": None,
    "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False},
    "include_inputs_for_metrics": False, "include_for_metrics": [],
    "eval_do_concat_batches": True, "fp16_backend": "auto", "push_to_hub_model_id": None,
    "push_to_hub_organization": None, "push_to_hub_token": "<PUSH_TO_HUB_TOKEN>",
    "mp_parameters": "", "auto_find_batch_size": False, "full_determinism": False,
    "torchdynamo": None, "ray_scope": "last", "ddp_timeout": 1800, "torch_compile": False,
    "torch_compile_backend": None, "torch_compile_mode": None,
    "include_tokens_per_second": False, "include_num_input_tokens_seen": False,
    "neftune_noise_alpha": None, "optim_target_modules": None, "batch_eval_metrics": False,
    "eval_on_start": False, "use_liger_kernel": False, "liger_kernel_config": None,
    "eval_use_gather_object": False, "average_tokens_across_devices": True,
}


def test_reads_a_transformers_4_57_training_args_json():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = TrainingArguments.from_json_string(json.dumps(TRANSFORMERS_4_57_JSON))
    # current fields read as they are
    assert (args.output_dir, args.eval_strategy, args.eval_steps, args.learning_rate) == (
        "out", "steps", 50, 3e-05)
    assert (args.lr_scheduler_type, args.save_total_limit, args.save_safetensors) == (
        "cosine", 2, False)
    assert args.report_to == ["tensorboard"] and args.include_num_input_tokens_seen == "no"
    # transformers 4.x names mapped to their successors
    assert args.warmup_steps == 0.1 and args.train_sampling_strategy == "group_by_length"
    assert args.activation_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    # and kept for their readers
    assert args.overwrite_output_dir is True and args.logging_dir == "out/runs/Nov30_12-00-00_host"
    # the arguments written back carry current names only
    assert set(args.to_dict()) == set(OUR_FIELDS)


def test_reads_the_installed_transformers_training_args_json():
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.TrainingArguments(
            output_dir="out", eval_strategy="steps", eval_steps=10, learning_rate=1e-4,
            warmup_steps=0.1, train_sampling_strategy="sequential", report_to="none",
            include_for_metrics=["loss"], gradient_checkpointing=True, use_cpu=True)
        data = json.loads(theirs.to_json_string())
        ours = TrainingArguments.from_dict(data)  # no allow_extra_keys: every key is known
    assert (ours.eval_strategy, ours.eval_steps, ours.learning_rate, ours.warmup_steps) == (
        "steps", 10, 1e-4, 0.1)
    assert (ours.train_sampling_strategy, ours.include_for_metrics) == ("sequential", ["loss"])
    assert ours.activation_checkpointing is ours.gradient_checkpointing is True
    mine = ours.to_dict()
    same = {key for key in data if key in mine and data[key] == mine[key]}
    different = set(data) - same
    # the values that differ are those pytrainer stores differently on purpose: the
    # not-available fields' defaults in transformers' serialised forms
    assert different <= {"accelerator_config", "debug", "hub_token"}, {
        k: (data[k], mine[k]) for k in different}


def test_to_dict_of_transformers_4_names_carries_current_names_only():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = TrainingArguments(evaluation_strategy="epoch", no_cuda=True, warmup_ratio=0.2,
                                 overwrite_output_dir=True, logging_dir="runs")
    assert list(args.to_dict()) == OUR_FIELDS
    assert TrainingArguments.from_dict(args.to_dict()) == args
