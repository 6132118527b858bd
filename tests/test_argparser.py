"""ArgumentParser: flag spellings, bool forms, lists, choices, config files
overridden by the command line, and clean exits (status 2) on every mistake."""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import subprocess
import sys
import textwrap
from typing import Literal

import pytest

from pytrainer import ArgumentParser, TrainingArguments
from pytrainer.argparser import string_to_bool


def parse(*argv: str) -> TrainingArguments:
    (args,) = ArgumentParser(TrainingArguments).parse_args_into_dataclasses(list(argv))
    return args


def fails(capsys, *argv: str, parser: ArgumentParser | None = None) -> str:
    """The one-line error of a command line that must exit with status 2."""
    parser = parser or ArgumentParser(TrainingArguments, prog="train.py")
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args_into_dataclasses(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    return line


# ---------------------------------------------------------------- spellings
def test_no_flags_give_the_defaults():
    assert parse() == TrainingArguments()


@pytest.mark.parametrize("argv", [
    ["--learning_rate", "0.1"], ["--learning-rate", "0.1"],
    ["--learning_rate=0.1"], ["--learning-rate=0.1"],
])
def test_underscore_and_dash_spellings(argv):
    assert parse(*argv).learning_rate == 0.1


def test_typed_values():
    args = parse("--per_device_train_batch_size", "4", "--num_train_epochs", "1.5",
                 "--max_steps", "-1", "--data_seed", "7", "--save_total_limit", "2",
                 "--output_dir", "runs/x", "--metric_for_best_model", "accuracy",
                 "--optim", "sgd", "--optim_args", "momentum=0.9")
    assert (args.per_device_train_batch_size, args.num_train_epochs, args.max_steps) == (4, 1.5,
                                                                                          -1)
    assert (args.data_seed, args.save_total_limit, args.output_dir) == (7, 2, "runs/x")
    assert (args.metric_for_best_model, args.optim_args) == ("accuracy", "momentum=0.9")


def test_step_ratios_and_json_dicts_from_the_command_line():
    args = parse("--logging_steps", "0.05", "--save_steps", "100",
                 "--lr_scheduler_kwargs", '{"num_cycles": 3}')
    assert (args.logging_steps, args.save_steps) == (0.05, 100)
    assert type(args.save_steps) is int
    assert args.lr_scheduler_kwargs == {"num_cycles": 3}


@pytest.mark.parametrize("flag", ["--eval_strategy", "--eval-strategy", "--evaluation_strategy",
                                  "--evaluation-strategy"])
@pytest.mark.filterwarnings("ignore:evaluation_strategy is a transformers 4.x:FutureWarning")
def test_both_alias_spellings_are_flags(flag):
    args = parse(flag, "epoch")
    assert args.eval_strategy == args.evaluation_strategy == "epoch"
    assert "evaluation_strategy" not in args.to_dict()


# ---------------------------------------------------------------------- bools
def test_bare_bool_flag_means_true():
    assert parse("--do_train").do_train is True
    assert parse("--do-train", "--fp16").fp16 is True


@pytest.mark.parametrize("text,expected", [
    ("true", True), ("True", True), ("yes", True), ("y", True), ("t", True), ("1", True),
    ("false", False), ("FALSE", False), ("no", False), ("n", False), ("f", False), ("0", False),
])
def test_bool_flag_with_a_value(text, expected):
    assert parse("--do_train", text).do_train is expected
    assert parse("--save_safetensors", text).save_safetensors is expected
    assert string_to_bool(text) is expected


@pytest.mark.parametrize("flag", ["--no_save_safetensors", "--no-save-safetensors",
                                  "--no-save_safetensors"])
def test_no_flags_for_bools_defaulting_to_true(flag):
    assert parse(flag).save_safetensors is False


def test_no_flag_only_for_bools_defaulting_to_true(capsys):
    assert "--no_do_train" in fails(capsys, "--no_do_train")


def test_optional_bool_flags():
    assert parse().tf32 is None
    assert parse("--tf32").tf32 is True
    assert parse("--tf32", "false").tf32 is False
    assert parse("--greater_is_better", "no").greater_is_better is False


def test_invalid_bool_value(capsys):
    line = fails(capsys, "--do_train", "maybe")
    assert "--do_train" in line and "'maybe'" in line


# --------------------------------------------------------------------- lists
def test_list_fields_take_several_values():
    args = parse("--label_names", "start_positions", "end_positions",
                 "--report_to", "tensorboard", "wandb")
    assert args.label_names == ["start_positions", "end_positions"]
    assert args.report_to == ["tensorboard", "wandb"]
    assert parse("--report_to", "none").report_to == []
    assert parse("--label_names", "labels").label_names == ["labels"]


# ------------------------------------------------------------------- choices
def test_invalid_choice_lists_values_and_suggests(capsys):
    line = fails(capsys, "--eval_strategy", "strps")
    assert "no, steps, epoch" in line and "Did you mean 'steps'?" in line
    line = fails(capsys, "--optim", "adamw_troch")
    assert "adamw_custom_fused" in line and "Did you mean 'adamw_torch'?" in line


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize("argv,closest", [
    (["--lerning_rate", "0.1"], "--learning_rate"),
    (["--lerning-rate=0.1"], "--learning-rate"),
    (["--per_device_batch_size", "4"], "--per_device_eval_batch_size"),
    (["--no_save_safetensor"], "--no_save_safetensors"),
])
def test_unknown_flags_suggest_the_closest(capsys, argv, closest):
    line = fails(capsys, *argv)
    assert "unrecognized arguments" in line and f"Did you mean {closest}" in line


def test_abbreviations_are_not_flags(capsys):
    assert "unrecognized arguments: --learning" in fails(capsys, "--learning", "0.1")


@pytest.mark.parametrize("argv,fragment", [
    (["--learning_rate", "abc"], "invalid float value: 'abc'"),
    (["--per_device_train_batch_size", "2.5"], "invalid int value: '2.5'"),
    (["--learning_rate", "0"], "learning_rate must be > 0"),
    (["--fp16", "--bf16"], "fp16=True and bf16=True"),
    (["--load_best_model_at_end", "--eval_strategy", "epoch"],
     "load_best_model_at_end=True requires the save and eval strategies to match"),
    (["--logging_steps", "2.5"], "logging_steps must be an integer"),
    (["--lr_scheduler_kwargs", "{oops"], "not valid JSON"),
    (["--optim_args", "lr"], "optim_args"),
    (["--eval_strategy", "steps", "--evaluation_strategy"], "expected one argument"),
])
def test_bad_values_exit_with_a_one_line_error(capsys, argv, fragment):
    assert fragment in fails(capsys, *argv)


def test_remaining_strings_can_be_returned():
    parser = ArgumentParser(TrainingArguments)
    args, rest = parser.parse_args_into_dataclasses(["--seed", "3", "extra", "--other", "1"],
                                                    return_remaining_strings=True)
    assert args.seed == 3 and rest == ["extra", "--other", "1"]


def test_reads_sys_argv_by_default(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "--seed", "5"])
    (args,) = ArgumentParser(TrainingArguments).parse_args_into_dataclasses()
    assert args.seed == 5


def test_a_bad_flag_in_a_real_process_exits_2_without_traceback():
    script = textwrap.dedent("""
        from pytrainer import ArgumentParser, TrainingArguments
        ArgumentParser(TrainingArguments, prog="train.py").parse_args_into_dataclasses()
    """)
    done = subprocess.run([sys.executable, "-c", script, "--eval_strategy", "strps"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("train.py: error: argument "
                                                             "--eval_strategy")


# ---------------------------------------------------------------- config files
def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_json_config_is_overridden_by_the_command_line(tmp_path):
    config = _write(tmp_path / "c.json", json.dumps(
        {"learning_rate": 0.01, "seed": 1, "do_train": True, "report_to": "tensorboard"}))
    args = parse("--config", config, "--seed", "9")
    assert (args.learning_rate, args.seed, args.do_train, args.report_to) == (
        0.01, 9, True, ["tensorboard"])
    # the order on the command line does not matter: the command line wins
    assert parse("--seed", "9", f"--config={config}").seed == 9


def test_yaml_config_converts_strings_by_field_type(tmp_path):
    pytest.importorskip("yaml")
    config = _write(tmp_path / "c.yaml", """
        learning_rate: 5e-5          # a string to YAML 1.1
        evaluation_strategy: steps   # the alias as a key
        eval_steps: 0.25
        save-steps: 100              # dashed keys as on the command line
        label_names: labels          # a scalar for a list field
        do_train: "yes"
        lr_scheduler_kwargs: {num_cycles: 2}
        output_dir: 2024
    """)
    args = parse("--config", config, "--no_save_safetensors")
    assert (args.learning_rate, args.eval_strategy, args.eval_steps) == (5e-5, "steps", 0.25)
    assert (args.save_steps, args.label_names, args.do_train) == (100, ["labels"], True)
    assert args.lr_scheduler_kwargs == {"num_cycles": 2}
    assert (args.output_dir, args.save_safetensors) == ("2024", False)
    assert parse("--config", config, "--evaluation_strategy", "epoch").eval_strategy == "epoch"


@pytest.mark.parametrize("name,text,fragment", [
    ("c.json", '{"lerning_rate": 0.1}', "'lerning_rate' Did you mean 'learning_rate'?"),
    ("c.json", '{"learning_rate": "fast"}', "learning_rate='fast'"),
    ("c.json", '{"eval_strategy": "strps"}', "Did you mean 'steps'?"),
    ("c.json", '{"learning_rate": 0}', "learning_rate must be > 0"),
    ("c.json", "{oops", "is not valid JSON"),
    ("c.json", "[1, 2]", "expected a mapping"),
    ("c.json", '{"eval_strategy": "steps", "evaluation_strategy": "epoch"}',
     "name the same argument with different values"),
    ("c.yaml", "a: [1\n", "is not valid YAML"),
    ("c.toml", "x = 1", "unsupported config file type '.toml'"),
])
def test_bad_config_files_exit_with_a_one_line_error(capsys, tmp_path, name, text, fragment):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    line = fails(capsys, "--config", _write(tmp_path / name, text))
    assert fragment in line


def test_missing_config_file(capsys, tmp_path):
    assert "No such file" in fails(capsys, "--config", str(tmp_path / "absent.json"))


def test_yaml_without_pyyaml_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` fail
    config = _write(tmp_path / "c.yml", "seed: 1\n")
    assert "needs PyYAML" in fails(capsys, "--config", config)
    with pytest.raises(ImportError, match="pip install pyyaml"):
        ArgumentParser(TrainingArguments).parse_yaml_file(config)


def test_parse_json_and_yaml_files(tmp_path):
    parser = ArgumentParser(TrainingArguments)
    (args,) = parser.parse_json_file(_write(tmp_path / "a.json", '{"seed": 3}'))
    assert args.seed == 3
    pytest.importorskip("yaml")
    (args,) = parser.parse_yaml_file(_write(tmp_path / "a.yaml", "seed: 4\nfp16: true\n"))
    assert (args.seed, args.fp16) == (4, True)


def test_parse_dict():
    parser = ArgumentParser(TrainingArguments)
    (args,) = parser.parse_dict({"learning_rate": "1e-3", "evaluation_strategy": "epoch"})
    assert (args.learning_rate, args.eval_strategy) == (1e-3, "epoch")
    with pytest.raises(ValueError, match="Did you mean 'seed'"):
        parser.parse_dict({"sed": 1})
    (args,) = parser.parse_dict({"seed": 1, "not_a_field": "x"}, allow_extra_keys=True)
    assert args.seed == 1
    with pytest.raises(ValueError, match="fp16=True and bf16=True"):
        parser.parse_dict({"fp16": True, "bf16": True})


def test_config_flag_can_be_renamed_or_removed(tmp_path):
    config = _write(tmp_path / "c.json", '{"seed": 11}')
    parser = ArgumentParser(TrainingArguments, config_flag="--args_file")
    (args,) = parser.parse_args_into_dataclasses(["--args_file", config])
    assert args.seed == 11
    parser = ArgumentParser(TrainingArguments, config_flag=None)
    assert "--config" not in parser.format_help()


def test_hugging_face_args_files(tmp_path, monkeypatch):
    parser = ArgumentParser(TrainingArguments)
    tokens = _write(tmp_path / "run.args", "--seed 3 --do_train\n--learning_rate 0.5")
    (args,) = parser.parse_args_into_dataclasses(["--seed", "4"], args_filename=tokens)
    assert (args.seed, args.do_train, args.learning_rate) == (4, True, 0.5)
    (args,) = parser.parse_args_into_dataclasses(["--args", tokens], args_file_flag="--args")
    assert args.seed == 3
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "run.py")])
    assert parser.parse_args_into_dataclasses([])[0].seed == 42  # not read unless asked
    assert parser.parse_args_into_dataclasses([], look_for_args_file=True)[0].seed == 3


# ------------------------------------------------ general dataclasses (HF rules)
class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class ModelArgs:
    model_name: str = dataclasses.field(metadata={"help": "Required: 100% needed."})
    size: Literal["small", "large"] = "small"
    color: Color = Color.RED
    layers: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    dropout: float | None = None
    tie: bool = True
    name_or_count: int | str = 3
    options: dict | None = None
    tag: str = dataclasses.field(default="a", metadata={"aliases": ["--label", "-t"],
                                                         "choices": ["a", "b"]})


@dataclasses.dataclass
class DataArgs:
    path: str = "data"
    shuffle: bool = False


def test_general_dataclass_fields():
    parser = ArgumentParser([ModelArgs, DataArgs])
    model, data = parser.parse_args_into_dataclasses(
        ["--model_name", "gpt", "--size", "large", "--color", "blue", "--layers", "4", "5", "6",
         "--dropout", "0.1", "--no_tie", "--name_or_count", "7", "--options", '{"k": 1}',
         "-t", "b", "--path", "p", "--shuffle"])
    assert model == ModelArgs("gpt", size="large", color=Color.BLUE, layers=[4, 5, 6],
                              dropout=0.1, tie=False, name_or_count=7, options={"k": 1}, tag="b")
    assert data == DataArgs("p", True)
    model, _ = parser.parse_args_into_dataclasses(["--model_name", "m", "--label", "a"])
    assert model == ModelArgs("m")


def test_required_fields(capsys, tmp_path):
    parser = ArgumentParser(ModelArgs)
    assert "required: --model_name" in fails(capsys, parser=parser)
    config = _write(tmp_path / "c.json", '{"model_name": "from-config"}')
    (model,) = parser.parse_args_into_dataclasses(["--config", config])
    assert model.model_name == "from-config"
    with pytest.raises(ValueError, match="missing required values: model_name"):
        parser.parse_dict({})


def test_choices_of_enums_and_metadata(capsys):
    parser = ArgumentParser(ModelArgs)
    assert "Did you mean 'blue'?" in fails(capsys, "--model_name", "m", "--color", "blu",
                                           parser=parser)
    assert "valid values: a, b" in fails(capsys, "--model_name", "m", "--tag", "c",
                                         parser=parser)


def test_extra_arguments_come_back_as_a_namespace():
    parser = ArgumentParser(DataArgs)
    parser.add_argument("--verbose", action="store_true")
    data, extra = parser.parse_args_into_dataclasses(["--verbose"])
    assert data == DataArgs() and extra == argparse.Namespace(verbose=True)


def test_help_lists_fields_and_config():
    text = ArgumentParser([ModelArgs, TrainingArguments]).format_help()
    for fragment in ("--model_name", "100% needed", "--evaluation_strategy", "--no_tie",
                     "--config FILE", "{small,large}"):
        assert fragment in text


def test_unsupported_field_types_fail_at_construction():
    @dataclasses.dataclass
    class Bad:
        pair: int | float = 1

    with pytest.raises(ValueError, match="field pair"):
        ArgumentParser(Bad)
    with pytest.raises(TypeError, match="dataclass"):
        ArgumentParser([int])


def test_duplicate_fields_across_dataclasses_fail_at_construction():
    @dataclasses.dataclass
    class Other:
        seed: int = 1

    with pytest.raises(ValueError, match="field seed"):
        ArgumentParser([TrainingArguments, Other])
