"""TrainingArguments: what a training run does, with Hugging Face's names, defaults
and meanings, checked once at construction.

Scripts written for ``transformers.TrainingArguments`` work unchanged for the
fields this class has. Every value is checked in ``__post_init__``; a mistake
raises a ValueError naming the field and the value at construction, not an
hour into a run. The object is JSON-serialisable (``to_json_string`` /
``from_json_string``), which is how checkpoints store it instead of pickling.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import logging
import math
import numbers
import os
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal, Mapping, get_args

from pytrainer._suggest import did_you_mean, invalid_choice_message

__all__ = ["TrainingArguments", "StepIntervals", "resolve_interval", "INTERVAL_STRATEGIES",
           "SAVE_STRATEGIES", "SCHEDULER_TYPES", "DEFAULT_OUTPUT_DIR"]

logger = logging.getLogger(__name__)

IntervalStrategyName = Literal["no", "steps", "epoch"]
#: ``"best"`` saves only when ``metric_for_best_model`` improves
SaveStrategyName = Literal["no", "steps", "epoch", "best"]
#: the schedulers of Hugging Face's ``SchedulerType`` (4.57)
SchedulerName = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                        "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
                        "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay"]

INTERVAL_STRATEGIES: tuple[str, ...] = get_args(IntervalStrategyName)
SAVE_STRATEGIES: tuple[str, ...] = get_args(SaveStrategyName)
SCHEDULER_TYPES: tuple[str, ...] = get_args(SchedulerName)

DEFAULT_OUTPUT_DIR = "trainer_output"
#: seeds reach numpy, whose seeds are unsigned 32-bit integers
_MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class StepIntervals:
    """The step-valued fields as optimizer-step counts for one run (see
    :meth:`TrainingArguments.resolve_steps`). 0 means "never"; ``eval_steps`` is
    None when no step interval applies to evaluation."""
    logging_steps: int
    eval_steps: int | None
    save_steps: int


def resolve_interval(value: float | None, total_steps: int) -> int | None:
    """A step-valued field as a step count: values >= 1 are counts, values in
    (0, 1) are ratios of ``total_steps`` rounded up (at least 1), 0 stays 0."""
    if value is None:
        return None
    if value >= 1:
        return int(value)
    if value > 0:
        return max(1, math.ceil(total_steps * value))
    return 0


def _help(text: str, **metadata: Any) -> dict[str, Any]:
    return {"help": text, **metadata}


def _optimizer_names() -> list[str]:
    # Imported on use: the registry imports torch, and names registered after this
    # module loaded (pending optimizers landing) must count as valid.
    from pytrainer.optim.registry import optimizer_names
    return optimizer_names()


@dataclass
class TrainingArguments:
    """The arguments of a training run, as ``transformers.TrainingArguments`` names them.

    ``evaluation_strategy`` (Hugging Face's name before 4.51) is accepted as a
    constructor keyword and an attribute; ``eval_strategy`` is the stored field.
    Step-valued fields (``logging_steps``, ``eval_steps``, ``save_steps``,
    ``warmup_steps``) below 1 are ratios of the total number of optimizer
    steps; :meth:`resolve_steps` and :meth:`get_warmup_steps` turn them into counts.
    All fields after ``output_dir`` are keyword-only: this class does not keep
    Hugging Face's field order, so a positional value would land in the wrong field.
    """

    output_dir: str = field(default=DEFAULT_OUTPUT_DIR, metadata=_help(
        "Where checkpoints and results are written; `~` is expanded."))
    _: KW_ONLY
    do_train: bool = field(default=False, metadata=_help(
        "Whether to train. Read by scripts, not by the Trainer."))
    do_eval: bool | None = field(default=None, metadata=_help(
        "Whether to evaluate. Becomes True when eval_strategy is not 'no'; otherwise stays "
        "as given. Read by scripts, not by the Trainer."))
    do_predict: bool = field(default=False, metadata=_help(
        "Whether to predict on the test set. Read by scripts, not by the Trainer."))
    eval_strategy: IntervalStrategyName = field(default="no", metadata=_help(
        "When to evaluate: 'no'; 'steps' (every eval_steps); 'epoch' (at the end of each epoch). "
        "Also spelled evaluation_strategy.", aliases=["--evaluation_strategy"]))
    per_device_train_batch_size: int = field(default=8, metadata=_help(
        "Batch size per device (GPU or CPU) for training."))
    per_device_eval_batch_size: int = field(default=8, metadata=_help(
        "Batch size per device (GPU or CPU) for evaluation."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help(
        "Forward/backward passes whose gradients are accumulated before one optimizer update: "
        "batch 2 with 4 accumulation steps updates with the gradient of 8 samples, with the "
        "memory of 2."))
    learning_rate: float = field(default=5e-5, metadata=_help(
        "The initial learning rate of the optimizer."))
    weight_decay: float = field(default=0.0, metadata=_help(
        "Weight decay applied to every parameter except biases and normalisation-layer weights "
        "(LayerNorm, RMSNorm and parameters named like them)."))
    adam_beta1: float = field(default=0.9, metadata=_help("beta1 of the Adam-type optimizers."))
    adam_beta2: float = field(default=0.999, metadata=_help("beta2 of the Adam-type optimizers."))
    adam_epsilon: float = field(default=1e-8, metadata=_help(
        "epsilon of the Adam-type optimizers."))
    max_grad_norm: float = field(default=1.0, metadata=_help(
        "Gradients are clipped to this total norm; 0 (or None) disables clipping."))
    num_train_epochs: float = field(default=3.0, metadata=_help(
        "Epochs to train for. A fractional value trains the last epoch partially (that fraction "
        "of its optimizer steps). Ignored when max_steps > 0."))
    max_steps: int = field(default=-1, metadata=_help(
        "When > 0, the total number of optimizer steps to run, overriding num_train_epochs. "
        "Required when the dataset has no length."))
    lr_scheduler_type: SchedulerName = field(default="linear", metadata=_help(
        "The learning-rate schedule."))
    lr_scheduler_kwargs: dict[str, Any] | str | None = field(default=None, metadata=_help(
        "Extra arguments of the scheduler, as a dict or a JSON object string, e.g. "
        "'{\"num_cycles\": 2}'."))
    warmup_ratio: float = field(default=0.0, metadata=_help(
        "Fraction of the total steps used for a linear warmup, in [0, 1]. "
        "warmup_steps wins when it is > 0."))
    warmup_steps: float = field(default=0, metadata=_help(
        "Steps of linear warmup: a count when >= 1, a ratio of the total steps when in (0, 1) "
        "(as in transformers 5). Overrides warmup_ratio when > 0."))
    logging_strategy: IntervalStrategyName = field(default="steps", metadata=_help(
        "When to log: 'no'; 'steps' (every logging_steps); 'epoch' (at the end of each epoch)."))
    logging_first_step: bool = field(default=False, metadata=_help(
        "Whether to log after the first optimizer step too."))
    logging_steps: float = field(default=500, metadata=_help(
        "Log every this many optimizer steps with the 'steps' strategy; a value below 1 is a "
        "ratio of the total steps."))
    eval_steps: float | None = field(default=None, metadata=_help(
        "Evaluate every this many optimizer steps with the 'steps' strategy; a value below 1 is "
        "a ratio of the total steps. Defaults to logging_steps."))
    save_strategy: SaveStrategyName = field(default="steps", metadata=_help(
        "When to save a checkpoint: 'no'; 'steps' (every save_steps); 'epoch' (at the end of "
        "each epoch); 'best' (when metric_for_best_model improves, at each evaluation)."))
    save_steps: float = field(default=500, metadata=_help(
        "Save every this many optimizer steps with the 'steps' strategy; a value below 1 is a "
        "ratio of the total steps."))
    save_total_limit: int | None = field(default=None, metadata=_help(
        "Keep at most this many checkpoints in output_dir, deleting the oldest; the best one "
        "(with load_best_model_at_end) is always kept. None or 0 keeps all."))
    save_safetensors: bool = field(default=True, metadata=_help(
        "Save model weights with safetensors; False saves them with torch.save."))
    load_best_model_at_end: bool = field(default=False, metadata=_help(
        "Load the best checkpoint (by metric_for_best_model) at the end of training. The save "
        "and eval strategies must match, and save_steps must be a multiple of eval_steps."))
    metric_for_best_model: str | None = field(default=None, metadata=_help(
        "The evaluation metric that ranks checkpoints ('eval_' prefix optional). Defaults to "
        "'loss' with load_best_model_at_end or the reduce_lr_on_plateau scheduler."))
    greater_is_better: bool | None = field(default=None, metadata=_help(
        "Whether a larger metric_for_best_model is better. Defaults to True unless the metric's "
        "name ends with 'loss'."))
    use_cpu: bool = field(default=False, metadata=_help(
        "Train on the CPU. When False, CUDA (or MPS) is used if available."))
    seed: int = field(default=42, metadata=_help("Random seed set at the start of training."))
    data_seed: int | None = field(default=None, metadata=_help(
        "Seed of the data sampler, independent of seed; None means seed."))
    bf16: bool = field(default=False, metadata=_help(
        "bfloat16 mixed precision (autocast); weights stay in float32."))
    fp16: bool = field(default=False, metadata=_help(
        "float16 mixed precision (autocast with loss scaling); weights stay in float32."))
    dataloader_drop_last: bool = field(default=False, metadata=_help(
        "Drop the last incomplete batch of each epoch."))
    dataloader_num_workers: int = field(default=0, metadata=_help(
        "Subprocesses loading data; 0 loads in the main process."))
    disable_tqdm: bool = field(default=False, metadata=_help("Hide the progress bars."))
    label_names: list[str] | None = field(default=None, metadata=_help(
        "The keys of a batch that hold the labels. Default: the model's forward arguments whose "
        "name contains 'label'."))
    optim: str = field(default="adamw_torch", metadata=_help(
        "The optimizer; adamw_custom_fused is pytrainer's fused AdamW.",
        choices=_optimizer_names))
    optim_args: str | None = field(default=None, metadata=_help(
        "Extra optimizer arguments, as 'key=value,key=value'."))
    report_to: list[str] | str | None = field(default="none", metadata=_help(
        "Where to report metrics besides the log: 'none' (the default, as in transformers 5), "
        "'all', or integration names. Stored as a list; 'none' becomes []."))
    resume_from_checkpoint: str | None = field(default=None, metadata=_help(
        "A checkpoint folder to resume from. Read by scripts; pass it to "
        "Trainer.train(resume_from_checkpoint=...)."))
    ddp_timeout: int = field(default=1800, metadata=_help(
        "Seconds torch.distributed waits for every rank (rendezvous and collectives) before "
        "failing with an error instead of hanging."))
    ddp_find_unused_parameters: bool | None = field(default=None, metadata=_help(
        "Passed to DistributedDataParallel's find_unused_parameters (None means False: faster, "
        "and every parameter must receive a gradient)."))
    fsdp2: bool = field(default=False, metadata=_help(
        "Under torchrun, shard parameters, gradients and optimizer states with FSDP2 "
        "(torch.distributed.fsdp.fully_shard) instead of replicating them with DDP."))
    nonfinite_steps_limit: int = field(default=10, metadata=_help(
        "Stop with an error (after saving a checkpoint of the last good state) when this many "
        "consecutive updates have a NaN or inf loss or gradient; such updates are skipped. "
        "0 never stops. (fp16 runs leave inf/NaN steps to the GradScaler.)"))

    # ----------------------------------------------------------------- aliases
    @property
    def evaluation_strategy(self) -> str:
        """Hugging Face's name for ``eval_strategy`` before 4.51."""
        return self.eval_strategy

    @evaluation_strategy.setter
    def evaluation_strategy(self, value: str) -> None:
        self.eval_strategy = value

    # -------------------------------------------------------------- validation
    def __post_init__(self) -> None:
        self._normalise_output_dir()
        self._check_types()
        self._check_values()
        self._check_steps()
        self._check_combinations()
        self._fill_derived_defaults()

    def _normalise_output_dir(self) -> None:
        if self.output_dir is None:  # Hugging Face's "not given"
            self.output_dir = DEFAULT_OUTPUT_DIR
        if not isinstance(self.output_dir, (str, os.PathLike)):
            raise ValueError(f"output_dir must be a path, got {self.output_dir!r}")
        self.output_dir = os.path.expanduser(os.fspath(self.output_dir))
        if not self.output_dir:
            raise ValueError("output_dir must not be empty, got ''")

    def _check_types(self) -> None:
        for name in ("do_train", "do_predict", "save_safetensors", "load_best_model_at_end", "fsdp2",
                     "use_cpu", "bf16", "fp16", "dataloader_drop_last", "disable_tqdm",
                     "logging_first_step"):
            _check_bool(name, getattr(self, name))
        for name in ("do_eval", "greater_is_better", "ddp_find_unused_parameters"):
            _check_bool(name, getattr(self, name), allow_none=True)
        for name in ("metric_for_best_model", "optim_args"):
            _check_str(name, getattr(self, name), allow_none=True)
        if isinstance(self.resume_from_checkpoint, os.PathLike):
            self.resume_from_checkpoint = os.fspath(self.resume_from_checkpoint)
        _check_str("resume_from_checkpoint", self.resume_from_checkpoint, allow_none=True)
        if self.max_grad_norm is None:  # some transformers scripts disable clipping this way
            self.max_grad_norm = 0.0
        for name in ("eval_strategy", "logging_strategy", "save_strategy", "lr_scheduler_type",
                     "optim"):
            setattr(self, name, _plain(getattr(self, name)))
        self.label_names = _string_list("label_names", self.label_names)
        self.report_to = _normalise_report_to(self.report_to)
        self.lr_scheduler_kwargs = _json_object("lr_scheduler_kwargs", self.lr_scheduler_kwargs)

    def _check_values(self) -> None:
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps"):
            setattr(self, name, _int(name, getattr(self, name), minimum=1))
        self.dataloader_num_workers = _int("dataloader_num_workers", self.dataloader_num_workers,
                                           minimum=0)
        self.ddp_timeout = _int("ddp_timeout", self.ddp_timeout, minimum=1)
        self.nonfinite_steps_limit = _int("nonfinite_steps_limit", self.nonfinite_steps_limit,
                                          minimum=0, why="0 never stops")
        self.max_steps = _int("max_steps", self.max_steps, minimum=-1,
                              why="-1 (or 0) means 'use num_train_epochs'")
        if self.save_total_limit is not None:
            self.save_total_limit = _int("save_total_limit", self.save_total_limit, minimum=0,
                                         why="None or 0 keeps every checkpoint")
        self.seed = _int("seed", self.seed, minimum=0, maximum=_MAX_SEED)
        if self.data_seed is not None:
            self.data_seed = _int("data_seed", self.data_seed, minimum=0, maximum=_MAX_SEED)

        self.learning_rate = _float("learning_rate", self.learning_rate, above=0.0)
        for name in ("weight_decay", "adam_epsilon", "max_grad_norm", "num_train_epochs"):
            setattr(self, name, _float(name, getattr(self, name), minimum=0.0))
        for name in ("adam_beta1", "adam_beta2"):
            value = _float(name, getattr(self, name), minimum=0.0)
            if value >= 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
            setattr(self, name, value)
        self.warmup_ratio = _float("warmup_ratio", self.warmup_ratio, minimum=0.0)
        if self.warmup_ratio > 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio!r}")

        self.eval_strategy = _choice("eval_strategy", self.eval_strategy, INTERVAL_STRATEGIES)
        self.logging_strategy = _choice("logging_strategy", self.logging_strategy,
                                        INTERVAL_STRATEGIES)
        self.save_strategy = _choice("save_strategy", self.save_strategy, SAVE_STRATEGIES)
        self.lr_scheduler_type = _choice("lr_scheduler_type", self.lr_scheduler_type,
                                         SCHEDULER_TYPES)
        _check_str("optim", self.optim)
        self.optim = _choice("optim", self.optim, _optimizer_names())
        if self.optim_args:
            from pytrainer.optim.registry import parse_optim_args
            parse_optim_args(self.optim_args)  # its message names optim_args and the item

    def _check_steps(self) -> None:
        for name in ("logging_steps", "save_steps", "warmup_steps"):
            setattr(self, name, _steps(name, getattr(self, name)))
        if self.eval_steps is not None:
            self.eval_steps = _steps("eval_steps", self.eval_steps)
        if self.logging_strategy == "steps" and self.logging_steps == 0:
            raise ValueError("logging_strategy='steps' needs logging_steps > 0, got "
                             "logging_steps=0")
        if self.save_strategy == "steps" and self.save_steps == 0:
            raise ValueError("save_strategy='steps' needs save_steps > 0, got save_steps=0")
        if self.eval_strategy == "steps" and not self.eval_steps:
            # Hugging Face: with no eval interval of its own, evaluation follows logging.
            if not self.logging_steps:
                raise ValueError(
                    f"eval_strategy='steps' needs a step interval: set eval_steps (or "
                    f"logging_steps, its default) > 0, got eval_steps={self.eval_steps!r} and "
                    f"logging_steps={self.logging_steps!r}")
            self.eval_steps = self.logging_steps
        if self.warmup_ratio > 0 and self.warmup_steps > 0:
            logger.warning("both warmup_ratio=%s and warmup_steps=%s are set; warmup_steps wins",
                           self.warmup_ratio, self.warmup_steps)

    def _check_combinations(self) -> None:
        if self.fp16 and self.bf16:
            raise ValueError("fp16=True and bf16=True cannot be used together: choose one "
                             "mixed-precision mode")
        if self.lr_scheduler_type == "reduce_lr_on_plateau" and self.eval_strategy == "no":
            raise ValueError("lr_scheduler_type='reduce_lr_on_plateau' steps on evaluation "
                             "metrics and needs an eval_strategy other than 'no', got "
                             "eval_strategy='no'")
        if self.save_strategy == "best" and self.eval_strategy == "no":
            raise ValueError("save_strategy='best' saves when an evaluation improves and needs an "
                             "eval_strategy other than 'no', got eval_strategy='no'")
        if self.load_best_model_at_end:
            self._check_load_best()

    def _check_load_best(self) -> None:
        if self.eval_strategy == "no":
            raise ValueError("load_best_model_at_end=True needs evaluations to rank checkpoints, "
                             "got eval_strategy='no'")
        if self.save_strategy == "best":
            return  # saving follows evaluation by construction
        if self.eval_strategy != self.save_strategy:
            raise ValueError(
                f"load_best_model_at_end=True requires the save and eval strategies to match, got "
                f"eval_strategy={self.eval_strategy!r} and save_strategy={self.save_strategy!r}")
        if self.eval_strategy != "steps":
            return
        eval_steps, save_steps = self.eval_steps, self.save_steps
        if (eval_steps < 1) != (save_steps < 1):
            raise ValueError(
                f"load_best_model_at_end=True requires save_steps to be a multiple of eval_steps, "
                f"which cannot be guaranteed when one is a ratio and the other a step count, got "
                f"save_steps={save_steps!r} and eval_steps={eval_steps!r}")
        if eval_steps < 1:
            # Ratios compared as millionths, so 0.3 counts as a multiple of 0.1.
            eval_steps, save_steps = max(1, round(eval_steps * 1e6)), round(save_steps * 1e6)
        if save_steps % eval_steps:
            raise ValueError(
                f"load_best_model_at_end=True requires save_steps to be a multiple of eval_steps, "
                f"got save_steps={self.save_steps!r} and eval_steps={self.eval_steps!r}")

    def _fill_derived_defaults(self) -> None:
        if self.eval_strategy != "no":
            self.do_eval = True
        if self.metric_for_best_model is None and (
                self.load_best_model_at_end or self.lr_scheduler_type == "reduce_lr_on_plateau"):
            self.metric_for_best_model = "loss"
        if self.save_strategy == "best" and self.metric_for_best_model is None:
            raise ValueError("save_strategy='best' needs metric_for_best_model, got None")
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")

    # ------------------------------------------------------- what a Trainer reads
    @property
    def train_batch_size(self) -> int:
        """Training samples per device per forward pass (pytrainer has no DataParallel, so
        unlike Hugging Face this never multiplies by the GPU count)."""
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        """Evaluation samples per device per forward pass."""
        return self.per_device_eval_batch_size

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup steps of a run of ``num_training_steps`` optimizer steps:
        ``warmup_steps`` when > 0 (a ratio when below 1), else ``warmup_ratio`` of the run."""
        if self.warmup_steps > 0:
            return resolve_interval(self.warmup_steps, num_training_steps)
        return math.ceil(num_training_steps * self.warmup_ratio)

    def resolve_steps(self, total_steps: int) -> StepIntervals:
        """The logging, eval and save intervals in optimizer steps for a run of
        ``total_steps``, ratios rounded up as Hugging Face does."""
        return StepIntervals(logging_steps=resolve_interval(self.logging_steps, total_steps),
                             eval_steps=resolve_interval(self.eval_steps, total_steps),
                             save_steps=resolve_interval(self.save_steps, total_steps))

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every field by its canonical name (``eval_strategy``, no alias), JSON-ready."""
        return {f.name: _copy_json(getattr(self, f.name))
                for f in dataclasses.fields(self) if f.init}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, allow_extra_keys: bool = False
                  ) -> "TrainingArguments":
        """The arguments ``to_dict()`` describes. Unknown keys raise a ValueError (or, with
        ``allow_extra_keys``, are ignored, e.g. to read a transformers JSON)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict needs a mapping, got "
                             f"{type(data).__name__}")
        known = set(inspect.signature(cls).parameters)
        unknown = sorted(set(data) - known, key=str)
        if unknown and not allow_extra_keys:
            hints = "; ".join(f"{key!r}{did_you_mean(key, known)}" for key in unknown)
            raise ValueError(f"unknown {cls.__name__} keys: {hints}")
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def from_json_string(cls, text: str, **kwargs: Any) -> "TrainingArguments":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{cls.__name__} JSON is not valid: {error}") from None
        return cls.from_dict(data, **kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **kwargs: Any) -> "TrainingArguments":
        with open(path, encoding="utf-8") as file:
            return cls.from_json_string(file.read(), **kwargs)


def _accept_evaluation_strategy(init):
    """Wraps the generated ``__init__`` to accept ``evaluation_strategy=`` too.

    A wrapper rather than an InitVar: an InitVar is passed to ``__post_init__``,
    which would break subclasses whose ``__post_init__(self)`` calls ``super()``
    as they do with Hugging Face's class, and it could not tell an explicit
    ``eval_strategy="no"`` from the default when both names are given.
    """
    @functools.wraps(init)
    def __init__(self, *args, evaluation_strategy=None, **kwargs):
        if evaluation_strategy is not None:
            if "eval_strategy" in kwargs and \
                    _plain(kwargs["eval_strategy"]) != _plain(evaluation_strategy):
                raise ValueError(
                    f"eval_strategy={_plain(kwargs['eval_strategy'])!r} and its alias "
                    f"evaluation_strategy={_plain(evaluation_strategy)!r} disagree; give one")
            kwargs["eval_strategy"] = evaluation_strategy
        init(self, *args, **kwargs)

    signature = inspect.signature(init)
    alias = inspect.Parameter("evaluation_strategy", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation="IntervalStrategyName | None")
    __init__.__signature__ = signature.replace(
        parameters=[*signature.parameters.values(), alias])
    return __init__


TrainingArguments.__init__ = _accept_evaluation_strategy(TrainingArguments.__init__)


# ------------------------------------------------------------------ field checks
def _plain(value: Any) -> Any:
    """An enum member (e.g. transformers' IntervalStrategy.STEPS) as its plain value."""
    return value.value if isinstance(value, enum.Enum) else value


def _show(value: Any) -> str:
    """``repr(value)`` for an error message; never raises (an int past Python's 4300-digit
    string limit, or a structure nested too deeply to print, is described instead)."""
    try:
        return repr(value)
    except (ValueError, RecursionError):
        if isinstance(value, int):
            return f"an integer of {value.bit_length()} bits"
        return f"a {type(value).__name__} nested too deeply to print"


def _check_bool(name: str, value: Any, *, allow_none: bool = False) -> None:
    # Strict: a string such as "false" is truthy, the bug this check exists for.
    if isinstance(value, bool) or (allow_none and value is None):
        return
    expected = "True, False or None" if allow_none else "True or False"
    raise ValueError(f"{name} must be {expected}, got {_show(value)}")


def _check_str(name: str, value: Any, *, allow_none: bool = False) -> None:
    if isinstance(value, str) or (allow_none and value is None):
        return
    raise ValueError(f"{name} must be a string{' or None' if allow_none else ''}, got "
                     f"{_show(value)}")


def _int(name: str, value: Any, *, minimum: int, maximum: int | None = None,
         why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {_show(value)}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = (f"in [{minimum}, {maximum}]" if maximum is not None
                 else "a positive integer" if minimum == 1 else f">= {minimum}")
        raise ValueError(f"{name} must be {bound}, got {_show(value)}" +
                         (f" ({why})" if why else ""))
    if value > _MAX_INT:  # beyond what torch, numpy and JSON readers hold
        raise ValueError(f"{name} must be at most 2**63 - 1, got {_show(value)}")
    return value


_MAX_INT = 2**63 - 1


def _float(name: str, value: Any, *, minimum: float | None = None,
           above: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {_show(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int (or Fraction) beyond float's range
        raise ValueError(f"{name} must be finite, got {_show(value)}, too large for a "
                         f"float") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be > {above:g}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return value


def _steps(name: str, value: Any) -> int | float:
    """A step-valued field: an integral count >= 1 (stored as int), 0, or a ratio in (0, 1)."""
    value = _float(name, value, minimum=0.0)
    if value == 0:
        return 0
    if value >= 1:
        if value != int(value):
            raise ValueError(f"{name} must be an integer when >= 1 (values below 1 are ratios "
                             f"of the total steps), got {value!r}")
        return int(value)
    return value


def _choice(name: str, value: Any, choices) -> str:
    if value not in choices:
        if not isinstance(value, str):  # (repr of any value, e.g. a 5000-digit int, may fail)
            raise ValueError(f"{name}={_show(value)} is not valid; valid values: "
                             f"{', '.join(choices)}.")
        raise ValueError(invalid_choice_message(name, value, choices))
    return value


def _string_list(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{name} must be a list of strings or None, got {_show(value)}")


def _normalise_report_to(value: Any) -> list[str]:
    """Hugging Face's forms (None, "none", "all", a name, a list) as a list:
    "none" is the empty list. "all" is kept, for the Trainer to expand to the
    integrations it finds, so the arguments stay the same on every machine."""
    names = [value] if isinstance(value, str) else [] if value is None else value
    names = _string_list("report_to", names)
    if "none" in names:
        if len(names) > 1:
            raise ValueError(f"report_to cannot combine 'none' with other names, got {value!r}")
        return []
    return names


def _json_object(name: str, value: Any) -> dict[str, Any] | None:
    """None, a dict, or a JSON object string (the command-line form) -> None or a dict,
    checked to be JSON-serialisable so that checkpoints can store it."""
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
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict or a JSON object string, got {_show(given)}")
    try:
        # Stored in its JSON form (tuples become lists), so that a checkpoint's copy
        # rebuilds an equal object. Strict JSON: NaN and infinities would be written
        # as non-standard tokens and a NaN would not compare equal when read back.
        stored = json.loads(json.dumps(value, allow_nan=False))
    except RecursionError:
        stored = None
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be JSON-serialisable (JSON types, finite numbers), got "
                         f"{_show(value)} ({error})") from None
    if stored is None or _nesting_depth(stored) > _MAX_JSON_DEPTH:
        # to_dict and to_json_string recurse through it (and must not fail at a checkpoint)
        raise ValueError(f"{name} is nested too deeply: at most {_MAX_JSON_DEPTH} levels of "
                         f"dicts and lists are supported")
    return stored


_MAX_JSON_DEPTH = 100


def _nesting_depth(value: Any) -> int:
    """Levels of dicts and lists in a JSON value (without recursion), stopping past the limit."""
    deepest, pending = 0, [(value, 1)]
    while pending and deepest <= _MAX_JSON_DEPTH:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value
