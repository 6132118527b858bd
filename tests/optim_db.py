"""The optimizer test database (after torch's
``torch/testing/_internal/common_optimizers.py``): every pytrainer optimizer in
its main configurations, declared once with its constructor, reference step,
dtypes, states and capabilities. The tests that cover every optimizer are
parametrized over ``OPTIMS``, so a new optimizer is added here and nowhere else.

Each reference step is written from the optimizer's definition in
``tests/reference/``; here it is wrapped in one calling convention::

    reference(p, g, state, index, **kwargs) -> new p

``p`` and ``g`` are the parameter and gradient before the step, ``state`` the
optimizer's state of ``p`` before the step (plain tensors, updated in place),
``index`` the parameter's position among the optimizer's parameters and
``kwargs`` the constructor's hyperparameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch

from pytrainer.optim import Adafactor, AdamWHF, AnyPrecisionAdamW, FusedAdamW
from pytrainer.optim.anyprecision import resolve_state_dtype
from tests.helpers import rounding_tolerance
from tests.reference.adafactor import adafactor_step
from tests.reference.adamw import adamw_step
from tests.reference.anyprecision import anyprecision_step, rounding_bits, rounding_key
from tests.reference.hf_adamw import adamw_hf_step

ALL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOW_PRECISION = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class OptimInfo:
    """One optimizer in one configuration."""

    #: test id
    name: str
    cls: type
    kwargs: dict[str, Any]
    #: one step on plain tensors (see the module docstring)
    reference: Callable[..., torch.Tensor]
    #: parameter dtypes the optimizer accepts (others are refused at construction)
    dtypes: tuple[torch.dtype, ...]
    #: the states of parameter p after a step: key -> (shape, dtype), besides ``step``
    states: Callable[[torch.Tensor, dict[str, Any]], dict[str, tuple[tuple[int, ...], torch.dtype]]]
    #: the name ``TrainingArguments.optim`` builds it by (None: not registered)
    registry_name: str | None = None
    #: a KernelOptimizer: one pytrainer kernel call per group (CPU and CUDA)
    kernels: bool = True
    #: states of 2+ dim parameters depend on their shape (factored), and need
    #: row-major parameters
    factored: bool = False
    #: extra kwargs under which every CPU instruction set stores the same bits as
    #: the portable build (None: sums whose order depends on the vector width)
    same_bits_on_every_isa: dict[str, Any] | None = field(default=None)
    #: the kernels spread one inf/NaN over a whole tensor (norms): test finite values
    finite_only: bool = False
    #: bitwise equal to its reference on the CPU
    exact_on_cpu: bool = False
    #: relative tolerance of float32 results against the reference (beyond a rounding)
    rtol_f32: float = 1e-6
    #: the dtypes whose results the reference reproduces within a rounding (None: all)
    reference_dtypes: tuple[torch.dtype, ...] | None = None
    #: takes ``capturable=True``: its step can be captured in a CUDA graph and replayed
    capturable: bool = False

    def __repr__(self) -> str:
        return self.name

    def make(self, params, **overrides) -> torch.optim.Optimizer:
        return self.cls(params, **{**self.kwargs, **overrides})

    def tolerance(self, dtype: torch.dtype) -> dict[str, float]:
        """assert_close tolerances of a result stored in ``dtype``."""
        tol = rounding_tolerance(dtype)
        if dtype == torch.float32:
            tol["rtol"] = max(tol["rtol"], self.rtol_f32)
        return tol


# ------------------------------------------------------------------ references


def _adamw(p, g, state, index, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
           amsgrad=False, maximize=False):
    state["step"] += 1
    new_p, state["exp_avg"], state["exp_avg_sq"], vmax = adamw_step(
        p, g, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), state["step"],
        lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay,
        amsgrad=amsgrad, maximize=maximize)
    if amsgrad:
        state["max_exp_avg_sq"] = vmax
    return new_p


def _anyprecision(p, g, state, index, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                  use_kahan_summation=False, momentum_dtype=None, variance_dtype=None,
                  compensation_buffer_dtype=None, rounding="nearest", seed=0):
    state["step"] += 1
    mode = "kahan" if use_kahan_summation else rounding
    bits = None
    if mode == "stochastic":
        bits = rounding_bits(rounding_key(seed, index, state["step"]), p.numel()).to(p.device)
    c = state.get("compensation", torch.zeros_like(p))
    new_p, state["exp_avg"], state["exp_avg_sq"], new_c = anyprecision_step(
        p, g, state["exp_avg"], state["exp_avg_sq"], c, state["step"], lr=lr, beta1=betas[0],
        beta2=betas[1], eps=eps, weight_decay=weight_decay, rounding=mode, bits=bits)
    if use_kahan_summation:
        state["compensation"] = new_c
    return new_p


def _adafactor(p, g, state, index, **kwargs):
    # transformers' math in float64, on float64 copies of the (float32) states
    doubled = {k: v if k == "step" else v.double().cpu() for k, v in state.items()}
    new_p = adafactor_step(p.cpu(), g.cpu(), doubled, **kwargs)
    state.update({k: v if k == "step" else v.to(state[k].dtype) for k, v in doubled.items()})
    return new_p.to(p.dtype).to(p.device)


def _adamw_hf(p, g, state, index, **kwargs):
    return adamw_hf_step(p, g, state, **kwargs)


# ---------------------------------------------------------------------- states


def _like_param(*keys):
    return lambda p, kw: {k: (tuple(p.shape), p.dtype) for k in keys}


def _anyprecision_states(p, kw):
    shape = tuple(p.shape)
    states = {"exp_avg": (shape, resolve_state_dtype("m", kw.get("momentum_dtype",
                                                                  torch.float32))),
              "exp_avg_sq": (shape, resolve_state_dtype("v", kw.get("variance_dtype",
                                                                     torch.bfloat16)))}
    if kw.get("use_kahan_summation"):
        states["compensation"] = (shape, resolve_state_dtype(
            "c", kw.get("compensation_buffer_dtype", torch.bfloat16)))
    return states


def _adafactor_states(p, kw):
    shape = tuple(p.shape)
    if p.dim() >= 2:  # factored: rows + cols values per matrix
        states = {"exp_avg_sq_row": (shape[:-1], torch.float32),
                  "exp_avg_sq_col": (shape[:-2] + shape[-1:], torch.float32)}
    else:
        states = {"exp_avg_sq": (shape, torch.float32)}
    if kw.get("beta1") is not None:
        states["exp_avg"] = (shape, torch.float32)
    return states


# ---------------------------------------------------------------- the database

_ADAMW = dict(cls=FusedAdamW, reference=_adamw, dtypes=ALL_FLOATS,
              registry_name="adamw_custom_fused",
              # beta1 = 0 makes the lerp a copy: the SIMD builds fuse a multiply-add
              # in it (as torch's vectorised lerp), the portable one does not
              same_bits_on_every_isa=dict(betas=(0.0, 0.5)), capturable=True)
_ANYPRECISION = dict(cls=AnyPrecisionAdamW, reference=_anyprecision, dtypes=LOW_PRECISION,
                     states=_anyprecision_states, registry_name="adamw_anyprecision",
                     same_bits_on_every_isa={}, exact_on_cpu=True, capturable=True)
_ADAFACTOR = dict(cls=Adafactor, reference=_adafactor, dtypes=LOW_PRECISION,
                  states=_adafactor_states, registry_name="adafactor", factored=True,
                  finite_only=True, rtol_f32=2e-5, capturable=True)

# The first configuration of each class is the one with the most states.
OPTIMS = [
    OptimInfo("adamw-amsgrad-maximize",
              kwargs=dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True),
              states=_like_param("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), **_ADAMW),
    OptimInfo("adamw", kwargs=dict(lr=1e-2, weight_decay=0.1),
              states=_like_param("exp_avg", "exp_avg_sq"), **_ADAMW),
    OptimInfo("anyprecision-kahan", kwargs=dict(
        lr=1e-2, weight_decay=0.1, use_kahan_summation=True, momentum_dtype=torch.bfloat16,
        variance_dtype=torch.float32, compensation_buffer_dtype=torch.bfloat16),
        **_ANYPRECISION),
    OptimInfo("anyprecision-bf16-states", kwargs=dict(
        lr=1e-2, weight_decay=0.1, momentum_dtype=torch.bfloat16, variance_dtype=torch.bfloat16,
        compensation_buffer_dtype=torch.bfloat16), **_ANYPRECISION),
    OptimInfo("anyprecision-f16-momentum", kwargs=dict(
        lr=1e-2, momentum_dtype=torch.float16, variance_dtype=torch.bfloat16), **_ANYPRECISION),
    OptimInfo("anyprecision-f32-states", kwargs=dict(
        lr=1e-2, momentum_dtype=torch.float32, variance_dtype=torch.float32,
        compensation_buffer_dtype=torch.float16), **_ANYPRECISION),
    OptimInfo("anyprecision-stochastic", kwargs=dict(
        lr=1e-2, weight_decay=0.1, rounding="stochastic", seed=11,
        momentum_dtype=torch.float32, variance_dtype=torch.bfloat16), **_ANYPRECISION),
    OptimInfo("adafactor-lr-beta1", kwargs=dict(
        lr=1e-2, relative_step=False, scale_parameter=True, beta1=0.9, weight_decay=0.1),
        **_ADAFACTOR),
    OptimInfo("adafactor-relative", kwargs=dict(), **_ADAFACTOR),
    OptimInfo("adamw-hf", cls=AdamWHF, kwargs=dict(lr=1e-2, weight_decay=0.1),
              reference=_adamw_hf, dtypes=ALL_FLOATS,
              states=_like_param("exp_avg", "exp_avg_sq"), registry_name="adamw_hf",
              kernels=False,
              # its math runs in the parameter's dtype, as the original's: 16-bit
              # states lose much more than one rounding (float16 g*g underflows)
              reference_dtypes=(torch.float32, torch.float64)),
]

KERNEL_OPTIMS = [info for info in OPTIMS if info.kernels]


def optims_with(infos=None, **capabilities) -> list[OptimInfo]:
    """The entries of ``infos`` (default: all) with the given capabilities, e.g.
    ``optims_with(KERNEL_OPTIMS, factored=False)``."""
    return [info for info in (OPTIMS if infos is None else infos)
            if all(getattr(info, k) == v for k, v in capabilities.items())]


def optims(infos=None, **capabilities):
    """Parametrizes a test's ``info`` argument over ``optims_with(infos, **capabilities)``."""
    chosen = optims_with(infos, **capabilities)
    return pytest.mark.parametrize("info", chosen, ids=[info.name for info in chosen])


def one_per_class(infos=None):
    """The first configuration of each optimizer class."""
    seen, chosen = set(), []
    for info in OPTIMS if infos is None else infos:
        if info.cls not in seen:
            seen.add(info.cls)
            chosen.append(info)
    return chosen


def state_bytes(info: OptimInfo, p: torch.Tensor) -> int:
    """Bytes of the states ``info`` declares for ``p``."""
    return sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size()
               for shape, dtype in info.states(p, info.kwargs).values())
