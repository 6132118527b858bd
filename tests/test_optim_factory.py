"""create_optimizer and its decay grouping; the optimizer names of issue 3;
AdamWHF against a plain-tensor reference of Hugging Face's AdamW."""
from __future__ import annotations

import io
import sys
import types

import pytest
import torch
from torch import nn

from pytrainer import TrainingArguments
from pytrainer.optim import (AdamWHF, OptimizerConfig, build_optimizer, create_optimizer,
                             get_decay_parameter_names, optimizer_names)
from tests.optim_db import OPTIMS
from tests.reference.hf_adamw import adamw_hf_step


class MyRMSNorm(nn.Module):
    """An RMSNorm defined by a model (as LlamaRMSNorm), excluded by its name only."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)                 # excluded by type, not by name
        self.attn = nn.Linear(dim, dim)               # weight decays, bias not
        self.post_attention_norm = MyRMSNorm(dim)     # "_norm."
        self.attn_bias_proj = nn.Linear(dim, dim, bias=False)  # "bias" is a bare substring
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x)) + self.attn_bias_proj(x)
        return x + self.mlp(self.post_attention_norm(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 8, rms_type=None) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.norm = MyRMSNorm(dim)                    # "(^|.)norm(.|$)"
        self.final_layernorm = nn.LayerNorm(dim)      # type and name
        self.ln_f = rms_type(dim) if rms_type else nn.Identity()
        self.frozen = nn.Linear(dim, dim)
        self.frozen.requires_grad_(False)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight       # tied

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(self.final_layernorm(self.norm(x))) + 0 * self.frozen(x)
        return self.lm_head(x)


EXPECTED_DECAY = [
    "embed.weight",
    "blocks.0.attn.weight", "blocks.0.mlp.0.weight", "blocks.0.mlp.2.weight",
    "blocks.1.attn.weight", "blocks.1.mlp.0.weight", "blocks.1.mlp.2.weight",
    "frozen.weight",
]


def _loss_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    ids = torch.randint(0, 16, (2, 5))
    logits = model(ids)
    nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    optimizer.step()
    optimizer.zero_grad()


# -------------------------------------------------------------- decay grouping
def test_decay_parameter_names():
    model = TinyLM()
    assert get_decay_parameter_names(model) == EXPECTED_DECAY
    # the tied weight appears once, under its first name
    assert "lm_head.weight" not in get_decay_parameter_names(model)


@pytest.mark.skipif(not hasattr(nn, "RMSNorm"), reason="torch without nn.RMSNorm")
def test_torch_rmsnorm_is_excluded_whatever_its_name():
    model = TinyLM(rms_type=nn.RMSNorm)
    assert "ln_f.weight" in dict(model.named_parameters())
    assert get_decay_parameter_names(model) == EXPECTED_DECAY


def test_decay_names_agree_with_transformers():
    pytest.importorskip("transformers")
    from transformers.trainer_pt_utils import get_parameter_names
    model = TinyLM()
    theirs = set(get_parameter_names(
        model, [nn.LayerNorm],
        [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
    # their list holds every name of a tied weight; the optimizer sees the first
    assert [n for n, _ in model.named_parameters() if n in theirs] == \
        get_decay_parameter_names(model)


def test_create_optimizer_groups():
    model = TinyLM()
    args = TrainingArguments(weight_decay=0.1, learning_rate=3e-3, adam_beta1=0.8,
                             adam_beta2=0.95, adam_epsilon=1e-7)
    optimizer = create_optimizer(model, args)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    named = dict(model.named_parameters())
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {
        id(named[n]) for n in EXPECTED_DECAY if n != "frozen.weight"}
    expected_plain = {id(p) for n, p in named.items()
                      if n not in EXPECTED_DECAY and p.requires_grad}
    assert {id(p) for p in plain["params"]} == expected_plain
    everything = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(everything) == len(set(everything))  # the tied weight once
    assert id(model.frozen.weight) not in everything and id(model.frozen.bias) not in everything
    for group in optimizer.param_groups:
        assert (group["lr"], group["betas"], group["eps"]) == (3e-3, (0.8, 0.95), 1e-7)


def test_an_empty_group_is_left_out():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model[0].weight.requires_grad_(False)
    (group,) = create_optimizer(model, TrainingArguments(weight_decay=0.1)).param_groups
    assert group["weight_decay"] == 0.0 and len(group["params"]) == 3


def test_no_trainable_parameters_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer(model, TrainingArguments())


# ----------------------------------------------------------- each optimizer name
# torch's optimizers by the names Hugging Face gives them; pytrainer's from the
# optimizer database
NAMES = [("adamw_torch", torch.optim.AdamW), ("adamw_torch_fused", torch.optim.AdamW)] + list(
    dict.fromkeys((info.registry_name, info.cls) for info in OPTIMS if info.registry_name))


@pytest.mark.parametrize("name,cls", NAMES, ids=[name for name, _ in NAMES])
def test_create_optimizer_for_every_available_name(name, cls):
    torch.manual_seed(0)
    model = TinyLM()
    args = TrainingArguments(optim=name, learning_rate=1e-2, weight_decay=0.01)
    optimizer = create_optimizer(model, args)
    assert type(optimizer) is cls
    if name == "adamw_torch_fused":
        assert optimizer.defaults["fused"] is True
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loss_step(model, optimizer)
    after = dict(model.named_parameters())
    assert not torch.equal(before["embed.weight"], after["embed.weight"])
    assert torch.equal(before["frozen.weight"], after["frozen.weight"])


def test_every_name_of_the_issue_is_registered():
    assert {"adamw_hf", "adamw_torch", "adamw_torch_fused", "adamw_apex_fused",
            "adamw_anyprecision", "adafactor", "adamw_custom_fused"} <= set(optimizer_names())


def test_optim_args_are_rejected_by_optimizers_that_take_none():
    # at construction of the arguments (a setup error), and by the builder itself
    with pytest.raises(ValueError, match="optim='adamw_torch' with optim_args='amsgrad=true'.*"
                                         "takes no optim_args"):
        TrainingArguments(optim="adamw_torch", optim_args="amsgrad=true")
    config = OptimizerConfig(optim_args={"amsgrad": "true"})
    with pytest.raises(ValueError, match="takes no optim_args"):
        build_optimizer("adamw_torch", [{"params": list(TinyLM().parameters())}], config)


def test_apex_missing_suggests_the_custom_fused_optimizer(monkeypatch):
    monkeypatch.setitem(sys.modules, "apex", None)
    monkeypatch.setitem(sys.modules, "apex.optimizers", None)
    # TrainingArguments refuses it with what to install and what to use instead ...
    with pytest.raises(ValueError, match="optim='adamw_apex_fused' needs apex.*"
                                         "adamw_custom_fused"):
        TrainingArguments(optim="adamw_apex_fused")
    # ... and a builder called directly (a custom loop) says the same at build time
    with pytest.raises(ImportError, match="adamw_custom_fused"):
        build_optimizer("adamw_apex_fused", [{"params": list(TinyLM().parameters())}],
                        OptimizerConfig())


def test_apex_fused_adam_is_built_with_the_arguments(monkeypatch):
    class FusedAdam(torch.optim.SGD):  # stands in for apex's, recording its arguments
        def __init__(self, params, **kwargs):
            self.kwargs = kwargs
            super().__init__(params, lr=kwargs["lr"])

    apex = types.ModuleType("apex")
    apex.optimizers = types.ModuleType("apex.optimizers")
    apex.optimizers.FusedAdam = FusedAdam
    monkeypatch.setitem(sys.modules, "apex", apex)
    monkeypatch.setitem(sys.modules, "apex.optimizers", apex.optimizers)
    optimizer = create_optimizer(TinyLM(), TrainingArguments(optim="adamw_apex_fused",
                                                             learning_rate=2e-3))
    assert optimizer.kwargs == {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                                "adam_w_mode": True}


def test_pending_optimizers_fail_clearly(monkeypatch):
    from pytrainer.optim import registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_pending("adamw_future", "pytrainer.optim.Future (issue 99) has not landed")
    with pytest.raises(NotImplementedError, match="adamw_future.*not available yet.*issue 99"):
        create_optimizer(TinyLM(), TrainingArguments(optim="adamw_future"))


# ------------------------------------------------------------------- AdamWHF
def _reference_adamw_hf(params, grads_per_step, **hyper):
    """Hugging Face's AdamW written out on plain tensors, step by step."""
    params = [p.clone() for p in params]
    states = [{"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
              for p in params]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            params[i] = adamw_hf_step(params[i], g, states[i], **hyper)
    return params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("correct_bias,weight_decay", [(True, 0.0), (True, 0.1), (False, 0.05)])
def test_adamw_hf_matches_the_reference_over_many_steps(dtype, correct_bias, weight_decay):
    gen = torch.Generator().manual_seed(1)
    shapes = [(7, 5), (13,), (3, 4, 2)]
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    steps = 25
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(steps)]
    hyper = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=weight_decay,
                 correct_bias=correct_bias)

    params = [nn.Parameter(p.clone()) for p in init]
    optimizer = AdamWHF(params, **hyper)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()

    expected = _reference_adamw_hf(init, grads, **hyper)
    for got, want in zip(params, expected):
        torch.testing.assert_close(got.detach(), want)
    assert all(optimizer.state[p]["step"] == steps for p in params)


def test_adamw_hf_defaults_are_the_classic_ones():
    optimizer = AdamWHF([nn.Parameter(torch.zeros(1))])
    assert {k: optimizer.defaults[k] for k in ("lr", "betas", "eps", "weight_decay",
                                               "correct_bias")} == {
        "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0,
        "correct_bias": True}


@pytest.mark.parametrize("kwargs,fragment", [
    ({"lr": -1.0}, "learning rate"),
    ({"eps": 0.0}, "eps"),
    ({"betas": (1.0, 0.999)}, "beta1"),
    ({"betas": (0.9, -0.1)}, "beta2"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"correct_bias": "yes"}, "correct_bias"),
])
def test_adamw_hf_rejects_invalid_hyperparameters(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        AdamWHF([nn.Parameter(torch.zeros(2))], **kwargs)


def test_adamw_hf_rejects_sparse_gradients():
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = AdamWHF(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()


def test_adamw_hf_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = AdamWHF(model.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(8, 4)

    def step(m, opt):
        m(x).square().mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step(model, optimizer)
    clone = nn.Linear(4, 3)
    clone.load_state_dict(model.state_dict())
    restored = AdamWHF(clone.parameters())
    buffer = io.BytesIO()  # as a checkpoint does; state_dict() holds live references
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(3):
        step(model, optimizer)
        step(clone, restored)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_adamw_hf_loads_a_torch_adamw_state_with_tensor_steps():
    model = nn.Linear(2, 2)
    torch_opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    torch_opt.step()
    optimizer = AdamWHF(model.parameters())
    optimizer.load_state_dict(torch_opt.state_dict())
    optimizer.step()
    assert optimizer.state[model.weight]["step"] == 2
