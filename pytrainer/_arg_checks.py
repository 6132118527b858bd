"""The value checks of TrainingArguments' fields: each returns the value in its
stored form, or raises a one-line ValueError naming the field and the value."""
from __future__ import annotations

import enum
import json
import math
import numbers
from typing import Any, Iterable

from pytrainer._suggest import invalid_choice_message

#: seeds reach numpy, whose seeds are unsigned 32-bit integers
MAX_SEED = 2**32 - 1
#: beyond what torch, numpy and JSON readers hold
MAX_INT = 2**63 - 1
MAX_JSON_DEPTH = 100


def plain(value: Any) -> Any:
    """An enum member (e.g. transformers' IntervalStrategy.STEPS) as its plain value."""
    return value.value if isinstance(value, enum.Enum) else value


def show(value: Any) -> str:
    """``repr(value)`` for an error message; never raises (an int past Python's 4300-digit
    string limit, or a structure nested too deeply to print, is described instead)."""
    try:
        return repr(value)
    except (ValueError, RecursionError):
        if isinstance(value, int):
            return f"an integer of {value.bit_length()} bits"
        return f"a {type(value).__name__} nested too deeply to print"


def check_bool(name: str, value: Any, *, allow_none: bool = False) -> None:
    # Strict: a string such as "false" is truthy, the bug this check exists for.
    if isinstance(value, bool) or (allow_none and value is None):
        return
    expected = "True, False or None" if allow_none else "True or False"
    raise ValueError(f"{name} must be {expected}, got {show(value)}")


def check_str(name: str, value: Any, *, allow_none: bool = False, nonempty: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, str) and (value or not nonempty):
        return
    what = "a non-empty string" if nonempty else "a string"
    raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {show(value)}")


def to_int(name: str, value: Any, *, minimum: int, maximum: int | None = None,
           why: str = "", allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer{' or None' if allow_none else ''}, got "
                         f"{show(value)}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = (f"in [{minimum}, {maximum}]" if maximum is not None
                 else "a positive integer" if minimum == 1 else f">= {minimum}")
        raise ValueError(f"{name} must be {bound}, got {show(value)}" +
                         (f" ({why})" if why else ""))
    if value > MAX_INT:
        raise ValueError(f"{name} must be at most 2**63 - 1, got {show(value)}")
    return value


def to_float(name: str, value: Any, *, minimum: float | None = None, above: float | None = None,
             maximum: float | None = None, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number{' or None' if allow_none else ''}, got "
                         f"{show(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int (or Fraction) beyond float's range
        raise ValueError(f"{name} must be finite, got {show(value)}, too large for a "
                         f"float") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be > {above:g}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value!r}")
    return value


def to_steps(name: str, value: Any) -> int | float:
    """A step-valued field: an integral count >= 1 (stored as int), 0, or a ratio in (0, 1)."""
    value = to_float(name, value, minimum=0.0)
    if value == 0:
        return 0
    if value >= 1:
        if value != int(value):
            raise ValueError(f"{name} must be an integer when >= 1 (values below 1 are ratios "
                             f"of the total steps), got {value!r}")
        return int(value)
    return value


def choice(name: str, value: Any, choices: Iterable[str], *, allow_none: bool = False) -> Any:
    value = plain(value)
    if value is None and allow_none:
        return None
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        if not isinstance(value, str):  # (repr of any value, e.g. a 5000-digit int, may fail)
            raise ValueError(f"{name}={show(value)} is not valid; valid values: "
                             f"{', '.join(choices)}.")
        raise ValueError(invalid_choice_message(name, value, choices))
    return value


def string_list(name: str, value: Any, *, allow_none: bool = True) -> list[str] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{name} must be a list of strings{' or None' if allow_none else ''}, got "
                     f"{show(value)}")


def _typed_leaves(value: dict) -> dict:
    """Hugging Face's reading of the string leaves of a dict given as JSON text: "true" and
    "false" (any case) become bools, digit strings ints, "1.5"-like strings floats."""
    for key, item in value.items():
        if isinstance(item, dict):
            _typed_leaves(item)
        elif isinstance(item, str):
            if item.lower() in ("true", "false"):
                value[key] = item.lower() == "true"
            elif item.isdigit():
                value[key] = int(item)
            elif item.replace(".", "", 1).isdigit():
                value[key] = float(item)
    return value


def json_object(name: str, value: Any) -> dict[str, Any] | None:
    """None, a dict, or a JSON object string (the command-line form, whose string leaves are
    typed as Hugging Face types them) -> None or a dict, checked to be JSON-serialisable so
    that checkpoints can store it."""
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name} must be a dict or a JSON object string, got {given!r} "
                             f"({error})") from None
        except RecursionError:
            raise ValueError(f"{name}: the JSON object string is nested too deeply") from None
        if isinstance(value, dict) and _nesting_depth(value) <= MAX_JSON_DEPTH:
            value = _typed_leaves(value)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict or a JSON object string, got {show(given)}")
    try:
        # Stored in its JSON form (tuples become lists), so that a checkpoint's copy
        # rebuilds an equal object. Strict JSON: NaN and infinities would be written
        # as non-standard tokens and a NaN would not compare equal when read back.
        stored = json.loads(json.dumps(value, allow_nan=False))
    except RecursionError:
        stored = None
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be JSON-serialisable (JSON types, finite numbers), got "
                         f"{show(value)} ({error})") from None
    if stored is None or _nesting_depth(stored) > MAX_JSON_DEPTH:
        # to_dict and to_json_string recurse through it (and must not fail at a checkpoint)
        raise ValueError(f"{name} is nested too deeply: at most {MAX_JSON_DEPTH} levels of "
                         f"dicts and lists are supported")
    return stored


def _nesting_depth(value: Any) -> int:
    """Levels of dicts and lists in a JSON value (without recursion), stopping past the limit."""
    deepest, pending = 0, [(value, 1)]
    while pending and deepest <= MAX_JSON_DEPTH:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in children)
    return deepest


def copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


def same(a: Any, b: Any) -> bool:
    """``a == b`` (bools and numbers kept apart: True is not 1); False for values that
    cannot be compared (too deeply nested, or referring to themselves)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    try:
        return bool(a == b)
    except (RecursionError, TypeError, ValueError):
        return False
