"""Optimizer names (as ``TrainingArguments.optim`` spells them) and their builders.

One table of names: pytrainer's own optimizers are registered here, torch's in
``torch_optimizers.py``, other libraries' in ``library_optimizers.py``. Each entry
says what it needs (libraries, and whether pytrainer's Trainer can drive it), so
that ``TrainingArguments`` rejects an unusable name at construction with an error
naming the package to install, instead of failing at the first step.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from pytrainer._suggest import invalid_choice_message

if TYPE_CHECKING:
    from pytrainer.training_args import TrainingArguments

__all__ = ["OptimizerConfig", "OptimizerSpec", "Requirement", "register_optimizer",
           "register_pending", "get_optimizer_spec", "optimizer_names", "build_optimizer",
           "parse_optim_args", "typed_optim_args", "check_optimizer", "optimizer_status",
           "availability_report"]


@dataclass(frozen=True)
class OptimizerConfig:
    """The training-argument values an optimizer builder reads."""
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    #: ``optim_args`` parsed into strings, as Hugging Face passes them
    optim_args: dict[str, str] = field(default_factory=dict)
    #: read by the optimizers that take it as an argument (schedule-free, StableAdamW);
    #: the others get it from the parameter groups
    weight_decay: float = 0.0
    warmup_steps: float = 0
    #: GaLore's and APOLLO's target modules (``optim_target_modules``)
    target_modules: str | list[str] | None = None
    #: the model, for the optimizers that need it (GaLore, APOLLO, bitsandbytes' 8-bit
    #: embeddings); None when only the arguments are being checked
    model: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_args(cls, args: "TrainingArguments", model: Any = None) -> "OptimizerConfig":
        return cls(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                   eps=args.adam_epsilon, optim_args=parse_optim_args(args.optim_args),
                   weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                   target_modules=args.optim_target_modules, model=model)


Builder = Callable[[list[dict[str, Any]], OptimizerConfig], torch.optim.Optimizer]
#: (config) -> (optimizer class, keyword arguments), as transformers'
#: Trainer.get_optimizer_cls_and_kwargs returns them; a "params" keyword replaces the
#: parameter groups
Resolver = Callable[[OptimizerConfig], tuple[type, dict[str, Any]]]


@dataclass(frozen=True)
class Requirement:
    """A library an optimizer needs: the module to import and how to install it."""
    module: str
    install: str


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Builder
    description: str
    requires: tuple[Requirement, ...] = ()
    #: pytrainer's own optimizer to suggest when this one is not usable
    alternative: str | None = None
    #: why pytrainer's Trainer cannot drive it (None: it can)
    unsupported: str | None = None
    resolve: Resolver | None = None
    #: checks the arguments (optim_args, target modules) without a model; raises ValueError
    check: Callable[[OptimizerConfig], None] | None = None

    def missing(self) -> list[Requirement]:
        return [r for r in self.requires if not _importable(r.module)]


_REGISTRY: dict[str, OptimizerSpec] = {}


def register_optimizer(name: str, build: Builder | None = None, description: str = "", *,
                       requires: tuple[Requirement, ...] = (), alternative: str | None = None,
                       unsupported: str | None = None, resolve: Resolver | None = None,
                       check: Callable[[OptimizerConfig], None] | None = None) -> None:
    """Makes ``name`` buildable; ``build(param_groups, config)`` returns the optimizer
    (or ``resolve(config)`` gives its class and keywords). Weight decay is set per group
    by the caller, never passed to ``build``."""
    if name in _REGISTRY:
        raise ValueError(f"optimizer name {name!r} is already registered")
    if build is None:
        if resolve is None:
            raise ValueError(f"optimizer {name!r} needs a build or a resolve function")
        build = _build_resolved(resolve)
    _REGISTRY[name] = OptimizerSpec(name, build, description, tuple(requires), alternative,
                                    unsupported, resolve, check)


def _build_resolved(resolve: Resolver) -> Builder:
    def build(groups, config):
        cls, kwargs = resolve(config)
        kwargs = dict(kwargs)
        return cls(kwargs.pop("params", groups), **kwargs)
    return build


def register_pending(name: str, missing: str) -> None:
    """Makes ``name`` a known optimizer name whose builder is not available yet:
    building it raises an error saying what is missing."""
    def build(groups, config):
        raise NotImplementedError(f"optimizer {name!r} is not available yet: {missing}")
    register_optimizer(name, build, f"(not available: {missing})")


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a module put into
    ``sys.modules`` counts; None there means "blocked")."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ------------------------------------------------------------------- optim_args
def parse_optim_args(text: str | None) -> dict[str, str]:
    """Hugging Face's ``optim_args`` form: ``"key=value,key=value"``, spaces ignored,
    values kept as strings for the builder to convert."""
    if not text:
        return {}
    result: dict[str, str] = {}
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key or "=" in value:
            raise ValueError(f"optim_args item {item!r} is not of the form key=value "
                             f"(in optim_args={text!r})")
        result[key] = value
    return result


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def as_bool(key: str, text: str) -> bool:
    """transformers' reading of an optim_args flag ("true", "1", "yes" are True), where
    anything else it would take as False must be one of "false", "0", "no" here."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"optim_args {key}={text!r} is not a boolean; use true or false (or 1/0, "
                     f"yes/no)")


def as_float(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"optim_args {key}={text!r} is not a number") from None


def as_int(key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"optim_args {key}={text!r} is not an integer") from None


def as_text(key: str, text: str) -> str:
    return text


def typed_optim_args(name: str, config: OptimizerConfig,
                     schema: Mapping[str, Callable[[str, str], Any]],
                     refused: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The optim_args given, converted by ``schema`` (key -> converter); an unknown key,
    or one of ``refused`` (key -> why), is a ValueError: nothing is silently ignored."""
    for key in config.optim_args:
        if refused and key in refused:
            raise ValueError(f"optim_args key {key!r} is not taken by {name}: {refused[key]}")
        if key not in schema:
            valid = ", ".join(schema) or "none"
            raise ValueError(f"optim_args key {key!r} is not valid for {name}; valid keys: "
                             f"{valid}")
    return {key: schema[key](key, text) for key, text in config.optim_args.items()}


def reject_optim_args(name: str, config: OptimizerConfig) -> None:
    if config.optim_args:
        raise ValueError(f"optimizer {name!r} takes no optim_args, got "
                         f"{', '.join(sorted(config.optim_args))}")


# --------------------------------------------------------------- the lookups
def optimizer_names() -> list[str]:
    return sorted(_REGISTRY)


def get_optimizer_spec(name: str) -> OptimizerSpec:
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ValueError(invalid_choice_message("optim", name, optimizer_names()))
    return spec


def build_optimizer(name: str, param_groups: list[dict[str, Any]],
                    config: OptimizerConfig) -> torch.optim.Optimizer:
    return get_optimizer_spec(name).build(param_groups, config)


def _instead(spec: OptimizerSpec) -> str:
    if spec.alternative is None:
        return ""
    return f"; or use optim={spec.alternative!r} ({_REGISTRY[spec.alternative].description})"


def optimizer_status(name: str) -> str | None:
    """None when ``name`` can be used here; otherwise why not, as a sentence's end."""
    spec = get_optimizer_spec(name)
    if spec.unsupported:
        return f"not available in pytrainer: {spec.unsupported}"
    missing = spec.missing()
    if missing:
        needs = " and ".join(r.module for r in missing)
        install = "; ".join(r.install for r in missing)
        return f"needs {needs}, which is not installed ({install})"
    return None


def check_optimizer(args: "TrainingArguments") -> None:
    """Raises a ValueError naming ``optim`` when its optimizer cannot be used here: not
    available in pytrainer, its library missing, or its optim_args invalid. Given
    optim_args, optimizers without a library are built once on a one-element parameter,
    so that values torch refuses (``nesterov`` without momentum, ...) are found now
    (without, TrainingArguments' own checks of lr, betas and eps cover them; the first
    optimizer built in a process imports torch's compiler, seconds not worth spending
    on arguments alone)."""
    spec = get_optimizer_spec(args.optim)
    status = optimizer_status(args.optim)
    if status:
        raise ValueError(f"optim={args.optim!r} {status}{_instead(spec)}")
    config = OptimizerConfig.from_args(args)
    try:
        if spec.check is not None:
            spec.check(config)
        elif spec.name in _TRIAL_BUILDS and config.optim_args:
            parameter = torch.zeros(1, requires_grad=True)
            spec.build([{"params": [parameter], "weight_decay": args.weight_decay}], config)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"optim={args.optim!r}"
                         f"{f' with optim_args={args.optim_args!r}' if args.optim_args else ''}: "
                         f"{error}") from None


def availability_report() -> str:
    """The optimizer names grouped by whether they can be used here, for ``--help``."""
    usable = [name for name in optimizer_names() if optimizer_status(name) is None]
    lines = [f"optimizers available here: {', '.join(usable)}"]
    needing: dict[str, list[str]] = {}
    unsupported = []
    for name in optimizer_names():
        spec = _REGISTRY[name]
        if spec.unsupported:
            unsupported.append(name)
        elif spec.missing():
            needing.setdefault("; ".join(r.install for r in spec.missing()), []).append(name)
    for install, names in needing.items():
        lines.append(f"needing a library ({install}): {', '.join(names)}")
    if unsupported:
        lines.append(f"not available in pytrainer (its Trainer cannot drive them): "
                     f"{', '.join(unsupported)}")
    return "\n".join(lines)


# ------------------------------------------------------------ pytrainer's own
def _build_adamw_custom_fused(groups, config: OptimizerConfig):
    from pytrainer.optim.adamw import FusedAdamW
    reject_optim_args("adamw_custom_fused", config)
    return FusedAdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def _build_adamw_hf(groups, config: OptimizerConfig):
    from pytrainer.optim.hf_adamw import AdamWHF
    reject_optim_args("adamw_hf", config)
    return AdamWHF(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def _build_adamw_anyprecision(groups, config: OptimizerConfig):
    """Hugging Face's wiring of torchdistx's optimizer: optim_args keys
    use_kahan_summation, momentum_dtype, variance_dtype, compensation_buffer_dtype
    with its defaults (False, float32, float32, bfloat16), plus pytrainer's
    rounding (nearest|stochastic) and seed."""
    from pytrainer.optim.anyprecision import AnyPrecisionAdamW, resolve_state_dtype
    args = {"use_kahan_summation": False, "momentum_dtype": "float32",
            "variance_dtype": "float32", "compensation_buffer_dtype": "bfloat16",
            "rounding": "nearest", "seed": 0}
    args.update(typed_optim_args("adamw_anyprecision", config, {
        "use_kahan_summation": as_bool, "momentum_dtype": as_text, "variance_dtype": as_text,
        "compensation_buffer_dtype": as_text, "rounding": as_text, "seed": as_int}))
    dtypes = {key: resolve_state_dtype(key, args[key])
              for key in ("momentum_dtype", "variance_dtype", "compensation_buffer_dtype")}
    return AnyPrecisionAdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                             use_kahan_summation=args["use_kahan_summation"],
                             rounding=args["rounding"], seed=args["seed"], **dtypes)


def _build_adafactor(groups, config: OptimizerConfig):
    """As Hugging Face's Trainer builds it: the given lr, no relative step, no
    parameter scaling."""
    from pytrainer.optim.adafactor import Adafactor
    reject_optim_args("adafactor", config)
    return Adafactor(groups, lr=config.lr, scale_parameter=False, relative_step=False)


register_optimizer("adamw_custom_fused", _build_adamw_custom_fused,
                   "pytrainer.optim.FusedAdamW: torch AdamW math, fused CPU/CUDA kernels")
register_optimizer("adamw_hf", _build_adamw_hf,
                   "pytrainer.optim.AdamWHF: the classic Hugging Face AdamW, plain PyTorch")
register_optimizer("adamw_anyprecision", _build_adamw_anyprecision,
                   "pytrainer.optim.AnyPrecisionAdamW: AdamW with 16-bit states, Kahan "
                   "summation or stochastic rounding, fused CPU/CUDA kernels")
register_optimizer("adafactor", _build_adafactor,
                   "pytrainer.optim.Adafactor: transformers' Adafactor, factored second "
                   "moments, fused CPU/CUDA kernels")

# Built-in optimizers that need no library: built once at argument time (cheap, and
# torch's own checks of their values run then).
_TRIAL_BUILDS = {"adamw_custom_fused", "adamw_hf", "adamw_anyprecision", "adafactor"}

from pytrainer.optim import library_optimizers, torch_optimizers  # noqa: E402  (they register)

_TRIAL_BUILDS |= set(torch_optimizers.NAMES)
