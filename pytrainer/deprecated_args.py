"""transformers 4.x names of TrainingArguments that scripts and ``training_args.json``
files still carry, and what each means now.

Each name is accepted by the constructor, ``from_dict``, the command line and config
files, warns once per process (a FutureWarning), and is never stored under its own
name: ``to_dict`` writes current fields only. What "maps to the current field" means
depends on the name:

- a successor field exists: the value moves there (``evaluation_strategy`` ->
  ``eval_strategy``, ``no_cuda=True`` -> ``use_cpu=True``, ``warmup_ratio=0.1`` ->
  ``warmup_steps=0.1``, ``group_by_length=True`` ->
  ``train_sampling_strategy="group_by_length"``, ...). Given together with that field
  and disagreeing, it is a ValueError;
- no successor, but its value still means something to a reader: it is kept on the
  object for that reader (``overwrite_output_dir`` for scripts, which are all that
  ever read it; ``logging_dir`` for the TensorBoard callback);
- no successor and a feature pytrainer lacks (``past_index``, ``jit_mode_eval``, apex
  AMP levels, ...): accepted at its transformers 4.x default only, as the field kinds
  of ``pytrainer.field_kinds`` are; any other value is a ValueError saying why.

``save_safetensors`` is not here: it stays a field (see ``field_kinds.PYTRAINER_FIELDS``).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pytrainer._arg_checks import (check_bool, check_str, choice, plain, same, show, to_float,
                                   to_int)

__all__ = ["Deprecated", "DEPRECATED", "UNCHANGED", "KEPT", "resolve", "merge", "read",
           "write", "warn_once", "reset_warnings"]

#: a deprecated name's value that leaves its field as it is (``no_cuda=False``)
UNCHANGED = object()
#: the instance attribute holding the values kept for their readers
KEPT = "_transformers4_values"


@dataclass(frozen=True)
class Deprecated:
    #: the current field the value maps to; None when the name has no successor
    field: str | None
    #: its type, from which the command line reads it
    hint: Any
    #: its transformers 4.x default
    default: Any
    #: the value as its field's value (or UNCHANGED); checks it, raising ValueError
    to_field: Callable[[Any], Any]
    #: what reading ``args.<name>`` gives
    read: Callable[[Any], Any]
    #: the warning's advice
    advice: str
    #: with ``field`` also given: (given, mapped) -> the field's value; None means the
    #: two must agree
    combine: Callable[[Any, Any], Any] | None = None
    #: kept on the object for its readers (no successor field)
    kept: bool = False
    #: a plain rename: ``args.<name> = value`` sets the field
    rename: bool = False


def _rename(field: str, hint: Any, default: Any, check: Callable[[Any], Any] | None = None,
            advice: str = "") -> Deprecated:
    def to_field(value: Any) -> Any:
        if value is None or same(value, default):
            return UNCHANGED
        return check(value) if check else value
    return Deprecated(field, hint, default, to_field, lambda args: getattr(args, field),
                      advice or f"use {field}", rename=True)


def _switch(name: str, field: str, value_when_true: Any, read: Callable[[Any], Any],
            advice: str, combine: Callable[[Any, Any], Any] | None = None) -> Deprecated:
    """A bool whose True sets ``field`` to ``value_when_true`` and whose False changes nothing."""
    def to_field(value: Any) -> Any:
        check_bool(name, value)
        if not value:
            return UNCHANGED
        return list(value_when_true) if isinstance(value_when_true, list) else value_when_true
    return Deprecated(field, bool, False, to_field, read, advice, combine=combine)


def _default_only(name: str, hint: Any, default: Any, why: str,
                  also_default: tuple[Any, ...] = ()) -> Deprecated:
    """No successor, and a feature pytrainer lacks: only the 4.x default is accepted."""
    def to_field(value: Any) -> Any:
        if same(value, default) or any(same(value, d) for d in also_default):
            return UNCHANGED
        raise ValueError(f"{name}={show(value)} (a transformers 4.x argument) is not available "
                         f"in pytrainer: {why}")
    return Deprecated(None, hint, default, to_field, lambda args: default,
                      f"drop it; only its default {default!r} is accepted ({why})")


def _kept(name: str, hint: Any, default: Any, check: Callable[[Any], Any],
          advice: str) -> Deprecated:
    def read_kept(args: Any) -> Any:
        return getattr(args, KEPT, {}).get(name, default)
    return Deprecated(None, hint, default, check, read_kept, advice, kept=True)


def _warmup_ratio(value: Any) -> Any:
    if value is None:
        return UNCHANGED
    value = to_float("warmup_ratio", value, minimum=0.0, maximum=1.0)
    if value == 0:
        return UNCHANGED
    if value == 1:
        raise ValueError("warmup_ratio=1.0 (warm up for the whole run) has no warmup_steps form: "
                         "warmup_steps values >= 1 are step counts; give warmup_steps as the "
                         "run's number of optimizer steps")
    return value


class _Disagree(Exception):
    """A ``combine`` found the two values contradicting each other."""


def _unless_set(unset: Any) -> Callable[[Any, Any], Any]:
    """A combine for the names that overrode their field in transformers 4.x when the field
    was at ``unset``: a 4.x ``training_args.json`` holds both, the field at its default."""
    def combine(given: Any, mapped: Any) -> Any:
        if same(given, unset) or same(given, mapped):
            return mapped
        raise _Disagree()
    return combine


def _per_gpu(name: str, field: str) -> Deprecated:
    entry = _rename(field, int | None, None, lambda value: to_int(name, value, minimum=1))
    return dataclasses.replace(entry, combine=_unless_set(8))


def _add_inputs(given: Any, mapped: Any) -> Any:
    given = list(given) if isinstance(given, (list, tuple)) else given
    return given + ["inputs"] if isinstance(given, list) and "inputs" not in given else given


def _tokens_counted(given: Any, mapped: Any) -> Any:
    # In transformers 4.x the two were independent; tokens per second needs the tokens
    # counted, in whichever mode the field asks for ("all" when it asks for none).
    given = "all" if given is True else "no" if given is False else given
    return "all" if given == "no" else given


def _backend(name: str) -> Deprecated:
    def to_field(value: Any) -> Any:
        value = choice(name, value, ("auto", "amp", "cpu_amp", "apex"))
        if value == "apex":
            raise ValueError(f"{name}='apex' (a transformers 4.x argument) is not available in "
                             f"pytrainer: mixed precision is torch.amp (fp16=True or bf16=True)")
        return UNCHANGED
    return Deprecated(None, str, "auto", to_field, lambda args: "auto",
                      "drop it; mixed precision is torch.amp (fp16=True or bf16=True)")


def _logging_dir(value: Any) -> Any:
    check_str("logging_dir", value, allow_none=True, nonempty=True)
    return None if value is None else os.path.expanduser(value)


def _overwrite_output_dir(value: Any) -> Any:
    check_bool("overwrite_output_dir", value)
    return value


DEPRECATED: dict[str, Deprecated] = {
    "evaluation_strategy": _rename("eval_strategy", Literal["no", "steps", "epoch"], None),
    "no_cuda": _switch("no_cuda", "use_cpu", True, lambda args: args.use_cpu, "use use_cpu"),
    "use_mps_device": _switch(
        "use_mps_device", "use_cpu", False, lambda args: False,
        "drop it: the MPS device is used when available unless use_cpu=True"),
    "per_gpu_train_batch_size": _per_gpu("per_gpu_train_batch_size",
                                         "per_device_train_batch_size"),
    "per_gpu_eval_batch_size": _per_gpu("per_gpu_eval_batch_size",
                                        "per_device_eval_batch_size"),
    "warmup_ratio": Deprecated(
        "warmup_steps", float, 0.0, _warmup_ratio,
        lambda args: args.warmup_steps if 0 < args.warmup_steps < 1 else 0.0,
        "use warmup_steps, which is a ratio of the run's steps when below 1",
        combine=_unless_set(0)),
    "group_by_length": _switch(
        "group_by_length", "train_sampling_strategy", "group_by_length",
        lambda args: args.train_sampling_strategy == "group_by_length",
        "use train_sampling_strategy='group_by_length'"),
    "include_inputs_for_metrics": _switch(
        "include_inputs_for_metrics", "include_for_metrics", ["inputs"],
        lambda args: "inputs" in args.include_for_metrics,
        "use include_for_metrics=['inputs']", combine=_add_inputs),
    "include_tokens_per_second": _switch(
        "include_tokens_per_second", "include_num_input_tokens_seen", "all",
        lambda args: args.include_num_input_tokens_seen != "no",
        "use include_num_input_tokens_seen, which also logs tokens per second",
        combine=_tokens_counted),
    "adafactor": _switch("adafactor", "optim", "adafactor",
                         lambda args: args.optim == "adafactor", "use optim='adafactor'"),
    "torchdynamo": _rename("torch_compile_backend", str | None, None,
                           advice="use torch_compile_backend"),
    "push_to_hub_model_id": _rename("hub_model_id", str | None, None, advice="use hub_model_id"),
    "push_to_hub_token": Deprecated(
        "hub_token", str | None, None,
        lambda value: UNCHANGED if value in (None, "<PUSH_TO_HUB_TOKEN>") else value,
        lambda args: args.hub_token, "use hub_token"),
    "push_to_hub_organization": _default_only(
        "push_to_hub_organization", str | None, None,
        "pytrainer does not upload to the Hugging Face Hub; upload output_dir with "
        "huggingface_hub's upload_folder"),
    "overwrite_output_dir": _kept(
        "overwrite_output_dir", bool, False, _overwrite_output_dir,
        "transformers 5 dropped it; pytrainer keeps the value for scripts that read "
        "args.overwrite_output_dir (no Trainer reads it)"),
    "logging_dir": _kept(
        "logging_dir", str | None, None, _logging_dir,
        "set the TENSORBOARD_LOGGING_DIR environment variable instead (pytrainer still writes "
        "TensorBoard logs to logging_dir when it is given)"),
    "fp16_backend": _backend("fp16_backend"),
    "half_precision_backend": _backend("half_precision_backend"),
    "fp16_opt_level": _default_only(
        "fp16_opt_level", str, "O1", "apex AMP opt levels do not apply: pytrainer's fp16 is "
        "torch.amp"),
    "use_legacy_prediction_loop": _default_only(
        "use_legacy_prediction_loop", bool, False, "pytrainer has one evaluation loop"),
    "past_index": _default_only(
        "past_index", int, -1, "feeding a model's past state (mems) back into the next step "
        "is a Transformer-XL/XLNet feature pytrainer does not have"),
    "tpu_num_cores": _default_only("tpu_num_cores", int | None, None,
                                   "pytrainer does not run on TPUs"),
    "tpu_metrics_debug": _default_only("tpu_metrics_debug", bool, False,
                                       "pytrainer does not run on TPUs"),
    "jit_mode_eval": _default_only(
        "jit_mode_eval", bool, False, "use torch_compile=True to compile the model"),
    "mp_parameters": _default_only(
        "mp_parameters", str, "", "SageMaker model parallelism is not available; use fsdp=True"),
    "ray_scope": _default_only(
        "ray_scope", str, "last", "pytrainer has no hyperparameter search"),
    "fsdp_min_num_params": _default_only(
        "fsdp_min_num_params", int, 0, "fsdp=True shards every child module"),
    "fsdp_transformer_layer_cls_to_wrap": _default_only(
        "fsdp_transformer_layer_cls_to_wrap", str | None, None,
        "fsdp=True shards every child module"),
}


def merge(name: str, value: Any, given: Any) -> Any:
    """The value of ``DEPRECATED[name].field`` when ``name=value`` and the field (set to
    ``given``) are both given; a ValueError naming both when they disagree."""
    entry = DEPRECATED[name]
    mapped = entry.to_field(value)
    if mapped is UNCHANGED:
        return given
    try:
        if entry.combine is not None:
            return entry.combine(given, mapped)
        if same(given, mapped):
            return given
    except _Disagree:
        pass
    raise ValueError(f"{entry.field}={show(given)} and {name}={show(value)} (its transformers "
                     f"4.x name) name the same argument with different values; give one")


_warned: set[str] = set()


def warn_once(name: str, message: str, stacklevel: int = 4) -> None:
    """A FutureWarning, the first time ``name`` is used in this process."""
    if name in _warned:
        return
    _warned.add(name)
    # stacklevel: whoever called the constructor (or the attribute), not this module
    warnings.warn(message, FutureWarning, stacklevel=stacklevel)


def _warn_once(name: str) -> None:
    warn_once(name, f"{name} is a transformers 4.x argument, removed in transformers 5: "
                    f"{DEPRECATED[name].advice}", stacklevel=5)


def reset_warnings() -> None:
    """Makes every deprecated name warn again (for tests)."""
    _warned.clear()


def resolve(kwargs: dict[str, Any], fields: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Constructor keywords with the deprecated names replaced by their fields' values, and
    the values kept for their readers. Names that are fields of the class (a subclass may
    declare one) are left alone."""
    out, kept = dict(kwargs), {}
    for name in [key for key in kwargs if key in DEPRECATED and key not in fields]:
        entry = DEPRECATED[name]
        value = plain(out.pop(name))
        _warn_once(name)
        if entry.field is None:
            checked = entry.to_field(value)
            if entry.kept:
                kept[name] = checked
            continue
        if entry.field in out:
            out[entry.field] = merge(name, value, plain(out[entry.field]))
        else:
            mapped = entry.to_field(value)
            if mapped is not UNCHANGED:
                out[entry.field] = mapped
    return out, kept


def read(args: Any, name: str) -> Any:
    return DEPRECATED[name].read(args)


def write(args: Any, name: str, value: Any) -> None:
    """``args.<name> = value``: a rename sets its field, a kept value is replaced; other
    names cannot be assigned (their fields can)."""
    entry = DEPRECATED[name]
    if not (entry.rename or entry.kept):
        target = f"set {entry.field} instead" if entry.field else entry.advice
        raise AttributeError(f"{name} is a transformers 4.x argument and cannot be assigned: "
                             f"{target}")
    _warn_once(name)
    if entry.rename:
        mapped = entry.to_field(plain(value))
        if mapped is not UNCHANGED:
            setattr(args, entry.field, mapped)
    else:
        args.__dict__.setdefault(KEPT, {})[name] = entry.to_field(plain(value))
