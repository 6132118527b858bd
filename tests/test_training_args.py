"""TrainingArguments: defaults, the evaluation_strategy alias, validation,
step ratios, JSON round trips and agreement with transformers' defaults."""
from __future__ import annotations

import copy
import dataclasses
import enum
import inspect
import json
import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytrainer import TrainingArguments
from pytrainer._build_info import release
from pytrainer.field_kinds import PYTRAINER_FIELDS
from pytrainer.optim import registry
from pytrainer.training_args import (INTERVAL_STRATEGIES, SAVE_STRATEGIES, SCHEDULER_TYPES,
                                     StepIntervals, resolve_interval)
from tests.hf_versions import defaults_not_in, fields_not_in

#: Every field and its default, after __post_init__ (transformers 5.24's, in its order, and
#: pytrainer's own). A new field must be added here.
DEFAULTS = {
    "output_dir": "trainer_output",
    "per_device_train_batch_size": 8,
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "learning_rate": 5e-05,
    "lr_scheduler_type": "linear",
    "lr_scheduler_kwargs": None,
    "warmup_steps": 0,
    # transformers' rule: the fused AdamW from torch 2.8 on
    "optim": "adamw_torch_fused" if release(torch.__version__) >= (2, 8) else "adamw_torch",
    "optim_args": None,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-08,
    "optim_target_modules": None,
    "gradient_accumulation_steps": 1,
    "average_tokens_across_devices": True,
    "max_grad_norm": 1.0,
    "label_smoothing_factor": 0.0,
    "bf16": False,
    "fp16": False,
    "bf16_full_eval": False,
    "fp16_full_eval": False,
    "tf32": None,
    "activation_checkpointing": False,
    "activation_checkpointing_kwargs": None,
    "gradient_checkpointing": False,
    "gradient_checkpointing_kwargs": None,
    "torch_compile": False,
    "torch_compile_backend": None,
    "torch_compile_mode": None,
    "use_liger_kernel": False,
    "liger_kernel_config": None,
    "use_cache": False,
    "neftune_noise_alpha": None,
    "torch_empty_cache_steps": None,
    "auto_find_batch_size": False,
    "logging_strategy": "steps",
    "logging_steps": 500,
    "logging_first_step": False,
    "log_on_each_node": True,
    "logging_nan_inf_filter": True,
    "include_num_input_tokens_seen": "no",
    "log_level": "passive",
    "log_level_replica": "warning",
    "disable_tqdm": False,
    "report_to": [],
    "run_name": None,
    "project": "huggingface",
    "trackio_space_id": None,
    "trackio_bucket_id": None,
    "trackio_static_space_id": None,
    "eval_strategy": "no",
    "eval_steps": None,
    "eval_delay": 0.0,
    "per_device_eval_batch_size": 8,
    "prediction_loss_only": False,
    "eval_on_start": False,
    "eval_do_concat_batches": True,
    "eval_use_gather_object": False,
    "eval_accumulation_steps": None,
    "include_for_metrics": [],
    "batch_eval_metrics": False,
    "save_only_model": False,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_on_each_node": False,
    "save_total_limit": None,
    "save_safetensors": True,
    "enable_jit_checkpoint": False,
    "push_to_hub": False,
    "hub_token": None,
    "hub_private_repo": None,
    "hub_model_id": None,
    "hub_strategy": "every_save",
    "hub_always_push": False,
    "hub_revision": None,
    "load_best_model_at_end": False,
    "metric_for_best_model": None,
    "greater_is_better": None,
    "ignore_data_skip": False,
    "restore_callback_states_from_checkpoint": False,
    "full_determinism": False,
    "seed": 42,
    "data_seed": None,
    "use_cpu": False,
    "accelerator_config": None,
    "parallelism_config": None,
    "dataloader_drop_last": False,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": True,
    "dataloader_persistent_workers": False,
    "dataloader_prefetch_factor": None,
    "dataloader_multiprocessing_context": None,
    "dataloader_in_order": True,
    "remove_unused_columns": True,
    "label_names": None,
    "train_sampling_strategy": "random",
    "length_column_name": "length",
    "ddp_find_unused_parameters": None,
    "ddp_bucket_cap_mb": None,
    "ddp_broadcast_buffers": None,
    "ddp_static_graph": None,
    "ddp_backend": None,
    "ddp_timeout": 1800,
    "fsdp": None,
    "fsdp2": False,
    "fsdp_config": None,
    "deepspeed": None,
    "debug": "",
    "skip_memory_metrics": True,
    "nonfinite_steps_limit": 10,
    "do_train": False,
    "do_eval": False,
    "do_predict": False,
    "resume_from_checkpoint": None,
    "local_rank": -1,
}


# ------------------------------------------------------------------- defaults
def test_every_field_has_its_documented_default():
    args = TrainingArguments()
    assert [f.name for f in dataclasses.fields(args)] == list(DEFAULTS)
    for name, expected in DEFAULTS.items():
        value = getattr(args, name)
        assert value == expected and type(value) is type(expected), (name, value, expected)


def test_every_field_has_help_text():
    for f in dataclasses.fields(TrainingArguments):
        assert f.metadata.get("help"), f.name


def test_report_to_field_default_is_none_string():
    # The declared default is Hugging Face 5's "none"; __post_init__ makes it [].
    (report_to,) = [f for f in dataclasses.fields(TrainingArguments) if f.name == "report_to"]
    assert report_to.default == "none"


def test_batch_size_properties():
    args = TrainingArguments(per_device_train_batch_size=4, per_device_eval_batch_size=16)
    assert (args.train_batch_size, args.eval_batch_size) == (4, 16)


def test_output_dir_expands_user_and_accepts_paths(tmp_path):
    assert TrainingArguments("~/runs/a").output_dir == os.path.expanduser("~/runs/a")
    assert TrainingArguments(output_dir=tmp_path).output_dir == str(tmp_path)
    assert TrainingArguments(output_dir=None).output_dir == "trainer_output"


def test_fields_after_output_dir_are_keyword_only():
    assert TrainingArguments("out").output_dir == "out"
    with pytest.raises(TypeError):
        TrainingArguments("out", True)


# ---------------------------------------------------------------------- alias
def test_eval_strategy_is_the_canonical_field():
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert "eval_strategy" in names and "evaluation_strategy" not in names
    assert "evaluation_strategy" in inspect.signature(TrainingArguments).parameters


@pytest.mark.parametrize("keyword", ["eval_strategy", "evaluation_strategy"])
def test_alias_in_the_constructor(keyword):
    args = TrainingArguments(**{keyword: "epoch"})
    assert args.eval_strategy == args.evaluation_strategy == "epoch"
    assert args.to_dict()["eval_strategy"] == "epoch"
    assert "evaluation_strategy" not in args.to_dict()


def test_alias_both_names_agreeing_is_accepted():
    args = TrainingArguments(eval_strategy="steps", evaluation_strategy="steps")
    assert args.eval_strategy == "steps"


@pytest.mark.parametrize("eval_strategy", ["no", "epoch"])
def test_alias_both_names_disagreeing_is_an_error(eval_strategy):
    # "no" too: an explicit eval_strategy="no" is not mistaken for the default.
    with pytest.raises(ValueError, match="evaluation_strategy='steps'") as error:
        TrainingArguments(eval_strategy=eval_strategy, evaluation_strategy="steps")
    assert "eval_strategy=" in str(error.value)


def test_alias_attribute_reads_and_writes_the_same_value():
    args = TrainingArguments()
    args.evaluation_strategy = "steps"
    assert args.eval_strategy == "steps"
    args.eval_strategy = "epoch"
    assert args.evaluation_strategy == "epoch"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_alias_survives_replace_and_subclassing():
    args = dataclasses.replace(TrainingArguments(), eval_strategy="epoch")
    assert args.evaluation_strategy == "epoch"

    @dataclasses.dataclass
    class MyArgs(TrainingArguments):  # the way scripts extend Hugging Face's class
        extra: int = 1

        def __post_init__(self):
            super().__post_init__()

    mine = MyArgs(eval_strategy="epoch", extra=3)
    assert (mine.evaluation_strategy, mine.extra) == ("epoch", 3)
    # the transformers 4.x names reach a subclass's generated __init__ too
    mine = MyArgs(evaluation_strategy="steps", warmup_ratio=0.1, extra=4)
    assert (mine.eval_strategy, mine.warmup_steps, mine.extra) == ("steps", 0.1, 4)


def test_enum_values_are_accepted_as_their_values():
    class Strategy(str, enum.Enum):  # as transformers.IntervalStrategy
        STEPS = "steps"

    args = TrainingArguments(eval_strategy=Strategy.STEPS, logging_strategy=Strategy.STEPS)
    assert type(args.eval_strategy) is str and args.eval_strategy == "steps"
    assert TrainingArguments(evaluation_strategy=Strategy.STEPS).eval_strategy == "steps"


# ------------------------------------------------------------ derived defaults
@pytest.mark.parametrize("strategy", ["steps", "epoch"])
def test_do_eval_becomes_true_when_evaluating(strategy):
    assert TrainingArguments(eval_strategy=strategy).do_eval is True
    assert TrainingArguments(eval_strategy=strategy, do_eval=False).do_eval is True  # as HF


@pytest.mark.parametrize("given", [False, True])
def test_do_eval_stays_as_given_without_evaluation(given):
    assert TrainingArguments(do_eval=given).do_eval is given


def test_eval_steps_defaults_to_logging_steps():
    assert TrainingArguments(eval_strategy="steps", logging_steps=50).eval_steps == 50
    assert TrainingArguments(eval_strategy="steps", logging_steps=0.1).eval_steps == 0.1
    assert TrainingArguments(eval_strategy="steps", eval_steps=20).eval_steps == 20
    # eval_steps=0 means "not set", as in Hugging Face
    assert TrainingArguments(eval_strategy="steps", eval_steps=0, logging_steps=7).eval_steps == 7
    assert TrainingArguments(eval_strategy="epoch").eval_steps is None


def test_best_model_metric_defaults():
    args = TrainingArguments(load_best_model_at_end=True, eval_strategy="epoch",
                             save_strategy="epoch")
    assert (args.metric_for_best_model, args.greater_is_better) == ("loss", False)
    args = TrainingArguments(metric_for_best_model="accuracy")
    assert args.greater_is_better is True
    args = TrainingArguments(metric_for_best_model="eval_loss", greater_is_better=True)
    assert args.greater_is_better is True
    args = TrainingArguments(lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="epoch")
    assert args.metric_for_best_model == "loss"


def test_report_to_forms():
    assert TrainingArguments(report_to=None).report_to == []
    assert TrainingArguments(report_to="none").report_to == []
    assert TrainingArguments(report_to="wandb").report_to == ["wandb"]
    assert TrainingArguments(report_to=("wandb", "tensorboard")).report_to == ["wandb",
                                                                              "tensorboard"]
    assert TrainingArguments(report_to="all").report_to == ["all"]


def test_lr_scheduler_kwargs_accepts_a_json_string():
    args = TrainingArguments(lr_scheduler_kwargs='{"num_cycles": 2, "power": 1.5}')
    assert args.lr_scheduler_kwargs == {"num_cycles": 2, "power": 1.5}
    assert TrainingArguments(lr_scheduler_kwargs={"a": (1, 2)}).lr_scheduler_kwargs == {
        "a": [1, 2]}  # stored in its JSON form


def test_max_grad_norm_none_disables_clipping():
    assert TrainingArguments(max_grad_norm=None).max_grad_norm == 0.0


def test_integer_valued_floats_are_stored_as_floats():
    args = TrainingArguments(learning_rate=1, num_train_epochs=2)
    assert type(args.learning_rate) is float and type(args.num_train_epochs) is float


# ----------------------------------------------------------------- validation
# (kwargs, the field the message must name, a fragment of the offending value)
INVALID = [
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size", "0"),
    ({"per_device_train_batch_size": -2}, "per_device_train_batch_size", "-2"),
    ({"per_device_train_batch_size": 8.0}, "per_device_train_batch_size", "8.0"),
    ({"per_device_eval_batch_size": 0}, "per_device_eval_batch_size", "0"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps", "0"),
    ({"learning_rate": 0.0}, "learning_rate", "0"),
    ({"learning_rate": -1e-3}, "learning_rate", "-0.001"),
    ({"learning_rate": float("nan")}, "learning_rate", "nan"),
    ({"learning_rate": "5e-5"}, "learning_rate", "'5e-5'"),
    ({"weight_decay": -0.1}, "weight_decay", "-0.1"),
    ({"eval_strategy": "strps"}, "eval_strategy", "'strps'"),
    ({"evaluation_strategy": "strps"}, "eval_strategy", "'strps'"),
    ({"logging_strategy": "epochs"}, "logging_strategy", "'epochs'"),
    ({"save_strategy": "bst"}, "save_strategy", "'bst'"),
    ({"lr_scheduler_type": "cosin"}, "lr_scheduler_type", "'cosin'"),
    ({"optim": "adamw_troch"}, "optim", "'adamw_troch'"),
    ({"optim": 3}, "optim", "3"),
    ({"optim_args": "a=1,b"}, "optim_args", "'b'"),
    ({"fp16": True, "bf16": True}, "fp16", "True"),
    ({"fp16": True, "bf16": True}, "bf16", "True"),
    ({"load_best_model_at_end": True, "eval_strategy": "epoch", "save_strategy": "steps"},
     "save_strategy", "'steps'"),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "epoch"},
     "eval_strategy", "'steps'"),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 200,
      "save_steps": 300}, "save_steps", "300"),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 0.1,
      "save_steps": 300}, "eval_steps", "0.1"),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 0.2,
      "save_steps": 0.3}, "save_steps", "0.3"),
    ({"load_best_model_at_end": True}, "eval_strategy", "'no'"),
    ({"eval_strategy": "steps", "logging_steps": 0, "logging_strategy": "no"}, "eval_steps",
     "None"),
    ({"logging_strategy": "steps", "logging_steps": 0}, "logging_steps", "0"),
    ({"save_strategy": "steps", "save_steps": 0}, "save_steps", "0"),
    ({"logging_steps": 2.5}, "logging_steps", "2.5"),
    ({"save_steps": -1}, "save_steps", "-1"),
    ({"eval_steps": 10.5}, "eval_steps", "10.5"),
    ({"warmup_steps": 3.5}, "warmup_steps", "3.5"),
    ({"warmup_steps": -1}, "warmup_steps", "-1"),
    ({"warmup_ratio": 1.5}, "warmup_ratio", "1.5"),
    ({"adam_beta1": 1.0}, "adam_beta1", "1.0"),
    ({"adam_beta2": -0.1}, "adam_beta2", "-0.1"),
    ({"adam_epsilon": -1e-8}, "adam_epsilon", "-1e-08"),
    ({"max_grad_norm": -1.0}, "max_grad_norm", "-1.0"),
    ({"num_train_epochs": -1}, "num_train_epochs", "-1"),
    ({"max_steps": -2}, "max_steps", "-2"),
    ({"max_steps": 10.5}, "max_steps", "10.5"),
    ({"save_total_limit": -1}, "save_total_limit", "-1"),
    ({"dataloader_num_workers": -1}, "dataloader_num_workers", "-1"),
    ({"seed": -1}, "seed", "-1"),
    ({"seed": 2**32}, "seed", str(2**32)),
    ({"data_seed": "7"}, "data_seed", "'7'"),
    ({"do_train": "false"}, "do_train", "'false'"),
    ({"do_eval": 1}, "do_eval", "1"),
    ({"bf16": None}, "bf16", "None"),
    ({"label_names": "labels"}, "label_names", "'labels'"),
    ({"report_to": ["none", "wandb"]}, "report_to", "'none'"),
    ({"report_to": 3}, "report_to", "3"),
    ({"lr_scheduler_kwargs": "{bad"}, "lr_scheduler_kwargs", "'{bad'"),
    ({"lr_scheduler_kwargs": "[1]"}, "lr_scheduler_kwargs", "'[1]'"),
    ({"lr_scheduler_kwargs": {"f": object}}, "lr_scheduler_kwargs", "object"),
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "eval_strategy", "'no'"),
    ({"save_strategy": "best"}, "eval_strategy", "'no'"),
    ({"save_strategy": "best", "eval_strategy": "epoch"}, "metric_for_best_model", "None"),
    ({"output_dir": ""}, "output_dir", "''"),
    ({"output_dir": 3}, "output_dir", "3"),
    ({"metric_for_best_model": 3}, "metric_for_best_model", "3"),
]


@pytest.mark.parametrize("kwargs,name,value", INVALID,
                         ids=[f"{name}-{i}" for i, (_, name, _) in enumerate(INVALID)])
def test_invalid_values_raise_value_error_naming_field_and_value(kwargs, name, value):
    with pytest.raises(ValueError) as error:
        TrainingArguments(**kwargs)
    message = str(error.value)
    assert name in message and value in message, message
    assert "\n" not in message


@pytest.mark.parametrize("field,typo,valid,suggestion", [
    ("eval_strategy", "strps", INTERVAL_STRATEGIES, "steps"),
    ("logging_strategy", "epochs", INTERVAL_STRATEGIES, "epoch"),
    ("save_strategy", "bst", SAVE_STRATEGIES, "best"),
    ("lr_scheduler_type", "cosin", SCHEDULER_TYPES, "cosine"),
    ("optim", "adamw_troch", None, "adamw_torch"),
])
def test_unknown_names_list_the_valid_ones_and_suggest_the_closest(field, typo, valid,
                                                                   suggestion):
    with pytest.raises(ValueError) as error:
        TrainingArguments(**{field: typo})
    message = str(error.value)
    for name in valid or registry.optimizer_names():
        assert name in message
    assert f"Did you mean {suggestion!r}?" in message


def test_every_optimizer_of_the_issue_is_a_valid_name():
    for name in ("adamw_hf", "adamw_torch", "adamw_torch_fused", "adamw_anyprecision",
                 "adafactor", "adamw_custom_fused"):
        assert TrainingArguments(optim=name).optim == name
    if registry.optimizer_status("adamw_apex_fused") is None:  # apex installed
        assert TrainingArguments(optim="adamw_apex_fused").optim == "adamw_apex_fused"
    else:  # a known name, refused at construction with what to install and to use instead
        with pytest.raises(ValueError, match=r"optim='adamw_apex_fused' needs apex.*"
                                             r"adamw_custom_fused"):
            TrainingArguments(optim="adamw_apex_fused")


def test_an_optimizer_registered_later_is_valid(monkeypatch):
    spec = registry.OptimizerSpec("my_sgd", lambda groups, config: None, "test")
    monkeypatch.setitem(registry._REGISTRY, "my_sgd", spec)
    assert TrainingArguments(optim="my_sgd").optim == "my_sgd"


def test_load_best_model_accepts_matching_multiples():
    args = TrainingArguments(load_best_model_at_end=True, eval_strategy="steps", eval_steps=100,
                             save_steps=300)
    assert args.save_steps == 300
    # ratios compared without float noise: 0.3 is a multiple of 0.1
    TrainingArguments(load_best_model_at_end=True, eval_strategy="steps", eval_steps=0.1,
                      save_steps=0.3)
    # "best" saves follow evaluation, so strategies need not match
    TrainingArguments(load_best_model_at_end=True, eval_strategy="steps", eval_steps=7,
                      save_strategy="best")


def test_warmup_ratio_is_transformers_4_name_of_a_warmup_steps_ratio():
    # warmup_ratio left transformers in 5; warmup_steps below 1 is the ratio now. Both
    # given and disagreeing is an error (it used to warn and let warmup_steps win).
    assert TrainingArguments(warmup_ratio=0.5).warmup_steps == 0.5
    assert TrainingArguments(warmup_ratio=0.5, warmup_steps=0.5).warmup_steps == 0.5
    assert TrainingArguments(warmup_ratio=0.0, warmup_steps=3).warmup_steps == 3
    with pytest.raises(ValueError, match=r"warmup_steps=3 and warmup_ratio=0\.5"):
        TrainingArguments(warmup_ratio=0.5, warmup_steps=3)
    with pytest.raises(ValueError, match="warmup_ratio=1.0 .* no warmup_steps form"):
        TrainingArguments(warmup_ratio=1.0)


# --------------------------------------------------------------- step ratios
def test_step_values_above_one_are_stored_as_ints_and_ratios_as_floats():
    args = TrainingArguments(logging_steps=100.0, save_steps=0.25, eval_steps=1.0,
                             warmup_steps=0.1)
    assert (args.logging_steps, type(args.logging_steps)) == (100, int)
    assert (args.save_steps, type(args.save_steps)) == (0.25, float)
    assert (args.eval_steps, type(args.eval_steps)) == (1, int)
    assert args.warmup_steps == 0.1


def test_resolve_steps_turns_ratios_into_counts_rounding_up():
    args = TrainingArguments(logging_steps=0.15, eval_strategy="steps", eval_steps=0.5,
                             save_steps=40)
    assert args.resolve_steps(7) == StepIntervals(logging_steps=2, eval_steps=4, save_steps=40)
    assert args.resolve_steps(1000) == StepIntervals(150, 500, 40)
    assert TrainingArguments().resolve_steps(10) == StepIntervals(500, None, 500)


def test_resolve_interval_edges():
    assert resolve_interval(None, 10) is None
    assert resolve_interval(0, 10) == 0
    assert resolve_interval(0.001, 10) == 1  # a ratio never resolves to "never"
    assert resolve_interval(0.5, 3) == 2
    assert resolve_interval(12, 3) == 12


@pytest.mark.parametrize("kwargs,total,expected", [
    ({}, 100, 0),
    ({"warmup_ratio": 0.1}, 95, 10),
    ({"warmup_steps": 7}, 95, 7),
    ({"warmup_steps": 0.25}, 10, 3),  # transformers 5 form: a ratio in warmup_steps
])
def test_get_warmup_steps(kwargs, total, expected):
    assert TrainingArguments(**kwargs).get_warmup_steps(total) == expected


# -------------------------------------------------------------- serialisation
def _customised() -> TrainingArguments:
    return TrainingArguments(
        output_dir="/tmp/run", do_train=True, evaluation_strategy="steps", eval_steps=0.1,
        logging_steps=0.05, save_steps=0.2, load_best_model_at_end=True,
        per_device_train_batch_size=4, gradient_accumulation_steps=3, learning_rate=3e-4,
        weight_decay=0.01, lr_scheduler_type="cosine", lr_scheduler_kwargs={"num_cycles": 0.5},
        warmup_ratio=0.05, report_to=["tensorboard"], label_names=["labels"], data_seed=7,
        optim="adamw_hf", optim_args=None, bf16=True, save_total_limit=2, max_steps=1000)


@pytest.mark.parametrize("make", [TrainingArguments, _customised])
def test_json_round_trip_rebuilds_an_equal_object(make, tmp_path):
    args = make()
    text = args.to_json_string()
    assert json.loads(text) == args.to_dict()
    assert TrainingArguments.from_json_string(text) == args
    path = tmp_path / "training_args.json"
    path.write_text(text)
    assert TrainingArguments.from_json_file(path) == args
    assert TrainingArguments.from_dict(args.to_dict()) == args


def test_to_dict_is_canonical_and_a_copy():
    args = _customised()
    data = args.to_dict()
    assert list(data) == list(DEFAULTS)
    assert data["eval_strategy"] == "steps" and "evaluation_strategy" not in data
    data["report_to"].append("wandb")
    data["lr_scheduler_kwargs"]["x"] = 1
    assert args.report_to == ["tensorboard"] and "x" not in args.lr_scheduler_kwargs


def test_from_dict_accepts_the_alias_key():
    assert TrainingArguments.from_dict({"evaluation_strategy": "epoch"}).eval_strategy == "epoch"


def test_from_dict_rejects_unknown_keys_with_a_suggestion():
    with pytest.raises(ValueError, match=r"'lerning_rate' Did you mean 'learning_rate'\?"):
        TrainingArguments.from_dict({"lerning_rate": 0.1})
    args = TrainingArguments.from_dict({"learning_rate": 0.1, "not_a_field": "x"},
                                       allow_extra_keys=True)
    assert args.learning_rate == 0.1
    with pytest.raises(ValueError, match="mapping"):
        TrainingArguments.from_dict([("learning_rate", 0.1)])


def test_from_json_string_rejects_invalid_json():
    with pytest.raises(ValueError, match="not valid"):
        TrainingArguments.from_json_string("{")


def test_post_init_is_idempotent_and_copies_are_equal():
    args = _customised()
    assert TrainingArguments(**args.to_dict()) == args
    assert copy.deepcopy(args) == args


@settings(max_examples=60, deadline=None)
@given(
    eval_strategy=st.sampled_from(INTERVAL_STRATEGIES),
    logging_steps=st.one_of(st.integers(1, 10_000), st.floats(0.001, 0.999)),
    eval_steps=st.one_of(st.none(), st.integers(1, 10_000), st.floats(0.001, 0.999)),
    lr=st.floats(1e-7, 1.0),
    epochs=st.floats(0.0, 100.0),
    scheduler=st.sampled_from([s for s in SCHEDULER_TYPES if s != "reduce_lr_on_plateau"]),
    report_to=st.lists(st.sampled_from(["wandb", "tensorboard", "mlflow"]), max_size=2),
    data_seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_json_round_trip_property(eval_strategy, logging_steps, eval_steps, lr, epochs,
                                  scheduler, report_to, data_seed):
    args = TrainingArguments(eval_strategy=eval_strategy, logging_steps=logging_steps,
                             eval_steps=eval_steps, learning_rate=lr, num_train_epochs=epochs,
                             lr_scheduler_type=scheduler, report_to=report_to,
                             data_seed=data_seed)
    assert TrainingArguments.from_json_string(args.to_json_string()) == args


# ------------------------------------------------------ agreement with transformers
#: Fields whose value after __post_init__ deliberately differs from transformers' (their
#: declared defaults are the same).
DELIBERATE_DIFFERENCES = {
    # transformers builds an AcceleratorConfig; pytrainer does not run on Accelerate
    # (an AcceleratorConfig's serialised defaults are accepted and stored as None).
    "accelerator_config": "not available in pytrainer; stays None",
    # transformers turns "" into a list of DebugOption; the field is not available in
    # pytrainer, which keeps the declared default.
    "debug": "not available in pytrainer; stays ''",
}
#: pytrainer fields that recent transformers no longer has (see field_kinds).
ONLY_IN_PYTRAINER = PYTRAINER_FIELDS


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value


def test_defaults_match_transformers_except_deliberate_differences():
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.TrainingArguments()
    ours = TrainingArguments()
    their_fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    allowed = dict(DELIBERATE_DIFFERENCES, **defaults_not_in(transformers))

    only_ours = {f.name for f in dataclasses.fields(ours)} - their_fields
    assert only_ours <= set(ONLY_IN_PYTRAINER) | fields_not_in(transformers), \
        f"undocumented fields: {only_ours}"
    differences = {}
    for f in dataclasses.fields(ours):
        if f.name not in their_fields:
            continue
        mine, their = getattr(ours, f.name), _plain(getattr(theirs, f.name))
        if mine != their:
            differences[f.name] = (mine, their)
    unexpected = {name: values for name, values in differences.items() if name not in allowed}
    assert not unexpected, f"defaults differing from transformers {transformers.__version__}: " \
                           f"{unexpected}"


def test_reads_a_transformers_json_with_allow_extra_keys():
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.TrainingArguments(eval_strategy="steps", eval_steps=10,
                                                learning_rate=1e-4)
    ours = TrainingArguments.from_dict(json.loads(theirs.to_json_string()),
                                       allow_extra_keys=True)
    assert (ours.eval_strategy, ours.eval_steps, ours.learning_rate) == ("steps", 10, 1e-4)
