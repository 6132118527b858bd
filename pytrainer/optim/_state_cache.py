"""Keeping an optimizer's per-group tensor lists between steps, safely.

A step over thousands of parameters spends most of its Python time looking up
each parameter's state (a dict keyed by tensors hashes each one in Python).
The lists only change when the state does, so the optimizer's state map and
every per-parameter state dict are replaced by versions of themselves that
count their changes; cached lists are valid while the count is unchanged.
Tensors updated in place (what the kernels do) change nothing; replacing a
state tensor, a parameter's whole state or the map does.
"""
from __future__ import annotations

import collections
import itertools
import operator
from typing import Any

__all__ = ["Version", "TrackedState", "TrackedStateMap", "GroupCache", "grads_or_none"]


class Version:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


class _Counting:
    """Bumps ``self._version`` before every change that removes entries; the
    classes below add the changes that store them."""

    __slots__ = ()

    def __delitem__(self, key):
        self._version.bump()
        super().__delitem__(key)

    def pop(self, *args):
        self._version.bump()
        return super().pop(*args)

    def popitem(self):
        self._version.bump()
        return super().popitem()

    def clear(self):
        self._version.bump()
        super().clear()


class TrackedState(_Counting, dict):
    """One parameter's state; any change bumps the optimizer's version. Pickles
    (and so saves in checkpoints) as a plain dict."""

    __slots__ = ("_version",)

    def __init__(self, version: Version, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._version = version

    def __setitem__(self, key, value):
        self._version.bump()
        super().__setitem__(key, value)

    def update(self, *args, **kwargs):
        self._version.bump()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._version.bump()
        return super().setdefault(key, default)

    def __ior__(self, other):
        self._version.bump()
        return super().__ior__(other)

    def __reduce__(self):
        return (dict, (dict(self),))

    def __copy__(self):
        return dict(self)

    def __deepcopy__(self, memo):
        import copy
        return {copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in self.items()}


class TrackedStateMap(_Counting, collections.defaultdict):
    """The optimizer's ``state`` (param -> TrackedState); any change bumps the version."""

    def __init__(self, version: Version, items: Any = ()):
        super().__init__(self._new_state)
        self._version = version
        for key, value in dict(items).items():
            dict.__setitem__(self, key, self._track(value))

    def _new_state(self) -> TrackedState:
        return TrackedState(self._version)

    def _track(self, value: Any) -> Any:
        if isinstance(value, dict) and not isinstance(value, TrackedState):
            return TrackedState(self._version, value)
        return value

    def __setitem__(self, key, value):
        self._version.bump()
        super().__setitem__(key, self._track(value))

    def update(self, *args, **kwargs):
        self._version.bump()
        for key, value in dict(*args, **kwargs).items():
            super().__setitem__(key, self._track(value))

    def setdefault(self, key, default=None):
        self._version.bump()
        return super().setdefault(key, self._track(default))

    def __reduce__(self):
        return (collections.defaultdict, (dict,), None, None, iter(
            (k, dict(v) if isinstance(v, TrackedState) else v) for k, v in self.items()))

    def __copy__(self):
        return collections.defaultdict(dict, self.items())

    def __deepcopy__(self, memo):
        import copy
        return collections.defaultdict(dict, copy.deepcopy(dict(self.items()), memo))


class GroupCache:
    """The tensor lists of one param group at one version of the state."""

    __slots__ = ("version", "params_list", "count", "keys", "params", "lists", "steps")

    def __init__(self, version: int, params_list: list, keys: tuple, params: list,
                 lists: dict[str, list], steps: list):
        self.version = version
        self.params_list = params_list
        self.count = len(params_list)
        self.keys = keys
        self.params = params
        self.lists = lists
        self.steps = steps

    def valid(self, version: int, params_list: list, keys: tuple) -> bool:
        return (self.version == version and self.params_list is params_list
                and self.count == len(params_list) and self.keys == keys)


def grads_or_none(params: list) -> list | None:
    """The params' grads, or None when one has none (C-level loops: no Python
    call per parameter)."""
    grads = list(map(operator.attrgetter("grad"), params))
    if any(map(operator.is_, grads, itertools.repeat(None))):
        return None
    return grads
