"""Property-based tests (hypothesis) of the command line, config files and
TrainingArguments construction, fed random and malformed input.

The properties:

- ``ArgumentParser([TrainingArguments]).parse_args_into_dataclasses(argv)`` either
  returns arguments that round-trip through ``to_json_string``/``from_json_string``
  (as strict JSON: no NaN or Infinity tokens), or exits with ``SystemExit(2)`` after
  writing usage and exactly one ``prog: error: ...`` line, the last one, to stderr,
  and never a traceback. Any other exception fails the test.
- The same for ``--config FILE`` with random JSON and YAML documents, garbage bytes,
  empty files, wrong types, unknown keys and nested structures; the command line
  overrides the file.
- ``TrainingArguments(**kwargs)`` either builds arguments that round-trip (and that
  rebuild themselves from ``to_dict()``), or raises ValueError/TypeError whose
  message names a field; ``from_dict``/``from_json_string`` likewise.
- Two runs in a real process (``python -c``) show the exit status and a stderr
  without traceback end to end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import typing
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from pytrainer import ArgumentParser, TrainingArguments
from pytrainer.deprecated_args import DEPRECATED
from pytrainer.training_args import INTERVAL_STRATEGIES, SAVE_STRATEGIES, SCHEDULER_TYPES

yaml = pytest.importorskip("yaml")

# The fuzzed input uses transformers 4.x names too; their FutureWarnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

_COMMON = dict(derandomize=True, database=None, deadline=None, print_blob=False,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much,
                                      HealthCheck.function_scoped_fixture])


#: PYTRAINER_HYPOTHESIS_SCALE=10 runs ten times the examples (still derandomized)
_SCALE = float(os.environ.get("PYTRAINER_HYPOTHESIS_SCALE", "1"))


def fast(max_examples: int):
    return settings(max_examples=max(1, round(max_examples * _SCALE)), **_COMMON)


PROG = "train.py"
FIELDS = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
HINTS = typing.get_type_hints(TrainingArguments)
#: every name a message may use for a field (the transformers 4.x names included)
FIELD_NAMES = set(FIELDS) | set(DEPRECATED)


_PARSER: ArgumentParser | None = None


def parser() -> ArgumentParser:
    """One parser for all examples (parsing does not change it)."""
    global _PARSER
    if _PARSER is None:
        _PARSER = ArgumentParser([TrainingArguments], prog=PROG)
    return _PARSER


def optimizer_names() -> list[str]:
    from pytrainer.optim.registry import optimizer_names as names
    return names()


def _strict_json(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token} in {text[:200]}")
    return json.loads(text, parse_constant=refuse)


def assert_round_trips(args: TrainingArguments) -> None:
    text = args.to_json_string()
    data = _strict_json(text)
    assert set(data) == set(FIELDS)
    again = TrainingArguments.from_json_string(text)
    assert again == args
    assert again.to_json_string() == text
    assert TrainingArguments(**args.to_dict()) == args


def run_parser(argv: list[str]):
    """("ok", args) or ("exit", error line); fails on anything else."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = parser().parse_args_into_dataclasses(argv)
    except SystemExit as exit_:
        text = err.getvalue()
        note(f"stderr: {text!r}")
        assert exit_.code == 2, (exit_.code, text)
        assert "Traceback" not in text
        lines = [line for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if f"{PROG}: error: " in line]
        assert len(errors) == 1, text
        assert lines[-1] == errors[0], text
        assert text.endswith("\n") and text.count("\n", text.index(errors[0])) == 1, text
        return "exit", errors[0]
    assert len(result) == 1, result
    (args,) = result
    assert isinstance(args, TrainingArguments)
    assert_round_trips(args)
    return "ok", args


# ------------------------------------------------------------------ strategies

numbers_as_text = st.one_of(
    st.integers(-10 ** 25, 10 ** 25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(0, 1).map(str),
    st.integers(0, 2 ** 33).map(str),
    st.sampled_from(["0", "-0", "1", "-1", "0.5", "1e-8", "1e400", "-1e400", "nan", "inf",
                     "5e-5", "2.0", "1_000", "0x10", " 3 ", "1" + "0" * 400, "1" * 5000]),
)
words = st.sampled_from(
    ["true", "false", "True", "yes", "no", "y", "n", "t", "f", "1", "0", "on", "maybe", "none",
     "None", "null", "all", "tensorboard", "wandb", "a=1", "a=1,b=2", "lr", "=", ",",
     "{}", '{"num_cycles": 2}', '{"a": NaN}', '{"a": Infinity}', "[1, 2]", "{oops", "[" * 3000,
     '{"a":' * 2000, "~", "~/runs", "", " ", "-", "--", "-1e-3", "\n", "\x00", "é", "🚀"]
    + list(INTERVAL_STRATEGIES) + list(SAVE_STRATEGIES) + list(SCHEDULER_TYPES)
    + ["stesp", "epochs", "cosine_restarts", "adamw", "adamw_torch_fusd"])
values_as_text = st.one_of(numbers_as_text, words, st.text(max_size=20),
                           st.sampled_from(optimizer_names()))


def _flag_spellings() -> list[str]:
    actions = parser()._option_string_actions
    return sorted(o for o in actions if o not in ("-h", "--help", "--config"))


def flags():
    return st.sampled_from(_flag_spellings())


unknown_flags = st.one_of(
    st.sampled_from(["--lerning_rate", "--learning", "--lr", "--eval", "--no_do_train",
                     "--no-fp16", "--evaluation-strategy-x", "-x", "-lr", "---seed",
                     "--seed\n", "--Seed", "--config_file"]),
    st.from_regex(r"--[a-z_\-]{1,20}", fullmatch=True))


@st.composite
def argvs(draw):
    tokens: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flag", "flag", "flag", "flag=", "unknown", "stray"]))
        if kind == "flag":
            tokens.append(draw(flags()))
            tokens += draw(st.lists(values_as_text, max_size=3))
        elif kind == "flag=":
            tokens.append(f"{draw(flags())}={draw(values_as_text)}")
        elif kind == "unknown":
            tokens.append(draw(unknown_flags))
            tokens += draw(st.lists(values_as_text, max_size=1))
        else:
            tokens.append(draw(values_as_text))
    # -h/--help print the help and exit 0: not malformed input
    return [t for t in tokens if not t.startswith("-h") and not t.startswith("--help")]


# ------------------------------------------------------------ the command line


@fast(150)
@given(argv=argvs())
def test_random_command_lines_parse_or_exit_2_with_one_line(argv):
    run_parser(argv)


def _literal_choices(hint) -> list:
    """The values of a Literal type, or of the Literal member of a union."""
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    for member in typing.get_args(hint):
        if typing.get_origin(member) is typing.Literal:
            return list(typing.get_args(member))
    return []


def _text_for(name: str):
    """A value for one field: its valid forms as text, and near misses."""
    hint = HINTS[name]
    base = [values_as_text]
    if "bool" in str(hint):
        base.append(st.sampled_from(["true", "false", "yes", "no", "1", "0", "maybe", "2"]))
    if "Literal" in str(hint):
        base.append(st.sampled_from(_literal_choices(hint) or ["x"]))
    if name == "optim":
        base.append(st.sampled_from(optimizer_names()))
    if name.endswith("_steps") or name in ("seed", "data_seed", "max_steps"):
        base.append(st.one_of(st.integers(-5, 10 ** 6).map(str),
                              st.floats(0, 1).map(str), st.floats(1, 1e6).map(str)))
    return st.one_of(*base)


@st.composite
def one_field_argvs(draw):
    argv = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(FIELDS)))
        flag = draw(st.sampled_from([f"--{name}", "--" + name.replace("_", "-")]))
        text = draw(_text_for(name))
        if HINTS[name] is bool and draw(st.booleans()):
            argv.append(flag)  # bare bool flag
        elif draw(st.booleans()):
            argv.append(f"{flag}={text}")
        else:
            argv += [flag, text]
    return argv


@fast(150)
@given(argv=one_field_argvs())
def test_each_field_from_the_command_line_parses_or_exits_2(argv):
    outcome, value = run_parser(argv)
    if outcome == "ok" and len(argv) == 2 and argv[0].startswith("--") and "=" not in argv[0]:
        # one flag and its value: the value reached the field
        name = argv[0][2:].replace("-", "_")
        if HINTS[name] in (int, float):
            assert getattr(value, name) == HINTS[name](argv[1]) or name.endswith("_steps")


@fast(40)
@given(seed=st.integers(0, 2 ** 32 - 1), lr=st.floats(1e-8, 10.0),
       spelling=st.sampled_from(["--seed", "--seed="]))
def test_valid_values_reach_the_fields(seed, lr, spelling):
    seed_tokens = [f"--seed={seed}"] if spelling.endswith("=") else ["--seed", str(seed)]
    outcome, args = run_parser(seed_tokens + ["--learning-rate", repr(lr)])
    assert outcome == "ok"
    assert (args.seed, args.learning_rate) == (seed, lr)


# -------------------------------------------------------------------- config files

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-10**400, 10**400),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                        st.sampled_from(list(INTERVAL_STRATEGIES) + list(SAVE_STRATEGIES)
                                        + ["1e-3", "5e-5", "true", "no", "none", "all"]))
json_values = st.recursive(
    json_leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
config_keys = st.one_of(
    st.sampled_from(sorted(FIELD_NAMES)),
    st.sampled_from(sorted(FIELD_NAMES)).map(lambda k: k.replace("_", "-")),
    st.sampled_from(["lerning_rate", "eval-strategy", "--seed", "Seed", "", " ", "null"]),
    st.text(max_size=12))


def _valid_value(name: str):
    """A valid (or nearly valid) value of one field, as JSON/YAML would hold it."""
    hint = HINTS[name]
    if "Literal" in str(hint):
        return st.sampled_from(_literal_choices(hint))
    if name == "optim":
        return st.sampled_from(optimizer_names())
    if "bool" in str(hint):
        return st.one_of(st.booleans(), st.sampled_from(["yes", "false"]))
    if name.endswith("_steps") or name == "eval_steps":
        return st.one_of(st.integers(0, 10 ** 6), st.floats(0.001, 0.999))
    if hint in (int,) or "int" in str(hint):
        return st.integers(0, 1000)
    if hint is float:
        return st.one_of(st.floats(1e-9, 0.99), st.sampled_from(["5e-5", "0.1"]))
    if name in ("label_names", "report_to"):
        return st.one_of(st.lists(st.sampled_from(["labels", "tensorboard"]), max_size=2),
                         st.just("none"))
    if name == "lr_scheduler_kwargs":
        return st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers(),
                                                    max_size=2))
    return st.text(min_size=1, max_size=12)


@st.composite
def config_mappings(draw):
    data = {}
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["valid", "valid", "any"]))
        if kind == "valid":
            name = draw(st.sampled_from(sorted(FIELDS)))
            data[draw(st.sampled_from([name, name.replace("_", "-")]))] = draw(_valid_value(name))
        else:
            data[draw(config_keys)] = draw(json_values)
    return data


@st.composite
def config_files(draw):
    """(file name, bytes): JSON or YAML documents, valid or not, garbage, empty."""
    kind = draw(st.sampled_from(["json", "json", "yaml", "yaml", "garbage", "empty",
                                 "toplevel", "yaml-text", "json-deep", "yaml-tags"]))
    suffix = draw(st.sampled_from([".yaml", ".yml"])) if "yaml" in kind else ".json"
    if kind == "json":
        body = json.dumps(draw(config_mappings()), allow_nan=True).encode()
    elif kind == "yaml":
        body = yaml.safe_dump(draw(config_mappings()), allow_unicode=True).encode()
    elif kind == "garbage":
        suffix = draw(st.sampled_from([".json", ".yaml", ".yml", ".JSON", ".txt", ""]))
        body = draw(st.binary(max_size=64))
    elif kind == "empty":
        suffix = draw(st.sampled_from([".json", ".yaml", ".yml"]))
        body = draw(st.sampled_from([b"", b" \n", b"# nothing\n", b"---\n", b"\xef\xbb\xbf"]))
    elif kind == "toplevel":
        suffix = draw(st.sampled_from([".json", ".yaml"]))
        body = json.dumps(draw(json_values)).encode()
    elif kind == "yaml-text":
        pieces = list("ab:-[]{}&*!|>#'\" \n\t,?%@`1.0e") + ["seed", "learning_rate", "~", "\n  "]
        body = "".join(draw(st.lists(st.sampled_from(pieces), max_size=30))).encode()
    elif kind == "json-deep":
        depth = draw(st.integers(1, 50_000))
        body = ("[" * depth + "]" * depth if draw(st.booleans()) else
                '{"lr_scheduler_kwargs": ' + '{"a": ' * depth + "1" + "}" * (depth + 1)).encode()
    else:  # YAML features: anchors, aliases, tags, dates, sets, self references
        body = draw(st.sampled_from([
            "seed: !!python/object/apply:os.system ['true']\n",
            "output_dir: 2024-01-01\n", "output_dir: !!binary aGVsbG8=\n",
            "label_names: !!set {a, b}\n", "learning_rate: .inf\n", "learning_rate: .nan\n",
            "eval_strategy: &a [*a]\nevaluation_strategy: &b [*b]\n",
            "lr_scheduler_kwargs: &a {x: *a}\n", "label_names: &a [*a]\n",
            "? [a, b]\n: 1\n", "1: 2\n", "~: 3\n", "seed: 0o17\n", "seed: 0x1F\n",
            "learning_rate: 1" + "0" * 400 + "\n", "seed: 1" + "0" * 5000 + "\n",
            "do_train: on\n", "report_to: [none, all]\n", "- seed\n- 1\n", "'seed': 3\n",
            "save_steps: 1e3\n", "save_steps: 1.0e+3\n", "!!str seed: 1\n",
        ])).encode()
    return f"config{suffix}", body


@fast(150)
@given(config=config_files(), extra=st.lists(st.sampled_from(
    [["--seed", "7"], ["--learning_rate", "0.25"], ["--seed", "x"], ["--unknown"], []]),
    max_size=2))
def test_random_config_files_parse_or_exit_2_with_one_line(config, extra):
    name, body = config
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as file:
            file.write(body)
        argv = ["--config", path] + [token for pair in extra for token in pair]
        outcome, args = run_parser(argv)
    if outcome == "ok":
        given_on_the_line = dict(zip(argv[::2], argv[1::2]))
        if "--seed" in given_on_the_line:
            assert args.seed == 7  # the command line overrides the file
        if "--learning_rate" in given_on_the_line:
            assert args.learning_rate == 0.25


@fast(60)
@given(config=config_files())
def test_parse_json_and_yaml_files_raise_value_errors_only(config):
    name, body = config
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as file:
            file.write(body)
        method = (parser().parse_yaml_file if name.endswith((".yaml", ".yml"))
                  else parser().parse_json_file)
        try:
            (args,) = method(path)
        except (ValueError, TypeError) as error:
            assert str(error)
        else:
            assert_round_trips(args)


@fast(60)
@given(data=config_mappings(), seed=st.integers(0, 2 ** 32 - 1))
def test_the_command_line_overrides_any_valid_config(data, seed):
    """A config that parses, plus --seed on the command line: the seed of the command
    line, every other value as with the config alone."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "c.json")
        Path(path).write_text(json.dumps(data, allow_nan=True))
        alone = run_parser(["--config", path])
        if alone[0] != "ok":
            return
        both = run_parser(["--seed", str(seed), "--config", path])
    assert both[0] == "ok"
    assert both[1] == dataclasses.replace(alone[1], seed=seed)


# ------------------------------------------------------------ direct construction


class Strategy(enum.Enum):
    STEPS = "steps"
    EPOCH = "epoch"


any_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([10 ** 400, -10 ** 400, 10 ** 5000]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
    st.binary(max_size=4), st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=3),
    st.tuples(st.text(max_size=4)), st.dictionaries(st.text(max_size=4), json_leaves, max_size=2),
    st.sampled_from([Path("runs/x"), Strategy.STEPS, Strategy.EPOCH, Fraction(1, 3),
                     Fraction(10 ** 400, 1), {"a": float("nan")}, {(1, 2): 3}, {"a": {1, 2}},
                     [["nested"]], object(), float, "~/x", "", "none", "all", "steps"]))


@st.composite
def training_kwargs(draw):
    kwargs = {}
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.one_of(st.sampled_from(sorted(FIELD_NAMES)),
                              st.sampled_from(["lerning_rate", "evaluation-strategy", "lr"])))
        kwargs[name] = draw(st.one_of(_valid_value(name) if name in FIELDS else any_values,
                                      any_values))
    return kwargs


@fast(300)
@given(kwargs=training_kwargs())
def test_direct_construction_builds_or_names_the_field(kwargs):
    try:
        args = TrainingArguments(**kwargs)
    except (ValueError, TypeError) as error:
        message = str(error)
        names = set(kwargs) | FIELD_NAMES
        assert any(name in message for name in names), message
        assert "\n" not in message
    else:
        assert_round_trips(args)


@fast(60)
@given(data=st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(sorted(FIELD_NAMES)), st.text(max_size=6),
                              st.integers()), any_values, max_size=4),
    json_values), allow_extra_keys=st.booleans())
def test_from_dict_builds_or_raises_a_clear_error(data, allow_extra_keys):
    try:
        args = TrainingArguments.from_dict(data, allow_extra_keys=allow_extra_keys)
    except (ValueError, TypeError) as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert_round_trips(args)


@fast(60)
@given(text=st.one_of(st.text(max_size=30), json_values.map(json.dumps),
                      config_mappings().map(json.dumps)))
def test_from_json_string_builds_or_raises_a_value_error(text):
    try:
        args = TrainingArguments.from_json_string(text)
    except ValueError as error:
        assert str(error)
    else:
        assert_round_trips(args)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(learning_rate=10 ** 400), "learning_rate must be finite"),
    (dict(logging_steps=10 ** 400), "logging_steps must be finite"),
    (dict(seed=10 ** 5000), "seed must be in [0, 4294967295], got an integer of"),
    (dict(lr_scheduler_kwargs={"min_lr": float("nan")}), "lr_scheduler_kwargs must be JSON"),
    (dict(lr_scheduler_kwargs='{"a": Infinity}'), "lr_scheduler_kwargs must be JSON"),
    (dict(lr_scheduler_kwargs="[" * 5000), "lr_scheduler_kwargs"),
    (dict(lr_scheduler_kwargs=json.loads('{"a": ' * 500 + "1" + "}" * 500)),
     "lr_scheduler_kwargs is nested too deeply"),
    (dict(logging_strategy=10 ** 5000), "logging_strategy=an integer of"),
    (dict(dataloader_num_workers=10 ** 5000), "dataloader_num_workers must be at most 2**63 - 1"),
])
def test_regressions_found_by_the_properties(kwargs, fragment):
    """Inputs that used to raise OverflowError/RecursionError, fail to print, or be
    accepted and then fail (or write non-standard JSON) in to_json_string."""
    with pytest.raises(ValueError) as error:
        TrainingArguments(**kwargs)
    assert fragment in str(error.value)


def test_self_referencing_yaml_values_are_a_value_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("eval_strategy: &a [*a]\nevaluation_strategy: &b [*b]\n")
    with pytest.raises(ValueError, match="name the same argument with different values"):
        parser().parse_yaml_file(str(config))


def test_from_dict_with_keys_of_mixed_types_is_a_value_error():
    with pytest.raises(ValueError, match="unknown TrainingArguments keys: 1; 'a'"):
        TrainingArguments.from_dict({1: 2, "a": 3})


# ------------------------------------------------------------ in a real process

_SCRIPT = textwrap.dedent("""
    from pytrainer import ArgumentParser, TrainingArguments
    (args,) = ArgumentParser(TrainingArguments, prog="train.py").parse_args_into_dataclasses()
    print(args.to_json_string())
""")


@pytest.mark.parametrize("case", ["deep-json-config", "huge-int-yaml-config"])
def test_malformed_input_in_a_real_process_exits_2_without_traceback(tmp_path, case):
    if case == "deep-json-config":
        config = tmp_path / "deep.json"
        config.write_text("[" * 100_000 + "]" * 100_000)
        argv = ["--config", str(config)]
        expected = "nested too deeply"
    else:
        config = tmp_path / "c.yaml"
        config.write_text("learning_rate: 1" + "0" * 400 + "\n")
        argv = ["--seed", "3", "--config", str(config), "--report_to", "none"]
        expected = "learning_rate must be finite"
    done = subprocess.run([sys.executable, "-c", _SCRIPT, *argv], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: ") and expected in last, done.stderr
    assert done.stdout == ""
