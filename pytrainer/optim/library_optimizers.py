"""transformers' optimizer names that need another library (bitsandbytes, torchao,
GaLore, APOLLO, schedule-free, GrokAdamW, torch-optimi, torch_xla, torch_npu, apex).

Each resolves to the class and keyword arguments transformers' Trainer builds (its
``trainer_optimizer.py`` handlers), with optim_args typed and checked rather than
passed on as strings, and with unknown keys refused. A name whose library is not
installed is rejected by ``TrainingArguments`` with the package to install; names
whose updates need hooks in the training loop that pytrainer's Trainer does not
have (LOMO's fused backward, layer-wise stepping, schedule-free's train/eval modes)
are marked unsupported and rejected the same way.
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Callable

from torch import nn

from pytrainer.optim.registry import (OptimizerConfig, Requirement, as_bool, as_float, as_int,
                                      as_text, register_optimizer, reject_optim_args,
                                      typed_optim_args)

_BNB = Requirement("bitsandbytes", "pip install bitsandbytes")
_TORCHAO = Requirement("torchao", "pip install torchao")
_GALORE = Requirement("galore_torch", "pip install galore-torch")
_APOLLO = Requirement("apollo_torch", "pip install apollo-torch")
_LOMO = Requirement("lomo_optim", "pip install lomo-optim")
_SCHEDULEFREE = Requirement("schedulefree", "pip install schedulefree")
_GROK = Requirement("grokadamw", "pip install grokadamw")
_OPTIMI = Requirement("optimi", "pip install torch-optimi")
_XLA = Requirement("torch_xla", "install torch_xla for your torch (pip install torch_xla)")
_NPU = Requirement("torch_npu", "install torch_npu for your torch (Ascend NPUs)")
_APEX = Requirement("apex", "install NVIDIA apex with its CUDA extensions "
                            "(https://github.com/NVIDIA/apex)")

_LAYERWISE = ("layer-wise optimizers step inside the backward pass from per-parameter hooks, "
              "with schedulers of their own, which pytrainer's Trainer does not set up; use the "
              "name without _layerwise")
_LOMO_WHY = ("LOMO fuses the update into the backward pass (optimizer.fused_backward), which "
             "pytrainer's Trainer does not call")
_SCHEDULEFREE_WHY = ("schedule-free optimizers must be switched between train() and eval() "
                     "around training and evaluation, which pytrainer's Trainer does not do yet")


def _load(requirement: Requirement, module: str, *names: str) -> Any:
    """``from module import names``, or an ImportError saying what to install."""
    try:
        loaded = importlib.import_module(module)
        values = [getattr(loaded, name) for name in names]
    except (ImportError, AttributeError) as error:
        raise ImportError(f"{module}.{'/'.join(names)} could not be imported ({error}); "
                          f"{requirement.install}") from None
    return values[0] if len(values) == 1 else values


def _adam_kwargs(config: OptimizerConfig) -> dict[str, Any]:
    return {"betas": config.betas, "eps": config.eps}


# --------------------------------------------------------------- bitsandbytes
_BNB_SCHEMAS: dict[str, dict[str, Callable[[str, str], Any]]] = {
    "adamw": {}, "lion": {},  # transformers passes them no optim_args
    "rmsprop": {"alpha": as_float, "eps": as_float, "momentum": as_float, "centered": as_bool},
    "ademamix": {"beta1": as_float, "beta2": as_float, "beta3": as_float, "alpha": as_float,
                 "eps": as_float, "t_alpha": as_int, "t_beta3": as_int},
}
_BNB_CLASSES = {"adamw": "AdamW", "lion": "Lion", "rmsprop": "RMSprop", "ademamix": "AdEMAMix"}


def _bitsandbytes(name: str, family: str, bits: int, paged: bool):
    def check(config: OptimizerConfig) -> dict[str, Any]:
        return typed_optim_args(name, config, _BNB_SCHEMAS[family])

    def resolve(config: OptimizerConfig):
        args = check(config)
        kwargs: dict[str, Any] = {"lr": config.lr}
        if family == "adamw":
            kwargs.update(_adam_kwargs(config))
        elif family == "lion":
            kwargs["betas"] = config.betas
        elif family == "rmsprop":
            kwargs.update(args)
        else:  # ademamix: three betas, and its own alpha and eps
            kwargs.update(betas=(args.get("beta1", config.betas[0]),
                                 args.get("beta2", config.betas[1]), args.get("beta3", 0.9999)),
                          alpha=args.get("alpha", 5.0), eps=args.get("eps", config.eps))
            kwargs.update({key: args[key] for key in ("t_alpha", "t_beta3") if key in args})
        kwargs["optim_bits"] = bits
        if family != "rmsprop":
            kwargs["is_paged"] = paged
        return _load(_BNB, "bitsandbytes.optim", _BNB_CLASSES[family]), kwargs

    def build(groups, config: OptimizerConfig):
        cls, kwargs = resolve(config)
        optimizer = cls(groups, **kwargs)
        if bits == 8 and config.model is not None:
            # As transformers does: embeddings keep 32-bit states (8-bit ones hurt them).
            manager = _load(_BNB, "bitsandbytes.optim", "GlobalOptimManager").get_instance()
            for module in config.model.modules():
                if isinstance(module, nn.Embedding):
                    manager.register_module_override(module, "weight", {"optim_bits": 32})
        return optimizer

    return resolve, build, check


_BNB_NAMES = {  # name: (family, bits, paged)
    "adamw_bnb_8bit": ("adamw", 8, False), "adamw_8bit": ("adamw", 8, False),
    "paged_adamw_32bit": ("adamw", 32, True), "paged_adamw_8bit": ("adamw", 8, True),
    "ademamix": ("ademamix", 32, False), "ademamix_8bit": ("ademamix", 8, False),
    "paged_ademamix_32bit": ("ademamix", 32, True), "paged_ademamix_8bit": ("ademamix", 8, True),
    "lion_32bit": ("lion", 32, False), "lion_8bit": ("lion", 8, False),
    "paged_lion_32bit": ("lion", 32, True), "paged_lion_8bit": ("lion", 8, True),
    "rmsprop_bnb": ("rmsprop", 32, False), "rmsprop_bnb_32bit": ("rmsprop", 32, False),
    "rmsprop_bnb_8bit": ("rmsprop", 8, False),
}
_BNB_ALTERNATIVES = {"adamw": "adamw_anyprecision", "rmsprop": "rmsprop"}

for _name, (_family, _bits, _paged) in _BNB_NAMES.items():
    _resolve, _build, _check = _bitsandbytes(_name, _family, _bits, _paged)
    register_optimizer(
        _name, _build, f"bitsandbytes {_family} with {_bits}-bit states"
                       f"{', paged' if _paged else ''}", requires=(_BNB,),
        alternative=_BNB_ALTERNATIVES.get(_family), resolve=_resolve, check=_check)


# -------------------------------------------------------------------- torchao
def _torchao(name: str, bits: int):
    def resolve(config: OptimizerConfig):
        args = typed_optim_args(name, config, {"block_size": as_int,
                                               "bf16_stochastic_round": as_bool})
        try:
            cls = _load(_TORCHAO, "torchao.optim", f"AdamW{bits}bit")
        except ImportError:  # torchao before 0.11
            cls = _load(_TORCHAO, "torchao.prototype.low_bit_optim", f"AdamW{bits}bit")
        return cls, {"lr": config.lr, "block_size": args.get("block_size", 256),
                     "bf16_stochastic_round": args.get("bf16_stochastic_round", False),
                     **_adam_kwargs(config)}

    def check(config: OptimizerConfig) -> None:
        typed_optim_args(name, config, {"block_size": as_int, "bf16_stochastic_round": as_bool})

    return resolve, check


for _bits in (4, 8):
    _resolve, _check = _torchao(f"adamw_torch_{_bits}bit", _bits)
    register_optimizer(f"adamw_torch_{_bits}bit",
                       description=f"torchao AdamW{_bits}bit: {_bits}-bit optimizer states",
                       requires=(_TORCHAO,), alternative="adamw_anyprecision", resolve=_resolve,
                       check=_check)


# --------------------------------------------------------------- GaLore, APOLLO
def _target_parameter_names(name: str, config: OptimizerConfig) -> list[str]:
    """The weights of the nn.Linear modules ``optim_target_modules`` selects, by
    transformers' rules: a string is a regular expression matched against the whole
    module name (or 'all-linear'); a list matches a module named by an item, one whose
    name contains an item, or one an item matches as a regular expression."""
    targets = config.target_modules
    if config.model is None:
        raise ValueError(f"optimizer {name!r} needs the model (its low-rank projections are "
                         f"per module)")
    all_linear = targets == "all-linear"
    found = []
    for module_name, module in config.model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if isinstance(targets, str):
            match = all_linear or re.fullmatch(targets, module_name) is not None
        else:
            match = module_name in targets or any(t in module_name for t in targets) or any(
                re.fullmatch(t, module_name) for t in targets)
        if match:
            found.append(f"{module_name}.weight")
    if not found:
        raise ValueError(f"optim_target_modules={targets!r} selects no nn.Linear module of the "
                         f"model for {name}")
    return found


def _low_rank(name: str, requirement: Requirement, class_name: str,
              schema: dict[str, tuple[Callable[[str, str], Any], Any]],
              adam_in_group: bool = False, adafactor: bool = False):
    converters = {key: convert for key, (convert, _) in schema.items()}

    def check(config: OptimizerConfig) -> None:
        typed_optim_args(name, config, converters)
        if config.target_modules is None:
            raise ValueError(f"optimizer {name!r} projects the modules optim_target_modules "
                             f"names: set it (module names, a regular expression, or "
                             f"'all-linear')")

    def resolve(config: OptimizerConfig):
        check(config)
        args = typed_optim_args(name, config, converters)
        low_rank = {key: args.get(key, default) for key, (_, default) in schema.items()}
        if adam_in_group:
            low_rank.update(_adam_kwargs(config))
        cls = _load(requirement, requirement.module, class_name)
        targets = set(_target_parameter_names(name, config))
        named = list(config.model.named_parameters())
        groups = [{"params": [p for n, p in named if n not in targets]},
                  {"params": [p for n, p in named if n in targets], **low_rank}]
        kwargs: dict[str, Any] = {"lr": config.lr, "params": groups}
        if adafactor:
            kwargs.update(scale_parameter=False, relative_step=False)
        return cls, kwargs

    return resolve, check


_GALORE_SCHEMA = {"rank": (as_int, 128), "update_proj_gap": (as_int, 200),
                  "scale": (as_float, 0.25), "proj_type": (as_text, "std")}
_APOLLO_SCHEMA = {"rank": (as_int, 128), "proj": (as_text, "random"),
                  "scale_type": (as_text, "channel"), "update_proj_gap": (as_int, 200),
                  "scale": (as_float, 1.0), "proj_type": (as_text, "std")}

for _name, _class, _adafactor in (("galore_adamw", "GaLoreAdamW", False),
                                  ("galore_adamw_8bit", "GaLoreAdamW8bit", False),
                                  ("galore_adafactor", "GaLoreAdafactor", True)):
    _resolve, _check = _low_rank(_name, _GALORE, _class, _GALORE_SCHEMA, adafactor=_adafactor)
    register_optimizer(_name, description=f"GaLore {_class}: low-rank gradient projections of "
                                          f"optim_target_modules", requires=(_GALORE,),
                       alternative="adamw_anyprecision", resolve=_resolve, check=_check)
_resolve, _check = _low_rank("apollo_adamw", _APOLLO, "APOLLOAdamW", _APOLLO_SCHEMA,
                             adam_in_group=True)
register_optimizer("apollo_adamw", description="APOLLO AdamW: low-rank scaled updates of "
                                               "optim_target_modules",
                   requires=(_APOLLO,), alternative="adamw_anyprecision", resolve=_resolve,
                   check=_check)


def _unsupported(why: str) -> Callable:
    def build(groups, config):
        raise ValueError(f"not available in pytrainer's Trainer: {why}")
    return build


for _name, _requirement in (("galore_adamw_layerwise", _GALORE),
                            ("galore_adamw_8bit_layerwise", _GALORE),
                            ("galore_adafactor_layerwise", _GALORE),
                            ("apollo_adamw_layerwise", _APOLLO)):
    register_optimizer(_name, _unsupported(_LAYERWISE), "layer-wise low-rank optimizer",
                       requires=(_requirement,), unsupported=_LAYERWISE)
for _name in ("lomo", "adalomo"):
    register_optimizer(_name, _unsupported(_LOMO_WHY), f"{_name}: update fused into backward",
                       requires=(_LOMO,), unsupported=_LOMO_WHY,
                       alternative="adamw_anyprecision")


# -------------------------------------------------------------- schedule-free
def _schedule_free(name: str, class_name: str, adam: bool, warmup: bool):
    schema = {"weight_lr_power": as_float, "r": as_float}

    def check(config: OptimizerConfig) -> None:
        typed_optim_args(name, config, schema)
        if warmup and 0 < config.warmup_steps < 1:
            raise ValueError(f"{name} takes its warmup as a step count, got the ratio "
                             f"warmup_steps={config.warmup_steps!r}: give warmup_steps >= 1")

    def resolve(config: OptimizerConfig):
        check(config)
        args = typed_optim_args(name, config, schema)
        kwargs: dict[str, Any] = {"lr": config.lr}
        if adam:
            kwargs.update(_adam_kwargs(config))
        kwargs["weight_decay"] = config.weight_decay
        if warmup:
            kwargs["warmup_steps"] = int(config.warmup_steps)
        kwargs.update(weight_lr_power=args.get("weight_lr_power", 2.0), r=args.get("r", 0.0))
        return _load(_SCHEDULEFREE, "schedulefree", class_name), kwargs

    return resolve, check


for _name, _class, _adam, _warmup in (
        ("schedule_free_radam", "RAdamScheduleFree", True, False),
        ("schedule_free_adamw", "AdamWScheduleFree", True, True),
        ("schedule_free_sgd", "SGDScheduleFree", False, True)):
    _resolve, _check = _schedule_free(_name, _class, _adam, _warmup)
    register_optimizer(_name, description=f"schedulefree {_class}", requires=(_SCHEDULEFREE,),
                       unsupported=_SCHEDULEFREE_WHY, resolve=_resolve, check=_check)


# --------------------------------------------------------------------- others
_GROK_SCHEMA = {"alpha_init": 0.98, "lamb": 2.0, "gamma": 0.1, "grokking_signal_decay_rate": 0.1,
                "gradient_clipping": 1.0}


def _grokadamw(config: OptimizerConfig):
    args = typed_optim_args("grokadamw", config, dict.fromkeys(_GROK_SCHEMA, as_float))
    return _load(_GROK, "grokadamw", "GrokAdamW"), {
        "lr": config.lr, **{key: args.get(key, default) for key, default in _GROK_SCHEMA.items()}}


_STABLE_SCHEMA = {"decouple_lr": as_bool, "max_lr": as_float, "kahan_sum": as_bool}


def _stable_adamw(config: OptimizerConfig):
    args = typed_optim_args("stable_adamw", config, _STABLE_SCHEMA)
    return _load(_OPTIMI, "optimi", "StableAdamW"), {
        "lr": config.lr, **_adam_kwargs(config), "weight_decay": config.weight_decay,
        "decouple_lr": args.get("decouple_lr", False), "max_lr": args.get("max_lr"),
        "kahan_sum": args.get("kahan_sum")}


def _plain_adam(name: str, requirement: Requirement, module: str, class_name: str):
    def resolve(config: OptimizerConfig):
        reject_optim_args(name, config)
        return _load(requirement, module, class_name), {"lr": config.lr, **_adam_kwargs(config)}
    return resolve


def _apex(config: OptimizerConfig):
    reject_optim_args("adamw_apex_fused", config)
    try:
        from apex.optimizers import FusedAdam
    except ImportError as error:
        raise ImportError(
            f"optim='adamw_apex_fused' needs NVIDIA apex, which could not be imported ({error}); "
            f"install apex with its CUDA extensions, or use optim='adamw_custom_fused', "
            f"pytrainer's own fused AdamW") from None
    # adam_w_mode=True (its default) is decoupled weight decay, as Hugging Face used it.
    return FusedAdam, {"lr": config.lr, **_adam_kwargs(config), "adam_w_mode": True}


register_optimizer("grokadamw", description="GrokAdamW", requires=(_GROK,), resolve=_grokadamw,
                   check=lambda config: typed_optim_args(
                       "grokadamw", config, dict.fromkeys(_GROK_SCHEMA, as_float)))
register_optimizer("stable_adamw", description="torch-optimi StableAdamW", requires=(_OPTIMI,),
                   resolve=_stable_adamw, check=lambda config: typed_optim_args(
                       "stable_adamw", config, _STABLE_SCHEMA))
register_optimizer("adamw_torch_xla", description="torch_xla's syncfree AdamW",
                   requires=(_XLA,), resolve=_plain_adam("adamw_torch_xla", _XLA,
                                                         "torch_xla.amp.syncfree", "AdamW"),
                   check=lambda config: reject_optim_args("adamw_torch_xla", config))
register_optimizer("adamw_torch_npu_fused", description="torch_npu's NpuFusedAdamW",
                   requires=(_NPU,), resolve=_plain_adam("adamw_torch_npu_fused", _NPU,
                                                         "torch_npu.optim", "NpuFusedAdamW"),
                   check=lambda config: reject_optim_args("adamw_torch_npu_fused", config))
register_optimizer("adamw_apex_fused", description="NVIDIA apex FusedAdam (transformers 4.x's "
                                                   "name)", requires=(_APEX,),
                   alternative="adamw_custom_fused", resolve=_apex,
                   check=lambda config: reject_optim_args("adamw_apex_fused", config))
