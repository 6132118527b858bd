"""What pytrainer's TrainingArguments takes from a transformers release newer
than the one installed. It follows the newest (the release requirements/dev.txt
pins); the field tests compare it with whichever transformers is installed and
allow exactly these differences when that one is older."""
from __future__ import annotations

#: field: (the first transformers release that has it, what it is)
NEWER_FIELDS = {
    "activation_checkpointing": ((5, 23), "gradient_checkpointing's new name"),
    "activation_checkpointing_kwargs": ((5, 23), "gradient_checkpointing_kwargs' new name"),
}

#: field: (the first transformers release with pytrainer's default and type, why)
NEWER_DEFAULTS = {
    "report_to": ((5, 0), "v4 defaults to 'all' (every installed integration); v5 and "
                          "pytrainer to 'none'"),
    "lr_scheduler_kwargs": ((5, 0), "v4 defaults to {}; v5 and pytrainer to None"),
    "gradient_checkpointing": ((5, 23), "bool | None = None since 5.23, where "
                                        "activation_checkpointing decides; bool = False before"),
}


def release(transformers) -> tuple[int, int]:
    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def fields_not_in(transformers) -> set[str]:
    """pytrainer's fields of transformers releases newer than the installed one."""
    return {name for name, (since, _) in NEWER_FIELDS.items() if release(transformers) < since}


def defaults_not_in(transformers) -> dict[str, str]:
    """The fields whose default (and type) the installed transformers does not
    have yet, with the reason."""
    return {name: why for name, (since, why) in NEWER_DEFAULTS.items()
            if release(transformers) < since}
