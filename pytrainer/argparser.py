"""ArgumentParser: command-line flags, JSON and YAML files -> dataclass instances.

It behaves as Hugging Face's ``HfArgumentParser`` does, so scripts built on it
keep working: one flag per field (``--field_name`` and ``--field-name``), bool
flags bare or with a value, ``--no_<field>`` for bools that default to True,
choices for Literal and Enum fields, ``nargs="+"`` for list fields. It adds a
``--config FILE`` flag (JSON or YAML, overridden by the command line) and
"did you mean" hints; every mistake on the command line, including a
ValueError from a dataclass's ``__post_init__``, ends in ``parser.error``: a
one-line message and exit status 2. A dataclass that lists deprecated argument
names (``deprecated_arguments``, as TrainingArguments lists transformers 4.x's) gets
a flag for each, whose value goes to the constructor under that name.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Union, get_args, get_origin, \
    get_type_hints

from pytrainer._suggest import did_you_mean

__all__ = ["ArgumentParser", "string_to_bool"]

_TRUE = ("yes", "true", "t", "y", "1")
_FALSE = ("no", "false", "f", "n", "0")
_CONFIG_DEST = "_pytrainer_config_file"
_DEPRECATED_DEST = "_pytrainer_deprecated."
#: the namespace attribute collecting the dests given on the command line or in --config
_GIVEN = "_pytrainer_given"
#: choices beyond this many are not spelled out in the usage line (the error lists them)
_MAX_LISTED_CHOICES = 12


def string_to_bool(value: str | bool) -> bool:
    """``yes/no``, ``true/false``, ``t/f``, ``y/n``, ``1/0`` (any case) as a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"invalid boolean value {value!r}; use one of {', '.join(_TRUE + _FALSE)}")


@dataclasses.dataclass(frozen=True)
class _Flag:
    """How one dataclass field (or deprecated argument name) is read from text."""
    owner: type
    name: str  # the field's (or deprecated name's) name, the constructor keyword
    dest: str  # the argparse dest
    convert: Callable[[str], Any]
    is_list: bool
    required: bool
    keys: tuple[str, ...]  # what config files and parse_dict may call it
    #: for a deprecated name: the field it sets (None when it has no successor)
    replaces: str | None = None
    deprecated: bool = False


def _given(namespace: argparse.Namespace) -> set[str]:
    given = getattr(namespace, _GIVEN, None)
    if given is None:
        given = set()
        setattr(namespace, _GIVEN, given)
    return given


class _Store(argparse.Action):
    """argparse's store, also noting that the value was given (not a default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _given(namespace).add(self.dest)


class _StoreFalse(argparse.Action):
    """``--no_<field>``: stores False and notes it as given."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, False)
        _given(namespace).add(self.dest)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose flags are the fields of ``dataclass_types``.

    Flag rules (Hugging Face's): ``str | None`` and other ``X | None`` read an X;
    a union with ``str`` reads the other type; ``list[T]`` takes one or more values;
    ``dict`` fields take a JSON object; ``metadata["help"]`` is the help text,
    ``metadata["aliases"]`` adds flags, ``metadata["choices"]`` (a sequence, or a
    callable returning one) restricts the values. A field without a default is a
    required flag (bools excepted: they default to False).

    ``config_flag`` (default ``--config``; None for none) names a JSON or YAML file
    of values, which flags given on the command line override. Prefix
    abbreviations of flags are off (``allow_abbrev=False``): a flag added later
    would otherwise change what an abbreviation means.
    """

    def __init__(self, dataclass_types: type | Iterable[type], *,
                 config_flag: str | None = "--config", **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)
        if dataclasses.is_dataclass(dataclass_types):
            dataclass_types = [dataclass_types]
        self.dataclass_types: list[type] = list(dataclass_types)
        self._flags: list[_Flag] = []
        for owner in self.dataclass_types:
            if not (isinstance(owner, type) and dataclasses.is_dataclass(owner)):
                raise TypeError(f"ArgumentParser needs dataclass types, got {owner!r}")
            self._add_dataclass(owner)
        self._flags_by_key = {key: flag for flag in self._flags for key in flag.keys}
        self._config_flag = config_flag
        if config_flag is not None:
            if config_flag in self._option_string_actions:
                raise ValueError(f"the config flag {config_flag} is also a field's flag; pass "
                                 f"another config_flag, or config_flag=None")
            self.add_argument(config_flag, dest=_CONFIG_DEST, metavar="FILE",
                              default=argparse.SUPPRESS,
                              help="A JSON or YAML file (.json, .yaml, .yml) of argument values; "
                                   "flags given on the command line override them.")

    # ------------------------------------------------------------ building flags
    def _add_dataclass(self, owner: type) -> None:
        try:
            hints = get_type_hints(owner)
        except Exception as error:  # NameError, TypeError: an unresolvable annotation
            raise TypeError(f"cannot resolve the type annotations of {owner.__name__}: "
                            f"{error}") from None
        for f in dataclasses.fields(owner):
            if f.init:
                self._add_field(owner, f, hints[f.name])
        for name, entry in dict(getattr(owner, "deprecated_arguments", None) or {}).items():
            self._add_deprecated(owner, name, entry)

    def _add_field(self, owner: type, f: dataclasses.Field, hint: Any) -> None:
        meta = dict(f.metadata)
        aliases = meta.get("aliases", [])
        aliases = [aliases] if isinstance(aliases, str) else list(aliases)
        options = _spellings(f"--{f.name}")
        for alias in aliases:
            options += _spellings(alias)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        flag, kwargs, is_bool = self._reader(owner, f.name, f.name, hint, meta, default)
        required = default is dataclasses.MISSING and not is_bool
        if is_bool and default is dataclasses.MISSING:
            default = False
        # Required flags are checked after --config values are merged in, not by argparse.
        kwargs["default"] = argparse.SUPPRESS if required else default
        try:
            self.add_argument(*options, **kwargs)
            if is_bool and default is True:
                self.add_argument(*_dedupe([f"--no_{f.name}", f"--no-{f.name}",
                                            f"--no-{f.name.replace('_', '-')}"]),
                                  action=_StoreFalse, dest=f.name, default=argparse.SUPPRESS,
                                  help=f"Sets {f.name} to False.")
        except argparse.ArgumentError as error:
            raise ValueError(f"field {f.name} of {owner.__name__}: {error}") from None
        keys = [f.name] + [a.lstrip("-").replace("-", "_") for a in aliases if a.startswith("--")]
        self._flags.append(dataclasses.replace(flag, required=required, keys=tuple(keys)))

    def _add_deprecated(self, owner: type, name: str, entry: Any) -> None:
        """A flag for a deprecated argument name (skipped when another dataclass has a
        field of that name): given, it reaches the constructor under its own name, which
        warns and maps it."""
        options = [o for o in _spellings(f"--{name}") if o not in self._option_string_actions]
        if len(options) < len(_spellings(f"--{name}")):
            return
        replaces = getattr(entry, "field", None)
        advice = getattr(entry, "advice", "")
        meta = {"help": f"Deprecated (transformers 4.x): {advice}."}
        flag, kwargs, _ = self._reader(owner, name, f"{_DEPRECATED_DEST}{owner.__name__}.{name}",
                                       entry.hint, meta, dataclasses.MISSING)
        kwargs["default"] = argparse.SUPPRESS
        self.add_argument(*options, **kwargs)
        self._flags.append(dataclasses.replace(flag, keys=(name,), replaces=replaces,
                                               deprecated=True))

    def _reader(self, owner: type, name: str, dest: str, hint: Any, meta: dict,
                default: Any) -> tuple[_Flag, dict[str, Any], bool]:
        """The flag of a field of type ``hint``, and its add_argument keywords (no default)."""
        hint = _strip_optional(name, hint)
        kwargs: dict[str, Any] = {"dest": dest, "action": _Store,
                                  "help": str(meta.get("help", "")).replace("%", "%%")}
        is_list = get_origin(hint) is list or hint is list
        if is_list:
            args = get_args(hint)
            hint = args[0] if args else str
            kwargs["nargs"] = "+"
        convert, metavar = _converter(name, hint, meta.get("choices"))
        kwargs["type"] = convert
        kwargs["metavar"] = metavar or name.upper()
        is_bool = (hint is bool or hint is _BoolOrText) and not is_list
        if is_bool:
            # Bare ``--flag`` means True; ``--flag false`` also works.
            kwargs.update(nargs="?", const=True, metavar="BOOL" if hint is bool else "BOOL|TEXT")
        for key in ("nargs", "const"):  # Hugging Face's metadata, e.g. a bare --fsdp
            if key in meta:
                kwargs[key] = meta[key]
        flag = _Flag(owner, name, dest, convert, is_list, False, (name,))
        return flag, kwargs, hint is bool and not is_list

    # ------------------------------------------------------------------ parsing
    def parse_args_into_dataclasses(self, args: Iterable[str] | None = None,
                                    return_remaining_strings: bool = False,
                                    look_for_args_file: bool = False,
                                    args_filename: str | os.PathLike | None = None,
                                    args_file_flag: str | None = None) -> tuple[Any, ...]:
        """The dataclass instances that ``args`` (default ``sys.argv[1:]``) describe,
        in the order of ``dataclass_types``; then an ``argparse.Namespace`` of flags
        added with ``add_argument`` (when there are any); then, with
        ``return_remaining_strings``, the unparsed strings (otherwise they are an error).
        Values of the ``--config`` file apply first; the command line overrides them.

        ``look_for_args_file``, ``args_filename`` and ``args_file_flag`` are Hugging
        Face's files of extra command-line tokens, read before the command line
        (so it wins). Unlike there, ``<script>.args`` is only read when
        ``look_for_args_file`` is True: a file that silently changes a run is
        what ``--config`` makes explicit."""
        args = list(sys.argv[1:] if args is None else args)
        args = self._args_file_tokens(args, look_for_args_file, args_filename,
                                      args_file_flag) + args
        namespace = argparse.Namespace()
        config_path = self._find_config(args)
        if config_path is not None:
            try:
                values = self._coerce_mapping(_load_config(config_path))
                namespace = argparse.Namespace(**values)
                _given(namespace).update(values)
            except (OSError, ValueError, ImportError) as error:
                self.error(_one_line(f"{self._config_flag} {config_path}: {error}"))
            except RecursionError:  # e.g. comparing self-referencing YAML values
                self.error(_one_line(f"{self._config_flag} {config_path}: values nested too "
                                     f"deeply (or referring to themselves) to read"))
        namespace, remaining = self.parse_known_args(args, namespace=namespace)
        vars(namespace).pop(_CONFIG_DEST, None)
        given = vars(namespace).pop(_GIVEN, set())
        if remaining and not return_remaining_strings:
            self.error(self._unrecognized(remaining))
        missing = [f"--{flag.name}" for flag in self._flags
                   if flag.required and not hasattr(namespace, flag.dest)]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        outputs: list[Any] = []
        for owner in self.dataclass_types:
            inputs = {flag.name: vars(namespace).pop(flag.dest) for flag in self._flags
                      if flag.owner is owner and hasattr(namespace, flag.dest)}
            for flag in self._flags:
                # A deprecated name given, and its field only at its default: the name's
                # value is the one asked for (the constructor checks the pair when both
                # were given).
                if flag.owner is owner and flag.deprecated and flag.name in inputs and \
                        flag.replaces in inputs and flag.replaces not in given:
                    del inputs[flag.replaces]
            try:
                outputs.append(owner(**inputs))
            except (ValueError, TypeError) as error:
                self.error(_one_line(str(error)))
        if vars(namespace):
            outputs.append(namespace)
        if return_remaining_strings:
            outputs.append(remaining)
        return tuple(outputs)

    def parse_dict(self, data: Mapping[str, Any], allow_extra_keys: bool = False
                   ) -> tuple[Any, ...]:
        """The dataclass instances a mapping of field names to values describes.

        Unlike Hugging Face's, strings are converted as on the command line when the
        field is not a string (``learning_rate: 5e-5`` is a string to YAML), and a
        scalar given for a list field becomes a one-item list. Unknown keys raise a
        ValueError unless ``allow_extra_keys``."""
        values = self._coerce_mapping(data, allow_extra_keys)
        missing = [flag.name for flag in self._flags if flag.required and flag.dest not in values]
        if missing:
            raise ValueError(f"missing required values: {', '.join(missing)}")
        return tuple(owner(**{flag.name: values[flag.dest] for flag in self._flags
                              if flag.owner is owner and flag.dest in values})
                     for owner in self.dataclass_types)

    def parse_json_file(self, json_file: str | os.PathLike, allow_extra_keys: bool = False
                        ) -> tuple[Any, ...]:
        """:meth:`parse_dict` of a JSON file's top-level object."""
        return self.parse_dict(_load_json(json_file), allow_extra_keys)

    def parse_yaml_file(self, yaml_file: str | os.PathLike, allow_extra_keys: bool = False
                        ) -> tuple[Any, ...]:
        """:meth:`parse_dict` of a YAML file's top-level mapping (needs PyYAML)."""
        return self.parse_dict(_load_yaml(yaml_file), allow_extra_keys)

    # ---------------------------------------------------------------- internals
    def _args_file_tokens(self, args: list[str], look_for_args_file: bool,
                          args_filename: str | os.PathLike | None,
                          args_file_flag: str | None) -> list[str]:
        """Tokens of Hugging Face's args files; removes ``args_file_flag`` from ``args``."""
        paths = []
        if args_filename is not None:
            paths.append(Path(args_filename))
        elif look_for_args_file and sys.argv and sys.argv[0]:
            script_args = Path(sys.argv[0]).with_suffix(".args")
            if script_args.exists():
                paths.append(script_args)
        if args_file_flag is not None:
            finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False,
                                             exit_on_error=False)
            finder.add_argument(args_file_flag, dest="files", action="append", default=[])
            try:
                found, rest = finder.parse_known_args(args)
            except argparse.ArgumentError as error:
                self.error(str(error))
            args[:] = rest
            paths += [Path(p) for p in found.files]
        tokens: list[str] = []
        for path in paths:
            try:
                tokens += path.read_text(encoding="utf-8").split()
            except OSError as error:
                self.error(f"args file {path}: {error}")
        return tokens

    def _find_config(self, args: list[str]) -> str | None:
        if self._config_flag is None:
            return None
        finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
        finder.add_argument(self._config_flag, dest="config")
        try:
            found, _ = finder.parse_known_args(args)
        except argparse.ArgumentError as error:
            self.error(str(error))
        return found.config

    def _coerce_mapping(self, data: Any, allow_extra_keys: bool = False) -> dict[str, Any]:
        """``{dest: value}`` from a config mapping, strings converted by field type."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping of argument names to values, got "
                             f"{type(data).__name__}")
        values: dict[str, Any] = {}
        given_as: dict[str, str] = {}
        unknown = []
        for key, value in data.items():
            flag = self._flags_by_key.get(str(key).replace("-", "_"))
            if flag is None:
                unknown.append(str(key))
                continue
            value = _coerce(flag, key, value)
            if flag.dest in values and _differ(values[flag.dest], value):
                raise ValueError(f"{given_as[flag.dest]!r} and {key!r} name the same argument "
                                 f"with different values ({values[flag.dest]!r}, {value!r})")
            values[flag.dest], given_as[flag.dest] = value, key
        if unknown and not allow_extra_keys:
            hints = "; ".join(f"{key!r}{did_you_mean(key, self._flags_by_key)}" for key in unknown)
            raise ValueError(f"unknown keys: {hints}")
        return values

    def _unrecognized(self, remaining: list[str]) -> str:
        hints = []
        for token in remaining:
            if not token.startswith("--"):
                continue
            option = _show_token(token.split("=", 1)[0])
            hint = did_you_mean(option, self._option_string_actions, quote=str)
            if hint:
                hints.append(f"{hint.strip()[:-1]} (for {option})?" if len(remaining) > 1
                             else hint.strip())
        message = f"unrecognized arguments: {' '.join(map(_show_token, remaining))}"
        return f"{message}. {' '.join(hints)}" if hints else message


def _show_token(token: str) -> str:
    """A command-line token as an error message shows it: quoted when it holds a newline
    or another unprintable character, so that the message stays on one line."""
    return token if token.isprintable() else repr(token)


def _spellings(option: str) -> list[str]:
    """``--field_name`` and ``--field-name``; a short alias (``-x``) as given."""
    if not option.startswith("--"):
        return [option]
    return _dedupe([option, "--" + option[2:].replace("_", "-")])


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


class _BoolOrText:
    """The read type of a ``bool | str`` field: a boolean word is a bool, other text stays
    text (``--include_num_input_tokens_seen non_padding``; bare, the flag is True)."""


class _JsonOrText:
    """The read type of a ``dict | str`` field: text, checked to be a JSON object when it
    starts with ``{`` (other text is a path to transformers)."""


def _strip_optional(name: str, hint: Any) -> Any:
    """The type a union field reads: X for ``X | None``; for a union with ``str``, the
    other type (Hugging Face's rule), except that a list member wins (several values),
    a dict member reads JSON objects (other text stays text), a bool member reads
    boolean words (other text stays text), and a Literal member leaves it text."""
    if get_origin(hint) not in (Union, types.UnionType):
        return hint
    members = [m for m in get_args(hint) if m is not type(None)]
    if len(members) == 1:
        return members[0]
    for member in members:
        if get_origin(member) is list or member is list:
            return member
    for member in members:
        if get_origin(member) is dict or member is dict:
            return _JsonOrText if str in members else member
    if str in members:
        others = [m for m in members if m is not str]
        if others == [bool]:
            return _BoolOrText
        if len(others) == 1 and get_origin(others[0]) is not Literal:
            return others[0]
        return str
    raise ValueError(f"field {name}: unsupported type {hint}; use X | None, or a union "
                     f"with str")


def _converter(name: str, hint: Any, choices: Any) -> tuple[Callable[[str], Any], str | None]:
    """(text -> value, metavar) for a field's (element) type."""
    if choices is None:
        if get_origin(hint) is Literal:
            choices = get_args(hint)
        elif isinstance(hint, type) and issubclass(hint, enum.Enum):
            choices = list(hint)
    if choices is not None:
        return _choice_converter(name, choices)
    if hint is bool:
        return string_to_bool, None
    if hint is _BoolOrText:
        return _bool_or_text, None
    if hint is _JsonOrText:
        return _json_or_text, "JSON"
    if get_origin(hint) is dict or hint is dict:
        return _json_object, "JSON"
    if hint is Any:
        return str, None
    if isinstance(hint, type) and get_origin(hint) is None:
        return hint, None
    raise ValueError(f"field {name}: unsupported type {hint} for a command-line flag")


def _bool_or_text(text: str) -> bool | str:
    return string_to_bool(text) if text.strip().lower() in _TRUE + _FALSE else text


def _json_or_text(text: str) -> str:
    """The text itself, checked to be a JSON object when it looks like one: the dataclass
    reads it (transformers types the string leaves of a JSON given as text)."""
    if text.lstrip().startswith("{"):
        _json_object(text)
    return text


def _choice_converter(name: str, choices: Any) -> tuple[Callable[[str], Any], str]:
    """A converter accepting the text of one of ``choices`` (enum members by value).
    ``choices`` may be a callable or a lazy sequence, asked at conversion time so that
    values that become valid later (an optimizer registered after the parser was
    built) count. Long lists are named in the usage line, not spelled out."""
    def table() -> dict[str, Any]:
        values = choices() if callable(choices) else choices
        return {str(v.value if isinstance(v, enum.Enum) else v): v for v in values}

    def choice(text: str) -> Any:
        by_text = table()
        if text in by_text:
            return by_text[text]
        raise argparse.ArgumentTypeError(
            f"invalid choice {text!r}; valid values: {', '.join(by_text)}."
            f"{did_you_mean(text, by_text)}")

    listed = list(table())
    if len(listed) > _MAX_LISTED_CHOICES:
        return choice, name.upper()
    return choice, "{" + ",".join(listed) + "}"


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("not read: the JSON is nested too deeply") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _coerce(flag: _Flag, key: str, value: Any) -> Any:
    """A config-file value as the command line would give it: strings converted by the
    field's type, a scalar for a list field made a one-item list."""
    if value is None:
        return None
    try:
        if flag.is_list:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [flag.convert(v) if isinstance(v, str) else v for v in items]
        if isinstance(value, str):
            return flag.convert(value)
        if flag.convert is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads `output_dir: 2024` as a number
        return value
    except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
        raise ValueError(f"{key}={value!r}: {error}") from None


def _load_config(path: str) -> Any:
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return _load_json(path)
    if suffix in (".yaml", ".yml"):
        return _load_yaml(path)
    raise ValueError(f"unsupported config file type {suffix or '(no extension)'!r}; "
                     f"use .json, .yaml or .yml")


def _load_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{os.fspath(path)} is not valid JSON: {error}") from None
        except RecursionError:
            raise ValueError(f"{os.fspath(path)} is nested too deeply to read") from None


def _load_yaml(path: str | os.PathLike) -> Any:
    try:
        import yaml  # optional: pip install 'pytrainer[yaml]'
    except ImportError:
        raise ImportError("reading YAML files needs PyYAML: pip install pyyaml "
                          "(or pip install 'pytrainer[yaml]')") from None
    with open(path, encoding="utf-8") as file:
        try:
            data = yaml.safe_load(file)
        except yaml.YAMLError as error:
            raise ValueError(f"{os.fspath(path)} is not valid YAML: "
                             f"{_one_line(str(error))}") from None
        except RecursionError:
            raise ValueError(f"{os.fspath(path)} is nested too deeply to read") from None
    return {} if data is None else data


def _differ(a: Any, b: Any) -> bool:
    """``a != b``; True for values too deeply nested (or self-referencing) to compare."""
    try:
        return bool(a != b)
    except RecursionError:
        return True


def _one_line(text: str) -> str:
    return " ".join(text.split())
