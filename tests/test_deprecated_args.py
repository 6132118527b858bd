"""The transformers 4.x names of TrainingArguments (pytrainer.deprecated_args): what
each maps to, the one warning per name, disagreements with their fields, and the
same on the command line, in config files and with transformers' own parser."""
from __future__ import annotations

import json
import os
import warnings

import pytest

from pytrainer import ArgumentParser, TrainingArguments
from pytrainer import deprecated_args
from pytrainer.deprecated_args import DEPRECATED


@pytest.fixture(autouse=True)
def _fresh_warnings():
    deprecated_args.reset_warnings()
    yield
    deprecated_args.reset_warnings()


def build(**kwargs) -> TrainingArguments:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return TrainingArguments(**kwargs)


# (name, value, fields it sets, what reading args.<name> gives)
MAPPINGS = [
    ("evaluation_strategy", "epoch", {"eval_strategy": "epoch", "do_eval": True}, "epoch"),
    ("no_cuda", True, {"use_cpu": True, "dataloader_pin_memory": False}, True),
    ("no_cuda", False, {"use_cpu": False}, False),
    ("use_mps_device", True, {"use_cpu": False}, False),
    ("per_gpu_train_batch_size", 16, {"per_device_train_batch_size": 16}, 16),
    ("per_gpu_eval_batch_size", 4, {"per_device_eval_batch_size": 4}, 4),
    ("warmup_ratio", 0.1, {"warmup_steps": 0.1}, 0.1),
    ("warmup_ratio", 0.0, {"warmup_steps": 0}, 0.0),
    ("group_by_length", True, {"train_sampling_strategy": "group_by_length"}, True),
    ("include_inputs_for_metrics", True, {"include_for_metrics": ["inputs"]}, True),
    ("include_tokens_per_second", True, {"include_num_input_tokens_seen": "all"}, True),
    ("adafactor", True, {"optim": "adafactor"}, True),
    ("torchdynamo", "eager", {"torch_compile_backend": "eager", "torch_compile": True}, "eager"),
    ("push_to_hub_model_id", None, {"hub_model_id": None}, None),
    ("push_to_hub_token", "<PUSH_TO_HUB_TOKEN>", {"hub_token": None}, None),
    ("push_to_hub_organization", None, {}, None),
    ("overwrite_output_dir", True, {}, True),
    ("logging_dir", "~/tb", {}, os.path.expanduser("~/tb")),
    ("fp16_backend", "auto", {}, "auto"),
    ("half_precision_backend", "cpu_amp", {}, "auto"),
    ("fp16_opt_level", "O1", {}, "O1"),
    ("use_legacy_prediction_loop", False, {}, False),
    ("past_index", -1, {}, -1),
    ("tpu_num_cores", None, {}, None),
    ("tpu_metrics_debug", False, {}, False),
    ("jit_mode_eval", False, {}, False),
    ("mp_parameters", "", {}, ""),
    ("ray_scope", "last", {}, "last"),
    ("fsdp_min_num_params", 0, {}, 0),
    ("fsdp_transformer_layer_cls_to_wrap", None, {}, None),
]


def test_every_deprecated_name_is_exercised():
    assert {name for name, *_ in MAPPINGS} == set(DEPRECATED)


@pytest.mark.parametrize("name,value,fields,read", MAPPINGS,
                         ids=[f"{m[0]}={m[1]!r}" for m in MAPPINGS])
def test_each_name_maps_to_its_current_field(name, value, fields, read):
    args = build(**{name: value})
    for field, expected in fields.items():
        assert getattr(args, field) == expected, field
    assert getattr(args, name) == read
    assert name not in args.to_dict()
    # nothing else changed
    untouched = {k: v for k, v in TrainingArguments().to_dict().items() if k not in fields}
    assert {k: args.to_dict()[k] for k in untouched} == untouched


# (keywords, a fragment of the error)
REFUSED = [
    ({"fp16_backend": "apex"}, "fp16_backend='apex' (a transformers 4.x argument) is not "
                               "available in pytrainer: mixed precision is torch.amp"),
    ({"half_precision_backend": "apex"}, "half_precision_backend='apex'"),
    ({"half_precision_backend": "fast"}, "half_precision_backend='fast' is not valid"),
    ({"fp16_opt_level": "O2"}, "fp16_opt_level='O2' (a transformers 4.x argument) is not "
                               "available in pytrainer: apex AMP"),
    ({"use_legacy_prediction_loop": True}, "use_legacy_prediction_loop=True"),
    ({"past_index": 0}, "past_index=0 (a transformers 4.x argument) is not available"),
    ({"tpu_num_cores": 8}, "pytrainer does not run on TPUs"),
    ({"tpu_metrics_debug": True}, "pytrainer does not run on TPUs"),
    ({"jit_mode_eval": True}, "use torch_compile=True"),
    ({"mp_parameters": "x"}, "mp_parameters='x'"),
    ({"ray_scope": "all"}, "no hyperparameter search"),
    ({"fsdp_min_num_params": 1000}, "fsdp_min_num_params=1000"),
    ({"fsdp_transformer_layer_cls_to_wrap": "GPT2Block"}, "fsdp=True shards every child"),
    ({"push_to_hub_organization": "org"}, "upload output_dir with huggingface_hub"),
    ({"push_to_hub_model_id": "me/model"}, "hub_model_id='me/model' is not available"),
    ({"push_to_hub_token": "hf_x"}, "hub_token='hf_x' is not available"),
    ({"warmup_ratio": 1.0}, "warmup_ratio=1.0 (warm up for the whole run) has no warmup_steps"),
    ({"warmup_ratio": -0.1}, "warmup_ratio must be >= 0"),
    ({"warmup_ratio": "0.1"}, "warmup_ratio must be a number"),
    ({"no_cuda": "yes"}, "no_cuda must be True or False, got 'yes'"),
    ({"group_by_length": 1}, "group_by_length must be True or False, got 1"),
    ({"per_gpu_train_batch_size": 0}, "per_gpu_train_batch_size must be a positive integer"),
    ({"logging_dir": ""}, "logging_dir must be a non-empty string"),
    ({"overwrite_output_dir": "no"}, "overwrite_output_dir must be True or False"),
    ({"evaluation_strategy": "steeps"}, "eval_strategy='steeps' is not valid"),
]


@pytest.mark.parametrize("kwargs,fragment", REFUSED, ids=[str(k) for k, _ in REFUSED])
def test_values_without_a_meaning_in_pytrainer_are_errors(kwargs, fragment):
    with pytest.raises(ValueError) as error:
        build(**kwargs)
    assert fragment in str(error.value) and "\n" not in str(error.value)


# (keywords, the field the names disagree on)
CONFLICTS = [
    ({"eval_strategy": "no", "evaluation_strategy": "steps"}, "eval_strategy"),
    ({"use_cpu": False, "no_cuda": True}, "use_cpu"),
    ({"use_cpu": True, "use_mps_device": True}, "use_cpu"),
    ({"no_cuda": True, "use_mps_device": True}, "use_cpu"),
    ({"per_device_train_batch_size": 4, "per_gpu_train_batch_size": 16},
     "per_device_train_batch_size"),
    ({"warmup_steps": 5, "warmup_ratio": 0.1}, "warmup_steps"),
    ({"train_sampling_strategy": "sequential", "group_by_length": True},
     "train_sampling_strategy"),
    ({"optim": "sgd", "adafactor": True}, "optim"),
    ({"torch_compile_backend": "inductor", "torchdynamo": "eager"}, "torch_compile_backend"),
]


@pytest.mark.parametrize("kwargs,field", CONFLICTS, ids=[str(k) for k, _ in CONFLICTS])
def test_a_name_and_its_field_disagreeing_is_an_error(kwargs, field):
    with pytest.raises(ValueError, match="name the same argument with different values; give "
                                         "one") as error:
        build(**kwargs)
    assert str(error.value).startswith(f"{field}=")


# (keywords, the field's value): agreeing, or a transformers 4.x JSON's pair (the field at
# its default while the 4.x name overrode it)
AGREEMENTS = [
    ({"eval_strategy": "epoch", "evaluation_strategy": "epoch"}, ("eval_strategy", "epoch")),
    ({"use_cpu": True, "no_cuda": True}, ("use_cpu", True)),
    ({"train_sampling_strategy": "sequential", "group_by_length": False},
     ("train_sampling_strategy", "sequential")),
    ({"include_for_metrics": ["loss"], "include_inputs_for_metrics": True},
     ("include_for_metrics", ["loss", "inputs"])),
    ({"include_num_input_tokens_seen": "non_padding", "include_tokens_per_second": True},
     ("include_num_input_tokens_seen", "non_padding")),
    ({"include_num_input_tokens_seen": False, "include_tokens_per_second": True},
     ("include_num_input_tokens_seen", "all")),
    ({"warmup_steps": 0, "warmup_ratio": 0.1}, ("warmup_steps", 0.1)),
    ({"per_device_train_batch_size": 8, "per_gpu_train_batch_size": 16},
     ("per_device_train_batch_size", 16)),
]


@pytest.mark.parametrize("kwargs,expected", AGREEMENTS, ids=[str(k) for k, _ in AGREEMENTS])
def test_agreeing_pairs_are_accepted(kwargs, expected):
    field, value = expected
    assert getattr(build(**kwargs), field) == value


def test_each_name_warns_once_per_process_where_it_is_used():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainingArguments(evaluation_strategy="epoch")
        TrainingArguments(evaluation_strategy="steps")
        TrainingArguments.from_dict({"evaluation_strategy": "epoch", "no_cuda": False})
        TrainingArguments(no_cuda=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert len(messages) == 2, messages
    assert messages[0].startswith("evaluation_strategy is a transformers 4.x argument, removed "
                                  "in transformers 5: use eval_strategy")
    assert messages[1].startswith("no_cuda is a transformers 4.x argument")
    assert caught[0].filename == __file__  # points at the caller, not at pytrainer


def test_attributes_of_the_names():
    args = build(overwrite_output_dir=False)
    with pytest.warns(FutureWarning, match="evaluation_strategy"):
        args.evaluation_strategy = "steps"  # a rename sets its field
    assert args.eval_strategy == "steps"
    args.overwrite_output_dir = True  # a kept value is replaced (warned at construction)
    assert args.overwrite_output_dir is True
    with pytest.raises(AttributeError, match="warmup_ratio .* cannot be assigned: set "
                                             "warmup_steps instead"):
        args.warmup_ratio = 0.2
    with pytest.raises(AttributeError, match="past_index"):
        args.past_index = 3
    # values kept for their readers are not fields, so dataclasses.replace drops them
    assert TrainingArguments().overwrite_output_dir is False
    assert TrainingArguments().logging_dir is None


def test_a_subclass_field_of_the_same_name_is_not_translated():
    import dataclasses

    @dataclasses.dataclass
    class WithLoggingDir(TrainingArguments):
        logging_dir: str = "mine"

    args = WithLoggingDir(logging_dir="/tmp/x")
    assert args.logging_dir == "/tmp/x" and args.to_dict()["logging_dir"] == "/tmp/x"


def test_gradient_checkpointing_is_transformers_5s_deprecated_name():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = TrainingArguments(gradient_checkpointing=True,
                                 gradient_checkpointing_kwargs='{"use_reentrant": "false"}')
    assert [str(w.message) for w in caught] == [
        "gradient_checkpointing is deprecated in transformers 5: use activation_checkpointing",
        "gradient_checkpointing_kwargs is deprecated in transformers 5: use "
        "activation_checkpointing_kwargs"]
    assert {w.filename for w in caught} == {__file__}
    assert args.activation_checkpointing is args.gradient_checkpointing is True
    # a JSON string's string leaves are typed as transformers types them
    assert args.activation_checkpointing_kwargs == args.gradient_checkpointing_kwargs == {
        "use_reentrant": False}
    args = TrainingArguments(activation_checkpointing=True)
    assert args.gradient_checkpointing is True  # mirrored, as in transformers
    assert TrainingArguments().activation_checkpointing is False
    assert TrainingArguments.from_dict(args.to_dict()) == args
    with pytest.raises(ValueError, match="activation_checkpointing=False and "
                                         "gradient_checkpointing=True .* disagree"):
        TrainingArguments(activation_checkpointing=False, gradient_checkpointing=True)


# ------------------------------------------------------------ the command line
def parse(*argv: str, parser: ArgumentParser | None = None) -> TrainingArguments:
    parser = parser or ArgumentParser(TrainingArguments, prog="train.py")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        (args,) = parser.parse_args_into_dataclasses(list(argv))
    return args


@pytest.mark.parametrize("argv,field,value", [
    (["--evaluation_strategy", "epoch"], "eval_strategy", "epoch"),
    (["--evaluation-strategy=epoch"], "eval_strategy", "epoch"),
    (["--no_cuda"], "use_cpu", True),
    (["--no-cuda", "false"], "use_cpu", False),
    (["--warmup_ratio", "0.1"], "warmup_steps", 0.1),
    (["--group_by_length"], "train_sampling_strategy", "group_by_length"),
    (["--per_gpu_train_batch_size", "3"], "per_device_train_batch_size", 3),
    (["--adafactor"], "optim", "adafactor"),
    (["--overwrite_output_dir"], "overwrite_output_dir", True),
    (["--logging_dir", "runs"], "logging_dir", "runs"),
    (["--include_inputs_for_metrics", "true"], "include_for_metrics", ["inputs"]),
])
def test_deprecated_names_are_flags(argv, field, value):
    assert getattr(parse(*argv), field) == value


def test_a_deprecated_flag_warns():
    with pytest.warns(FutureWarning, match="warmup_ratio is a transformers 4.x argument"):
        ArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--warmup_ratio", "0.2"])


def test_a_deprecated_flag_wins_over_a_default_not_given(tmp_path):
    # the parser's defaults (pytrainer train sets some) were not asked for on the line
    parser = ArgumentParser(TrainingArguments)
    parser.set_defaults(eval_strategy="steps", eval_steps=5, warmup_steps=50)
    args = parse("--evaluation_strategy", "no", "--warmup_ratio", "0.2", parser=parser)
    assert (args.eval_strategy, args.warmup_steps) == ("no", 0.2)
    # a field given in a config file counts as given
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"warmup_steps": 7}))
    with pytest.raises(SystemExit):
        parse("--config", str(config), "--warmup_ratio", "0.2", parser=parser)


@pytest.mark.parametrize("argv,fragment", [
    (["--eval_strategy", "epoch", "--evaluation_strategy", "steps"],
     "eval_strategy='epoch' and evaluation_strategy='steps' (its transformers 4.x name) name "
     "the same argument"),
    (["--warmup_steps", "5", "--warmup_ratio", "0.1"], "warmup_steps=5.0 and warmup_ratio=0.1"),
    (["--past_index", "3"], "past_index=3 (a transformers 4.x argument) is not available"),
    (["--fp16_backend", "apex"], "fp16_backend='apex'"),
])
def test_deprecated_flag_mistakes_exit_2_with_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert fragment in line


def test_deprecated_names_in_config_files(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"evaluation_strategy": "epoch", "warmup_ratio": 0.25,
                                  "no_cuda": True, "logging_dir": "tb"}))
    args = parse("--config", str(config))
    assert (args.eval_strategy, args.warmup_steps, args.use_cpu, args.logging_dir) == (
        "epoch", 0.25, True, "tb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        (args,) = ArgumentParser(TrainingArguments).parse_dict({"group_by_length": "yes"})
    assert args.train_sampling_strategy == "group_by_length"


# ------------------------------------------------ transformers' own parser
def test_transformers_argument_parser_builds_our_training_arguments():
    """A script keeps transformers' HfArgumentParser and imports pytrainer's
    TrainingArguments: every field must be a flag it can build and parse."""
    transformers = pytest.importorskip("transformers")
    parser = transformers.HfArgumentParser(TrainingArguments)
    assert "--optim" in parser.format_help()
    (args,) = parser.parse_args_into_dataclasses([
        "--output_dir", "out", "--optim", "sgd", "--optim_args", "momentum=0.9",
        "--eval_strategy", "steps", "--eval_steps", "5", "--lr_scheduler_kwargs",
        '{"num_cycles": "2"}', "--train_sampling_strategy", "sequential", "--fsdp",
        "--activation_checkpointing", "--use_cpu", "true", "--include_for_metrics", "loss",
        "--report_to", "none", "--torch_compile_mode", "default", "--no_remove_unused_columns"])
    assert isinstance(args, TrainingArguments)
    assert (args.optim, args.optim_args, args.eval_strategy, args.eval_steps) == (
        "sgd", "momentum=0.9", "steps", 5)
    assert args.lr_scheduler_kwargs == {"num_cycles": 2}  # typed as transformers types it
    assert (args.train_sampling_strategy, args.fsdp, args.fsdp2) == ("sequential", True, True)
    assert (args.activation_checkpointing, args.use_cpu, args.include_for_metrics) == (
        True, True, ["loss"])
    assert (args.torch_compile, args.remove_unused_columns) == (True, False)
