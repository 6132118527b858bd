"""The "did you mean ...?" hint shared by pytrainer's error messages."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable

__all__ = ["did_you_mean", "invalid_choice_message"]


def did_you_mean(value: Any, choices: Iterable[Any], *, quote: Callable[[str], str] = repr) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices`` to ``value``, or ``""``
    when none is close enough to be a likely typo."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" Did you mean {quote(close[0])}?" if close else ""


def invalid_choice_message(name: str, value: Any, choices: Iterable[Any]) -> str:
    """``name='x' is not valid; valid values: a, b, c. Did you mean 'b'?``"""
    choices = [str(c) for c in choices]
    return (f"{name}={value!r} is not valid; valid values: {', '.join(choices)}."
            f"{did_you_mean(value, choices)}")
