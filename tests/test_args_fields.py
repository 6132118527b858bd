"""The fields of transformers 5 whose effect lies in the arguments themselves: their
checks, the values they derive, and how the command line reads them. (The run-time
effects of the other implemented fields are tested with the Trainer.)"""
from __future__ import annotations

import dataclasses
import logging
import math

import pytest

from pytrainer import ArgumentParser, TrainingArguments


def fails(**kwargs) -> str:
    with pytest.raises(ValueError) as error:
        TrainingArguments(**kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def parse(*argv: str) -> TrainingArguments:
    (args,) = ArgumentParser(TrainingArguments).parse_args_into_dataclasses(list(argv))
    return args


def exits(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        ArgumentParser(TrainingArguments, prog="t").parse_args_into_dataclasses(list(argv))
    assert exit_.value.code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    return line


BOOL_FIELDS = [f.name for f in dataclasses.fields(TrainingArguments) if f.type == "bool"]
OPTIONAL_BOOL_FIELDS = [f.name for f in dataclasses.fields(TrainingArguments)
                        if f.type == "bool | None"]


@pytest.mark.parametrize("name", BOOL_FIELDS + OPTIONAL_BOOL_FIELDS)
def test_bool_fields_refuse_strings_and_numbers(name):
    for value in ("false", 1):
        assert f"{name}=" in fails(**{name: value}) or f"{name} must be" in fails(**{name: value})


# ------------------------------------------------------------------ sharding
@pytest.mark.parametrize("fsdp,fsdp2,expected", [
    (None, False, (None, False)), (False, False, (None, False)), ("", False, (None, False)),
    ([], False, (None, False)),  # transformers 4.57's JSON form of "off"
    (True, False, (True, True)), ("full_shard", False, (True, True)),
    ("full_shard auto_wrap", False, (True, True)), (["full_shard"], False, (True, True)),
    (None, True, (True, True)),
])
def test_fsdp_turns_fsdp2_on(fsdp, fsdp2, expected):
    args = TrainingArguments(fsdp=fsdp, fsdp2=fsdp2)
    assert (args.fsdp, args.fsdp2) == expected
    assert TrainingArguments.from_dict(args.to_dict()) == args


@pytest.mark.parametrize("value,fragment", [
    ("offload", "fsdp option 'offload' is not available in pytrainer"),
    ("full_shard offload", "'offload'"), ("shard_grad_op", "'shard_grad_op'"),
    ("hybrid_shard", "valid options: full_shard, auto_wrap"), (3, "fsdp must be"),
])
def test_fsdp_options_pytrainer_does_not_have_are_errors(value, fragment):
    assert fragment in fails(fsdp=value)


def test_fsdp_flag_bare_or_with_options(capsys):
    assert parse("--fsdp").fsdp2 is True
    assert parse("--fsdp", "full_shard auto_wrap").fsdp is True
    assert parse().fsdp is None
    assert "'offload'" in exits(capsys, "--fsdp", "offload")


# -------------------------------------------------------------- compilation
def test_a_compile_backend_or_mode_turns_compilation_on():
    assert TrainingArguments().torch_compile_backend is None
    args = TrainingArguments(torch_compile=True)
    assert (args.torch_compile, args.torch_compile_backend) == (True, "inductor")
    args = TrainingArguments(torch_compile_mode="max-autotune")
    assert (args.torch_compile, args.torch_compile_backend) == (True, "inductor")
    args = TrainingArguments(torch_compile_backend="aot_eager")
    assert (args.torch_compile, args.torch_compile_backend) == (True, "aot_eager")
    assert TrainingArguments.from_dict(args.to_dict()) == args
    assert "torch_compile_mode='fast' is not valid" in fails(torch_compile_mode="fast")
    assert "torch_compile_backend must be a non-empty string" in fails(torch_compile_backend="")


# ---------------------------------------------------------------- precision
def test_tf32_is_true_false_or_none(capsys):
    assert TrainingArguments().tf32 is None
    assert TrainingArguments(tf32=False).tf32 is False
    assert "tf32 must be True, False or None, got 'yes'" in fails(tf32="yes")
    assert (parse("--tf32").tf32, parse("--tf32", "false").tf32, parse("--tf32", "1").tf32) == (
        True, False, True)
    assert "invalid boolean value 'maybe'" in exits(capsys, "--tf32", "maybe")


# -------------------------------------------------------------- data loading
def test_pin_memory_is_off_on_the_cpu():
    assert TrainingArguments().dataloader_pin_memory is True
    assert TrainingArguments(use_cpu=True).dataloader_pin_memory is False
    assert TrainingArguments(dataloader_pin_memory=False).dataloader_pin_memory is False


@pytest.mark.parametrize("kwargs", [
    {"dataloader_prefetch_factor": 4}, {"dataloader_persistent_workers": True},
    {"dataloader_multiprocessing_context": "spawn"},
])
def test_worker_options_need_workers(kwargs):
    (name,) = kwargs
    message = fails(**kwargs)
    assert name in message and "needs dataloader_num_workers > 0" in message
    args = TrainingArguments(dataloader_num_workers=2, **kwargs)
    assert getattr(args, name) == kwargs[name]


@pytest.mark.parametrize("kwargs,fragment", [
    ({"dataloader_prefetch_factor": 0, "dataloader_num_workers": 1},
     "dataloader_prefetch_factor must be a positive integer"),
    ({"dataloader_multiprocessing_context": "thread", "dataloader_num_workers": 1},
     "dataloader_multiprocessing_context='thread' is not valid; valid values: fork, spawn, "
     "forkserver"),
    ({"train_sampling_strategy": "batch_rebalance"},
     "train_sampling_strategy='batch_rebalance' is not available in pytrainer: use "
     "'group_by_length'"),
    ({"train_sampling_strategy": "sequentail"}, "Did you mean 'sequential'?"),
    ({"length_column_name": ""}, "length_column_name must be a non-empty string"),
    ({"remove_unused_columns": None}, "remove_unused_columns must be True or False"),
])
def test_data_loading_values(kwargs, fragment):
    assert fragment in fails(**kwargs)


def test_sampling_strategies_from_the_command_line(capsys):
    assert parse("--train_sampling_strategy", "group_by_length").train_sampling_strategy == \
        "group_by_length"
    assert "valid values: random, sequential, group_by_length" in exits(
        capsys, "--train_sampling_strategy", "shuffled")


# ----------------------------------------------------------------- evaluation
def test_eval_delay():
    assert TrainingArguments(eval_strategy="steps", eval_delay=100).eval_delay == 100.0
    assert TrainingArguments(eval_strategy="epoch", eval_delay=1.5).eval_delay == 1.5
    assert "eval_delay must be >= 0, got -1.0" in fails(eval_strategy="steps", eval_delay=-1)
    assert "eval_delay must be finite" in fails(eval_strategy="steps", eval_delay=math.inf)
    assert ("eval_delay=10.0 delays evaluations, but eval_strategy='no' runs none"
            in fails(eval_delay=10))


@pytest.mark.parametrize("name", ["eval_accumulation_steps", "torch_empty_cache_steps",
                                  "ddp_bucket_cap_mb"])
def test_optional_counts(name):
    assert getattr(TrainingArguments(), name) is None
    assert getattr(TrainingArguments(**{name: 3}), name) == 3
    assert f"{name} must be a positive integer, got 0" in fails(**{name: 0})
    assert f"{name} must be an integer or None, got 2.5" in fails(**{name: 2.5})


def test_include_for_metrics():
    assert TrainingArguments(include_for_metrics=("inputs", "loss")).include_for_metrics == [
        "inputs", "loss"]
    assert "include_for_metrics='input' is not valid; valid values: inputs, loss. Did you " \
           "mean 'inputs'?" in fails(include_for_metrics=["input"])
    assert "include_for_metrics must be a list of strings" in fails(include_for_metrics="loss")


@pytest.mark.parametrize("value,stored", [
    (True, "all"), (False, "no"), ("all", "all"), ("non_padding", "non_padding"), ("no", "no")])
def test_include_num_input_tokens_seen_forms(value, stored):
    args = TrainingArguments(include_num_input_tokens_seen=value)
    assert args.include_num_input_tokens_seen == stored
    assert TrainingArguments.from_dict(args.to_dict()) == args


def test_include_num_input_tokens_seen_from_the_command_line(capsys):
    assert parse("--include_num_input_tokens_seen").include_num_input_tokens_seen == "all"
    assert parse("--include_num_input_tokens_seen", "false").include_num_input_tokens_seen == \
        "no"
    assert parse("--include_num_input_tokens_seen",
                 "non_padding").include_num_input_tokens_seen == "non_padding"
    assert "valid values: all, non_padding, no" in exits(
        capsys, "--include_num_input_tokens_seen", "some")


# -------------------------------------------------------------- loss, logging
@pytest.mark.parametrize("kwargs,fragment", [
    ({"label_smoothing_factor": 1.5}, "label_smoothing_factor must be <= 1, got 1.5"),
    ({"label_smoothing_factor": -0.1}, "label_smoothing_factor must be >= 0"),
    ({"neftune_noise_alpha": -5}, "neftune_noise_alpha must be >= 0"),
    ({"neftune_noise_alpha": "5"}, "neftune_noise_alpha must be a number or None"),
    ({"log_level": "verbose"}, "log_level='verbose' is not valid"),
    ({"log_level_replica": "warn"}, "Did you mean 'warning'?"),
    ({"run_name": 3}, "run_name must be a string or None"),
    ({"lr_scheduler_type": "greedy"}, "lr_scheduler_type='greedy' (transformers' GreedyLR) is "
                                      "not available in pytrainer"),
    ({"ddp_backend": "ccl"}, "ddp_backend='ccl' is not valid; valid values: nccl, gloo"),
    ({"local_rank": -2}, "local_rank must be >= -1"),
])
def test_value_checks(kwargs, fragment):
    assert fragment in fails(**kwargs)


def test_loss_and_logging_values_are_stored():
    args = TrainingArguments(label_smoothing_factor=0.1, neftune_noise_alpha=5,
                             log_level="detail", log_level_replica="error", run_name="r1",
                             ddp_backend="gloo")
    assert (args.label_smoothing_factor, args.neftune_noise_alpha) == (0.1, 5.0)
    assert (args.log_level, args.log_level_replica, args.run_name, args.ddp_backend) == (
        "detail", "error", "r1", "gloo")


def test_disable_tqdm_none_follows_the_log_level(monkeypatch):
    assert TrainingArguments().disable_tqdm is False  # the default level: warnings
    logger = logging.getLogger("pytrainer.training_args")
    monkeypatch.setattr(logger, "level", logging.ERROR)
    assert TrainingArguments().disable_tqdm is True
    assert TrainingArguments(disable_tqdm=False).disable_tqdm is False


def test_dict_fields_given_as_json_text_type_their_string_leaves():
    # transformers' reading of a JSON dict given on the command line
    args = TrainingArguments(lr_scheduler_kwargs='{"num_cycles": "2", "min_lr": "0.5", '
                                                 '"warm": "true", "name": "x", "neg": "-1"}')
    assert args.lr_scheduler_kwargs == {"num_cycles": 2, "min_lr": 0.5, "warm": True,
                                        "name": "x", "neg": "-1"}
    # a dict is taken as it is
    assert TrainingArguments(lr_scheduler_kwargs={"num_cycles": "2"}).lr_scheduler_kwargs == {
        "num_cycles": "2"}


@pytest.mark.parametrize("value,stored", [
    (None, None), ("all-linear", "all-linear"), (r".*attn.*", r".*attn.*"),
    (["q_proj", "v_proj"], ["q_proj", "v_proj"]), (("q_proj",), ["q_proj"]),
    (["all_linear"], "all-linear"),  # the command line's one value
])
def test_optim_target_modules_forms(value, stored):
    assert TrainingArguments(optim_target_modules=value).optim_target_modules == stored


@pytest.mark.parametrize("value,fragment", [
    ([], "must name at least one module"), ("", "must be a non-empty string"),
    (3, "optim_target_modules must be a list of strings"),
])
def test_optim_target_modules_errors(value, fragment):
    assert fragment in fails(optim_target_modules=value)


def test_local_rank_from_torch_distributed_launch():
    # torch.distributed.launch passes --local-rank=N (older versions --local_rank N)
    assert parse("--local-rank=1").local_rank == 1
    assert parse("--local_rank", "0").local_rank == 0
    assert TrainingArguments().local_rank == -1


def test_do_eval_defaults_to_false_as_in_transformers():
    assert TrainingArguments().do_eval is False
    assert TrainingArguments(eval_strategy="epoch").do_eval is True
    assert "do_eval must be True or False, got None" in fails(do_eval=None)
