"""Every optimizer name of transformers' OptimizerNames: the torch ones built with
the class and keyword arguments transformers builds (compared with its own
Trainer.get_optimizer_cls_and_kwargs), the library ones likewise over stand-ins of
their libraries, and the unusable ones refused when the arguments are built."""
from __future__ import annotations

import importlib.metadata
import sys
import types
import warnings

import pytest
import torch
from torch import nn

from pytrainer import TrainingArguments
from pytrainer.optim import create_optimizer, registry
from pytrainer.optim.registry import OptimizerConfig, get_optimizer_spec, optimizer_status


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers")


def their_cls_and_kwargs(hf, model=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = hf.TrainingArguments(output_dir="unused", use_cpu=True, report_to="none",
                                    **kwargs)
    return hf.Trainer.get_optimizer_cls_and_kwargs(args, model)


def our_cls_and_kwargs(model=None, **kwargs):
    args = TrainingArguments(use_cpu=True, **kwargs)
    return get_optimizer_spec(args.optim).resolve(OptimizerConfig.from_args(args, model))


HYPER = dict(learning_rate=3e-4, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-7,
             weight_decay=0.1)

TORCH_CASES = [
    ("adamw_torch", None), ("adamw_torch_fused", None),
    ("sgd", None), ("sgd", "momentum=0.9,dampening=0.1"), ("sgd", "momentum=0.9, nesterov=true"),
    ("sgd", "nesterov=False"), ("adagrad", None), ("adagrad", "lr_decay=0.01,eps=1e-6"),
    ("rmsprop", None), ("rmsprop", "momentum=0.5, alpha=0.9, eps=1e-7, centered=yes"),
]


@pytest.mark.parametrize("name,optim_args", TORCH_CASES)
def test_torch_optimizers_are_built_as_transformers_builds_them(hf, name, optim_args):
    kwargs = dict(optim=name, optim_args=optim_args, **HYPER)
    their_cls, their_kwargs = their_cls_and_kwargs(hf, **kwargs)
    my_cls, my_kwargs = our_cls_and_kwargs(**kwargs)
    assert my_cls is their_cls
    assert my_kwargs == their_kwargs


def test_adafactor_takes_transformers_arguments_with_pytrainers_kernels(hf):
    their_cls, their_kwargs = their_cls_and_kwargs(hf, optim="adafactor", learning_rate=1e-3)
    assert their_cls is hf.optimization.Adafactor
    model = nn.Linear(4, 3)
    optimizer = create_optimizer(model, TrainingArguments(optim="adafactor", learning_rate=1e-3))
    assert {key: optimizer.defaults[key] for key in their_kwargs} == their_kwargs


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop"])
def test_torch_optimizers_train_with_decay_groups(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    optimizer = create_optimizer(model, TrainingArguments(optim=name, learning_rate=0.1,
                                                          weight_decay=0.05))
    assert type(optimizer).__name__ == {"sgd": "SGD", "adagrad": "Adagrad",
                                        "rmsprop": "RMSprop"}[name]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    before = model[0].weight.detach().clone()
    model(torch.randn(2, 4)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(before, model[0].weight)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"optim": "sgd", "optim_args": "momentun=0.9"},
     "optim='sgd' with optim_args='momentun=0.9': optim_args key 'momentun' is not valid for "
     "sgd; valid keys: momentum, dampening, nesterov"),
    ({"optim": "sgd", "optim_args": "weight_decay=0.1"},
     "optim_args key 'weight_decay' is not taken by sgd: the parameter groups carry weight "
     "decay"),
    ({"optim": "sgd", "optim_args": "nesterov=true"},
     "Nesterov momentum requires a momentum and zero dampening"),  # torch's own check, now
    ({"optim": "sgd", "optim_args": "momentum=fast"}, "optim_args momentum='fast' is not a "
                                                      "number"),
    ({"optim": "rmsprop", "optim_args": "centered=maybe"}, "centered='maybe' is not a boolean"),
    ({"optim": "adagrad", "optim_args": "lr_decay=-1"}, "Invalid lr_decay value"),
    ({"optim": "adamw_anyprecision", "optim_args": "momentum_dtype=float8"}, "momentum_dtype"),
    ({"optim": "adamw_anyprecision", "optim_args": "kahan=true"},
     "optim_args key 'kahan' is not valid for adamw_anyprecision"),
    ({"optim": "adamw_custom_fused", "optim_args": "amsgrad=true"}, "takes no optim_args"),
])
def test_optim_args_are_checked_when_the_arguments_are_built(kwargs, fragment):
    with pytest.raises(ValueError) as error:
        TrainingArguments(**kwargs)
    assert fragment in str(error.value) and "\n" not in str(error.value)


# ----------------------------------------------------------- missing libraries
LIBRARY_NAMES = [name for name in registry.optimizer_names()
                 if get_optimizer_spec(name).requires]


@pytest.mark.parametrize("name", LIBRARY_NAMES)
def test_a_library_optimizer_without_its_library_is_refused_at_argument_time(monkeypatch,
                                                                            name):
    spec = get_optimizer_spec(name)
    for requirement in spec.requires:
        monkeypatch.setitem(sys.modules, requirement.module, None)  # blocks the import
    with pytest.raises(ValueError) as error:
        TrainingArguments(optim=name)
    message = str(error.value)
    assert message.startswith(f"optim={name!r} ")
    if spec.unsupported:
        assert f"not available in pytrainer: {spec.unsupported}" in message
    else:
        for requirement in spec.requires:
            assert f"needs {requirement.module}, which is not installed" in message
            assert requirement.install in message
    if spec.alternative:
        assert f"or use optim={spec.alternative!r}" in message


def test_the_availability_report_groups_every_name():
    report = registry.availability_report()
    for name in registry.optimizer_names():
        assert name in report
    usable = report.splitlines()[0]
    for name in ("adamw_torch_fused", "sgd", "adamw_custom_fused", "adafactor"):
        assert name in usable


# --------------------------------------------- library optimizers over stand-ins
class Recorder(torch.optim.SGD):
    """Stands in for a library's optimizer class, keeping its keyword arguments."""

    def __init__(self, params, **kwargs):
        self.kwargs = kwargs
        super().__init__(params, lr=kwargs.get("lr", 1e-3))


def stand_in(monkeypatch, dotted: str, **attributes) -> None:
    """Puts module ``dotted`` (and its parents) into sys.modules with ``attributes``."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        module = sys.modules.get(name)
        if module is None or not isinstance(module, types.ModuleType):
            module = types.ModuleType(name)
            monkeypatch.setitem(sys.modules, name, module)
        if i > 1:
            monkeypatch.setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], module,
                                raising=False)
    for key, value in attributes.items():
        monkeypatch.setattr(sys.modules[dotted], key, value, raising=False)


def classes(*names: str) -> dict[str, type]:
    return {name: type(name, (Recorder,), {}) for name in names}


@pytest.fixture
def libraries(monkeypatch, hf):
    """Stand-ins of every optimizer library, and transformers told they are installed."""
    stand_in(monkeypatch, "bitsandbytes.optim",
             **classes("AdamW", "Lion", "RMSprop", "AdEMAMix"))
    stand_in(monkeypatch, "torchao.optim", **classes("AdamW4bit", "AdamW8bit"))
    stand_in(monkeypatch, "galore_torch", **classes("GaLoreAdamW", "GaLoreAdamW8bit",
                                                    "GaLoreAdafactor"))
    stand_in(monkeypatch, "apollo_torch", **classes("APOLLOAdamW"))
    stand_in(monkeypatch, "schedulefree", **classes("AdamWScheduleFree", "SGDScheduleFree",
                                                    "RAdamScheduleFree"))
    stand_in(monkeypatch, "grokadamw", **classes("GrokAdamW"))
    stand_in(monkeypatch, "optimi", **classes("StableAdamW"))
    stand_in(monkeypatch, "torch_xla.amp.syncfree", **classes("AdamW"))
    stand_in(monkeypatch, "torch_npu.optim", **classes("NpuFusedAdamW"))
    stand_in(monkeypatch, "lomo_optim", **classes("Lomo", "AdaLomo"))
    module = sys.modules["transformers.trainer_optimizer"]
    for check in ("is_bitsandbytes_available", "is_torchao_available", "is_galore_torch_available",
                  "is_apollo_torch_available", "is_schedulefree_available",
                  "is_grokadamw_available", "is_torch_optimi_available", "is_lomo_available"):
        monkeypatch.setattr(module, check, lambda *args, **kwargs: True)
    version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.11.0" if name == "torchao" else version(name))


LIBRARY_CASES = [
    ("adamw_bnb_8bit", None), ("adamw_8bit", None), ("paged_adamw_32bit", None),
    ("paged_adamw_8bit", None), ("lion_8bit", None), ("paged_lion_32bit", None),
    ("rmsprop_bnb", None), ("rmsprop_bnb_8bit", None),
    ("ademamix", None), ("paged_ademamix_8bit", "beta3=0.999,alpha=8,t_alpha=100,t_beta3=50"),
    ("adamw_torch_4bit", None), ("adamw_torch_8bit", "bf16_stochastic_round=true"),
    ("schedule_free_adamw", "weight_lr_power=1.5"), ("schedule_free_sgd", None),
    ("schedule_free_radam", "r=0.5"), ("grokadamw", "lamb=3.0,gamma=0.2"),
    ("stable_adamw", None), ("stable_adamw", "max_lr=0.1,decouple_lr=true"),
    ("adamw_torch_xla", None), ("adamw_torch_npu_fused", None),
]


@pytest.mark.parametrize("name,optim_args", LIBRARY_CASES)
def test_library_optimizers_are_built_as_transformers_builds_them(libraries, hf, name,
                                                                  optim_args):
    kwargs = dict(optim=name, optim_args=optim_args, warmup_steps=10, **HYPER)
    their_cls, their_kwargs = their_cls_and_kwargs(hf, **kwargs)
    # resolved directly: TrainingArguments refuses schedule-free for pytrainer's Trainer
    config = OptimizerConfig(lr=3e-4, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1,
                             warmup_steps=10, optim_args=registry.parse_optim_args(optim_args))
    my_cls, my_kwargs = get_optimizer_spec(name).resolve(config)
    assert my_cls is their_cls
    assert my_kwargs == their_kwargs


class LowRankModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)


@pytest.mark.parametrize("name,targets,optim_args", [
    ("galore_adamw", ["attn", "mlp"], "rank=4,update_proj_gap=50"),
    ("galore_adafactor", "all-linear", None),
    ("galore_adamw_8bit", r".*attn", "scale=0.5,proj_type=left"),
    ("apollo_adamw", ["mlp"], "rank=2,proj=svd"),
])
def test_low_rank_optimizers_are_built_as_transformers_builds_them(libraries, hf, name,
                                                                   targets, optim_args):
    model = LowRankModel()
    kwargs = dict(optim=name, optim_args=optim_args, optim_target_modules=targets, **HYPER)
    their_cls, their_kwargs = their_cls_and_kwargs(hf, model, **kwargs)
    my_cls, my_kwargs = our_cls_and_kwargs(model, **kwargs)
    assert my_cls is their_cls
    their_groups, my_groups = their_kwargs.pop("params"), my_kwargs.pop("params")
    assert my_kwargs == their_kwargs
    assert len(my_groups) == len(their_groups) == 2
    for mine, theirs in zip(my_groups, their_groups):
        assert [id(p) for p in mine.pop("params")] == [id(p) for p in theirs.pop("params")]
        assert mine == theirs


def test_low_rank_optimizers_need_target_modules(libraries):
    with pytest.raises(ValueError, match="optim='galore_adamw': optimizer 'galore_adamw' "
                                         "projects the modules optim_target_modules names"):
        TrainingArguments(optim="galore_adamw")
    with pytest.raises(ValueError, match="selects no nn.Linear module"):
        our_cls_and_kwargs(LowRankModel(), optim="galore_adamw", optim_target_modules=["conv"])


def test_bitsandbytes_8bit_keeps_embeddings_in_32_bits(libraries, monkeypatch):
    overrides = []

    class Manager:
        @staticmethod
        def get_instance():
            return Manager()

        def register_module_override(self, module, name, config):
            overrides.append((module, name, config))

    monkeypatch.setattr(sys.modules["bitsandbytes.optim"], "GlobalOptimManager", Manager,
                        raising=False)
    model = LowRankModel()
    optimizer = create_optimizer(model, TrainingArguments(optim="adamw_bnb_8bit"))
    assert optimizer.kwargs["optim_bits"] == 8
    assert overrides == [(model.embed, "weight", {"optim_bits": 32})]


@pytest.mark.parametrize("name", ["lomo", "adalomo", "galore_adamw_layerwise",
                                  "apollo_adamw_layerwise", "schedule_free_adamw"])
def test_optimizers_the_trainer_cannot_drive_are_refused_even_when_installed(libraries, name):
    assert optimizer_status(name).startswith("not available in pytrainer: ")
    with pytest.raises(ValueError, match=f"optim={name!r} not available in pytrainer"):
        TrainingArguments(optim=name)


def test_schedule_free_warmup_must_be_a_count(libraries):
    spec = get_optimizer_spec("schedule_free_adamw")
    with pytest.raises(ValueError, match="takes its warmup as a step count"):
        spec.resolve(OptimizerConfig(warmup_steps=0.1))
